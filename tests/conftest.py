"""Shared test fixtures: a real MCP client talking to a real server on each backend.

The behavioural suite takes the ``mcp`` fixture, which is parametrised over every backend that
can run here: local with bubblewrap, local without isolation, and Docker. A backend that cannot
run skips with its reason, except in CI (CI=true), where it fails: .ci/run installs everything.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp.client import Client
from mcp_types import CallToolResult

from mcp_sandbox.manager import SandboxManager
from mcp_sandbox.server import build_server
from mcp_sandbox.settings import Settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BACKENDS = ["bwrap", "none", "docker"]
# Built offline by .ci/build-test-image.sh: no registry is reachable in CI.
DOCKER_IMAGE = os.environ.get("MCP_SANDBOX_TEST_IMAGE") or "mcp-sandbox-test:latest"


def unavailable(reason: str) -> None:
    """Skip a test for a missing part, except in CI, where every part must be there."""
    if IN_CI:
        pytest.fail(f"{reason} (CI must provide it: see .ci/run)")
    pytest.skip(reason)


class ToolFailed(AssertionError):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class Tools:
    """A thin helper over the real MCP client: structured results, tool errors as exceptions."""

    def __init__(self, client: Client, backend: str) -> None:
        self.client = client
        self.backend = backend

    async def raw(self, name: str, **arguments: Any) -> CallToolResult:
        return await self.client.call_tool(name, arguments)

    async def __call__(self, name: str, **arguments: Any) -> dict[str, Any]:
        result = await self.raw(name, **arguments)
        if result.is_error:
            raise ToolFailed(result.content[0].text)  # type: ignore[union-attr]
        assert result.structured_content is not None
        return result.structured_content

    async def error(self, name: str, **arguments: Any) -> str:
        """Call a tool that must fail; return its error text."""
        result = await self.raw(name, **arguments)
        assert result.is_error, f"{name} should have failed but returned {result.structured_content}"
        return result.content[0].text  # type: ignore[union-attr]

    async def sh(self, command: str, **arguments: Any) -> dict[str, Any]:
        return await self("exec", command=command, **arguments)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def settings_for(backend: str, root: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"workspace_root": root, "command_timeout": 60}
    if backend in ("bwrap", "none"):
        values.update(backend="local", isolation=backend)
    elif backend == "docker-runsc":  # Docker with gVisor (tests/test_gvisor.py)
        values.update(backend="docker", runtime="runsc")
    else:
        values.update(backend=backend)
    if backend.startswith("docker"):
        values["image"] = DOCKER_IMAGE
    values.update(overrides)
    return Settings(**values)


def require_backend(backend: str) -> None:
    if backend == "bwrap" and not shutil.which("bwrap"):
        unavailable("bubblewrap is not installed")
    if backend.startswith("docker") and (problem := docker_problem()) is not None:
        unavailable(problem)
    if backend == "docker-runsc" and not runsc_listed():
        unavailable("Docker does not list the runsc (gVisor) runtime; .ci/docker-setup.sh registers it")


@functools.cache
def docker_problem() -> str | None:
    """Why the Docker tests cannot run here, or None."""
    from mcp_sandbox.backends import docker
    from mcp_sandbox.errors import SandboxError

    try:
        client = docker.connect(docker.PROBE_TIMEOUT)
    except SandboxError as exc:
        return exc.message
    try:
        client.images.get(DOCKER_IMAGE)
    except Exception:
        return f"the Docker test image {DOCKER_IMAGE} is missing; build it with .ci/build-test-image.sh"
    return None


@functools.cache
def runsc_listed() -> bool:
    from mcp_sandbox.backends import docker

    return "runsc" in (docker.connect(docker.PROBE_TIMEOUT).info().get("Runtimes") or {})


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    require_backend(request.param)
    return str(request.param)


@pytest.fixture
async def mcp(backend: str, tmp_path: Path) -> AsyncIterator[Tools]:
    """A connected MCP client on a fresh server with the given backend."""
    async with SandboxManager(settings_for(backend, tmp_path / "sandboxes")) as manager:
        async with Client(build_server(manager)) as client:
            yield Tools(client, backend)


@pytest.fixture
def mcp_with(backend: str, tmp_path: Path) -> Callable[..., AbstractAsyncContextManager[Tools]]:
    """Open a connected MCP client on a server with custom settings: ``async with mcp_with(max_sessions=2)``."""

    @asynccontextmanager
    async def open_client(**overrides: Any) -> AsyncIterator[Tools]:
        async with SandboxManager(settings_for(backend, tmp_path / "sandboxes", **overrides)) as manager:
            async with Client(build_server(manager)) as client:
                yield Tools(client, backend)

    return open_client


@pytest.fixture
def manager_factory(backend: str, tmp_path: Path) -> Any:
    """Make a SandboxManager with custom settings on the test's backend."""

    def make(**overrides: Any) -> SandboxManager:
        return SandboxManager(settings_for(backend, tmp_path / "sandboxes", **overrides))

    return make
