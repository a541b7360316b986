"""Chaos: the parts of a sandbox die in the middle of a call. The agent (kill -9) during exec, a
file transfer and run_code; a code context's worker during run_code; the container during exec
and a file transfer; the disk budget filled by a transfer; the client gone in the middle of
streamed output; the Docker engine restarted during a call (in CI, which runs its own engine).
Each ends in a clear result or coded error for the call, a server that still works, and a next
call that works or gets a fresh sandbox.

Pids come from the sandbox this test's own server made (its agent, found through its handle, and
that agent's descendants): nothing is killed by pattern.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp_types import CallToolResult

from bench.load import http_server
from bench.soak import descendants
from mcp_sandbox.manager import SandboxManager
from mcp_sandbox.sandbox import Sandbox
from mcp_sandbox.server import build_server

from .conftest import IN_CI, Tools, require_backend, settings_for
from .helpers import cmdline, eventually, pids_with
from .agent_fds import agent_pid

pytestmark = pytest.mark.anyio

CODED = re.compile(r"^(?:Error executing tool \w+: )?([A-Z][A-Z_]+): \S")
CALL_CEILING = 60


@pytest.fixture
async def served(backend: str, tmp_path: Path) -> AsyncIterator[tuple[SandboxManager, Tools]]:
    async with SandboxManager(settings_for(backend, tmp_path / "sandboxes", disk="200m")) as manager:
        async with Client(build_server(manager)) as client:
            yield manager, Tools(client, backend)


def code_of(result: CallToolResult) -> str:
    """The code of a tool error, which must have one."""
    text = result.content[0].text  # type: ignore[union-attr]
    coded = CODED.match(text)
    assert coded, f"an uncoded error: {text!r}"
    assert coded.group(1) != "INTERNAL" and "Traceback" not in text, text
    return coded.group(1)


async def during(call: Callable[[Callable[[str], None]], Awaitable[CallToolResult]], when: str,
                 chaos: Callable[[], Any]) -> CallToolResult:
    """Run ``call`` (given a progress sink), do ``chaos`` once its streamed output shows ``when``,
    and return the call's result, which must come within the ceiling."""
    seen = anyio.Event()
    output: list[str] = []

    def progress(text: str) -> None:
        output.append(text)
        if when in "".join(output):
            seen.set()

    result: list[CallToolResult] = []

    async def run() -> None:
        result.append(await call(progress))

    with anyio.fail_after(CALL_CEILING):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await seen.wait()
            chaos()
    return result[0]


def streamed(mcp: Tools, tool: str, **arguments: Any) -> Callable[[Callable[[str], None]], Awaitable[CallToolResult]]:
    async def call(sink: Callable[[str], None]) -> CallToolResult:
        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            sink(message or "")

        return await mcp.client.call_tool(tool, arguments, progress_callback=on_progress)

    return call


async def next_call_works(mcp: Tools, sid: str) -> None:
    """The sandbox answers again, or is gone with a coded error and a fresh one works."""
    result = await mcp.raw("exec", command="echo next", sandbox_id=sid)
    if result.is_error:
        assert code_of(result) in ("SANDBOX_NOT_FOUND", "BACKEND_UNAVAILABLE"), result
        fresh = (await mcp("create_sandbox"))["sandbox_id"]
        assert (await mcp.sh("echo fresh", sandbox_id=fresh))["stdout"] == "fresh\n"
    else:
        assert result.structured_content is not None and result.structured_content["stdout"] == "next\n"


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


async def sandbox(manager: SandboxManager, mcp: Tools) -> tuple[str, Sandbox]:
    sid = (await mcp("create_sandbox"))["sandbox_id"]
    return sid, manager.sandboxes[sid]


async def test_agent_killed_mid_exec(served: tuple[SandboxManager, Tools]) -> None:
    manager, mcp = served
    sid, box = await sandbox(manager, mcp)
    marker = f"sleep {secrets.randbelow(900_000) + 100_000}"
    result = await during(streamed(mcp, "exec", command=f"echo started; {marker}", sandbox_id=sid), "started",
                          lambda: kill(agent_pid(box)))
    assert result.is_error and code_of(result) == "BACKEND_UNAVAILABLE", result
    # What the command started dies with its sandbox.
    assert await eventually(lambda: not pids_with(marker), 20), [cmdline(p) for p in pids_with(marker)]
    await next_call_works(mcp, sid)


def bytes_read(pid: int) -> int:
    """What a process has read so far (its channel included), from /proc/<pid>/io."""
    with open(f"/proc/{pid}/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


async def test_agent_killed_mid_file_transfer(served: tuple[SandboxManager, Tools]) -> None:
    manager, mcp = served
    await killed_mid_transfer(manager, mcp, lambda box: kill(agent_pid(box)))


async def killed_mid_transfer(manager: SandboxManager, mcp: Tools, victim: Callable[[Sandbox], None]) -> None:
    """A 48 MiB write_file, and ``victim`` struck once the agent has read a few MiB of it."""
    sid, box = await sandbox(manager, mcp)
    agent = agent_pid(box)
    size = 48 << 20
    results: list[CallToolResult] = []

    async def write() -> None:
        results.append(await mcp.raw("write_file", path="big.txt", content="x" * size, sandbox_id=sid))

    with anyio.fail_after(CALL_CEILING):
        async with anyio.create_task_group() as tg:
            before = bytes_read(agent)
            tg.start_soon(write)
            # Some chunks arrived, most are still to come.
            assert await eventually(lambda: bytes_read(agent) - before > 4 << 20, 30, interval=0.005)
            victim(box)
    [result] = results
    assert result.is_error and code_of(result) == "BACKEND_UNAVAILABLE", result
    await next_call_works(mcp, sid)
    # Nothing half-written passes for the file in a sandbox that survived (a fresh one has none).
    listed = await mcp.raw("exec", command="stat -c %s big.txt 2>/dev/null || echo none", sandbox_id=sid)
    if not listed.is_error:
        assert listed.structured_content is not None and listed.structured_content["stdout"] in ("none\n", f"{size}\n")


async def test_code_worker_killed_mid_run_code(served: tuple[SandboxManager, Tools]) -> None:
    manager, mcp = served
    sid, box = await sandbox(manager, mcp)
    await mcp("run_code", code="kept = 1", sandbox_id=sid)

    def kill_worker() -> None:
        [worker] = [p for p in descendants(agent_pid(box)) if "python_worker" in cmdline(p)]
        kill(worker)

    code = "print('started', flush=True)\nimport time\ntime.sleep(60)"
    result = await during(streamed(mcp, "run_code", code=code, sandbox_id=sid), "started", kill_worker)
    assert not result.is_error, result
    r = result.structured_content
    assert r is not None and r["error"]["name"] == "InterpreterDied" and r["restarted"] is True, r
    assert "fresh interpreter" in r["error"]["value"] and "lost" in r["error"]["value"]
    # A fresh interpreter (state lost, and said so), in the same sandbox.
    again = await mcp("run_code", code="print(1 + 1)", sandbox_id=sid)
    assert again["stdout"] == "2\n"
    assert (await mcp.sh("echo same", sandbox_id=sid))["stdout"] == "same\n"


async def test_agent_killed_mid_run_code(served: tuple[SandboxManager, Tools]) -> None:
    manager, mcp = served
    sid, box = await sandbox(manager, mcp)
    code = "print('started', flush=True)\nimport time\ntime.sleep(60)"
    result = await during(streamed(mcp, "run_code", code=code, sandbox_id=sid), "started", lambda: kill(agent_pid(box)))
    assert result.is_error and code_of(result) == "BACKEND_UNAVAILABLE", result
    await next_call_works(mcp, sid)


@pytest.mark.parametrize("local", ["bwrap", "none"])  # the server keeps the budget of local sandboxes
async def test_disk_budget_filled_by_a_transfer(local: str, tmp_path: Path) -> None:
    require_backend(local)
    settings = settings_for(local, tmp_path / "sandboxes", disk="40m")
    async with SandboxManager(settings) as manager, Client(build_server(manager)) as client:
        mcp = Tools(client, local)
        await mcp.sh("head -c 30M /dev/zero > first.bin")
        with anyio.fail_after(CALL_CEILING):
            result = await mcp.raw("write_file", path="second.txt", content="y" * (20 << 20))
        assert result.is_error and code_of(result) == "LIMIT_REACHED", result
        assert "would take the sandbox past its 40 MiB disk budget" in result.content[0].text  # type: ignore[union-attr]
        # The sandbox lives on; freeing space lets the transfer through.
        await mcp.sh("rm -f first.bin second.txt")
        assert (await mcp("write_file", path="second.txt", content="y" * (20 << 20)))["bytes_written"] == 20 << 20


@pytest.fixture
async def on_docker(tmp_path: Path) -> AsyncIterator[tuple[SandboxManager, Tools]]:
    require_backend("docker")
    async with SandboxManager(settings_for("docker", tmp_path / "sandboxes")) as manager:
        async with Client(build_server(manager)) as client:
            yield manager, Tools(client, "docker")


async def test_container_killed_mid_exec(on_docker: tuple[SandboxManager, Tools]) -> None:
    manager, mcp = on_docker
    sid, box = await sandbox(manager, mcp)
    handle: Any = box.handle
    result = await during(streamed(mcp, "exec", command="echo started; sleep 60", sandbox_id=sid), "started",
                          lambda: handle.client.api.kill(handle.container_id))
    assert result.is_error and code_of(result) == "BACKEND_UNAVAILABLE", result
    await next_call_works(mcp, sid)


async def test_container_killed_mid_file_transfer(on_docker: tuple[SandboxManager, Tools]) -> None:
    manager, mcp = on_docker

    def kill_container(box: Sandbox) -> None:
        handle: Any = box.handle
        handle.client.api.kill(handle.container_id)

    await killed_mid_transfer(manager, mcp, kill_container)


async def test_client_gone_mid_stream(tmp_path: Path) -> None:
    marker = f"sleep {secrets.randbelow(900_000) + 100_000}"
    with http_server(tmp_path / "sandboxes") as url:
        async with Client(url) as first:
            mcp = Tools(first, "none")
            sid = (await mcp("create_sandbox"))["sandbox_id"]
            await mcp("create_session", session_id="streamer", sandbox_id=sid)
            seen = anyio.Event()

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                if "tick" in (message or ""):
                    seen.set()

            with anyio.fail_after(CALL_CEILING):
                async with anyio.create_task_group() as tg:
                    async def stream() -> None:
                        await first.call_tool("exec", {
                            "command": f"while true; do echo tick; {marker} & wait $!; done", "session_id": "streamer",
                            "sandbox_id": sid}, progress_callback=on_progress)

                    tg.start_soon(stream)
                    await seen.wait()
                    tg.cancel_scope.cancel()
        # The first client is gone, its call with it; another finds the server and the sandbox.
        async with Client(url) as second:
            mcp = Tools(second, "none")
            with anyio.fail_after(CALL_CEILING):
                assert (await mcp.sh("echo alive", sandbox_id=sid))["stdout"] == "alive\n"
                # The abandoned command was interrupted: its session takes commands again.
                assert (await mcp.sh("echo free", sandbox_id=sid, session_id="streamer"))["stdout"] == "free\n"
            assert await eventually(lambda: not pids_with(marker), 20)


DOCKER_SETUP = Path(__file__).resolve().parent.parent / ".ci" / "docker-setup.sh"


def dockerd_pid() -> int:
    """The running engine's pid, from the pid file docker-setup.sh's dockerd writes."""
    pid = int(Path("/var/run/docker.pid").read_text().strip())
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd", "/var/run/docker.pid names no dockerd"
    return pid


def gone(pid: int) -> bool:
    """Exited: no process, or a zombie (on CI machines PID 1 may not reap an orphaned daemon)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def engine_up() -> None:
    """Start the engine as CI does, unless it answers; fail if it does not come back."""
    subprocess.run(["bash", str(DOCKER_SETUP)], check=True, timeout=300, stdout=subprocess.DEVNULL)


async def test_docker_engine_restarted_mid_call(on_docker: tuple[SandboxManager, Tools]) -> None:
    # CI machines run their own engine (.ci/docker-setup.sh); where one engine serves others,
    # MCP_SANDBOX_TEST_DOCKERD_RESTART=0 keeps this test from stopping their containers.
    if os.environ.get("MCP_SANDBOX_TEST_DOCKERD_RESTART", "1" if IN_CI else "0") != "1":
        pytest.skip("restarts the Docker engine: runs in CI, or with MCP_SANDBOX_TEST_DOCKERD_RESTART=1")
    manager, mcp = on_docker
    sid, _ = await sandbox(manager, mcp)
    engine = dockerd_pid()
    try:
        result = await during(streamed(mcp, "exec", command="echo started; sleep 60", sandbox_id=sid), "started",
                              lambda: os.kill(engine, signal.SIGTERM))
        assert result.is_error and code_of(result) == "BACKEND_UNAVAILABLE", result
        assert await eventually(lambda: gone(engine), 60)
        # While the engine is down: a clear error, not a hang.
        with anyio.fail_after(CALL_CEILING):
            down = await mcp.raw("create_sandbox")
        assert down.is_error and code_of(down) == "BACKEND_UNAVAILABLE", down
        await anyio.to_thread.run_sync(engine_up)
        # The same server talks to the new engine: the old sandbox is gone, a fresh one works.
        with anyio.fail_after(CALL_CEILING):
            await next_call_works(mcp, sid)
    finally:
        await anyio.to_thread.run_sync(engine_up)
