"""What a backend is: provision an isolated place, start the agent in it, destroy it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from anyio.abc import ByteReceiveStream, ByteSendStream

from ..disk import DiskBudget


@dataclass
class SandboxSpec:
    sandbox_id: str
    env: dict[str, str] = field(default_factory=dict)
    network: bool = False
    tenant: str = ""  # who it is for (tenants.py); "" for a warm spare, not yet anyone's


@dataclass
class AgentConfig:
    """What the agent is told at start (see agent/main.py)."""

    max_output: int
    command_timeout: float
    session_idle_timeout: float = 900.0
    limits: dict[str, int] = field(default_factory=dict)  # max_sessions, max_processes, max_code_contexts

    def for_agent(self, sandbox_id: str, workspace: str, env: dict[str, str], **extra: Any) -> dict[str, Any]:
        """The JSON the agent is started with; paths are as seen inside the sandbox."""
        return {
            "sandbox_id": sandbox_id,
            "workspace": workspace,
            "state_dir": "/tmp/.mcp-sandbox",
            "env": env,
            "max_output": self.max_output,
            "command_timeout": self.command_timeout,
            "session_idle_timeout": self.session_idle_timeout,
            "limits": self.limits,
            **extra,
        }


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
