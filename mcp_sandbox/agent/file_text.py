"""Reading files as text: what type a file is, UTF-8 decoding, and selecting lines."""

from __future__ import annotations

import codecs
import mimetypes
from typing import Callable, Optional, Tuple

_BLOCK = 1 << 20


def sniff_mime(path: str, head: bytes) -> Optional[str]:
    """The type the first bytes prove (images), else what the name suggests."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return mimetypes.guess_type(path, strict=False)[0]


def decode_text(data: bytes, final: bool) -> Optional[str]:
    """UTF-8 text, or None if it is not; unless ``final``, a character cut at the end is dropped."""
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(data, final=final)
    except UnicodeDecodeError:
        return None


def _after_lines(data: bytes, count: int) -> Tuple[int, int]:
    """The index just past the first ``count`` newlines of ``data``, and how many there were."""
    index = 0
    for found in range(count):
        end = data.find(b"\n", index)
        if end < 0:
            return index, found
        index = end + 1
    return index, count


def read_lines(
    read: Callable[[int], bytes], first: int, limit: Optional[int], cap: int
) -> Tuple[bytes, bool, Optional[int]]:
    """Lines ``first`` (1-based) onwards: at most ``limit`` lines and ``cap`` bytes.

    Returns (data, cut by the cap, the line to continue from or None when nothing follows).
    """
    line = 1
    rest = b""
    while line < first:
        block = read(_BLOCK)
        if not block:
            return b"", False, None
        index, skipped = _after_lines(block, first - line)
        line += skipped
        if line == first:
            rest = block[index:]
    want = cap + 1 - len(rest)
    data = rest + read(want) if want > 0 else rest
    more = len(data) > cap
    data = data[:cap]
    if limit is not None:
        index, count = _after_lines(data, limit)
        if count == limit:
            follows = index < len(data) or more
            return data[:index], False, first + limit if follows else None
    if not more:
        return data, False, None
    # Cut by the cap: end at the last complete line, so that the next call starts on a line.
    cut = data.rfind(b"\n") + 1
    if cut > 0:
        return data[:cut], True, first + data[:cut].count(b"\n")
    return data, True, None
