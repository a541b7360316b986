"""The Docker channel past the engine (backends/docker_channel.py): a unix socket mounted into the
container where the engine is local, the attached stream otherwise, and what a sandbox can see of
either."""

from __future__ import annotations

import os
import signal
import stat
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client

from mcp_sandbox.backends import docker as docker_backend
from mcp_sandbox.backends import docker_channel
from mcp_sandbox.manager import SandboxManager

from .conftest import require_backend, settings_for
from .test_docker import backend, client  # noqa: F401  (the fixtures: Docker only, and its client)
from .test_docker import of_sandbox, server_params, server_pid, wait_until

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


async def test_no_socket_where_none_can_be_made(
    manager_factory: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A temporary directory so deep that a socket's path does not fit: the engine carries the
    channel, and the log says why."""
    deep = tmp_path / ("d" * 100)
    deep.mkdir(mode=0o700)
    monkeypatch.setattr(docker_channel, "_root", deep)
    async with manager_factory() as manager:
        sandbox = await round_trip(manager)
        assert sandbox.handle.channel is None
        assert "goes through the Docker engine from now on" in caplog.text


async def test_a_mount_the_engine_refuses_leaves_the_channel_in_the_engine(
    manager_factory: Any, client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An engine that cannot mount the server's directory (one in a VM that does not share it)
    fails the container's start: it is removed and started again without the socket, and the
    sandboxes after it do without it from the start."""
    root = tmp_path / "channels"
    root.mkdir(mode=0o700)
    (root / "a-file").write_text("")  # what the engine is asked to mount is below a file
    monkeypatch.setattr(docker_channel, "_root", root)
    monkeypatch.setattr(docker_channel.ChannelSocket, "bind",
                        property(lambda self: f"{self.directory.parent}/a-file/x:{docker_channel.MOUNT}:ro"))
    async with manager_factory() as manager:
        first = await round_trip(manager)
        second = await round_trip(manager)
        assert first.handle.channel is None and second.handle.channel is None
        assert caplog.text.count("goes through the Docker engine from now on") == 1
        ours = client.api.containers(all=True, filters={"label": f"{docker_backend.LABEL_SERVER}={docker_backend.server_instance()}"})
        assert sorted(c["Labels"][docker_backend.LABEL_SANDBOX] for c in ours) == sorted([first.id, second.id])
        assert list(root.iterdir()) == [root / "a-file"]  # the refused socket's directory is gone too


async def test_the_next_server_removes_the_socket_directory_of_a_killed_one(manager_factory: Any, client: Any,
                                                                            tmp_path: Path) -> None:
    with anyio.CancelScope() as scope:
        async with Client(server_params(tmp_path)) as session:
            created = await session.call_tool("create_sandbox", {})
            assert created.structured_content is not None
            pid = server_pid(tmp_path)
            [left] = Path(tempfile.gettempdir()).glob(f"{docker_channel.PREFIX}srv-{pid}-*")
            os.kill(pid, signal.SIGKILL)  # no atexit: its directory stays
            assert wait_until(lambda: of_sandbox(client, created.structured_content["sandbox_id"]) == [])  # type: ignore[index]
            scope.cancel()
    assert left.is_dir()
    async with manager_factory():
        assert not left.exists()
