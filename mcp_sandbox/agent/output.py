"""Output of commands and code runs: capture, head/tail cutting, spill files and progress.

Memory stays bounded whatever a command prints: the first and last ``4 * limit`` bytes are kept
(enough for ``limit`` characters of any UTF-8), and once the stream outgrows ``limit`` bytes the
whole of it goes to a file in the sandbox, which the result names when it was cut. Logs of
background processes are cut the same way when they are read.
"""

from __future__ import annotations

import asyncio
import codecs
import os
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

from .protocol import Request

STREAMS = ("stdout", "stderr")
KEPT_SPILL_FILES = 20
PROGRESS_INTERVAL = 0.25
PROGRESS_MAX_BYTES = 16 * 1024
_LIVE_MAX = 64 * 1024
_BLOCK = 1 << 20


class Capture:
    def __init__(self, limit: int, spill_path: str) -> None:
        self.limit = limit
        self._keep = 4 * limit
        self._spill_path = spill_path
        self._head = bytearray()
        self._tail = bytearray()
        self._total = 0
        self._spill: Optional[Any] = None
        self._live = bytearray()  # output not yet sent as progress; only its end is kept

    def feed(self, data: bytes, *, live: bool = False) -> None:
        self._total += len(data)
        if live:
            self._live += data
            if len(self._live) > 2 * _LIVE_MAX:
                del self._live[: len(self._live) - _LIVE_MAX]
        if self._spill is None and self._total > self.limit:
            # Until now the stream fitted in the head, so the file gets every byte.
            self._spill = open(self._spill_path, "wb")
            self._spill.write(self._head)
        if self._spill is not None:
            self._spill.write(data)
        room = self._keep - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data:
            self._tail += data
            if len(self._tail) > 2 * self._keep:
                del self._tail[: len(self._tail) - self._keep]

    def take_live(self, max_bytes: int) -> bytes:
        """Output fed with ``live=True`` since the last call (its last ``max_bytes``)."""
        data = bytes(self._live[-max_bytes:])
        self._live.clear()
        return data

    @property
    def total(self) -> int:
        return self._total

    def finish(self) -> Tuple[str, bool, Optional[str]]:
        """Return (text, truncated, the spill file when truncated) and close the spill file."""
        if self._spill is not None:
            self._spill.close()
            self._spill = None
        text, truncated = head_tail(
            bytes(self._head), bytes(self._tail), self._total, self.limit, self._spill_path
        )
        if not truncated:
            if self._total > self.limit:
                remove_file(self._spill_path)
            return text, False, None
        return text, True, self._spill_path


def head_tail(head: bytes, tail: bytes, total: int, limit: int, path: str) -> Tuple[str, bool]:
    """The text of a stream of ``total`` bytes, of which ``head`` and ``tail`` are the ends kept
    (both together when they hold it all), in at most ``limit`` characters: the head and tail
    around a marker naming ``path``, where the whole is, when it is longer. Returns (text, cut)."""
    half = limit // 2
    if len(head) + len(tail) == total:
        text = (head + tail).decode("utf-8", "replace")
        if len(text) <= limit:
            return text, False
        omitted = "%d characters" % (len(text) - 2 * half)
        return _cut(text[:half], text[-half:], omitted, path), True
    head_text = codecs.getincrementaldecoder("utf-8")("replace").decode(head, final=False)[:half]
    tail_text = _decode_tail(tail)[-half:]
    kept = len(head_text.encode("utf-8", "replace")) + len(tail_text.encode("utf-8", "replace"))
    return _cut(head_text, tail_text, "%d bytes" % max(total - kept, 0), path), True


def _decode_tail(data: bytes) -> str:
    # The cut may fall inside a multi-byte character: skip its continuation bytes.
    start = 0
    while start < min(len(data), 4) and (data[start] & 0xC0) == 0x80:
        start += 1
    return data[start:].decode("utf-8", "replace")


def _cut(head: str, tail: str, omitted: str, path: str) -> str:
    return "%s\n[... %s omitted; the full output is in %s ...]\n%s" % (head, omitted, path, tail)


def remove_file(path: str) -> None:
    """Unlink ``path`` if it is there; a file already gone is no error."""
    try:
        os.unlink(path)
    except OSError:
        pass


class Spills:
    """Where captured output spills: one directory of the sandbox, keeping the newest
    ``KEPT_SPILL_FILES`` files that a result named (shared by all who spill there)."""

    _by_directory: Dict[str, "Spills"] = {}

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self._kept: Deque[str] = deque()

    @classmethod
    def at(cls, directory: str) -> "Spills":
        """The one ``Spills`` of ``directory``, so that its budget is one budget."""
        spills = cls._by_directory.get(directory)
        if spills is None:
            spills = cls._by_directory[directory] = cls(directory)
        return spills

    def captures(self, stem: str, limit: int) -> Dict[str, Capture]:
        """A capture of each stream, spilling to ``<stem>.stdout`` and ``<stem>.stderr``."""
        base = os.path.join(self.directory, stem)
        return {name: Capture(limit, "%s.%s" % (base, name)) for name in STREAMS}

    def finish(self, captures: Optional[Dict[str, Capture]], result: Dict[str, Any]) -> Dict[str, Any]:
        """Put each stream's text and spill file into ``result``, with ``truncated`` when any
        was cut, and keep the spill files it names (no captures: empty streams)."""
        result["truncated"] = False
        for name in STREAMS:
            text, truncated, path = captures[name].finish() if captures is not None else ("", False, None)
            result[name] = text
            result[name + "_file"] = path
            if truncated and path is not None:
                result["truncated"] = True
                self._keep(path)
        return result

    @staticmethod
    def discard(captures: Optional[Dict[str, Capture]]) -> None:
        """Close captures whose output nobody will see, removing their spill files."""
        for capture in (captures or {}).values():
            _, _, path = capture.finish()
            if path is not None:
                remove_file(path)

    def records(self) -> List[str]:
        """The spill files kept, oldest first: a rest keeps the list (saved_state.py)."""
        return list(self._kept)

    def restore(self, kept: List[str]) -> None:
        self._kept = deque(kept)

    def _keep(self, path: str) -> None:
        self._kept.append(path)
        while len(self._kept) > KEPT_SPILL_FILES:
            remove_file(self._kept.popleft())


async def send_progress(request: Request, captures: Dict[str, Capture]) -> None:
    """Until cancelled, send the streams' new output as ``output`` notifications."""
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL)
        for name, capture in captures.items():
            data = capture.take_live(PROGRESS_MAX_BYTES)
            if data:
                request.notify("output", stream=name, data=data.decode("utf-8", "replace"), total=capture.total)


async def render_log(path: str, tail: Optional[int], limit: int) -> Tuple[str, bool]:
    """A log (or its last ``tail`` lines) as text of at most ``limit`` characters: head and tail
    around a marker when longer. Reads only the parts it returns, however big the log is."""
    try:
        f = open(path, "rb")
    except OSError:
        return "", False
    with f:
        end = os.fstat(f.fileno()).st_size
        start = 0 if tail is None else await _tail_start(f.fileno(), end, tail)
        keep = 4 * limit
        if end - start <= 2 * keep:
            return head_tail(os.pread(f.fileno(), end - start, start), b"", end - start, limit, path)
        head = os.pread(f.fileno(), keep, start)
        return head_tail(head, os.pread(f.fileno(), keep, end - keep), end - start, limit, path)


async def _tail_start(fd: int, end: int, lines: int) -> int:
    """Offset where the last ``lines`` lines of the first ``end`` bytes begin."""
    if lines == 0:
        return end
    pos = end
    # A final newline ends the last line; it does not start another one.
    if end > 0 and os.pread(fd, 1, end - 1) == b"\n":
        pos -= 1
    found = 0
    while pos > 0:
        size = min(_BLOCK, pos)
        block = os.pread(fd, size, pos - size)
        count = block.count(b"\n")
        if found + count >= lines:
            index = len(block)
            for _ in range(lines - found):
                index = block.rfind(b"\n", 0, index)
            return pos - size + index + 1
        found += count
        pos -= size
        await asyncio.sleep(0)
    return 0
