"""Sandbox to server: whatever arrives on an agent's channel can end only that sandbox.

Code in a sandbox cannot reach its agent's channel (the agent is not dumpable and no other process
in the sandbox holds the channel's pipes or socket). To check what the server does when an agent
is owned anyway, these tests write into the real channel from outside, as root on the host taking
the agent's end (agent_fds.py), exactly where a hostile agent would write; and they freeze a real
agent with SIGSTOP for an agent that never answers.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from mcp.client import Client

from mcp_sandbox import deadlines
from mcp_sandbox.agent import protocol
from mcp_sandbox.agent.api import STREAM_CHUNK, STREAM_WINDOW
from mcp_sandbox.backends import docker as docker_backend
from mcp_sandbox.manager import SandboxManager
from mcp_sandbox.server import build_server

from .agent_fds import agent_pid, channel_ends, open_channel_out, require_root, write_into
from .conftest import Tools, require_backend
from .helpers import eventually, memory_kib, reset_peak_rss
from .test_streams import server as streams_server

pytestmark = pytest.mark.anyio

MiB = 1 << 20

# The head of the scripts below, run inside a sandbox: the pids of the sandbox's agent (its pid is
# the first argument) and of every process under it; without isolation, nothing else of the host.
AGENT_TREE = r"""
import os, sys
root = int(sys.argv[1])
def children(pid):
    found = []
    try:
        for task in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                found += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return found
with open("/proc/%d/cmdline" % root, "rb") as f:  # never beyond this sandbox
    if b"agent.main" not in f.read():
        sys.exit("pid %d is not the sandbox's agent" % root)
pids, todo = [], [root]
while todo:
    pid = todo.pop()
    pids.append(pid)
    todo += children(pid)
"""

# Try to open every descriptor of every process under the agent, for writing and for reading,
# and report the inode of what opened (nothing is written or read).
OPEN_EVERY_FD = AGENT_TREE + r"""
import json
report = []
for pid in pids:
    if pid == os.getpid():
        continue
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError as exc:
        report.append([pid, None, None, exc.errno])
        continue
    for fd in fds:
        for flags in (os.O_WRONLY, os.O_RDONLY):
            try:
                opened = os.open("/proc/%d/fd/%s" % (pid, fd), flags | os.O_NONBLOCK | os.O_NOCTTY)
            except OSError as exc:
                report.append([pid, fd, None, exc.errno])
                continue
            report.append([pid, fd, os.fstat(opened).st_ino, 0])
            os.close(opened)
print(json.dumps(report))
"""

# Run in the background: garbage and then endless bytes into every pipe it can open under the
# agent, without blocking, within a total size and a time (the second and third arguments).
FLOOD_EVERY_PIPE = AGENT_TREE + r"""
import time
total_max, seconds = int(sys.argv[2]), float(sys.argv[3])
targets = []
for pid in pids:
    if pid == os.getpid():
        continue
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        continue
    for fd in fds:
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("pipe:"):
                targets.append(os.open("/proc/%d/fd/%s" % (pid, fd), os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
print("pipes", len(targets), flush=True)
block = b"[1]\n" + b'{"id":[1]}\n' + b'{"id":99999,"result":{}}\n' + b"x" * (1 << 20)
deadline, total = time.monotonic() + seconds, 0
while targets and total < total_max and time.monotonic() < deadline:
    for fd in list(targets):
        try:
            total += os.write(fd, block)
        except BlockingIOError:
            pass
        except OSError:
            targets.remove(fd)
    time.sleep(0.001)
print("wrote", total, flush=True)
"""


@asynccontextmanager
async def served(manager_factory: Any, backend: str, **overrides: Any) -> AsyncIterator[tuple[SandboxManager, Tools]]:
    async with manager_factory(**overrides) as manager:
        async with Client(build_server(manager)) as client:
            yield manager, Tools(client, backend)


async def hit_while_waiting(
    mcp: Tools, sandbox_id: str, command: str, out: int, pieces: Iterable[bytes]
) -> tuple[str, float]:
    """Start ``command`` in the sandbox and write ``pieces`` into its agent's channel (``out``, an
    open_channel_out, closed after) while it runs, until the call ends; the call's error and how
    long it took."""
    outcome: dict[str, Any] = {}
    stop = threading.Event()

    async def call() -> None:
        started = time.monotonic()
        try:
            outcome["text"] = await mcp.error("exec", command=command, sandbox_id=sandbox_id)
            outcome["seconds"] = time.monotonic() - started
        finally:
            stop.set()

    with anyio.fail_after(90):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await anyio.sleep(0.5)  # the command is running
            await anyio.to_thread.run_sync(write_into, out, pieces, stop)
    return outcome["text"], outcome["seconds"]


async def gone(manager: SandboxManager, sandbox_id: str) -> bool:
    """Whether the server removed the sandbox within a few seconds."""
    return await eventually(lambda: sandbox_id not in manager.sandboxes)


@pytest.mark.parametrize("backend", ["bwrap", "docker"], indirect=True)
async def test_code_in_the_sandbox_cannot_open_the_channel(manager_factory: Any, backend: str) -> None:
    require_root()
    async with served(manager_factory, backend) as (manager, mcp):
        sid = (await mcp("create_sandbox"))["sandbox_id"]
        channel = set(channel_ends(agent_pid(manager.sandboxes[sid])).values())
        assert len(channel) >= 2  # in and out at least
        r = await mcp.sh("python3 - 1", stdin=OPEN_EVERY_FD, sandbox_id=sid)
        report = json.loads(r["stdout"])
        opened = {inode for _, _, inode, _ in report if inode is not None}
        assert opened, "the probe opened nothing, not even its own session's pipes"
        assert not opened & channel, [entry for entry in report if entry[2] in channel]
        agent = [entry for entry in report if entry[0] == 1]  # the agent is the sandbox's pid 1
        assert agent and all(inode is None for _, _, inode, _ in agent), agent


@pytest.mark.parametrize("backend", ["bwrap", "docker"], indirect=True)
async def test_the_agent_is_pid_1_and_reaps_orphans(mcp: Tools) -> None:
    """No init holds the channel: the agent is pid 1, and adopts and reaps what is orphaned."""
    r = await mcp.sh("(sleep 0.2 & echo $!) && sleep 1 && ps -o pid=,comm= -p 1; ps -eo stat= | grep -c '^Z' || true")
    orphan, pid1, zombies = r["stdout"].split("\n")[:3]
    assert pid1.split()[0] == "1" and "python" in pid1 and zombies == "0", r
    assert (await mcp.sh(f"test -e /proc/{orphan}"))["exit_code"] == 1  # exited and reaped


def frame(payload: bytes, kind: int = protocol.MESSAGE, stream: int = 0) -> bytes:
    """A well-formed frame around whatever payload (agent/protocol.py)."""
    return protocol.HEADER.pack(kind, stream, len(payload)) + payload


GARBAGE = {
    "not an object": frame(b"[1]"),
    "an id that is not a number": frame(b'{"id":[1]}'),
    "an answer to a request never sent": frame(b'{"id":99999,"result":{}}'),
    "a malformed error": frame(b'{"id":1,"error":"no"}'),
    "a malformed notification": frame(b'{"method":"output","params":[1]}'),
    "bytes that are not JSON": frame(b"\xff\xfe garbage"),
    "bytes beside a message that is no answer": frame(b'\x00\x00\x00\x02{}data', protocol.BLOB),
    "a frame of an unknown kind": b"[1]\n" + b'{"id":[1]}\n',
    "data for a stream never opened": frame(b"AAAA", protocol.DATA, 1),
    "a stream connected that was never opened": frame(b'{"method":"stream_connected","params":{"stream":1}}'),
    "a stream of a kind nobody listens for": frame(b'{"method":"stream_open","params":{"stream":2,"kind":"x"}}'),
    "a stream credit that is no number": frame(b'{"method":"stream_credit","params":{"stream":1,"bytes":"all"}}'),
    "stream data as a message": frame(b'{"method":"stream_data","params":{"stream":1,"data":"AAAA"}}'),
}


async def test_garbage_on_the_channel_ends_only_its_sandbox(manager_factory: Any, backend: str) -> None:
    require_root()
    async with served(manager_factory, backend) as (manager, mcp):
        bystander = (await mcp("create_sandbox"))["sandbox_id"]
        for name, data in GARBAGE.items():
            sid = (await mcp("create_sandbox"))["sandbox_id"]
            out = open_channel_out(agent_pid(manager.sandboxes[sid]))
            text, seconds = await hit_while_waiting(mcp, sid, "sleep 30", out, [data])
            assert "BACKEND_UNAVAILABLE:" in text and "protocol" in text, (name, text)
            assert seconds < 10, name
            assert await gone(manager, sid), name
            assert (await mcp.sh("echo alive", sandbox_id=bystander))["stdout"] == "alive\n", name

        # A partial message glued to the next answer makes that answer unreadable: the call fails at
        # once instead of waiting for an answer that never comes.
        sid = (await mcp("create_sandbox"))["sandbox_id"]
        out = open_channel_out(agent_pid(manager.sandboxes[sid]))
        text, seconds = await hit_while_waiting(mcp, sid, "sleep 1; echo done", out, [frame(b'{"id":' + b" " * 14)[:-14]])
        assert "BACKEND_UNAVAILABLE:" in text and "unreadable message" in text
        assert seconds < 10
        assert await gone(manager, sid)
        assert (await mcp.sh("echo alive", sandbox_id=bystander))["stdout"] == "alive\n"


async def test_a_stream_past_its_window_ends_only_its_sandbox(manager_factory: Any, backend: str) -> None:
    """Flow control is checked: an agent that sends more than a stream's window is stopped, so it
    cannot make the server buffer an unread stream without bound."""
    require_root()
    async with served(manager_factory, backend) as (manager, mcp):
        bystander = (await mcp("create_sandbox"))["sandbox_id"]
        sid = (await mcp("create_sandbox"))["sandbox_id"]
        sandbox = manager.sandboxes[sid]
        stream = await sandbox.open_stream(await streams_server(sandbox, "echo"))  # sends nothing unasked
        out = open_channel_out(agent_pid(sandbox))
        data = frame(b"x" * STREAM_CHUNK, protocol.DATA, stream.id)  # type: ignore[attr-defined]
        text, seconds = await hit_while_waiting(mcp, sid, "sleep 30", out, [data] * (STREAM_WINDOW // STREAM_CHUNK + 1))
        assert "BACKEND_UNAVAILABLE:" in text and "window" in text, text
        assert seconds < 10
        assert await gone(manager, sid)
        with pytest.raises(anyio.BrokenResourceError):
            await stream.receive()
        assert (await mcp.sh("echo alive", sandbox_id=bystander))["stdout"] == "alive\n"


async def test_an_endless_message_does_not_grow_the_server(manager_factory: Any, backend: str) -> None:
    require_root()
    async with served(manager_factory, backend) as (manager, mcp):
        bystander = (await mcp("create_sandbox"))["sandbox_id"]
        sid = (await mcp("create_sandbox"))["sandbox_id"]
        out = open_channel_out(agent_pid(manager.sandboxes[sid]))
        before = memory_kib("VmRSS")
        assert reset_peak_rss()
        # A message of 4 GiB announced, and 300 MB of it sent: refused at its header.
        endless = itertools.chain([protocol.HEADER.pack(protocol.MESSAGE, 0, 0xFFFFFFFF)], (b"x" * MiB for _ in range(300)))
        text, seconds = await hit_while_waiting(mcp, sid, "sleep 30", out, endless)
        growth_mb = (memory_kib("VmHWM") - before) / 1024
        assert "BACKEND_UNAVAILABLE:" in text and "a frame of 4294967295 bytes, more than" in text, text
        assert growth_mb < 100, f"the server grew by {growth_mb:.0f} MB"
        assert await gone(manager, sid)
        assert (await mcp.sh("echo alive", sandbox_id=bystander))["stdout"] == "alive\n"


async def test_flooding_every_pipe_from_inside(manager_factory: Any, backend: str) -> None:
    """What the issue's hostile sandbox did: garbage and endless bytes into every pipe it can
    open. Isolated, it cannot reach its channel and lives on; without isolation (root on the host)
    it can, and only its own sandbox ends. Either way the server and the other sandboxes are fine."""
    async with served(manager_factory, backend) as (manager, mcp):
        survived = await flood_from_inside(manager, mcp)
        assert survived == (backend != "none")


@pytest.mark.parametrize("backend", ["docker"], indirect=True)
async def test_flooding_every_pipe_under_gvisor(manager_factory: Any) -> None:
    """gVisor's /proc does not keep a process from a non-dumpable one's descriptors: code in the
    sandbox may reach the channel there, and then only its own sandbox ends."""
    require_backend("docker")
    if "runsc" not in (docker_backend.connect().info().get("Runtimes") or {}):
        pytest.skip("Docker does not list the runsc (gVisor) runtime; .ci/docker-setup.sh registers it when available")
    async with served(manager_factory, "docker", runtime="runsc") as (manager, mcp):
        await flood_from_inside(manager, mcp)


async def flood_from_inside(manager: SandboxManager, mcp: Tools) -> bool:
    """Flood from a sandbox (in a background process, for at most 10 s and 300 MB); check that the
    server's memory stayed within 100 MB and that another sandbox answers. Returns whether the
    flooding sandbox lives on (it did not reach its channel)."""
    bystander = (await mcp("create_sandbox"))["sandbox_id"]
    sid = (await mcp("create_sandbox"))["sandbox_id"]
    await mcp("run_code", code="1 + 1", sandbox_id=sid)  # a code context's pipes too
    # The agent as the sandbox sees it: pid 1 in its own pid namespace, else its pid on the host.
    root = agent_pid(manager.sandboxes[sid]) if manager.sandboxes[sid].isolation == "none" else 1
    await mcp("write_file", path="/tmp/flood.py", content=FLOOD_EVERY_PIPE, sandbox_id=sid)
    before = memory_kib("VmRSS")
    assert reset_peak_rss()
    started = await mcp("start_process", command=f"python3 /tmp/flood.py {root} {300 * MiB} 10", sandbox_id=sid)
    logs = await mcp.raw(
        "get_process_logs", process_id=started["process_id"], wait_for_exit=True, timeout=60, sandbox_id=sid
    )
    # A call that failed because its sandbox stopped may return before the server has removed it.
    survived = not logs.is_error and sid in manager.sandboxes
    if survived:
        assert not logs.is_error and "wrote" in logs.structured_content["stdout"], logs  # type: ignore[index]
        # In a new session: the flood also wrote into the default session's standby bash, which
        # is the sandbox's own (its output and even its next command may carry the flood's bytes).
        await mcp("create_session", session_id="after-flood", sandbox_id=sid)
        out = await mcp("exec", command="echo still here", session_id="after-flood", sandbox_id=sid)
        assert out["stdout"] == "still here\n", out
    else:
        assert "BACKEND_UNAVAILABLE:" in logs.content[0].text  # type: ignore[union-attr]
        assert await gone(manager, sid)
    growth_mb = (memory_kib("VmHWM") - before) / 1024
    assert growth_mb < 100, f"the server grew by {growth_mb:.0f} MB"
    assert (await mcp.sh("echo alive", sandbox_id=bystander))["stdout"] == "alive\n"
    return survived


async def test_a_call_never_waits_past_its_deadline(
    manager_factory: Any, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent that stops answering (frozen here with SIGSTOP) fails each call at its timeout (its
    own, or its session's) plus the grace, shortened for the test; the sandbox answers again once
    the agent does."""
    require_root()
    monkeypatch.setattr(deadlines, "GRACE", 2.0)
    async with served(manager_factory, backend) as (manager, mcp):
        sid = (await mcp("create_sandbox"))["sandbox_id"]
        await mcp("create_session", session_id="quick", timeout=1, sandbox_id=sid)
        agent = agent_pid(manager.sandboxes[sid])
        failures: list[tuple[str, float]] = []

        async def call(**arguments: Any) -> None:
            started = time.monotonic()
            text = await mcp.error("exec", command="echo hi", sandbox_id=sid, **arguments)
            failures.append((text, time.monotonic() - started))

        os.kill(agent, signal.SIGSTOP)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(call, timeout=1))
                tg.start_soon(functools.partial(call, session_id="quick"))
        finally:
            os.kill(agent, signal.SIGCONT)
        for text, seconds in failures:
            assert "BACKEND_UNAVAILABLE:" in text and "did not answer exec within 3 s" in text, text
            assert 2.5 < seconds < 8
        assert (await mcp.sh("echo back", sandbox_id=sid))["stdout"] == "back\n"


async def test_an_answer_too_big_for_the_channel_is_an_error(manager_factory: Any, backend: str) -> None:
    """A well-behaved agent never sends a message the server would refuse: the call fails instead."""
    async with served(manager_factory, backend) as (manager, mcp):
        text = await mcp.error("run_code", code="'x' * 20_000_000")
        assert "LIMIT_REACHED:" in text and "MB" in text, text[:300]
        assert (await mcp("run_code", code="1 + 1"))["results"][0]["text/plain"] == "2"
