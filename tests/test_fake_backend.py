"""The manager and the channel over the fake backend (the real agent on a socketpair): fast checks
of the host's own logic, without a sandbox's isolation."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from mcp_sandbox.errors import SandboxError
from mcp_sandbox.manager import SandboxManager

from .conftest import settings_for
from .fake_backend import FakeBackend
from .helpers import eventually

pytestmark = pytest.mark.anyio


async def test_manager_runs_commands_and_removes_its_sandboxes(tmp_path: Path) -> None:
    backend = FakeBackend(tmp_path / "fake")
    async with SandboxManager(settings_for("none", tmp_path / "root"), backend) as manager:
        sandbox = await manager.create()
        r = await sandbox.exec("cd /; export X=kept; echo hi; echo err >&2; exit 3")
        assert (r.exit_code, r.stdout, r.stderr) == (3, "hi\n", "err\n")
        r = await sandbox.exec("echo $X; pwd")
        assert r.stdout == "kept\n/\n"
        assert manager.ids() == [sandbox.id]
        await manager.destroy(sandbox.id)
        assert manager.ids() == []
        with pytest.raises(SandboxError) as caught:
            await manager.get(sandbox.id)
        assert caught.value.code == "SANDBOX_NOT_FOUND"
        await manager.create()
    assert len(backend.started) == 2 and all(a.process.returncode is not None for a in backend.started)
    assert not any((tmp_path / "fake").iterdir())


async def test_an_agent_that_dies_fails_its_call_and_its_sandbox_goes(tmp_path: Path) -> None:
    backend = FakeBackend(tmp_path / "fake")
    async with SandboxManager(settings_for("none", tmp_path / "root"), backend) as manager:
        sandbox = await manager.create()
        backend.started[0].process.send_signal(signal.SIGKILL)
        with pytest.raises(SandboxError) as caught:
            await sandbox.exec("sleep 30")
        assert caught.value.code in ("BACKEND_UNAVAILABLE", "SANDBOX_NOT_FOUND", "INTERNAL"), caught.value
        assert await eventually(lambda: sandbox.id not in manager.ids())


async def test_big_files_cross_the_channel_whole(tmp_path: Path) -> None:
    """Chunks of ~1.4 MB lines each way (base64 put into requests unscanned) arrive intact."""
    data = os.urandom(3 << 20)
    async with SandboxManager(settings_for("none", tmp_path / "root"), FakeBackend(tmp_path / "fake")) as manager:
        sandbox = await manager.create()
        written = await sandbox.write_file("big.bin", data)
        assert written.bytes_written == len(data)
        assert await sandbox.read_file_bytes(written.path, max_bytes=4 << 20) == data
