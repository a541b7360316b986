"""Screens of tty processes, rendered on the host with pyte from the raw stream the agent logs.

Each screen is fed incrementally: it remembers how far into the stream it has read, and takes each
resize at the byte where it happened (the agent records them). A screen that falls far behind (a
new one for a process that printed megabytes, say) starts over near the end of the stream: pyte
feeds about 1 MB/s, and a screen shows only the last few thousand characters anyway.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pyte
from pyte.screens import Char, StaticDefaultDict

from .models import Cursor, ProcessScreen, TerminalOutput

# Reads the stream of one process: (offset, seconds to wait for bytes beyond it) -> a piece.
Reader = Callable[[int, float], Awaitable[TerminalOutput]]

# A screen more than BEHIND bytes behind the stream restarts KEEP bytes before its end.
BEHIND = 1 << 20
KEEP = 256 << 10
# Without wait_for, the screen comes back once the program has printed nothing for QUIET seconds
# (it has drawn what the last input asked for), or after the timeout (default SETTLE).
QUIET = 0.2
SETTLE = 2.0
DEFAULT_WAIT = 30.0
# One catch-up feeds for at most this long: a program that prints faster than pyte reads (`yes`)
# is shown as far as it got.
CATCH_UP_MAX = 1.0
# Feeding more than this goes to a worker thread, so the server's event loop never stalls on it.
_THREAD_FEED = 16 << 10
# Screens kept per sandbox; one dropped is rebuilt from the log when asked for again.
KEPT_SCREENS = 16
# The private modes of the alternate screen (full-screen programs draw there; the shell's screen
# comes back when they quit).
_ALTERNATE = {1049 << 5, 1047 << 5, 47 << 5}


class Screen(pyte.Screen):
    """pyte's screen with the alternate screen buffer, which pyte itself lacks."""

    def __init__(self, columns: int, lines: int) -> None:
        super().__init__(columns, lines)
        self._saved: tuple[Any, Any] | None = None  # the main screen's buffer and cursor

    def set_mode(self, *modes_: int, **kwargs: Any) -> None:
        super().set_mode(*modes_, **kwargs)
        if kwargs.get("private") and {m << 5 for m in modes_} & _ALTERNATE and self._saved is None:
            self._saved = (self.buffer, self.cursor)
            self.buffer = defaultdict(lambda: StaticDefaultDict[int, Char](self.default_char))
            self.cursor = pyte.screens.Cursor(self.cursor.x, self.cursor.y, self.cursor.attrs)
            self.dirty.update(range(self.lines))

    def reset(self) -> None:
        super().reset()
        self._saved = None

    def reset_mode(self, *modes_: int, **kwargs: Any) -> None:
        super().reset_mode(*modes_, **kwargs)
        if kwargs.get("private") and {m << 5 for m in modes_} & _ALTERNATE and self._saved is not None:
            self.buffer, self.cursor = self._saved
            self._saved = None
            self.cursor.x = min(self.cursor.x, self.columns - 1)
            self.cursor.y = min(self.cursor.y, self.lines - 1)
            self.dirty.update(range(self.lines))


class TerminalView:
    """One process's screen, and how far into its stream it has read."""

    def __init__(self) -> None:
        self.screen = Screen(80, 24)
        self._stream = pyte.ByteStream(self.screen)
        self.offset = 0
        self.lock = anyio.Lock()

    def _resize(self, cols: int, rows: int) -> None:
        if (cols, rows) != (self.screen.columns, self.screen.lines):
            self.screen.resize(rows, cols)

    def _apply(self, piece: TerminalOutput) -> None:
        """Feed a piece of the stream, taking each size at its byte."""
        self._resize(piece.cols, piece.rows)
        start = self.offset
        for at, cols, rows in piece.resizes:
            self._stream.feed(piece.data[self.offset - start : at - start])
            self.offset = at
            self._resize(cols, rows)
        self._stream.feed(piece.data[self.offset - start :])
        self.offset = piece.next_offset

    async def catch_up(self, read: Reader, wait: float) -> TerminalOutput:
        """Read and feed what the stream holds beyond the screen (waiting up to ``wait`` seconds
        for something new first); the last piece read."""
        piece = await read(self.offset, wait)
        budget = time.monotonic() + CATCH_UP_MAX
        while True:
            if piece.size - self.offset > BEHIND:
                self.screen.reset()
                self.offset = piece.size - KEEP
                piece = await read(self.offset, 0)
                continue
            if len(piece.data) > _THREAD_FEED:
                await anyio.to_thread.run_sync(self._apply, piece)
            else:
                self._apply(piece)
            if piece.next_offset >= piece.size or time.monotonic() > budget:
                return piece
            piece = await read(self.offset, 0)

    def text(self) -> str:
        """The screen's lines without trailing spaces, except those before the cursor (a prompt
        such as '>>> ' keeps its space, so a pattern can end with it)."""
        row, col = self.screen.cursor.y, self.screen.cursor.x
        lines = [line.rstrip() for line in self.screen.display]
        if 0 <= row < len(lines) and len(lines[row]) < col:
            lines[row] = lines[row].ljust(col)
        return "\n".join(lines)

    def result(self, piece: TerminalOutput, pattern: re.Pattern[str] | None) -> ProcessScreen:
        text = self.text()
        found = pattern.search(text) if pattern is not None else None
        matched = None
        if found is not None:
            start = text.rfind("\n", 0, found.start()) + 1
            end = text.find("\n", max(found.end() - 1, found.start()))
            matched = text[start : end if end >= 0 else len(text)]
        cursor = self.screen.cursor
        return ProcessScreen(
            process_id=piece.process_id,
            status=piece.status,
            exit_code=piece.exit_code,
            text=text,
            cursor=Cursor(row=cursor.y, col=cursor.x, visible=not cursor.hidden),
            cols=self.screen.columns,
            rows=self.screen.lines,
            title=self.screen.title,
            matched=matched,
            timed_out=pattern is not None and found is None and piece.status == "running",
        )


class Screens:
    """The screens of one sandbox's tty processes (the most recently used ones)."""

    def __init__(self) -> None:
        self._views: OrderedDict[str, TerminalView] = OrderedDict()

    def _keep(self, process_id: str, view: TerminalView) -> None:
        self._views.pop(process_id, None)
        self._views[process_id] = view
        while len(self._views) > KEPT_SCREENS:
            self._views.popitem(last=False)

    async def watch(
        self, process_id: str, read: Reader, pattern: re.Pattern[str] | None, timeout: float | None
    ) -> ProcessScreen:
        """The screen once ``pattern`` matches it (or the process has ended, or at the timeout);
        without a pattern, once the program has been quiet for a moment."""
        view = self._views.get(process_id) or TerminalView()
        limit = (DEFAULT_WAIT if pattern is not None else SETTLE) if timeout is None else timeout
        deadline = time.monotonic() + limit
        async with view.lock:
            piece = await view.catch_up(read, 0)
            self._keep(process_id, view)  # only a tty process's (the read said so)
            while True:
                ended = piece.status != "running" and piece.next_offset >= piece.size
                if pattern is not None and pattern.search(view.text()) is not None:
                    break
                remaining = deadline - time.monotonic()
                if ended or remaining <= 0:
                    break
                before = view.offset
                piece = await view.catch_up(read, min(remaining, QUIET) if pattern is None else remaining)
                if pattern is None and view.offset == before:
                    break  # nothing new for QUIET seconds: the program has drawn its screen
            return view.result(piece, pattern)
