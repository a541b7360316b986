"""A backend for manager and channel tests without bubblewrap, cgroups or Docker: the real agent,
started as a plain child process that talks over a socketpair, as httpx's MockTransport gives its
clients a transport without a network. What runs is the agent of `--isolation none`; what is left
out is only the isolation around it."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream, Process, UNIXSocketStream

from mcp_sandbox import agent
from mcp_sandbox.backends.base import AgentConfig, SandboxSpec
from mcp_sandbox.disk import DiskBudget

AGENT_DIR = str(Path(agent.__file__).resolve().parent.parent)


@dataclass
class FakeAgent:
    process: Process
    requests: UNIXSocketStream
    answers: UNIXSocketStream
    directory: Path
    isolation: str = "none"
    disk: DiskBudget | None = None

    @property
    def receive(self) -> ByteReceiveStream:
        return self.answers

    @property
    def send(self) -> ByteSendStream:
        return self.requests

    @property
    def workspace(self) -> str:
        return str(self.directory / "workspace")

    async def watch(self) -> None:
        """Nothing to read beside the channel."""

    async def destroy(self) -> None:
        with anyio.CancelScope(shield=True):
            if self.process.returncode is None:
                try:
                    await self.requests.send_eof()  # the agent kills what it started and exits
                except (OSError, anyio.ClosedResourceError, anyio.BrokenResourceError):
                    pass
                with anyio.move_on_after(3):
                    await self.process.wait()
                if self.process.returncode is None:
                    self.process.send_signal(signal.SIGKILL)
                    await self.process.wait()
            await self.requests.aclose()
            await self.answers.aclose()
            await self.process.aclose()
            shutil.rmtree(self.directory, ignore_errors=True)


class FakeBackend:
    name = "fake"
    enforced = {"memory": False, "cpus": False, "pids": False, "disk": False}

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[FakeAgent] = []

    async def start(self, spec: SandboxSpec, config: AgentConfig) -> FakeAgent:
        directory = self.root / spec.sandbox_id
        (directory / "workspace").mkdir(parents=True)
        (directory / "tmp").mkdir()
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(directory / "workspace"), "LANG": "C.UTF-8",
               "TMPDIR": str(directory / "tmp"), **spec.env}
        agent_config = config.for_agent(
            spec.sandbox_id, str(directory / "workspace"), env, state_dir=str(directory / "tmp" / ".mcp-sandbox")
        )
        # One socketpair each way: the agent's asyncio writer takes its descriptor becoming
        # readable for the peer hanging up, so requests may not arrive on the descriptor it writes.
        requests, agent_in = socket.socketpair()
        answers, agent_out = socket.socketpair()
        try:
            process = await anyio.open_process(
                [sys.executable, "-I", "-S", "-c", agent.BOOTSTRAP, AGENT_DIR, json.dumps(agent_config)],
                stdin=agent_in.fileno(), stdout=agent_out.fileno(), stderr=None, start_new_session=True,
            )
        finally:
            agent_in.close()
            agent_out.close()
        handle = FakeAgent(
            process, await UNIXSocketStream.from_socket(requests), await UNIXSocketStream.from_socket(answers), directory
        )
        self.started.append(handle)
        return handle

    async def reap_orphans(self) -> None:
        """Nothing outlives a test's manager: each test has its own root."""

