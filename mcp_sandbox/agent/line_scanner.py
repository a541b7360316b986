"""Searching a growing log for a line that matches, for get_process_logs' wait_for."""

from __future__ import annotations

import asyncio
import re
from typing import Any, Optional, Pattern

_BLOCK = 1 << 20
# A "line" longer than this without a newline is searched as it is rather than buffered further.
_MAX_LINE = 1 << 20


class LineScanner:
    """Searches a growing log line by line, reading each byte once (so huge logs stay cheap)."""

    def __init__(self, path: str, pattern: Pattern[str]) -> None:
        self._pattern = pattern
        # Searching a whole block first skips the per-line loop for blocks without a match.
        self._block_pattern = re.compile(pattern.pattern, pattern.flags | re.MULTILINE)
        self._pending = b""
        try:
            self._file: Optional[Any] = open(path, "rb")
        except OSError:
            self._file = None

    async def scan(self) -> Optional[str]:
        """The first matching line among what was logged since the last call, or None."""
        if self._file is None:
            return None
        while True:
            data = self._file.read(_BLOCK)
            if not data:
                break
            block = self._pending + data
            cut = block.rfind(b"\n") + 1
            if cut == 0 and len(block) > _MAX_LINE:
                cut = len(block)
            self._pending = block[cut:]
            found = self._search(block[:cut])
            if found is not None:
                return found
            await asyncio.sleep(0)
        # The line being written counts too: a prompt may never get its newline.
        return self._search(self._pending) if self._pending else None

    def _search(self, data: bytes) -> Optional[str]:
        text = data.decode("utf-8", "replace")
        hit = self._block_pattern.search(text)
        if hit is None:
            return None
        start = text.rfind("\n", 0, hit.start()) + 1
        for line in text[start:].split("\n"):
            if self._pattern.search(line):
                return line[:-1] if line.endswith("\r") else line
        return None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
