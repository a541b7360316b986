"""The file calls of a sandbox, seen from the host: whole files and chunked transfers.

Bytes move unencoded beside the messages (agent/protocol.py, BLOB frames). Big files move in
chunks of FILE_CHUNK bytes, CHUNKS_IN_FLIGHT at a time, so the host holds about one copy of a file
and never a whole file in one message.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .agent.api import Method
from .backends.base import AgentHandle
from .errors import SandboxError
from .models import DirectoryCreated, FileContent, FileDeleted, FileList, FileMoved, FileWritten

# Bytes per message when files move between host and agent.
CHUNKS_IN_FLIGHT = 4
FILE_CHUNK = 1 << 20

Bytes = bytes | bytearray | memoryview


class SandboxFiles:
    """The file calls of Sandbox (sandbox.py), which provides ``handle`` and ``call``."""

    handle: AgentHandle

    async def call(self, method: str, params: dict[str, Any], notify: Any = None, into: memoryview | None = None) -> Any:
        raise NotImplementedError

    async def write_file(self, path: str, data: Bytes | str, *, session_id: str | None = None) -> FileWritten:
        """Write a whole file (str as UTF-8), atomically; big data moves in chunks."""
        if isinstance(data, str):
            data = data.encode("utf-8", "replace")
        view = memoryview(data).cast("B")
        if self.handle.disk is not None:
            await self.handle.disk.check_room(len(view))
        if len(view) <= FILE_CHUNK:
            result = await self.call(Method.WRITE_FILE, {"path": path, "data": view, "session_id": session_id})
            return FileWritten.model_validate(result)
        return await self.write_file_chunks(
            path, (view[i : i + FILE_CHUNK] for i in range(0, len(view), FILE_CHUNK)), session_id=session_id
        )

    async def write_file_chunks(
        self, path: str, chunks: Iterable[Bytes] | AsyncIterable[Bytes], *, session_id: str | None = None
    ) -> FileWritten:
        """Write a file from a stream of byte chunks (of any size), atomically: the file appears
        whole at the end, or not at all if the stream fails."""
        if self.handle.disk is not None:
            await self.handle.disk.check_room()
        opened = await self.call(Method.FILE_WRITE_OPEN, {"path": path, "session_id": session_id})
        handle = opened["handle"]
        committed = False
        try:
            position = 0

            async def send(part: memoryview, offset: int) -> None:
                await self.call(Method.FILE_WRITE_CHUNK, {"handle": handle, "data": part, "offset": offset})

            # Several chunks in flight, each with its offset, so that the channel and the agent's
            # writing overlap.
            async with _in_flight() as flight:
                async for chunk in _iterate(chunks):
                    piece = memoryview(chunk).cast("B")
                    for i in range(0, len(piece), FILE_CHUNK):
                        part = piece[i : i + FILE_CHUNK]
                        await flight.start(send, part, position)
                        position += len(part)
            result = await self.call(Method.FILE_WRITE_CLOSE, {"handle": handle, "commit": True})
            committed = True
            return FileWritten.model_validate(result)
        finally:
            if not committed:
                await self._close_quietly(Method.FILE_WRITE_CLOSE, {"handle": handle, "commit": False})

    async def read_file(
        self,
        path: str,
        *,
        encoding: str | None = None,
        offset: int | None = None,
        limit: int | None = None,
        session_id: str | None = None,
    ) -> FileContent:
        """What the read_file tool returns: text (or base64), capped, by lines when asked."""
        result = await self.call(
            Method.READ_FILE,
            {"path": path, "encoding": encoding, "offset": offset, "limit": limit, "session_id": session_id},
        )
        return FileContent.model_validate(result)

    async def read_file_bytes(
        self, path: str, *, session_id: str | None = None, max_bytes: int | None = None
    ) -> bytearray:
        """A whole file, moved in chunks into one buffer: memory for the file once. With
        ``max_bytes``, a bigger file raises FILE_TOO_LARGE."""
        opened = await self.call(Method.FILE_READ_OPEN, {"path": path, "session_id": session_id})
        try:
            if max_bytes is not None and opened["size"] > max_bytes:
                raise SandboxError(
                    "FILE_TOO_LARGE",
                    f"{opened['path']} has {opened['size']} bytes, more than the {max_bytes} read at once; "
                    "read it in parts with read_file offset/limit, or process it in the sandbox with exec",
                )
            return await self._read_into(opened["handle"], 0, opened["size"], max_bytes)
        finally:
            await self._close_quietly(Method.FILE_READ_CLOSE, {"handle": opened["handle"]})

    async def read_file_tail(self, path: str, nbytes: int, *, session_id: str | None = None) -> tuple[bytearray, int]:
        """The last ``nbytes`` of a file (all of a smaller one) and the file's size."""
        opened = await self.call(Method.FILE_READ_OPEN, {"path": path, "session_id": session_id})
        try:
            start = max(opened["size"] - nbytes, 0)
            return await self._read_into(opened["handle"], start, opened["size"] - start, nbytes), opened["size"]
        finally:
            await self._close_quietly(Method.FILE_READ_CLOSE, {"handle": opened["handle"]})

    async def _read_into(self, handle: str, start: int, size: int, max_bytes: int | None) -> bytearray:
        """Read ``size`` bytes from ``start``, a few chunks in flight at once so that the agent's
        reading and the channel overlap. A file that shrank meanwhile ends at its first short chunk."""
        limit = size if max_bytes is None else min(size, max_bytes)
        buffer = bytearray(limit)
        whole = memoryview(buffer)
        short: list[int] = []

        async def fetch(offset: int) -> None:
            target = whole[offset : offset + FILE_CHUNK]
            data = await self._read_chunk(handle, start + offset, target)  # read into target
            if data.obj is not buffer:  # it did not fit (the agent sent more than asked)
                data = data[: len(target)]
                target[: len(data)] = data
            if len(data) < len(target):
                short.append(offset + len(data))

        async with _in_flight() as flight:
            for offset in range(0, limit, FILE_CHUNK):
                await flight.start(fetch, offset)
        whole.release()
        if short:
            try:
                del buffer[min(short) :]
            except BufferError:  # views of it that the answers held wait for the garbage collector
                return buffer[: min(short)]  # a copy, only when a file shrank while it was read
        return buffer

    async def read_file_chunks(self, path: str, *, session_id: str | None = None) -> AsyncIterator[bytes]:
        """A file as a stream of chunks; the next chunk is fetched only when asked for."""
        opened = await self.call(Method.FILE_READ_OPEN, {"path": path, "session_id": session_id})
        try:
            offset = 0
            while data := await self._read_chunk(opened["handle"], offset, None):
                offset += len(data)
                yield bytes(data)
        finally:
            await self._close_quietly(Method.FILE_READ_CLOSE, {"handle": opened["handle"]})

    async def _read_chunk(self, handle: str, offset: int, into: memoryview | None) -> memoryview:
        """A chunk, read into ``into`` (as much as it holds) if given; a view of what came."""
        size = FILE_CHUNK if into is None else len(into)
        result = await self.call(Method.FILE_READ_CHUNK, {"handle": handle, "offset": offset, "size": size}, into=into)
        data = result.get("data")
        if not isinstance(data, memoryview):  # what a well-behaved agent sends (protocol.py)
            raise SandboxError("INTERNAL", "the sandbox's agent answered a file read without its bytes")
        return data

    async def _close_quietly(self, method: str, params: dict[str, Any]) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.call(method, params)
            except SandboxError:
                pass  # the agent is gone, and the handle with it

    async def list_files(
        self,
        path: str | None = None,
        *,
        recursive: bool = False,
        include_hidden: bool = False,
        session_id: str | None = None,
    ) -> FileList:
        result = await self.call(
            Method.LIST_FILES,
            {"path": path, "recursive": recursive or None, "include_hidden": include_hidden or None,
             "session_id": session_id},
        )
        return FileList.model_validate(result)

    async def mkdir(self, path: str, *, recursive: bool = False, session_id: str | None = None) -> DirectoryCreated:
        result = await self.call(Method.MKDIR, {"path": path, "recursive": recursive or None, "session_id": session_id})
        return DirectoryCreated.model_validate(result)

    async def delete_file(self, path: str, *, recursive: bool = False, session_id: str | None = None) -> FileDeleted:
        result = await self.call(Method.DELETE_FILE, {"path": path, "recursive": recursive or None, "session_id": session_id})
        return FileDeleted.model_validate(result)

    async def move_file(
        self, source: str, destination: str, *, overwrite: bool = False, session_id: str | None = None
    ) -> FileMoved:
        result = await self.call(
            Method.MOVE_FILE,
            {"source": source, "destination": destination, "overwrite": overwrite or None, "session_id": session_id},
        )
        return FileMoved.model_validate(result)


class _Flight:
    """Chunk calls in flight, CHUNKS_IN_FLIGHT at most. The first to fail cancels the rest and is
    raised alone (see _in_flight)."""

    def __init__(self, tg: TaskGroup) -> None:
        self._tg = tg
        self._window = anyio.Semaphore(CHUNKS_IN_FLIGHT)
        self.failure: SandboxError | None = None

    async def start(self, call: Callable[..., Awaitable[None]], *args: Any) -> None:
        await self._window.acquire()
        self._tg.start_soon(self._run, call, *args)

    async def _run(self, call: Callable[..., Awaitable[None]], *args: Any) -> None:
        try:
            await call(*args)
        except SandboxError as exc:
            if self.failure is None:
                self.failure = exc
            self._tg.cancel_scope.cancel()
        finally:
            self._window.release()


@asynccontextmanager
async def _in_flight() -> AsyncIterator[_Flight]:
    """Chunks in flight whose failure is the first chunk's error. When the agent dies, every chunk
    in flight fails alike: as a group of errors, that was no tool error but a traceback."""
    async with anyio.create_task_group() as tg:
        flight = _Flight(tg)
        yield flight
    if flight.failure is not None:
        raise flight.failure


async def _iterate(chunks: Iterable[Bytes] | AsyncIterable[Bytes]) -> AsyncIterator[Bytes]:
    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            yield chunk
    else:
        for chunk in chunks:
            yield chunk


def decode_base64(text: str) -> bytes:
    """Base64 from a caller, or INVALID_ARGUMENT."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SandboxError("INVALID_ARGUMENT", f"content is not valid base64 ({exc}); encode the bytes with base64") from None
