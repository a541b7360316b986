"""An idle agent rests as a tiny process (agent/rest.py) and wakes with all its state.

The rest delay (60 s) is shortened to one second here; everything else is real: bubblewrap and
Docker sandboxes over the MCP client, the agent's pid and memory read from the host's /proc.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream
from mcp.client import Client

from mcp_sandbox.agent.rest import STUB_MARKER
from mcp_sandbox.manager import SandboxManager
from mcp_sandbox.sandbox import Sandbox
from mcp_sandbox.server import build_server

from .conftest import Tools, require_backend, settings_for
from .helpers import eventually
from .agent_fds import agent_pid
from .test_streams import CLIENT, read_all

pytestmark = pytest.mark.anyio

REST_AFTER = 1.0


@pytest.fixture(params=["bwrap", "docker"])
def isolated(request: pytest.FixtureRequest) -> str:
    require_backend(request.param)
    return str(request.param)


@asynccontextmanager
async def server(
    backend: str, root: Path, monkeypatch: pytest.MonkeyPatch, rest_after: float = REST_AFTER
) -> AsyncIterator[tuple[Tools, SandboxManager]]:
    async with SandboxManager(settings_for(backend, root, rest_after=rest_after)) as manager:
        async with Client(build_server(manager)) as client:
            yield Tools(client, backend), manager


async def default_sandbox(mcp: Tools, manager: SandboxManager) -> tuple[Sandbox, int]:
    """The default sandbox (started by a first call) and its agent's pid on the host."""
    await mcp.sh("true")
    sandbox = next(iter(manager.sandboxes.values()))
    return sandbox, agent_pid(sandbox)


def resting(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return STUB_MARKER.encode() in f.read()
    except OSError:
        return False


def private_kib(pid: int) -> int:
    """The process's anonymous memory: its own for sure. (Its private clean pages are also the
    interpreter's file pages whenever no other process happens to map them.)"""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith("Anonymous:"))


async def rests(pid: int, seconds: float = 15) -> bool:
    return await eventually(lambda: resting(pid), seconds)


async def test_a_resting_agent_wakes_with_all_of_its_state(isolated: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with server(isolated, tmp_path, monkeypatch) as (mcp, manager):
        sandbox, pid = await default_sandbox(mcp, manager)
        await mcp.sh("mkdir -p /tmp/here && cd /tmp/here && export KEPT='a b' && f() { echo fn \"$@\"; }; set -o pipefail")
        await mcp("set_env_vars", env={"SET": "by set_env_vars"})
        await mcp("create_session", session_id="other", cwd="/tmp")
        await mcp.sh("cd /; export OTHER=1", session_id="other")
        minted = await mcp("create_session")
        started = await mcp("start_process", command="echo out; echo err >&2; exit 3")
        await mcp("get_process_logs", process_id=started["process_id"], wait_for_exit=True)
        tty = await mcp("start_process", command="printf 'on a terminal'", tty=True, cols=90, rows=20)
        await mcp("get_process_logs", process_id=tty["process_id"], wait_for_exit=True)
        await mcp("write_file", path="/tmp/here/note.txt", content="kept\n")
        awake = private_kib(pid)

        assert await rests(pid), "the agent never rested"
        at_rest = private_kib(pid)
        assert at_rest < awake * 0.5, (awake, at_rest)

        r = await mcp.sh('pwd; echo "$KEPT|$SET"; f 1; echo "$SHELLOPTS"; cat note.txt')
        assert r["stdout"].splitlines()[:3] == ["/tmp/here", "a b|by set_env_vars", "fn 1"]
        assert "pipefail" in r["stdout"] and r["stdout"].endswith("kept\n")
        assert not resting(pid) and agent_pid(sandbox) == pid  # the same process, awake
        r = await mcp.sh('pwd; echo "$OTHER"', session_id="other")
        assert r["stdout"] == "/\n1\n"
        sessions = {s["session_id"] for s in (await mcp("list_sessions"))["sessions"]}
        assert sessions == {"default", "other", minted["session_id"]}
        assert (await mcp("create_session"))["session_id"] not in sessions  # ids go on counting

        logs = await mcp("get_process_logs", process_id=started["process_id"])
        assert (logs["status"], logs["exit_code"], logs["stdout"], logs["stderr"]) == ("failed", 3, "out\n", "err\n")
        screen = await mcp("get_process_screen", process_id=tty["process_id"])
        assert screen["text"].startswith("on a terminal") and (screen["cols"], screen["rows"]) == (90, 20)
        listed = {p["process_id"]: p["status"] for p in (await mcp("list_processes"))["processes"]}
        assert listed == {started["process_id"]: "failed", tty["process_id"]: "completed"}
        again = await mcp("start_process", command="exit 0")
        assert again["process_id"] not in listed
        assert (await mcp("read_file", path="/tmp/here/note.txt"))["content"] == "kept\n"


async def test_no_rest_while_anything_lives(isolated: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with server(isolated, tmp_path, monkeypatch) as (mcp, manager):
        sandbox, pid = await default_sandbox(mcp, manager)
        # A background process, then a code context (an interpreter), then a listener, each alone.
        await mcp("start_process", command="sleep 60", process_id="sleeper")
        await anyio.sleep(3 * REST_AFTER)
        assert not resting(pid)
        await mcp("kill_process", process_id="sleeper")
        await mcp("create_code_context", context_id="py")
        await anyio.sleep(3 * REST_AFTER)
        assert not resting(pid)
        await mcp("delete_code_context", context_id="py")
        assert await rests(pid)


async def test_a_listener_rests_with_its_agent(isolated: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As the egress proxy's: the port stays the agent's through the rest, and is served after it.
    async with server(isolated, tmp_path, monkeypatch) as (mcp, manager):
        sandbox, pid = await default_sandbox(mcp, manager)

        async def shout(stream: ByteStream) -> None:
            await stream.send((await read_all(stream)).upper())

        sandbox.on_stream("shout", shout)
        port = await sandbox.listen("shout", 0)
        await sandbox.write_file("client.py", CLIENT)
        for word in ("before", "after"):
            assert await rests(pid)
            assert (await mcp.sh(f"python3 client.py {port} {word}"))["stdout"] == word.upper() + "\n"


async def test_requests_around_the_rest_are_all_answered(isolated: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with server(isolated, tmp_path, monkeypatch) as (mcp, manager):
        _, pid = await default_sandbox(mcp, manager)
        # Calls at random moments around the rest: before it, while the agent saves and execs,
        # while the stub starts, while it waits; each is answered, by the agent awake or woken.
        for n in range(8):
            await anyio.sleep(REST_AFTER + random.uniform(0, 0.4))
            assert (await mcp.sh(f"echo {n}"))["stdout"] == f"{n}\n"
        assert await rests(pid)
        # Several at once wake it, and the ones behind the first wait in the channel meanwhile.
        results: list[Any] = []

        async def call(n: int) -> None:
            results.append((await mcp.sh(f"echo {n}", session_id="default" if n % 2 else None))["stdout"])

        async with anyio.create_task_group() as group:
            for n in range(4):
                group.start_soon(call, n)
        assert sorted(results) == [f"{n}\n" for n in range(4)]


async def test_a_resting_agent_ends_on_sigterm_and_with_its_sandbox(isolated: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with server(isolated, tmp_path, monkeypatch) as (mcp, manager):
        sandbox, pid = await default_sandbox(mcp, manager)
        assert await rests(pid)
        os.kill(pid, signal.SIGTERM)
        assert await eventually(lambda: not os.path.exists(f"/proc/{pid}") or not resting(pid) and is_zombie(pid), 10)
        assert await eventually(lambda: sandbox.id not in manager.sandboxes, 20)

        created = await mcp("create_sandbox")
        fresh = manager.sandboxes[created["sandbox_id"]]
        await mcp.sh("true", sandbox_id=fresh.id)
        pid = agent_pid(fresh)
        assert await rests(pid)
        await mcp("destroy", sandbox_id=fresh.id)
        assert await eventually(lambda: not os.path.exists(f"/proc/{pid}"), 20)
        if isolated == "bwrap":
            assert not (tmp_path / fresh.id).exists()


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


async def test_an_unisolated_agent_never_rests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with server("none", tmp_path, monkeypatch) as (mcp, manager):
        _, pid = await default_sandbox(mcp, manager)
        await anyio.sleep(3 * REST_AFTER)
        assert not resting(pid)  # other processes of the host are in sight
        assert (await mcp.sh("echo awake"))["stdout"] == "awake\n"


async def test_rest_after_zero_never_rests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_backend("bwrap")
    async with server("bwrap", tmp_path, monkeypatch, rest_after=0) as (mcp, manager):
        _, pid = await default_sandbox(mcp, manager)
        await anyio.sleep(3 * REST_AFTER)
        assert not resting(pid)
        assert (await mcp.sh("echo awake"))["stdout"] == "awake\n"
