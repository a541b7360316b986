"""The agent's descriptors as root on the host sees them: which lead out of the sandbox, and how
to write into its channel from outside, exactly where a hostile agent would write
(tests/test_hostile_agent.py)."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from mcp_sandbox.sandbox import Sandbox

from .conftest import unavailable


def require_root() -> None:
    if os.geteuid() != 0:
        unavailable("writing into an agent's channel from outside needs root on the host")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(p) for p in f.read().split()]
    return found


def parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def agent_pid(sandbox: Sandbox) -> int:
    """The sandbox's agent, as a pid on the host."""
    handle: Any = sandbox.handle
    if sandbox.backend == "docker":
        return int(handle.client.api.inspect_container(handle.container_id)["State"]["Pid"])
    todo = [handle.process.pid]  # the agent itself, or bubblewrap above it
    while todo:
        pid = todo.pop()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            program, _, args = f.read().partition(b"\0")
        if b"agent.main" in args and not program.endswith(b"bwrap"):
            return pid
        todo += children(pid)
    raise AssertionError(f"no agent under pid {handle.process.pid}")


def pipes(pid: int) -> dict[int, int]:
    """A process's descriptors that are pipes: fd to the pipe's inode."""
    return _of_kind(pid, "pipe:[")


def _of_kind(pid: int, kind: str) -> dict[int, int]:
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith(kind):
            found[int(fd)] = int(link[len(kind):-1])
    return found


def sockets(pid: int) -> dict[int, int]:
    """A process's descriptors that are sockets: fd to the socket's inode."""
    return _of_kind(pid, "socket:[")


def channel_ends(agent: int) -> dict[int, int]:
    """The agent's descriptors that lead out of the sandbox: pipes whose other end is held outside
    (by the server, bubblewrap or the container's shim: its channel, where that is on pipes, and
    its stderr), and its sockets (the channel past Docker's engine, backends/docker_channel.py)."""
    outside: set[int] = set(pipes(os.getpid()).values())
    pid = agent
    for _ in range(6):
        pid = parent(pid)
        if pid <= 1:
            break
        outside |= set(pipes(pid).values())
    ends = {fd: inode for fd, inode in pipes(agent).items() if inode in outside}
    return ends | sockets(agent)


def open_channel_out(agent: int) -> int:
    """A descriptor of the channel the agent writes its messages to, opened from the host as root:
    its socket, taken with pidfd_getfd (a socket does not open through /proc); else its output
    pipe, opened through /proc. The caller closes it."""
    held = sockets(agent)
    twice = sorted(fd for fd, inode in held.items() if list(held.values()).count(inode) > 1)
    if twice:  # the channel: one socket, held as the input fd and the output fd
        fd = _pidfd_getfd(agent, twice[0])
        os.set_blocking(fd, False)
        return fd
    ours = channel_ends(agent)
    for fd, inode in ours.items():
        with open(f"/proc/{agent}/fdinfo/{fd}") as f:
            flags = int(f.read().split("flags:")[1].split()[0], 8)
        if fd > 2 and flags & 3 == os.O_WRONLY and inode != ours.get(2):
            return os.open(f"/proc/{agent}/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
    raise AssertionError(f"no channel among the agent's descriptors {ours}")


_PIDFD_GETFD = 438  # the same number on every architecture


def _pidfd_getfd(pid: int, fd: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        got = int(libc.syscall(_PIDFD_GETFD, pidfd, fd, 0))
        if got < 0:
            raise OSError(ctypes.get_errno(), f"pidfd_getfd of fd {fd} of pid {pid}")
        return got
    finally:
        os.close(pidfd)


def write_into(fd: int, pieces: Iterable[bytes], stop: threading.Event, seconds: float = 30.0) -> int:
    """Write into a non-blocking descriptor (open_channel_out's) until done or told to stop,
    without ever blocking for good, and close it; returns what went in. (Docker's engine waits for
    the end of a container's output before it removes it, and this writer, outside the container,
    would otherwise hold it open.)"""
    written, deadline = 0, time.monotonic() + seconds
    try:
        for piece in pieces:
            view = memoryview(piece)
            while view:
                if stop.is_set():
                    return written
                try:
                    n = os.write(fd, view)
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        return written
                    time.sleep(0.005)
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    return written
                written += n
                view = view[n:]
    finally:
        os.close(fd)
    return written
