"""One sandbox, seen from the host: typed calls that become agent requests."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import ByteStream

from .agent.api import OUTPUT, Method, Stream
from .agent.names import params_problem
from .backends.base import AgentHandle
from .channel import AgentChannel, Notify
from .deadlines import QUICK, Turns, deadline, turn
from .errors import SandboxError
from .models import (
    CodeContextCreated,
    CodeContextDeleted,
    CodeContextList,
    CodeResult,
    EnvVarsSet,
    ExecResult,
    ProcessesKilled,
    ProcessInfo,
    ProcessInputSent,
    ProcessKilled,
    ProcessList,
    ProcessLogs,
    ProcessScreen,
    ProcessStarted,
    SessionCreated,
    SessionDeleted,
    SessionList,
    TerminalOutput,
    TerminalResized,
)
from .sandbox_files import SandboxFiles
from .streams import StreamHandler
from .terminal import Screens

# Called with (stream name, new text, bytes so far) while a command prints.
OutputCallback = Callable[[str, str, int], Awaitable[None]]

# How long the agent may take to stop everything in the sandbox (a disk or other limit).
STOP_TIMEOUT = 10.0


def output_notify(on_output: OutputCallback | None) -> Notify | None:
    """The agent's output notifications of a call, passed to ``on_output``."""
    if on_output is None:
        return None

    async def notify(method: str, params: dict[str, Any]) -> None:
        if method == OUTPUT:
            await on_output(params["stream"], params["data"], params["total"])

    return notify


class Sandbox(SandboxFiles):
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
        self._screens = Screens()

    @property
    def isolation(self) -> str:
        return self.handle.isolation

    @property
    def workspace(self) -> str:
        return self.handle.workspace

    async def call(self, method: str, params: dict[str, Any], notify: Any = None, into: memoryview | None = None) -> Any:
        """One agent request, within its deadline; counts as use of the sandbox while it runs (for
        idle expiry). Bytes beside the answer go into ``into`` where they fit (channel.py)."""
        problem = params_problem(params)  # the agent checks too; a bad name never leaves the host
        if problem is not None:
            raise SandboxError("INVALID_ARGUMENT", problem)
        params = {k: v for k, v in params.items() if v is not None}
        self.active_calls += 1
        try:
            async with self._turns.take(turn(method, params)):
                session = str(params.get("session_id") or "default")
                seconds = deadline(method, params, self._session_timeouts.get(session, self._command_timeout))
                return await self.channel.request(method, params, notify, timeout=seconds, into=into)
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
        result = await self._stoppable(
            Method.EXEC,
            {
                "command": command, "session_id": session_id, "timeout": timeout, "cwd": cwd, "env": env,
                "stdin": stdin, "stream": on_output is not None or None,
            },
            output_notify(on_output),
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
        return SessionList.model_validate(result)

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
        tty: bool = False,
        cols: int | None = None,
        rows: int | None = None,
    ) -> ProcessStarted:
        result = await self.call(
            Method.START_PROCESS,
            {
                "command": command, "process_id": process_id, "session_id": session_id, "cwd": cwd, "env": env,
                "tty": tty or None, "cols": cols, "rows": rows,
            },
        )
        return ProcessStarted.model_validate(result)

    async def list_processes(self, status: str | None = None) -> ProcessList:
        result = await self.call(Method.LIST_PROCESSES, {"status": status})
        return ProcessList(processes=[ProcessInfo.model_validate(p) for p in result["processes"]])

    async def get_process(self, process_id: str) -> ProcessInfo:
        return ProcessInfo.model_validate(await self.call(Method.GET_PROCESS, {"process_id": process_id}))

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
        return ProcessLogs.model_validate(result)

    async def send_process_input(
        self, process_id: str, data: str = "", *, eof: bool = False, keys: list[str] | None = None
    ) -> ProcessInputSent:
        """Write to a process's stdin, or type into its terminal: ``data``, then the named ``keys``."""
        result = await self.call(
            Method.SEND_PROCESS_INPUT, {"process_id": process_id, "data": data, "eof": eof or None, "keys": keys}
        )
        return ProcessInputSent.model_validate(result)

    # -- terminals (tty processes) ----------------------------------------------------------------

    async def read_terminal(self, process_id: str, offset: int = 0, *, wait: float = 0) -> TerminalOutput:
        """A tty process's raw stream from ``offset`` (at most 256 KiB), after waiting up to
        ``wait`` seconds (at most 10) for bytes beyond it; read on from ``next_offset``."""
        result = await self.call(Method.READ_TERMINAL, {"process_id": process_id, "offset": offset, "wait": wait or None})
        data = result.get("data")
        if not isinstance(data, memoryview):  # what a well-behaved agent sends (agent/protocol.py)
            raise SandboxError("INTERNAL", "the sandbox's agent answered a terminal read without its bytes")
        result["data"] = bytes(data)
        return TerminalOutput.model_validate(result)

    async def resize_terminal(self, process_id: str, cols: int, rows: int) -> TerminalResized:
        """Set a tty process's terminal size; the program gets SIGWINCH."""
        result = await self.call(Method.RESIZE_TERMINAL, {"process_id": process_id, "cols": cols, "rows": rows})
        return TerminalResized.model_validate(result)

    async def get_process_screen(
        self, process_id: str, *, wait_for: str | None = None, timeout: float | None = None
    ) -> ProcessScreen:
        """A tty process's screen, rendered here from its stream (see terminal.py)."""
        try:
            pattern = re.compile(wait_for, re.MULTILINE) if wait_for is not None else None
        except re.error as exc:
            raise SandboxError("INVALID_ARGUMENT", f"wait_for is not a valid regular expression: {exc}") from None

        async def read(offset: int, wait: float) -> TerminalOutput:
            return await self.read_terminal(process_id, offset, wait=wait)

        return await self._screens.watch(process_id, read, pattern, timeout)

    async def kill_process(self, process_id: str, signal: str | int | None = None) -> ProcessKilled:
        result = await self.call(Method.KILL_PROCESS, {"process_id": process_id, "signal": signal})
        return ProcessKilled.model_validate(result)

    async def kill_all_processes(self) -> ProcessesKilled:
        return ProcessesKilled.model_validate(await self.call(Method.KILL_ALL_PROCESSES, {}))

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
        result = await self._stoppable(
            Method.RUN_CODE,
            {
                "code": code, "context_id": context_id, "language": language, "timeout": timeout,
                "stream": on_output is not None or None,
            },
            output_notify(on_output),
        )
        return CodeResult.model_validate(result)

    async def list_code_contexts(self) -> CodeContextList:
        result = await self.call(Method.LIST_CODE_CONTEXTS, {})
        return CodeContextList.model_validate(result)

    async def delete_code_context(self, context_id: str) -> CodeContextDeleted:
        return CodeContextDeleted.model_validate(await self.call(Method.DELETE_CODE_CONTEXT, {"context_id": context_id}))

    # -- streams (streams.py) -------------------------------------------------------------------------

    async def open_stream(self, port: int, *, wait: bool = True) -> ByteStream:
        """A byte stream to 127.0.0.1:``port`` inside the sandbox; INVALID_ARGUMENT if nothing
        accepts connections there. With ``wait=False`` it returns before the agent has connected,
        so that the first bytes sent travel right behind the request to connect (they wait in the
        agent, within the stream's window); if nothing accepts connections there, the stream breaks
        (BrokenResourceError) with that reason instead."""
        stream = self.channel.streams.new()
        self.last_used_at = time.time()  # a connection counts as use (idle expiry)
        try:
            await self.channel.post({"method": Stream.CONNECT, "params": {"stream": stream.id, "port": port, "confirm": wait}})
            if wait:
                with anyio.fail_after(QUICK):
                    await stream.opened()
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await stream.aclose()  # the agent may have connected it meanwhile
            if isinstance(exc, TimeoutError):
                raise SandboxError(
                    "BACKEND_UNAVAILABLE", f"the sandbox did not connect to its port {port} within {QUICK:g} s; "
                    "check that its server accepts connections"
                ) from None
            raise
        return stream

    def on_stream(self, kind: str, handler: StreamHandler) -> None:
        """Hand the streams the agent opens for ``kind`` (see listen) to ``handler``, each in a
        task the sandbox owns; the stream is closed when the handler returns."""
        self.channel.streams.on_stream(kind, handler)

    async def listen(self, kind: str, port: int) -> int:
        """Accept connections on 127.0.0.1:``port`` inside the sandbox (0: any free port), each
        becoming a stream for the handler of ``kind``; returns the port."""
        if not self.channel.streams.handles(kind):
            raise SandboxError("INVALID_ARGUMENT", f"no handler for streams of kind {kind!r}; call on_stream first")
        result = await self.call(Method.LISTEN, {"kind": kind, "port": port})
        return int(result["port"])
