"""The byte stream of an attached container: Docker's stream framing, over whatever socket the
engine gave.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import anyio
from anyio.abc import ByteStream

from .pipes import read_into, receive_copy, write_all

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
        self._buffer = bytearray()
        self._stdout = bytearray()
        self._frame_stream = 0
        self._frame_left = 0
        self._stderr_line = bytearray()
        self.stderr_tail = bytearray()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self._stdout:
            self._parse(await self._raw_receive())
        data = bytes(self._stdout[:max_bytes])
        del self._stdout[:max_bytes]
        return data

    async def receive_into(self, view: memoryview) -> int:
        """Read stdout into ``view`` (channel.py uses it): the payload of a stdout frame straight
        from the socket where it can, else through the parser."""
        receive_into = getattr(self._raw, "receive_into", None)
        while not self._stdout:
            if receive_into is None or self._buffer:
                self._parse(await self._raw_receive())
            elif self._frame_left == 0:  # only the next header: the payload may go straight
                header = memoryview(bytearray(8))
                n = await self._raw_receive_into(receive_into, header)
                self._parse(header[:n])
            elif self._frame_stream == 1:
                n = await self._raw_receive_into(receive_into, view[: min(len(view), self._frame_left)])
                self._frame_left -= n
                self._spoke = True
                return n
            else:
                self._parse(await self._raw_receive())
        n = min(len(view), len(self._stdout))
        view[:n] = self._stdout[:n]
        del self._stdout[:n]
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

    def _parse(self, chunk: bytes | memoryview) -> None:
        buffer = self._buffer
        buffer += chunk
        while buffer:
            if self._frame_left == 0:
                if len(buffer) < 8:
                    return
                self._frame_stream = buffer[0]
                self._frame_left = int.from_bytes(buffer[4:8], "big")
                del buffer[:8]
                if self._frame_stream == 1 and self._frame_left:
                    self._spoke = True
                continue
            n = min(self._frame_left, len(buffer))
            if self._frame_stream == 1:
                self._stdout += buffer[:n]
                self._spoke = True
            else:
                self._stderr(bytes(buffer[:n]))
            del buffer[:n]
            self._frame_left -= n

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
        # A duplicate descriptor of its own: the SDK's response object closes the original when
        # it is collected.
        own = socket.socket(fileno=os.dup(inner.fileno()))
        sock.close()
        return PolledSocketStream(own)
    return BlockingSocketStream(inner)
