"""Which server owns a sandbox's leftovers, and whether that server still runs.

A server is named by its pid and that process's start time: the pair is unique on a host even
after the pid is reused. Both backends label what they create with it (local: cgroup names and an
owner file in each sandbox directory; Docker: a container label that also names the host), and at
start remove what servers that are gone left behind.
"""

from __future__ import annotations

import json
import os
import socket
from functools import cache
from pathlib import Path

OWNER_FILE = "owner.json"


def process_start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot, or None without it (or /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def alive(pid: int, start_time: str | None) -> bool:
    """Whether the process ``pid`` that started at ``start_time`` still runs."""
    if pid <= 0:
        return False
    if start_time is not None and start_time != "?":
        return process_start_time(pid) == start_time
    try:  # no /proc here (macOS): a running pid is all there is to go on
        os.kill(pid, 0)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def server_name() -> str:
    """This server among others on the host, as its cgroups are named: ``srv-<pid>-<start time>``."""
    return f"srv-{os.getpid()}-{process_start_time(os.getpid())}"


def server_alive(name: str) -> bool:
    """Whether the server a ``server_name()`` names still runs."""
    _, pid, start = name.split("-", 2)
    return pid.isdigit() and process_start_time(int(pid)) == start


@cache
def server_instance() -> str:
    """This server among servers of several hosts (one engine): ``host:pid:start time``."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start_time(pid) or '?'}"


def owner_alive(owner: str) -> bool | None:
    """Whether the server ``owner`` (a ``server_instance()``) runs; None if it is on another host."""
    host, _, rest = owner.partition(":")
    if host != socket.gethostname():
        return None
    pid, _, start_time = rest.partition(":")
    return pid.isdigit() and alive(int(pid), start_time)


def write_owner(directory: Path) -> None:
    """Mark ``directory`` as this server's."""
    (directory / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "start_time": process_start_time(os.getpid())}))


def owner_file_alive(directory: Path) -> bool:
    """Whether the server that marked ``directory`` with ``write_owner`` still runs."""
    try:
        owner = json.loads((directory / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return False
    pid = owner.get("pid") if isinstance(owner, dict) else None
    return isinstance(pid, int) and pid != 0 and process_start_time(pid) == owner.get("start_time")
