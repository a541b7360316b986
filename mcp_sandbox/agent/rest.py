"""Rest: an agent that has nothing live and heard nothing for a while becomes a tiny process.

An idle agent is mostly the memory of an interpreter that imported asyncio (~9 MB), however little
it holds. So once the host has sent nothing for ``rest_after`` seconds (its config, from
--rest-after) and nothing lives in the sandbox but the agent (no process, request, stream, code
context or file transfer), the agent saves its records (saved_state.py) to a memfd and execs ``STUB``: the same interpreter with
only os, select and sys, which waits until the channel has something to read, without reading it,
and then execs the full agent again, which restores the records and reads the request that woke
it. The pid stays the same, and so do the channel's fds: the host sees nothing but the first
answer after a rest coming ~0.1 s later.

Nothing else may run in the sandbox meanwhile, and nothing can start, since only the agent starts
processes: an exec makes a process dumpable again, and a dumpable agent's fds could be opened
through /proc by another process of its user. So the agent rests only when /proc shows no process
but itself and its ancestors (bubblewrap's init); without a pid namespace (``--isolation none``)
that never holds, and such an agent never rests.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Collection, Optional, Set

from . import BOOTSTRAP
from .protocol import Connection
from .saved_state import Parts, listening, save

# Run as: python3 -I -S -c STUB <channel's input fd> <the full agent's argv...>. The first line
# shows in /proc/<pid>/cmdline that the agent rests. SIGTERM and SIGHUP end it (it holds nothing).
# It needs handlers for them as a pid namespace's init, which ignores signals it has none for: so
# both come blocked through each exec (a blocked signal waits, even for an init), and are unblocked
# once their handlers are in place, here and in the woken agent (main.serve).
STUB = """\
# mcp-sandbox: the agent at rest (agent/rest.py)
import os, select, sys, _signal
def leave(*_):
    os._exit(0)
_signal.signal(1, leave)
_signal.signal(15, leave)
_signal.signal(2, _signal.SIG_IGN)
_signal.pthread_sigmask(_signal.SIG_UNBLOCK, (1, 15))
channel = select.poll()
channel.register(int(sys.argv[1]), select.POLLIN)
channel.poll()
_signal.pthread_sigmask(_signal.SIG_BLOCK, (1, 15))
os.execv(sys.argv[2], sys.argv[2:])
"""
ENDING = {signal.SIGTERM, signal.SIGHUP}
STUB_MARKER = STUB.split("\n", 1)[0]


class Executor(ThreadPoolExecutor):
    """The loop's default executor, which knows whether a thread still works (a delete_file cancelled
    by the host goes on removing its tree until done; the agent must not rest meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        self._busy: Set["Future[Any]"] = set()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> "Future[Any]":
        future = super().submit(fn, *args, **kwargs)
        self._busy.add(future)
        future.add_done_callback(self._busy.discard)
        return future

    @property
    def busy(self) -> bool:
        return bool(self._busy)


Tasks = Collection[Optional["asyncio.Future[Any]"]]


async def rest_when_idle(after: float, parts: Parts, connection: Connection, executor: Executor, own: Tasks) -> None:
    """Rest once the host was silent for ``after`` seconds and nothing is live; else look again
    ``after`` seconds later (0: never). ``own``: the agent's tasks that are always there."""
    if after <= 0:
        return
    loop = asyncio.get_running_loop()
    while True:
        wait = connection.last_active + after - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
            continue
        await parts.sessions.rest(after)  # their standby bashes go first, and are reaped
        if loop.time() - connection.last_active >= after and nothing_live(parts, connection, executor, own):
            try:
                rest(parts)
            except OSError as exc:
                sys.stderr.write("mcp-sandbox agent: could not rest, and will not try again: %s\n" % exc)
                return
        await asyncio.sleep(after)


def nothing_live(parts: Parts, connection: Connection, executor: Executor, own: Tasks) -> bool:
    current = asyncio.current_task()
    if not connection.quiet() or executor.busy or parts.children.unreaped:
        return False
    if any(task is not current and task not in own for task in asyncio.all_tasks()):
        return False  # a request, a stream's pump, a kill's escalation, a command's progress...
    if any(session.standby is not None for session in parts.sessions.sessions.values()):
        return False
    for process in parts.processes.processes.values():
        if process.running or (process.terminal is not None and not process.terminal.closed.done()):
            return False
    if parts.streams.streams:
        return False
    if any(contexts.contexts for contexts in parts.contexts):
        return False
    if any(files.busy for files in parts.files):
        return False
    return alone()


def alone() -> bool:
    """No process in sight but this one and its ancestors."""
    allowed = set()
    pid = os.getpid()
    try:
        while pid > 0 and pid not in allowed:
            allowed.add(pid)
            with open("/proc/%d/stat" % pid) as f:
                stat = f.read()
            pid = int(stat[stat.rindex(")") + 2 :].split()[1])  # the command name may hold spaces
        return all(int(name) in allowed for name in os.listdir("/proc") if name.isdigit())
    except (OSError, ValueError):
        return False


def rest(parts: Parts) -> None:
    """Save the state and exec the stub; returns only if that failed (OSError), and then the
    agent goes on as before."""
    state = _state_fd(save(parts), parts.config["state_dir"])
    cgroup = parts.config.get("cgroup")
    channel = parts.channel
    handed = channel + [state] + [fd for _, fd in listening(parts.streams)]
    handed += [cgroup["fd"]] if cgroup is not None else []
    python = sys.executable or os.readlink("/proc/self/exe")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    agent = [python, "-I", "-S", "-c", BOOTSTRAP, root, json.dumps({"resume": state})]
    sys.stderr.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, ENDING)
    try:
        for fd in handed:
            os.set_inheritable(fd, True)
        os.execv(python, [python, "-I", "-S", "-c", STUB, str(channel[0])] + agent)
    except OSError:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, ENDING)
        for fd in handed:
            os.set_inheritable(fd, False)
        os.close(state)
        raise


def _state_fd(data: bytes, state_dir: str) -> int:
    """A memfd holding ``data``; where there is none, an unlinked file of the state directory."""
    try:
        fd = os.memfd_create("mcp-sandbox-agent-state")
    except (AttributeError, OSError):
        path = os.path.join(state_dir, "agent-state")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.unlink(path)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        os.close(fd)
        raise
    return fd
