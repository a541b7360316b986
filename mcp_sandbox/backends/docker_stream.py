"""The byte stream of an attached container: Docker's stream framing, over whatever socket the
engine gave.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from typing import Any

import anyio
from anyio.abc import ByteStream

from .pipes import read_into, receive_copy, write_all, write_now

logger = logging.getLogger(__name__)


class ContainerStream(ByteStream):
    """The attached stdin/stdout of a container without a tty.

    What the container writes arrives multiplexed: frames of an 8-byte header (stream: 1 stdout,
    2 stderr; three zero bytes; big-endian length) and a payload. ``receive`` returns stdout only;
    stderr goes to the server log, its tail kept for error messages. What is sent goes to stdin
    as is. ``silent_end`` is logged if the container ends without a byte on stdout.
    """

    def __init__(self, raw: ByteStream, name: str, silent_end: str = "") -> None:
        self._raw = raw
        self._name = name
        self.silent_end = silent_end
        self._spoke = False
        self._stdout = bytearray()  # demultiplexed and not returned yet (receive's max_bytes)
        self._head = bytearray()  # a frame header cut by the end of a read
        self._frame_stream = 0
        self._frame_left = 0
        self._stderr_line = bytearray()
        self.stderr_tail = bytearray()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self._stdout:
            chunk = bytearray(await self._raw_receive())
            with memoryview(chunk) as view:
                n = self._demux(view, len(chunk))
            self._stdout += chunk[:n]
        data = bytes(self._stdout[:max_bytes])
        del self._stdout[:max_bytes]
        return data

    async def receive_into(self, view: memoryview) -> int:
        """Read stdout into ``view`` (channel.py uses it): as much as the socket has, in one read
        straight into ``view``, then the engine's headers (and any stderr) taken out in place.
        The engine cuts a stream in frames of 32 KiB or less: a read and a wake-up per frame
        would cost more than moving the bytes."""
        receive_into = getattr(self._raw, "receive_into", None)
        if self._stdout or receive_into is None:
            data = await self.receive(len(view))
            view[: len(data)] = data
            return len(data)
        while True:
            n = self._demux(view, await self._raw_receive_into(receive_into, view))
            if n:
                return n

    async def _raw_receive(self) -> bytes:
        try:
            return await self._raw.receive(1 << 20)
        except anyio.EndOfStream:
            self._ended()
            raise

    async def _raw_receive_into(self, receive_into: Any, view: memoryview) -> int:
        try:
            return int(await receive_into(view))
        except anyio.EndOfStream:
            self._ended()
            raise

    def _ended(self) -> None:
        self._flush_stderr()
        if not self._spoke and self.silent_end:
            logger.warning("%s: %s", self._name, self.silent_end)

    def _demux(self, view: memoryview, n: int) -> int:
        """Demultiplex the ``n`` bytes read into ``view``: stdout's are moved to its start (how
        many is returned), stderr's go to the log, headers are taken out."""
        out = i = 0
        while i < n:
            if self._frame_left == 0:
                take = min(8 - len(self._head), n - i)
                self._head += view[i : i + take]
                i += take
                if len(self._head) == 8:
                    self._frame_stream = self._head[0]
                    self._frame_left = int.from_bytes(self._head[4:8], "big")
                    self._head.clear()
                continue
            take = min(self._frame_left, n - i)
            if self._frame_stream == 1:
                if out != i:
                    view[out : out + take] = view[i : i + take]
                out += take
                self._spoke = True
            else:
                self._stderr(bytes(view[i : i + take]))
            i += take
            self._frame_left -= take
        return out

    def _stderr(self, data: bytes) -> None:
        self.stderr_tail = (self.stderr_tail + data)[-4096:]
        self._stderr_line += data
        *lines, rest = self._stderr_line.split(b"\n")
        self._stderr_line = bytearray(rest[-65536:])
        for line in lines:
            logger.warning("%s: %s", self._name, line.decode("utf-8", "replace"))

    def _flush_stderr(self) -> None:
        if self._stderr_line:
            logger.warning("%s: %s", self._name, self._stderr_line.decode("utf-8", "replace"))
            self._stderr_line.clear()

    async def send(self, item: bytes) -> None:
        await self._raw.send(item)

    def send_now(self, pieces: Sequence[bytes | bytearray | memoryview]) -> int:
        """Write what the socket takes now of ``pieces`` (channel.py); 0 if it cannot say."""
        send_now = getattr(self._raw, "send_now", None)
        return 0 if send_now is None else int(send_now(pieces))

    async def send_eof(self) -> None:
        await self._raw.send_eof()

    async def aclose(self) -> None:
        await self._raw.aclose()


class BlockingSocketStream(ByteStream):
    """A connection the event loop cannot poll (TLS, ssh): blocking calls in worker threads.

    Engines on a unix socket or plain TCP get a native anyio socket instead.
    """

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._receive_limiter = anyio.CapacityLimiter(1)
        self._send_limiter = anyio.CapacityLimiter(1)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            data: bytes = await anyio.to_thread.run_sync(
                self._sock.recv, max_bytes, abandon_on_cancel=True, limiter=self._receive_limiter
            )
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        try:
            await anyio.to_thread.run_sync(self._sock.sendall, item, limiter=self._send_limiter)
        except OSError as exc:
            raise anyio.BrokenResourceError from exc

    async def send_eof(self) -> None:
        await anyio.to_thread.run_sync(self._sock.shutdown, socket.SHUT_WR, limiter=self._send_limiter)

    async def aclose(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


class PolledSocketStream(ByteStream):
    """A socket the event loop polls, read into the caller's buffers (receive_into) and written
    from them, without the copies of anyio's socket streams."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._closed = False

    async def receive_into(self, view: memoryview) -> int:
        if self._closed:
            raise anyio.ClosedResourceError
        return await read_into(self._sock.fileno(), view)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await receive_copy(self.receive_into, max_bytes)

    async def send(self, item: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        await write_all(self._sock.fileno(), item)

    def send_now(self, pieces: Sequence[bytes | bytearray | memoryview]) -> int:
        if self._closed:
            raise anyio.ClosedResourceError
        return write_now(self._sock.fileno(), pieces)

    async def send_eof(self) -> None:
        self._sock.shutdown(socket.SHUT_WR)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            anyio.notify_closing(self._sock)
            self._sock.close()


async def wrap_attach_socket(sock: Any) -> ByteStream:
    """Turn the SDK's attach socket into an anyio stream, natively where the loop can poll it."""
    inner = getattr(sock, "_sock", sock)
    if type(inner) is socket.socket:
        # The descriptor taken over from the SDK's socket object, which then holds none: a copy
        # would keep the original open until the SDK's response object is collected, which
        # may be long after the container is gone (a connection to the engine each).
        own = socket.socket(fileno=inner.detach())
        sock.close()
        return PolledSocketStream(own)
    return BlockingSocketStream(inner)
