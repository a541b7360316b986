"""Reading a child's pipe from the event loop without ever waiting for its EOF.

A command can leave a background process holding its stdout (``server &``), so the end of a
command is its exit, not EOF: the reader then takes what is already in the pipe and, detached,
keeps discarding whatever comes later until the last writer closes.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from typing import Optional, Tuple

from .output import Capture

_F_SETPIPE_SZ = 1031
_READ_SIZE = 1 << 20


def enlarge_pipe(fd: int) -> None:
    """Give a pipe a 1 MiB buffer (fewer wake-ups for floods); not a pipe: nothing happens."""
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _READ_SIZE)
    except OSError:
        pass


def make_pipe() -> Tuple[int, int]:
    """A pipe with a 1 MiB buffer; returns (read_fd, write_fd)."""
    r, w = os.pipe()
    enlarge_pipe(w)
    return r, w


class PipeReader:
    def __init__(self, fd: int, capture: Capture, *, live: bool = False) -> None:
        self._fd = fd
        self._capture: Optional[Capture] = capture
        self._live = live
        self._loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._read_available)
        self.closed = self._loop.create_future()

    def _read_available(self) -> None:
        while not self.closed.done():
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close()
                return
            if self._capture is not None:
                self._capture.feed(data, live=self._live)
            if len(data) < _READ_SIZE:
                return

    def finish(self) -> None:
        """Take what is in the pipe now, then stop capturing; later output is discarded."""
        self.redirect(None)

    def redirect(self, capture: Optional[Capture]) -> None:
        """Take what is in the pipe now, then feed later output to ``capture`` (None: discard).

        For a pipe that outlives one request, such as a code context's interpreter output.
        """
        self._read_available()
        self._capture = capture

    def _close(self) -> None:
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self.closed.set_result(None)


def write_and_close(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a blocking pipe, then close it; for an executor thread."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        pass  # the command exited without reading all of its stdin
    finally:
        os.close(fd)


async def write_when_ready(fd: int, data: bytes) -> int:
    """Write to a pipe without blocking the agent: wait for room whenever it is full."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    view = memoryview(data)
    written = 0
    while written < len(view):
        try:
            written += os.write(fd, view[written:])
        except BlockingIOError:
            ready: "asyncio.Future[None]" = loop.create_future()
            loop.add_writer(fd, _set_done, ready)
            try:
                await ready
            finally:
                loop.remove_writer(fd)
    return written


def _set_done(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)
