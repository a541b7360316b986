"""Processes on a pseudo-terminal: the agent holds the master side, the process gets the slave as
its controlling terminal, stdin, stdout and stderr.

Everything the process writes to its terminal is appended, raw, to its stdout log: that file is the
stream, and a byte's offset in it is its position in the stream. The host renders the screen from
it (mcp_sandbox/terminal.py) by reading from an offset, so any number of readers can follow one
terminal without the agent keeping anything per reader. Each resize is recorded with the offset the
stream had reached, so a screen rebuilt later from the log takes each size at the right byte.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import termios
from typing import Any, Dict, List, Optional, Tuple

from .pipes import write_when_ready
from .protocol import AgentError

TERM = "xterm-256color"
DEFAULT_COLS, DEFAULT_ROWS = 80, 24
MAX_COLS, MAX_ROWS = 500, 200
# One read_terminal answer carries at most this much of the stream.
READ_MAX = 256 << 10
# How long read_terminal may wait for new bytes; the host asks again for longer waits.
MAX_WAIT = 10.0
# How long an exit waits for the terminal's last output (the hangup) before it is recorded.
DRAIN_WAIT = 0.5
_READ_SIZE = 64 << 10
# Resizes kept for readers that rebuild a screen from the start; older ones are dropped.
_MAX_SIZES = 256
# Cursor keys send ESC O x instead of ESC [ x while a program has set this mode (DECCKM).
_APP_CURSOR_ON, _APP_CURSOR_OFF, _RESET = b"\x1b[?1h", b"\x1b[?1l", b"\x1bc"


def check_size(cols: Any, rows: Any) -> Tuple[int, int]:
    """A terminal size from the caller's cols and rows (None: the default), or INVALID_ARGUMENT."""
    cols = DEFAULT_COLS if cols is None else cols
    rows = DEFAULT_ROWS if rows is None else rows
    for name, value, most in (("cols", cols, MAX_COLS), ("rows", rows, MAX_ROWS)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
            raise AgentError("INVALID_ARGUMENT", "%s must be a whole number from 1 to %d, not %r" % (name, most, value))
    return cols, rows


def take_as_controlling_terminal() -> None:
    """Between fork and exec, after setsid: the terminal on fd 0 becomes the session's, so that
    Ctrl-C, Ctrl-Z and resizes signal its foreground process group."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Terminal:
    """One pseudo-terminal: its master, the stream's log, its size history and cursor-key mode."""

    def __init__(self, log_path: str, cols: int, rows: int) -> None:
        self.master, self.slave = os.openpty()  # neither is inherited by what we start
        try:
            _set_size(self.master, cols, rows)
            self._log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError:
            os.close(self.master)
            os.close(self.slave)
            raise
        self.cols, self.rows = cols, rows
        self.size = 0  # bytes of the stream so far
        self.sizes: List[Tuple[int, int, int]] = [(0, cols, rows)]  # (offset, cols, rows) from there on
        self.application_cursor = False
        self._recent = b""  # the stream's last bytes, for a mode switch split between two reads
        self._loop = asyncio.get_running_loop()
        self.closed: "asyncio.Future[None]" = self._loop.create_future()  # the last slave holder is gone
        self._grew: "asyncio.Future[None]" = self._loop.create_future()
        self._typing = asyncio.Lock()

    def record(self) -> List[Any]:
        """What a rest keeps of the terminal of an ended process (saved_state.py): its figures."""
        return [self.cols, self.rows, self.size, self.sizes]

    @classmethod
    def ended(cls, record: List[Any]) -> "Terminal":
        """The closed terminal of a process that ended before the agent rested, from its
        ``record``: all it still answers comes from its log and these figures."""
        self = cls.__new__(cls)
        self.cols, self.rows, self.size, sizes = record
        self.sizes = [(offset, cols, rows) for offset, cols, rows in sizes]
        self.application_cursor = False
        self._recent = b""
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()
        self.closed.set_result(None)
        self._grew = self._loop.create_future()
        self._typing = asyncio.Lock()
        return self

    def started(self) -> None:
        """The process has its copy of the slave: ours goes, so the hangup comes when it is done."""
        os.close(self.slave)
        os.set_blocking(self.master, False)
        self._loop.add_reader(self.master, self._read_available)

    def abandon(self) -> None:
        """The process could not start: close everything."""
        os.close(self.slave)
        self.close()

    def _read_available(self) -> None:
        while not self.closed.done():
            try:
                data = os.read(self.master, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError:  # EIO: every holder of the slave has closed it
                data = b""
            if not data:
                self.close()
                return
            self._append(data)

    def _append(self, data: bytes) -> None:
        written = 0
        try:
            while written < len(data):
                written += os.write(self._log, data[written:])
        except OSError:
            pass  # the disk budget is spent: the stream stops growing, the process goes on
        self.size += written
        seen = self._recent + data
        on, off, reset = seen.rfind(_APP_CURSOR_ON), seen.rfind(_APP_CURSOR_OFF), seen.rfind(_RESET)
        if max(on, off, reset) >= 0:
            self.application_cursor = on > max(off, reset)
        self._recent = seen[-8:]
        self._wake()

    def _wake(self) -> None:
        if not self._grew.done():
            self._grew.set_result(None)
        self._grew = self._loop.create_future()

    async def drained(self) -> None:
        """Wait (briefly) until the process's last output is in the log: the process has exited
        and nothing else holds the terminal, unless something it left running still does."""
        if not self.closed.done():
            await asyncio.wait([self.closed], timeout=DRAIN_WAIT)
        self._read_available()

    async def type(self, process_id: str, status: str, data: bytes) -> Dict[str, Any]:
        """Input, as a keyboard sends it (the end of input is Ctrl-D), one writer at a time."""
        if status != "running" or self.closed.done():
            reason = "it is %s" % status if status != "running" else "it closed its terminal"
            raise AgentError("INVALID_ARGUMENT", "cannot type into process %r: %s; start a new process" % (process_id, reason))
        async with self._typing:
            try:
                written = await write_when_ready(self.master, data)
            except OSError as exc:
                raise AgentError("INVALID_ARGUMENT", "process %r closed its terminal (%s)" % (process_id, exc.strerror))
        return {"process_id": process_id, "bytes_written": written}

    def resize(self, cols: int, rows: int) -> None:
        if self.closed.done():
            raise AgentError("INVALID_ARGUMENT", "the terminal is closed: nothing runs on it any more")
        self._read_available()  # what was written at the old size comes before the change
        _set_size(self.master, cols, rows)  # the kernel sends SIGWINCH to the foreground group
        self.cols, self.rows = cols, rows
        self.sizes.append((self.size, cols, rows))
        del self.sizes[:-_MAX_SIZES]
        self._wake()

    async def read(self, params: Dict[str, Any], path: str) -> Dict[str, Any]:
        """The stream from ``offset`` (at most READ_MAX bytes), after waiting up to ``wait``
        seconds for bytes beyond it; with the size in effect there and the resizes within."""
        offset = params.get("offset") or 0
        wait = params.get("wait") or 0
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise AgentError("INVALID_ARGUMENT", "offset must be a byte offset, 0 or more")
        if not isinstance(wait, (int, float)) or wait < 0:
            raise AgentError("INVALID_ARGUMENT", "wait must be 0 or more seconds")
        if offset >= self.size and wait and not self.closed.done():
            await asyncio.wait([self._grew, self.closed], timeout=min(wait, MAX_WAIT), return_when=asyncio.FIRST_COMPLETED)
        end = min(self.size, offset + READ_MAX)
        data = b""
        if end > offset:
            try:
                with open(path, "rb") as f:
                    data = os.pread(f.fileno(), end - offset, offset)
            except OSError:
                pass  # a command removed the log: what it held is gone
        end = offset + len(data)
        at = [entry for entry in self.sizes if entry[0] <= offset]
        cols, rows = at[-1][1:] if at else self.sizes[0][1:]
        return {
            "next_offset": max(end, offset),
            "size": self.size,
            "closed": self.closed.done(),
            "cols": cols,
            "rows": rows,
            "resizes": [list(entry) for entry in self.sizes if offset < entry[0] <= end],
            "data": data,  # bytes, sent beside the answer as they are
        }

    def close(self) -> None:
        if self.closed.done():
            return
        self._loop.remove_reader(self.master)
        for fd in (self.master, self._log):
            try:
                os.close(fd)
            except OSError:
                pass
        self.closed.set_result(None)
        self._wake()
