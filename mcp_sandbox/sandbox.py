"""One sandbox, seen from the host: typed calls that become agent requests."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from datetime import datetime, timezone
from typing import Any

import anyio

from .agent.api import OUTPUT, Method
from .agent.names import params_problem
from .backends.base import AgentHandle
from .channel import AgentChannel, Base64Text
from .deadlines import Turns, deadline, turn
from .errors import SandboxError
from .models import (
    CodeContextCreated,
    CodeContextDeleted,
    CodeContextInfo,
    CodeContextList,
    CodeResult,
    DirectoryCreated,
    EnvVarsSet,
    ExecResult,
    FileContent,
    FileDeleted,
    FileList,
    FileMoved,
    FileWritten,
    ProcessesKilled,
    ProcessInfo,
    ProcessInputSent,
    ProcessKilled,
    ProcessList,
    ProcessLogs,
    ProcessStarted,
    SessionCreated,
    SessionDeleted,
    SessionInfo,
    SessionList,
)

# Called with (stream name, new text, bytes so far) while a command prints.
OutputCallback = Callable[[str, str, int], Awaitable[None]]

# Bytes per message when files move between host and agent (base64 in JSON: 1.33x on the wire).
CHUNKS_IN_FLIGHT = 4
FILE_CHUNK = 1 << 20
# How long the agent may take to stop everything in the sandbox (a disk or other limit).
STOP_TIMEOUT = 10.0

Bytes = bytes | bytearray | memoryview


def timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def _with_times(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The agent's epoch seconds as datetimes."""
    return {k: timestamp(v) if k in keys and v is not None else v for k, v in data.items()}


def _process(data: dict[str, Any]) -> dict[str, Any]:
    return _with_times(data, "started_at", "ended_at")


class Sandbox:
    def __init__(
        self, sandbox_id: str, backend: str, handle: AgentHandle, channel: AgentChannel, network: bool,
        *, command_timeout: float,
    ) -> None:
        self.id = sandbox_id
        self.backend = backend
        self.handle = handle
        self.channel = channel
        self.network = network
        self.tenant = ""  # who created it (tenants.py); set by the manager, "" while it is a warm spare
        self.created_at = time.time()
        self.last_used_at = self.created_at
        self.active_calls = 0
        # Why everything running was last stopped by the host (a limit), and how often.
        self.stopped_for: str | None = None
        self._stops = 0
        self._command_timeout = command_timeout
        self._session_timeouts: dict[str, float] = {}  # each session's exec timeout, for deadlines
        self._turns = Turns()

    @property
    def isolation(self) -> str:
        return self.handle.isolation

    @property
    def workspace(self) -> str:
        return self.handle.workspace

    async def call(self, method: str, params: dict[str, Any], notify: Any = None) -> Any:
        """One agent request, within its deadline; counts as use of the sandbox while it runs (for
        idle expiry)."""
        problem = params_problem(params)  # the agent checks too; a bad name never leaves the host
        if problem is not None:
            raise SandboxError("INVALID_ARGUMENT", problem)
        params = {k: v for k, v in params.items() if v is not None}
        self.active_calls += 1
        try:
            async with self._turns.take(turn(method, params)):
                session = str(params.get("session_id") or "default")
                seconds = deadline(method, params, self._session_timeouts.get(session, self._command_timeout))
                return await self.channel.request(method, params, notify, timeout=seconds)
        finally:
            self.active_calls -= 1
            self.last_used_at = time.time()

    async def stop_all(self, reason: str) -> None:
        """Kill everything running in the sandbox; the commands that were running fail with
        ``LIMIT_REACHED: reason``."""
        self.stopped_for = reason
        self._stops += 1
        await self.channel.request(Method.STOP_ALL, {}, timeout=STOP_TIMEOUT)

    async def _stoppable(self, method: str, params: dict[str, Any], notify: Any) -> Any:
        """A call that the host's stop_all turns into LIMIT_REACHED if it ran meanwhile."""
        stops = self._stops
        result = await self.call(method, params, notify)
        if self._stops != stops:
            raise SandboxError("LIMIT_REACHED", self.stopped_for or "the sandbox was stopped")
        return result

    async def exec(
        self,
        command: str,
        *,
        session_id: str | None = None,
        timeout: float | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecResult:
        async def notify(method: str, params: dict[str, Any]) -> None:
            if on_output is not None and method == OUTPUT:
                await on_output(params["stream"], params["data"], params["total"])

        result = await self._stoppable(
            Method.EXEC,
            {
                "command": command, "session_id": session_id, "timeout": timeout, "cwd": cwd, "env": env,
                "stdin": stdin, "stream": on_output is not None or None,
            },
            notify,
        )
        return ExecResult.model_validate(result)

    async def create_session(
        self,
        session_id: str | None = None,
        *,
        cwd: str | None = None,
        env: dict[str, str | None] | None = None,
        timeout: float | None = None,
    ) -> SessionCreated:
        result = await self.call(Method.CREATE_SESSION, {"session_id": session_id, "cwd": cwd, "env": env, "timeout": timeout})
        created = SessionCreated.model_validate(result)
        self._session_timeouts[created.session_id] = timeout or self._command_timeout
        return created

    async def list_sessions(self) -> SessionList:
        result = await self.call(Method.LIST_SESSIONS, {})
        return SessionList(
            sessions=[
                SessionInfo(
                    session_id=s["session_id"], cwd=s["cwd"], busy=s["busy"],
                    created_at=timestamp(s["created_at"]), last_used_at=timestamp(s["last_used_at"]),
                )
                for s in result["sessions"]
            ]
        )

    async def delete_session(self, session_id: str) -> SessionDeleted:
        deleted = SessionDeleted.model_validate(await self.call(Method.DELETE_SESSION, {"session_id": session_id}))
        self._session_timeouts.pop(session_id, None)
        return deleted

    async def set_env_vars(self, env: dict[str, str | None], session_id: str | None = None) -> EnvVarsSet:
        return EnvVarsSet.model_validate(await self.call(Method.SET_ENV_VARS, {"env": env, "session_id": session_id}))

    # -- background processes -------------------------------------------------------------------

    async def start_process(
        self,
        command: str,
        *,
        process_id: str | None = None,
        session_id: str | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> ProcessStarted:
        result = await self.call(
            Method.START_PROCESS,
            {"command": command, "process_id": process_id, "session_id": session_id, "cwd": cwd, "env": env},
        )
        return ProcessStarted.model_validate(_process(result))

    async def list_processes(self, status: str | None = None) -> ProcessList:
        result = await self.call(Method.LIST_PROCESSES, {"status": status})
        return ProcessList(processes=[ProcessInfo.model_validate(_process(p)) for p in result["processes"]])

    async def get_process(self, process_id: str) -> ProcessInfo:
        return ProcessInfo.model_validate(_process(await self.call(Method.GET_PROCESS, {"process_id": process_id})))

    async def get_process_logs(
        self,
        process_id: str,
        *,
        tail: int | None = None,
        wait_for: str | None = None,
        wait_for_exit: bool = False,
        timeout: float | None = None,
    ) -> ProcessLogs:
        result = await self.call(
            Method.GET_PROCESS_LOGS,
            {
                "process_id": process_id, "tail": tail, "wait_for": wait_for,
                "wait_for_exit": wait_for_exit or None, "timeout": timeout,
            },
        )
        return ProcessLogs.model_validate(_process(result))

    async def send_process_input(self, process_id: str, data: str, *, eof: bool = False) -> ProcessInputSent:
        result = await self.call(Method.SEND_PROCESS_INPUT, {"process_id": process_id, "data": data, "eof": eof or None})
        return ProcessInputSent.model_validate(result)

    async def kill_process(self, process_id: str, signal: str | int | None = None) -> ProcessKilled:
        result = await self.call(Method.KILL_PROCESS, {"process_id": process_id, "signal": signal})
        return ProcessKilled.model_validate(_process(result))

    async def kill_all_processes(self) -> ProcessesKilled:
        return ProcessesKilled.model_validate(await self.call(Method.KILL_ALL_PROCESSES, {}))

    # -- files ------------------------------------------------------------------------------------

    async def write_file(self, path: str, data: Bytes | str, *, session_id: str | None = None) -> FileWritten:
        """Write a whole file (str as UTF-8), atomically; big data moves in chunks."""
        if self.handle.disk is not None:
            await self.handle.disk.check_room()
        if isinstance(data, str):
            data = data.encode("utf-8", "replace")
        view = memoryview(data).cast("B")
        if len(view) <= FILE_CHUNK:
            result = await self.call(
                Method.WRITE_FILE,
                {"path": path, "content": base64.b64encode(view).decode("ascii"), "encoding": "base64",
                 "session_id": session_id},
            )
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
            window = anyio.Semaphore(CHUNKS_IN_FLIGHT)
            position = 0

            async def send(encoded: str, offset: int) -> None:
                try:
                    await self.call(Method.FILE_WRITE_CHUNK, {"handle": handle, "data": encoded, "offset": offset})
                finally:
                    window.release()

            # Several chunks in flight, each with its offset, so that encoding, the channel and
            # the agent's decoding overlap.
            async with anyio.create_task_group() as tg:
                async for chunk in _iterate(chunks):
                    piece = memoryview(chunk).cast("B")
                    for i in range(0, len(piece), FILE_CHUNK):
                        part = piece[i : i + FILE_CHUNK]
                        await window.acquire()
                        tg.start_soon(send, Base64Text(base64.b64encode(part).decode("ascii")), position)
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
        encoding and ours overlap. A file that shrank meanwhile ends at its first short chunk."""
        limit = size if max_bytes is None else min(size, max_bytes)
        buffer = bytearray(limit)
        short: list[int] = []
        window = anyio.Semaphore(CHUNKS_IN_FLIGHT)

        async def fetch(offset: int) -> None:
            try:
                data = (await self._read_chunk(handle, start + offset))[: limit - offset]
                buffer[offset : offset + len(data)] = data
                if offset + len(data) < min(offset + FILE_CHUNK, limit):
                    short.append(offset + len(data))
            finally:
                window.release()

        async with anyio.create_task_group() as tg:
            for offset in range(0, limit, FILE_CHUNK):
                await window.acquire()
                tg.start_soon(fetch, offset)
        if short:
            del buffer[min(short):]
        return buffer

    async def read_file_chunks(self, path: str, *, session_id: str | None = None) -> AsyncIterator[bytes]:
        """A file as a stream of chunks; the next chunk is fetched only when asked for."""
        opened = await self.call(Method.FILE_READ_OPEN, {"path": path, "session_id": session_id})
        try:
            offset = 0
            while data := await self._read_chunk(opened["handle"], offset):
                offset += len(data)
                yield data
        finally:
            await self._close_quietly(Method.FILE_READ_CLOSE, {"handle": opened["handle"]})

    async def _read_chunk(self, handle: str, offset: int) -> bytes:
        result = await self.call(Method.FILE_READ_CHUNK, {"handle": handle, "offset": offset, "size": FILE_CHUNK})
        return base64.b64decode(result["data"])

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
        result["files"] = [_with_times(f, "modified_at") for f in result["files"]]
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

    # -- code contexts ------------------------------------------------------------------------------

    async def create_code_context(
        self,
        language: str | None = None,
        *,
        context_id: str | None = None,
        cwd: str | None = None,
        env: dict[str, str | None] | None = None,
    ) -> CodeContextCreated:
        result = await self.call(
            Method.CREATE_CODE_CONTEXT, {"language": language, "context_id": context_id, "cwd": cwd, "env": env}
        )
        return CodeContextCreated.model_validate(result)

    async def run_code(
        self,
        code: str,
        *,
        context_id: str | None = None,
        language: str | None = None,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
    ) -> CodeResult:
        """Run code in a context (default: the language's default context, python unless given)."""

        async def notify(method: str, params: dict[str, Any]) -> None:
            if on_output is not None and method == OUTPUT:
                await on_output(params["stream"], params["data"], params["total"])

        result = await self._stoppable(
            Method.RUN_CODE,
            {
                "code": code, "context_id": context_id, "language": language, "timeout": timeout,
                "stream": on_output is not None or None,
            },
            notify,
        )
        return CodeResult.model_validate(result)

    async def list_code_contexts(self) -> CodeContextList:
        result = await self.call(Method.LIST_CODE_CONTEXTS, {})
        return CodeContextList(
            contexts=[CodeContextInfo.model_validate(_with_times(c, "created_at", "last_used_at")) for c in result["contexts"]]
        )

    async def delete_code_context(self, context_id: str) -> CodeContextDeleted:
        return CodeContextDeleted.model_validate(await self.call(Method.DELETE_CODE_CONTEXT, {"context_id": context_id}))


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
