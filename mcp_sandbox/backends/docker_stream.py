"""The byte stream of an attached container: Docker's stream framing, over whatever socket the
engine gave.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketStream

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
            try:
                chunk = await self._raw.receive()
            except anyio.EndOfStream:
                self._flush_stderr()
                if not self._spoke and self.silent_end:
                    logger.warning("%s: %s", self._name, self.silent_end)
                raise
            self._parse(chunk)
        data = bytes(self._stdout[:max_bytes])
        del self._stdout[:max_bytes]
        return data

    def _parse(self, chunk: bytes) -> None:
        buffer = self._buffer
        buffer += chunk
        while buffer:
            if self._frame_left == 0:
                if len(buffer) < 8:
                    return
                self._frame_stream = buffer[0]
                self._frame_left = int.from_bytes(buffer[4:8], "big")
                del buffer[:8]
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


async def wrap_attach_socket(sock: Any) -> ByteStream:
    """Turn the SDK's attach socket into an anyio stream, natively where the loop can poll it."""
    inner = getattr(sock, "_sock", sock)
    if type(inner) is socket.socket:
        # A duplicate descriptor of its own: the SDK's response object closes the original when
        # it is collected.
        own = socket.socket(fileno=os.dup(inner.fileno()))
        sock.close()
        return await SocketStream.from_socket(own)
    return BlockingSocketStream(inner)
