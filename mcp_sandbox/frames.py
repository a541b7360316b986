"""Cutting what an agent sends into frames (agent/protocol.py has the format), for channel.py.

A header is checked before anything of its payload is taken, so nothing longer than a frame may be
is ever held. The bytes beside an answer (a BLOB: file chunks) go where the waiting call asked for
them (``sink``), so a file read lands in its final buffer without another copy; and a reader that
can read into buffers (backends/pipes.py) is given the rest of a big part to fill directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .agent.api import STREAM_CHUNK
from .agent.protocol import BLOB, DATA, HEADER, LENGTH, MESSAGE
from .streams import Violation

# What is left of a part from which on it is read straight into its buffer.
DIRECT_READ = 64 << 10

# (kind, header id, the message or the data, the bytes beside a BLOB's message)
Frame = tuple[int, int, bytearray, memoryview | None]
Sink = Callable[[int], memoryview | None]


class Frames:
    def __init__(self, max_message: int, sink: Sink) -> None:
        self._max_message = max_message
        self._sink = sink
        self._header = bytearray()
        # The part being filled: a frame's payload, or a BLOB's length, message or bytes.
        self._part: memoryview | None = None
        self._part_name = ""
        self._filled = 0
        self._kind = self._id = self._length = 0
        self._message = bytearray()
        self._buffer = bytearray()  # the part's, when it is ours

    def room(self) -> memoryview | None:
        """Where the rest of a big part goes, to read it there directly; None otherwise."""
        if self._part is None or len(self._part) - self._filled < DIRECT_READ:
            return None
        return self._part[self._filled :]

    def filled(self, n: int) -> Iterator[Frame]:
        """``n`` bytes were read into room()."""
        self._filled += n
        yield from self._completed()

    def feed(self, chunk: bytes | memoryview) -> Iterator[Frame]:
        view = memoryview(chunk)
        i, end = 0, len(view)
        while True:
            yield from self._completed()
            if i == end:
                return
            if self._part is None:
                take = min(HEADER.size - len(self._header), end - i)
                self._header += view[i : i + take]
                i += take
                if len(self._header) == HEADER.size:
                    self._start(*HEADER.unpack(self._header))
                    self._header.clear()
            else:
                take = min(len(self._part) - self._filled, end - i)
                self._part[self._filled : self._filled + take] = view[i : i + take]
                self._filled += take
                i += take

    def _start(self, kind: int, frame_id: int, length: int) -> None:
        limit = STREAM_CHUNK if kind == DATA else self._max_message if kind in (MESSAGE, BLOB) else -1
        if limit < 0:
            raise Violation(f"a frame of an unknown kind {kind}", bytes(self._header))
        if length > limit:
            raise Violation(f"a frame of {length} bytes, more than the {limit} allowed", bytes(self._header))
        if kind == BLOB and length < LENGTH.size:
            raise Violation("bytes beside a message without the message's length", bytes(self._header))
        self._kind, self._id, self._length = kind, frame_id, length
        self._begin("length" if kind == BLOB else "payload", bytearray(LENGTH.size if kind == BLOB else length))

    def _begin(self, name: str, buffer: bytearray | memoryview) -> None:
        self._part_name, self._part, self._filled = name, memoryview(buffer), 0
        self._buffer = buffer if isinstance(buffer, bytearray) else bytearray()

    def _completed(self) -> Iterator[Frame]:
        """The frames whose last part is full (parts of no length are full at once)."""
        while self._part is not None and self._filled == len(self._part):
            part, name = self._part, self._part_name
            if name == "length":
                (size,) = LENGTH.unpack(part)
                if size > self._length - LENGTH.size:
                    raise Violation("bytes beside a message shorter than the message")
                self._begin("message", bytearray(size))
            elif name == "message":
                self._message = self._buffer
                data_size = self._length - LENGTH.size - len(part)
                target = self._sink(self._id)
                fits = target is not None and len(target) >= data_size
                self._begin("data", target[:data_size] if fits and target is not None else bytearray(data_size))
            else:
                self._part = None
                if name == "data":
                    yield self._kind, self._id, self._message, part
                else:
                    yield self._kind, self._id, self._buffer, None
