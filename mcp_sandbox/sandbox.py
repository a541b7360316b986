"""One sandbox, seen from the host: typed calls that become agent requests."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from .backends.base import AgentHandle
from .channel import AgentChannel
from .models import EnvVarsSet, ExecResult, SessionCreated, SessionDeleted, SessionInfo, SessionList

# Called with (stream name, new text, bytes so far) while a command prints.
OutputCallback = Callable[[str, str, int], Awaitable[None]]


def timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


class Sandbox:
    def __init__(self, sandbox_id: str, backend: str, handle: AgentHandle, channel: AgentChannel, network: bool) -> None:
        self.id = sandbox_id
        self.backend = backend
        self.handle = handle
        self.channel = channel
        self.network = network
        self.created_at = time.time()
        self.last_used_at = self.created_at
        self.active_calls = 0

    @property
    def isolation(self) -> str:
        return self.handle.isolation

    @property
    def workspace(self) -> str:
        return self.handle.workspace

    async def call(self, method: str, params: dict[str, Any], notify: Any = None) -> Any:
        """One agent request; counts as use of the sandbox while it runs (for idle expiry)."""
        self.active_calls += 1
        try:
            return await self.channel.request(method, {k: v for k, v in params.items() if v is not None}, notify)
        finally:
            self.active_calls -= 1
            self.last_used_at = time.time()

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
            if on_output is not None and method == "output":
                await on_output(params["stream"], params["data"], params["total"])

        result = await self.call(
            "exec",
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
        result = await self.call("create_session", {"session_id": session_id, "cwd": cwd, "env": env, "timeout": timeout})
        return SessionCreated.model_validate(result)

    async def list_sessions(self) -> SessionList:
        result = await self.call("list_sessions", {})
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
        return SessionDeleted.model_validate(await self.call("delete_session", {"session_id": session_id}))

    async def set_env_vars(self, env: dict[str, str | None], session_id: str | None = None) -> EnvVarsSet:
        return EnvVarsSet.model_validate(await self.call("set_env_vars", {"env": env, "session_id": session_id}))
