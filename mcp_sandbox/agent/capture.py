"""Capturing one output stream: the head and tail in memory, everything in a spill file.

Memory stays bounded whatever a command prints: the first and last ``4 * limit`` bytes are kept
(enough for ``limit`` characters of any UTF-8), and once the stream outgrows ``limit`` bytes the
whole of it goes to a file in the sandbox, which the result names when it was cut.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple


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
        half = self.limit // 2
        if len(self._head) + len(self._tail) == self._total:
            text = (bytes(self._head) + bytes(self._tail)).decode("utf-8", "replace")
            if len(text) <= self.limit:
                if self._total > self.limit:
                    _remove(self._spill_path)
                return text, False, None
            omitted = "%d characters" % (len(text) - 2 * half)
            return _cut(text[:half], text[-half:], omitted, self._spill_path), True, self._spill_path
        head = bytes(self._head).decode("utf-8", "replace")[:half]
        tail = _decode_tail(bytes(self._tail[-self._keep :]))[-half:]
        kept = len(head.encode("utf-8", "replace")) + len(tail.encode("utf-8", "replace"))
        omitted = "%d bytes" % max(self._total - kept, 0)
        return _cut(head, tail, omitted, self._spill_path), True, self._spill_path


_LIVE_MAX = 64 * 1024


def _decode_tail(data: bytes) -> str:
    # The cut may fall inside a multi-byte character: skip its continuation bytes.
    start = 0
    while start < min(len(data), 4) and (data[start] & 0xC0) == 0x80:
        start += 1
    return data[start:].decode("utf-8", "replace")


def _cut(head: str, tail: str, omitted: str, path: str) -> str:
    return "%s\n[... %s omitted; the full output is in %s ...]\n%s" % (head, omitted, path, tail)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
