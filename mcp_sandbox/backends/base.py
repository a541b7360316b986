"""What a backend is: provision an isolated place, start the agent in it, destroy it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from anyio.abc import ByteReceiveStream, ByteSendStream

from ..agent import api
from ..disk import DiskBudget

if TYPE_CHECKING:
    from ..settings import Settings


@dataclass
class SandboxSpec:
    sandbox_id: str
    env: dict[str, str] = field(default_factory=dict)
    network: bool = False
    tenant: str = ""  # who it is for (tenants.py); "" for a warm spare, not yet anyone's


@dataclass
class AgentConfig:
    """What the agent is told at start (agent/api.py Config), less where it runs."""

    max_output: int = api.DEFAULT_MAX_OUTPUT
    command_timeout: float = api.DEFAULT_COMMAND_TIMEOUT
    session_idle_timeout: float = api.DEFAULT_SESSION_IDLE_TIMEOUT
    rest_after: float = api.DEFAULT_REST_AFTER
    limits: api.Limits = field(default_factory=lambda: api.Limits(**api.DEFAULT_LIMITS))

    @classmethod
    def from_settings(cls, settings: Settings) -> AgentConfig:
        """The one place the agent's settings come from; the limits are named as in Settings."""
        return cls(
            max_output=settings.max_output,
            command_timeout=settings.command_timeout,
            session_idle_timeout=settings.session_idle_timeout,
            rest_after=settings.rest_after,
            limits=cast(api.Limits, {name: getattr(settings, name) for name in api.DEFAULT_LIMITS}),
        )

    def for_agent(self, sandbox_id: str, workspace: str, env: dict[str, str], **extra: Any) -> dict[str, Any]:
        """The JSON the agent is started with (api.Config); paths are as seen inside the sandbox,
        ``extra`` holds a backend's own keys."""
        config: api.Config = {
            "sandbox_id": sandbox_id,
            "workspace": workspace,
            "state_dir": api.STATE_DIR,
            "env": env,
            "max_output": self.max_output,
            "command_timeout": self.command_timeout,
            "session_idle_timeout": self.session_idle_timeout,
            "limits": self.limits,
            "rest_after": self.rest_after,
        }
        return {**config, **extra}


class AgentHandle(Protocol):
    """A running agent: its byte streams, where it runs, and how to end it."""

    @property
    def receive(self) -> ByteReceiveStream: ...

    @property
    def send(self) -> ByteSendStream: ...

    @property
    def isolation(self) -> str: ...

    @property
    def workspace(self) -> str: ...

    @property
    def disk(self) -> DiskBudget | None:
        """The sandbox's disk budget, where the server keeps it."""
        ...

    async def watch(self) -> None:
        """What the backend reads beside the channel while the sandbox lives (returns at once
        where there is nothing); it ends when the sandbox is removed."""
        ...

    async def destroy(self) -> None:
        """Kill everything in the sandbox and remove it; safe to call twice."""
        ...


class Backend(Protocol):
    name: str
    # Which of the limits (memory, cpus, pids, disk) hold for this backend on this host.
    enforced: dict[str, bool]

    async def start(self, spec: SandboxSpec, config: AgentConfig) -> AgentHandle: ...

    async def reap_orphans(self) -> None:
        """Remove what servers that are gone left behind (after a crash or SIGKILL)."""
        ...
