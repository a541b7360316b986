"""What a backend is: provision an isolated place, start the agent in it, destroy it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from anyio.abc import ByteReceiveStream, ByteSendStream


@dataclass
class SandboxSpec:
    sandbox_id: str
    env: dict[str, str] = field(default_factory=dict)
    network: bool = False


@dataclass
class AgentConfig:
    """What the agent is told at start (see agent/main.py)."""

    max_output: int
    command_timeout: float


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

    async def destroy(self) -> None:
        """Kill everything in the sandbox and remove it; safe to call twice."""
        ...


class Backend(Protocol):
    name: str

    async def start(self, spec: SandboxSpec, config: AgentConfig) -> AgentHandle: ...

    async def reap_orphans(self) -> None:
        """Remove what servers that are gone left behind (after a crash or SIGKILL)."""
        ...
