"""What many test modules need: waiting for a condition, finding host processes by command line,
the sandbox's workspace, the installed server command and threaded servers on the loopback."""

from __future__ import annotations

import os
import socketserver
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path

import anyio
from mcp.client.stdio import StdioServerParameters

from .conftest import Tools

# The console script this environment installed: tests run the server as users do.
COMMAND = str(Path(sys.executable).parent / "mcp-sandbox")


async def eventually(condition: Callable[[], object], seconds: float = 10, interval: float = 0.05) -> bool:
    """Whether ``condition()`` turns true within ``seconds``, checked every ``interval``; it is
    checked once more at the end, so a slow machine gets the benefit of the doubt."""
    with anyio.move_on_after(seconds):
        while not condition():
            await anyio.sleep(interval)
        return True
    return bool(condition())


def cmdline(pid: int | str) -> str:
    """A process's command line, arguments joined by spaces; '' once it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def pids_with(marker: str, *, exact: bool = False) -> list[int]:
    """Host processes whose command line contains ``marker`` (or is it, with ``exact``). Without
    isolation or from outside, this sees every sandbox's processes."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        line = cmdline(name)
        if (line.rstrip(" ") == marker) if exact else (marker in line):
            found.append(int(name))
    return found


def memory_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, such as VmRSS or VmHWM (its peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


def reset_peak_rss() -> bool:
    """Start VmHWM afresh at the current RSS, to measure what one step costs; False where the
    kernel does not let us."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


async def workspace(mcp: Tools) -> str:
    """The sandbox's workspace: tests keep their files there (without isolation /tmp is the host's)."""
    return str((await mcp("sandbox_info"))["workspace"])


def server_params(*args: str) -> StdioServerParameters:
    """The installed server with these arguments, run with a minimal environment."""
    return StdioServerParameters(
        command=COMMAND,
        args=list(args),
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")},
    )


class _Threaded(ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 resets connections that come all at once
    daemon_threads = True  # a connection left open must not hold up the end of a test


@contextmanager
def serving(handler: type[socketserver.BaseRequestHandler], tls: ssl.SSLContext | None = None) -> Iterator[int]:
    """A server on 127.0.0.1 that runs ``handler`` (an HTTP or a plain TCP one) for each
    connection, on a thread of its own, behind TLS with ``tls``; its port. On exit it stops
    taking connections; those still open are left to their threads."""
    server = _Threaded(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
