"""Non-blocking descriptors read and written without the copies of asyncio's streams:
``read_into`` reads a big payload straight into the buffer it ends up in (channel.py uses it),
``write_all`` writes the caller's buffer until the descriptor has taken it all, and ``write_now``
writes what it takes at once of several buffers (a frame's header and payload), without waiting.
A local agent's channel pipes use them here, and a Docker attach socket in docker_stream.py.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream


async def read_into(fd: int, view: memoryview) -> int:
    """Read into ``view`` from a non-blocking pipe or socket; how many bytes came (EndOfStream at
    its end)."""
    while True:
        try:
            n = os.readv(fd, [view])
        except BlockingIOError:
            await anyio.wait_readable(fd)
            continue
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        if n == 0:
            raise anyio.EndOfStream
        return n


async def write_all(fd: int, item: bytes | bytearray | memoryview) -> None:
    """Write all of ``item`` to a non-blocking pipe or socket."""
    view = memoryview(item).cast("B")
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            await anyio.wait_writable(fd)
            continue
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        view = view[n:]


def write_now(fd: int, pieces: Sequence[bytes | bytearray | memoryview]) -> int:
    """Write what a non-blocking pipe or socket takes now of ``pieces``, in one system call; how
    many bytes it took."""
    try:
        return os.writev(fd, pieces)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise anyio.BrokenResourceError from exc


async def receive_copy(receive_into: Callable[[memoryview], Awaitable[int]], max_bytes: int) -> bytes:
    """``receive`` for a stream that reads with ``receive_into``."""
    buffer = bytearray(max_bytes)
    n = await receive_into(memoryview(buffer))
    del buffer[n:]
    return bytes(buffer)


class PipeReceiveStream(ByteReceiveStream):
    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._closed = False

    async def receive_into(self, view: memoryview) -> int:
        """Read into ``view``; how many bytes came (EndOfStream at the end)."""
        if self._closed:
            raise anyio.ClosedResourceError
        return await read_into(self._fd, view)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await receive_copy(self.receive_into, max_bytes)

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
        if self._closed:
            raise anyio.ClosedResourceError
        await write_all(self._fd, item)

    def send_now(self, pieces: Sequence[bytes | bytearray | memoryview]) -> int:
        if self._closed:
            raise anyio.ClosedResourceError
        return write_now(self._fd, pieces)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            anyio.notify_closing(self._fd)
            os.close(self._fd)
