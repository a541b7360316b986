"""Kills that cannot be escaped: what a command starts dies at its timeout, with kill_process,
delete_session, destroy and the server's exit, even after ``env -i setsid`` (a new session and
no environment tag), on bubblewrap and without isolation. And cgroups left by a server that is
gone are removed by the next."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_sandbox.backends import cgroups
from mcp_sandbox.backends.local import LocalBackend
from mcp_sandbox.backends.ownership import process_start_time
from mcp_sandbox.manager import SandboxManager

from .conftest import Tools, require_backend, settings_for, unavailable
from .helpers import eventually, pids_with

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["bwrap", "none"])
def backend(request: pytest.FixtureRequest) -> str:
    require_backend(request.param)
    return str(request.param)


def escapee() -> tuple[str, str]:
    """A command that leaves its session and drops every variable, and what it shows in ps."""
    marker = f"sleep {secrets.randbelow(900_000) + 100_000}"
    return f"env -i setsid {marker} &", marker


async def becomes(marker: str, alive: bool) -> bool:
    """Whether a process with exactly this command line comes to run (or stops) on the host."""
    return await eventually(lambda: bool(pids_with(marker, exact=True)) == alive)


async def test_timeout(mcp: Tools) -> None:
    command, marker = escapee()

    async def run() -> None:
        assert (await mcp.sh(f"{command} sleep 60", timeout=2))["timed_out"]

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        assert await becomes(marker, True)
    assert await becomes(marker, False)


async def test_kill_process(mcp: Tools) -> None:
    command, marker = escapee()
    await mcp("start_process", command=f"{command} wait", process_id="p")
    assert await becomes(marker, True)
    await mcp("kill_process", process_id="p")
    assert await becomes(marker, False)


async def test_delete_session(mcp: Tools) -> None:
    command, marker = escapee()
    await mcp("create_session", session_id="s")
    await mcp.sh(command, session_id="s")
    assert await becomes(marker, True)
    await mcp("delete_session", session_id="s")
    assert await becomes(marker, False)


async def test_destroy(mcp: Tools) -> None:
    command, marker = escapee()
    sandbox_id = (await mcp("create_sandbox"))["sandbox_id"]
    await mcp.sh(command, sandbox_id=sandbox_id)
    assert await becomes(marker, True)
    await mcp("destroy", sandbox_id=sandbox_id)
    assert await becomes(marker, False)


async def test_server_exit(mcp_with: Any) -> None:
    command, marker = escapee()
    async with mcp_with() as mcp:
        await mcp.sh(command)
        assert await becomes(marker, True)
    assert await becomes(marker, False)


@pytest.mark.parametrize("backend", ["bwrap"], indirect=True)  # without isolation nothing is out of reach
async def test_commands_cannot_leave_their_cgroup(mcp: Tools) -> None:
    command, marker = escapee()
    # Try every cgroup.procs in sight, and every descriptor of the agent (pid 2; not dumpable) and
    # of the command's own processes. (Pid 1, bubblewrap's, holds the agent's channel: writing
    # there can end the sandbox, which TOOLS.md allows.)
    attempt = (
        "sed 's/^/before /' /proc/$$/cgroup; "
        "for f in $(find /sys/fs/cgroup -name cgroup.procs 2>/dev/null) /proc/[2-9]*/fd/* /proc/[1-9][0-9]*/fd/*; "
        'do echo $$ 2>/dev/null > "$f"; done >/dev/null; '
        "sed 's/^/after /' /proc/$$/cgroup; "
    )
    result = await mcp.sh(f"{attempt}{command} sleep 60", timeout=3)
    assert result["timed_out"]
    lines = result["stdout"].splitlines()
    before = [line.split(" ", 1)[1] for line in lines if line.startswith("before ")]
    after = [line.split(" ", 1)[1] for line in lines if line.startswith("after ")]
    assert before == after and any("/job" in line for line in before), result["stdout"]
    assert await becomes(marker, False)


async def test_jobs_in_a_v1_hierarchy(backend: str, tmp_path: Path) -> None:
    """Job cgroups in cgroup v1 (pids), as on hosts without a v2 tree."""
    settings = settings_for(backend, tmp_path / "sandboxes")
    local = LocalBackend(settings)
    found = local.cgroups
    v1 = [tree for tree in found.trees if not tree.v2] if found is not None else []
    pids = next((tree for tree in v1 if "pids" in tree.controllers), None)
    if pids is None:
        unavailable("no cgroup v1 pids hierarchy here")
    local.use_cgroups(cgroups.Cgroups(v1, pids))
    async with SandboxManager(settings, backend=local) as manager:
        sandbox = await manager.create()
        command, marker = escapee()

        async def run() -> None:
            assert (await sandbox.exec(f"{command} sleep 60", timeout=2)).timed_out

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            assert await becomes(marker, True)
        assert await becomes(marker, False)


async def test_cgroups_of_a_server_that_is_gone_are_removed(backend: str, tmp_path: Path) -> None:
    settings = settings_for(backend, tmp_path / "sandboxes")
    found = LocalBackend(settings).cgroups
    if found is None:
        unavailable("no cgroups here")
    gone = subprocess.Popen(["true"])
    gone.wait()  # a server that was: its pid runs no more with that start time
    name = f"srv-{gone.pid}-{process_start_time(os.getpid())}"
    leftover = subprocess.Popen(["sleep", "600"])
    try:
        for tree in found.trees:
            (tree.path.parent / name / "sbx_left" / "job1").mkdir(parents=True)
            (tree.path.parent / name / "sbx_left" / "job1" / "cgroup.procs").write_text(str(leftover.pid))
        async with SandboxManager(settings):
            pass
        assert leftover.wait(timeout=10) == -signal.SIGKILL
        assert not any((tree.path.parent / name).exists() for tree in found.trees)
    finally:
        leftover.kill()
        leftover.wait()
