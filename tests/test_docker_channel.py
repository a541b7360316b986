"""The Docker channel past the engine (backends/docker_channel.py): a unix socket mounted into the
container where the engine is local, the attached stream otherwise, and what a sandbox can see of
either."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_sandbox.backends import docker as docker_backend
from mcp_sandbox.backends import docker_channel
from mcp_sandbox.manager import SandboxManager

from .conftest import require_backend, settings_for
from .test_docker import backend, client  # noqa: F401  (the fixtures: Docker only, and its client)

pytestmark = pytest.mark.anyio

BIG = os.urandom(3 << 20)


def container_of(client: Any, sandbox_id: str) -> dict[str, Any]:
    [found] = client.api.containers(filters={"label": f"{docker_backend.LABEL_SANDBOX}={sandbox_id}"})
    return dict(client.api.inspect_container(found["Id"]))


async def round_trip(manager: SandboxManager) -> Any:
    """A sandbox that runs a command and moves a 3 MiB file both ways."""
    sandbox = await manager.create()
    assert (await sandbox.exec("echo hi")).stdout == "hi\n"
    await sandbox.write_file("/workspace/big", BIG)
    assert await sandbox.read_file_bytes("/workspace/big") == BIG
    return sandbox


async def test_a_local_engine_carries_the_channel_on_a_socket(manager_factory: Any, client: Any) -> None:
    async with manager_factory() as manager:
        sandbox = await round_trip(manager)
        assert sandbox.handle.channel is not None
        # The mount: read-only, and nothing in it once the agent connected (the socket and its
        # directory are removed: what the sandbox sees is a directory that no longer exists).
        [mount] = [m for m in container_of(client, sandbox.id)["Mounts"] if m["Destination"] == docker_channel.MOUNT]
        assert mount["RW"] is False and not Path(mount["Source"]).exists()
        r = await sandbox.exec(f"ls -A {docker_channel.MOUNT}; touch {docker_channel.MOUNT}/x")
        assert r.stdout == "" and r.exit_code != 0
        # On the host: the server's directory, which no other user may enter, holds nothing now.
        root = Path(mount["Source"]).parent
        assert stat.S_IMODE(root.stat().st_mode) == 0o700 and list(root.iterdir()) == []


async def test_the_channel_ends_with_the_container(manager_factory: Any, client: Any) -> None:
    async with manager_factory() as manager:
        sandbox = await manager.create()
        pid = container_of(client, sandbox.id)["State"]["Pid"]
        os.kill(pid, signal.SIGKILL)  # the agent, the container's pid 1
        with anyio.fail_after(30):
            await sandbox.channel.wait_closed()
            while sandbox.id in manager.sandboxes:
                await anyio.sleep(0.05)
        fresh = await round_trip(manager)
        assert fresh.handle.channel is not None


async def test_attach_keeps_the_channel_in_the_engine(manager_factory: Any, client: Any) -> None:
    async with manager_factory(docker_channel="attach") as manager:
        sandbox = await round_trip(manager)
        assert sandbox.handle.channel is None
        mounts = container_of(client, sandbox.id)["Mounts"]
        assert [m for m in mounts if m["Destination"] == docker_channel.MOUNT] == []


async def test_an_agent_that_cannot_reach_the_socket_talks_through_the_engine(tmp_path: Path) -> None:
    """gVisor refuses to connect to the host's sockets (so the backend does not offer one there):
    offered one anyway, the agent says so and the attached stream carries the channel."""
    require_backend("docker-runsc")
    async with SandboxManager(settings_for("docker-runsc", tmp_path)) as manager:
        backend = manager.backend
        assert isinstance(backend, docker_backend.DockerBackend)
        backend._past_engine = True
        sandbox = await round_trip(manager)
        assert sandbox.handle.channel is None
