"""The agent's reading and writing of the channel's descriptors, without the copies asyncio's pipe
streams make: a big payload is read straight into the buffer it ends up in, and what is written
is queued as it is (asyncio's transport copies what a pipe does not take at once into its own
buffer, and its reader hands out copies of a buffer of its own). Files move at close to the speed
of the pipe this way.
"""

from __future__ import annotations

import asyncio
import mmap
import os
from collections import deque
from typing import Deque, List, Union

Bytes = Union[bytes, bytearray, memoryview]

# Reads of small frames go through a buffer of this size; payloads of a quarter of it or more are
# read straight into their own buffer.
READ_BUFFER = 256 << 10
# drain() waits while more than this is queued for the host.
WRITE_HIGH = 256 << 10


def _wake(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


class FdReader:
    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        # Anonymous memory: its pages cost only once a read reaches them (a bytearray is zeroed,
        # so all of it would count in every sandbox's memory, most of it never used).
        self._buffer = memoryview(mmap.mmap(-1, READ_BUFFER))
        self._start = self._end = 0
        self._held = 0  # bytes the read under way has taken already

    def empty(self) -> bool:
        """Nothing read from the fd is held: what comes next is all still in the fd."""
        return self._start == self._end and not self._held

    async def _read_into(self, view: memoryview) -> int:
        while True:
            try:
                n = os.readv(self._fd, [view])
            except BlockingIOError:
                future = self._loop.create_future()
                self._loop.add_reader(self._fd, _wake, future)
                try:
                    await future
                finally:
                    self._loop.remove_reader(self._fd)
                continue
            if n == 0:
                raise EOFError
            return n

    async def readexactly(self, n: int) -> bytearray:
        """The next ``n`` bytes; EOFError at the end of the stream."""
        out = bytearray(n)
        view = memoryview(out)
        got = min(n, self._end - self._start)
        view[:got] = self._buffer[self._start : self._start + got]
        self._start += got
        while got < n:
            self._held = got
            if n - got >= READ_BUFFER // 4:
                got += await self._read_into(view[got:])
                continue
            self._start, self._end = 0, await self._read_into(self._buffer)
            take = min(n - got, self._end)
            view[got : got + take] = self._buffer[:take]
            self._start = take
            got += take
        self._held = 0
        return out


class FdWriter:
    """Writes pieces in order; what the pipe does not take at once waits in a queue, uncopied (the
    caller does not change a piece after writing it)."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._queue: Deque[memoryview] = deque()
        self._queued = 0
        self._waiters: List["asyncio.Future[None]"] = []
        self.closed = False

    @property
    def pending(self) -> int:
        """Bytes written and not yet taken by the fd."""
        return self._queued

    def write(self, *pieces: Bytes) -> None:
        """Write the pieces, in one system call while nothing is queued: a frame's header and
        its payload leave together (through Docker's engine, two writes may travel as two
        relays, and wake the host twice)."""
        if self.closed:
            return
        views = [memoryview(piece).cast("B") for piece in pieces]
        if not self._queue:
            try:
                n = os.writev(self._fd, views) if len(views) > 1 else os.write(self._fd, views[0])
            except BlockingIOError:
                n = 0
            except OSError:
                self._close()
                return
            while views and n >= len(views[0]):
                n -= len(views.pop(0))
            if not views:
                return
            views[0] = views[0][n:]
            self._loop.add_writer(self._fd, self._flush)
        for view in views:
            self._queue.append(view)
            self._queued += len(view)

    def _flush(self) -> None:
        try:
            n = os.writev(self._fd, [self._queue[i] for i in range(min(len(self._queue), 64))])
        except BlockingIOError:
            return
        except OSError:
            self._close()
            return
        self._queued -= n
        while n:
            head = self._queue[0]
            if len(head) <= n:
                n -= len(head)
                self._queue.popleft()
            else:
                self._queue[0] = head[n:]
                n = 0
        if not self._queue:
            self._loop.remove_writer(self._fd)
        if self._queued <= WRITE_HIGH:
            self._wake_all()

    def _close(self) -> None:
        """The host is gone: nothing more is written."""
        self.closed = True
        if self._queue:
            self._loop.remove_writer(self._fd)
        self._queue.clear()
        self._queued = 0
        self._wake_all()

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            _wake(future)

    async def drain(self) -> None:
        """Wait until no more than WRITE_HIGH bytes wait for the host."""
        while self._queued > WRITE_HIGH and not self.closed:
            future = self._loop.create_future()
            self._waiters.append(future)
            await future
