"""MCP logging: logging/setLevel, and the server's notable events as notifications/message."""

from __future__ import annotations

import logging
import os
import signal
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.client import Client
from mcp.shared.exceptions import MCPDeprecationWarning

from mcp_sandbox.manager import SandboxManager
from mcp_sandbox.server import build_server

from .conftest import Tools, require_backend, settings_for
from .helpers import server_params

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]


class Messages:
    """What the client's logging callback received."""

    def __init__(self) -> None:
        self.received: list[types.LoggingMessageNotificationParams] = []

    async def __call__(self, params: types.LoggingMessageNotificationParams) -> None:
        self.received.append(params)

    async def wait_for(self, text: str, seconds: float = 10) -> types.LoggingMessageNotificationParams:
        with anyio.fail_after(seconds):
            while True:
                for params in self.received:
                    if text in str(params.data):
                        return params
                await anyio.sleep(0.05)

    def texts(self) -> list[str]:
        return [str(p.data) for p in self.received]


@asynccontextmanager
async def legacy_client(manager: SandboxManager, messages: Messages) -> AsyncIterator[Tools]:
    """A client on the initialize handshake (2025-era protocol), where logging/setLevel lives."""
    async with Client(build_server(manager), mode="legacy", logging_callback=messages) as client:
        yield Tools(client, "none")


def set_level(client: Client, level: types.LoggingLevel) -> Any:
    with warnings.catch_warnings():  # deprecated by the 2026-07-28 protocol, alive before it
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        return client.set_logging_level(level)


async def test_set_level_and_events_at_the_chosen_level(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mcp_sandbox")  # the server's --log-level: records are made from INFO
    messages = Messages()
    settings = settings_for("none", tmp_path / "root", idle_timeout=1)
    async with SandboxManager(settings) as manager, legacy_client(manager, messages) as mcp:
        assert mcp.client.server_capabilities.logging is not None
        assert (await set_level(mcp.client, "warning")).model_dump(exclude_none=True) == {}
        # A sandbox without isolation is a warning, sent to the client whose call created it.
        await mcp.sh("echo hi")
        warning = await messages.wait_for("unisolated")
        assert warning.level == "warning" and warning.logger == "mcp_sandbox.manager"
        # A sandbox that stops unexpectedly: the server's own doing, sent as it happens.
        sid = (await mcp("create_sandbox"))["sandbox_id"]
        os.kill(manager.sandboxes[sid].handle.process.pid, signal.SIGKILL)  # type: ignore[attr-defined]
        assert (await messages.wait_for(f"sandbox {sid} of tenant default stopped unexpectedly")).level == "warning"
        # Info records are below the level chosen: none arrives ...
        assert not any("destroyed sandbox" in t for t in messages.texts())
        # ... until the client asks for info, and sees an idle sandbox expire.
        await set_level(mcp.client, "info")
        idle = (await mcp("create_sandbox"))["sandbox_id"]
        assert (await messages.wait_for(f"sandbox {idle} of tenant default was idle")).level == "info"
        # error and above: a new unisolated sandbox is no longer worth a message.
        await set_level(mcp.client, "error")
        count = len(messages.received)
        await mcp("create_sandbox")
        await anyio.sleep(0.5)
        assert len(messages.received) == count


async def test_without_set_level_nothing_is_sent(tmp_path: Path) -> None:
    messages = Messages()
    async with SandboxManager(settings_for("none", tmp_path / "root")) as manager:
        async with legacy_client(manager, messages) as mcp:
            await mcp.sh("echo hi")
            await anyio.sleep(0.3)
    assert messages.received == []


async def test_2026_clients_ask_per_request(tmp_path: Path) -> None:
    """On the 2026-07-28 protocol a request asks for log messages in its _meta: they come with it."""
    async with SandboxManager(settings_for("none", tmp_path / "root")) as manager:
        server = build_server(manager)
        quiet, asking = Messages(), Messages()
        async with Client(server, logging_callback=quiet) as client:
            await Tools(client, "none").sh("echo hi")
        assert quiet.received == []
        async with Client(server, logging_callback=asking, log_level="warning") as client:
            await Tools(client, "none")("create_sandbox")
            assert (await asking.wait_for("unisolated")).level == "warning"


async def test_over_stdio_with_the_installed_command(tmp_path: Path) -> None:
    messages = Messages()
    params = server_params("--backend", "local", "--isolation", "none", "--workspace-root", str(tmp_path / "root"))
    async with Client(params, mode="legacy", logging_callback=messages) as client:
        await set_level(client, "warning")
        await Tools(client, "none").sh("echo hi")
        assert (await messages.wait_for("unisolated")).logger == "mcp_sandbox.manager"


async def test_image_pull_is_reported_to_the_client(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A pull runs in a worker thread; its messages still reach the client whose call caused it."""
    require_backend("docker")
    caplog.set_level(logging.INFO, logger="mcp_sandbox")
    messages = Messages()
    image = "127.0.0.1:9/mcp-sandbox-absent:latest"  # a registry that is not there: fails at once
    async with SandboxManager(settings_for("docker", tmp_path / "root", image=image)) as manager:
        async with Client(build_server(manager), mode="legacy", logging_callback=messages) as client:
            await set_level(client, "info")
            error = await Tools(client, "docker").error("create_sandbox")
    assert "BACKEND_UNAVAILABLE" in error and image in error
    assert any(f"pulling the sandbox image {image}" in t for t in messages.texts()), messages.texts()
