"""Limits of local sandboxes: memory, processes, CPU and the disk budget, each stopping an offender
while the server and another sandbox keep answering, and what sandbox_info says holds.

Every probe is bounded by itself (ulimit, fixed counts and sizes), so that a limit that does not
hold cannot hurt the machine: at most about 600 MB of memory, 200 processes and 400 MB of disk.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from mcp_sandbox.backends.local import LocalBackend
from mcp_sandbox.manager import SandboxManager

from .conftest import Tools, require_backend, settings_for, unavailable

pytestmark = pytest.mark.anyio

SMALL = {"memory": "256m", "pids_limit": 100, "disk": "300m"}


@pytest.fixture(params=["bwrap", "none"])
def backend(request: pytest.FixtureRequest) -> str:
    """Local sandboxes only (the Docker engine enforces its limits itself; see test_docker.py)."""
    require_backend(request.param)
    return str(request.param)


async def limits(mcp: Tools, sandbox_id: str | None = None) -> dict[str, Any]:
    info = await mcp("sandbox_info", **({"sandbox_id": sandbox_id} if sandbox_id else {}))
    return dict(info["limits"])


async def require_enforced(mcp: Tools, limit: str) -> None:
    if not (await limits(mcp))["enforced"][limit]:
        unavailable(f"no cgroup enforces the {limit} limit on this host")


async def others_keep_answering(mcp: Tools, offend: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``offend`` in the default sandbox while another sandbox and the server answer."""
    other = (await mcp("create_sandbox"))["sandbox_id"]
    outcome: dict[str, Any] = {}

    async def run() -> None:
        outcome["result"] = await offend()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        for _ in range(3):
            with anyio.fail_after(15):
                assert (await mcp.sh("echo alive", sandbox_id=other))["stdout"] == "alive\n"
                await mcp("sandbox_info", sandbox_id=other)
            await anyio.sleep(0.2)
    with anyio.fail_after(15):
        assert (await mcp.sh("echo alive", sandbox_id=other))["stdout"] == "alive\n"
    return outcome["result"]


async def test_sandbox_info_reports_each_limit_and_what_holds(mcp_with: Any, backend: str) -> None:
    async with mcp_with(memory="256m", cpus=0.5, pids_limit=100, disk="300m") as mcp:
        got = await limits(mcp)
    assert (got["memory"], got["cpus"], got["pids_limit"], got["disk"]) == ("256m", 0.5, 100, "300m")
    assert set(got["enforced"]) == {"memory", "cpus", "pids", "disk"}
    assert got["enforced"]["disk"] is True  # the server keeps it on every host
    if not all(got["enforced"].values()):
        unavailable(f"cgroups do not enforce every limit here: {got['enforced']}")


async def test_a_memory_hog_is_stopped(mcp_with: Any) -> None:
    async with mcp_with(**SMALL) as mcp:
        await require_enforced(mcp, "memory")
        # Grows by 16 MiB at a time; ulimit -v caps it at 600 MiB should the limit not hold.
        hog = "ulimit -v 614400; python3 -c 'a = []\nwhile True: a.append(bytearray(16 << 20))'"
        result = await others_keep_answering(mcp, lambda: mcp.sh(hog))
        assert result["exit_code"] == 137, result  # SIGKILL from the OOM killer, not a MemoryError
        assert "Killed" in result["stderr"]
        # The sandbox itself lives on: its agent is not the OOM killer's choice.
        assert (await mcp.sh("echo still here"))["stdout"] == "still here\n"


async def test_a_fork_loop_is_stopped(mcp_with: Any) -> None:
    async with mcp_with(**SMALL) as mcp:
        await require_enforced(mcp, "pids")
        # At most 180 children (each sleeps 3 s), should the limit not hold.
        loop = (
            "python3 -c '\nimport os, time\nn = 0\nfor i in range(180):\n    try:\n"
            "        if os.fork() == 0:\n            time.sleep(3)\n            os._exit(0)\n"
            "    except OSError:\n        break\n    n += 1\nprint(n)\n'"
        )
        result = await others_keep_answering(mcp, lambda: mcp.sh(loop))
        assert 0 < int(result["stdout"]) < 100, result
        with anyio.fail_after(30):  # the children end, and the sandbox works again
            while (again := await mcp.raw("exec", command="echo again")).is_error:
                await anyio.sleep(0.5)
        assert again.structured_content is not None and again.structured_content["stdout"] == "again\n"


async def test_cpu_time_is_limited(mcp_with: Any) -> None:
    async with mcp_with(cpus=0.25) as mcp:
        await require_enforced(mcp, "cpus")
        spin = "python3 -c 'import os, time\nt = time.time()\nwhile time.time() - t < 2: pass\nprint(sum(os.times()[:2]))'"
        used = float((await mcp.sh(spin))["stdout"])
        assert used < 1.2, f"2 s of spinning used {used} s of CPU with --cpus 0.25"


async def test_a_disk_filler_is_stopped(mcp_with: Any) -> None:
    async with mcp_with(**SMALL) as mcp:
        # 7 files of 50 MiB (at most 350 MiB, each capped by ulimit -f), then it waits to be stopped.
        filler = 'ulimit -f 60000; for i in 1 2 3 4 5 6 7; do head -c 50M /dev/zero > "$TMPDIR/f$i"; done; sleep 60'
        started = time.monotonic()
        error = await others_keep_answering(mcp, lambda: mcp.error("exec", command=filler))
        assert "LIMIT_REACHED: the sandbox uses " in error, error
        assert "of its 300 MiB disk budget (--disk)" in error and "delete files" in error
        assert time.monotonic() - started < 30
        # Over the budget, files cannot be written; once some are deleted, they can.
        refused = await mcp.error("write_file", path="note.txt", content="hello")
        assert "LIMIT_REACHED:" in refused
        await mcp.sh('rm -f "$TMPDIR"/f*')
        await mcp("write_file", path="note.txt", content="hello")
        # Commands run again, and one that stays within the budget is not stopped.
        assert (await mcp.sh('head -c 10M /dev/zero > "$TMPDIR/small" && echo ok'))["stdout"] == "ok\n"


async def test_no_file_grows_beyond_the_disk_budget(mcp_with: Any) -> None:
    async with mcp_with(**SMALL) as mcp:
        result = await mcp.raw("exec", command="head -c 350M /dev/zero > big")
        text = result.content[0].text  # type: ignore[union-attr]
        # The write fails at the budget; the sandbox is then over it too, and may be stopped first.
        assert "LIMIT_REACHED" in text if result.is_error else "File size limit exceeded" in text, text
        assert int((await after_the_stop(mcp, "stat -c %s big"))["stdout"]) <= 300 << 20
        assert (await after_the_stop(mcp, "ulimit -f unlimited"))["exit_code"] != 0


async def after_the_stop(mcp: Tools, command: str) -> dict[str, Any]:
    """Run a command in a sandbox over its disk budget: the server's disk watch may stop the
    sandbox once more (LIMIT_REACHED) while a next command runs; then the command runs again."""
    with anyio.fail_after(15):
        while (result := await mcp.raw("exec", command=command)).is_error:
            assert "LIMIT_REACHED" in result.content[0].text  # type: ignore[union-attr]
            await anyio.sleep(0.5)
    assert result.structured_content is not None
    return result.structured_content


async def test_without_cgroups_rlimits_and_tags_remain(
    backend: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(backend, tmp_path / "sandboxes", **SMALL)
    local = LocalBackend(settings)
    with caplog.at_level(logging.WARNING):
        local.use_cgroups(None)
    assert "NO CGROUPS" in caplog.text
    async with SandboxManager(settings, backend=local) as manager:
        assert manager.limits()["enforced"] == {"memory": False, "cpus": False, "pids": False, "disk": True}
        sandbox = await manager.create()
        result = await sandbox.exec("ulimit -d; ulimit -f")
        assert result.stdout == f"{256 << 10}\n{300 << 10}\n"
        # Without a cgroup, a descendant in another session is still found by its tag.
        marker = f"sleep {secrets.randbelow(900_000) + 100_000}"
        result = await sandbox.exec(f"setsid {marker} & sleep 30", timeout=1)
        assert result.timed_out
        assert marker not in (await sandbox.exec("ps -eo args")).stdout
