"""The host's ends of a local agent's channel pipes, read and written without the copies asyncio's
subprocess streams make: ``receive_into`` reads a big payload straight into the buffer it ends up
in (channel.py uses it), and ``send`` writes the caller's buffer until the pipe has taken it all.
"""

from __future__ import annotations

import os

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream


class PipeReceiveStream(ByteReceiveStream):
    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._closed = False

    async def receive_into(self, view: memoryview) -> int:
        """Read into ``view``; how many bytes came (EndOfStream at the end)."""
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                n = os.readv(self._fd, [view])
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            if n == 0:
                raise anyio.EndOfStream
            return n

    async def receive(self, max_bytes: int = 65536) -> bytes:
        buffer = bytearray(max_bytes)
        n = await self.receive_into(memoryview(buffer))
        del buffer[n:]
        return bytes(buffer)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            anyio.notify_closing(self._fd)
            os.close(self._fd)


class PipeSendStream(ByteSendStream):
    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._closed = False

    async def send(self, item: bytes | bytearray | memoryview) -> None:
        view = memoryview(item).cast("B")
        while view:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                await anyio.wait_writable(self._fd)
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            view = view[n:]

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            anyio.notify_closing(self._fd)
            os.close(self._fd)
