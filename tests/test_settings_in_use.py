"""What the server tells the model follows the settings it runs with, not the defaults."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from .conftest import Tools, require_backend
from .test_docker import CGROUP

pytestmark = pytest.mark.anyio

OpenClient = Callable[..., AbstractAsyncContextManager[Tools]]


@pytest.mark.parametrize("backend", ["docker"])
async def test_sandbox_info_reports_the_docker_limits_in_force(backend: str, mcp_with: OpenClient) -> None:
    require_backend(backend)
    async with mcp_with(memory="256m", cpus=0.5, pids_limit=64) as mcp:
        limits = (await mcp("sandbox_info"))["limits"]
        assert (limits["memory"], limits["cpus"], limits["pids_limit"]) == ("256m", 0.5, 64)
        # ... and they are what the container's cgroups hold.
        assert (await mcp.sh(CGROUP["pids"]))["stdout"] == "64\n"
        assert (await mcp.sh(CGROUP["memory"]))["stdout"] == f"{256 << 20}\n"
        quota, period = (await mcp.sh(CGROUP["cpu"]))["stdout"].split()
        assert int(quota) * 2 == int(period)


@pytest.mark.parametrize("backend", ["none"])
async def test_descriptions_and_limits_name_the_settings_in_use(backend: str, mcp_with: OpenClient) -> None:
    async with mcp_with(command_timeout=2, max_output=5000, idle_timeout=600, session_idle_timeout=300) as mcp:
        tools = {t.name: " ".join((t.description or "").split()) for t in (await mcp.client.list_tools()).tools}
        assert "At the timeout (2 s unless" in tools["exec"] and "120" not in tools["exec"]
        assert "At the timeout (2 s unless" in tools["run_code"] and "120" not in tools["run_code"]
        assert "after 10 min without a tool call" in tools["create_sandbox"]
        assert "unused for 300 s are deleted" in tools["create_session"]
        assert "unused for 300 s are deleted" in tools["create_code_context"]
        assert "cut to 5,000 characters" in tools["get_process_logs"]
        assert not any("{" in d and "}" in d for d in tools.values())  # no placeholder left unfilled
        limits: dict[str, Any] = (await mcp("sandbox_info"))["limits"]
        assert (limits["command_timeout"], limits["max_output"], limits["idle_timeout"]) == (2, 5000, 600)
        # The defaults are the ones in force: exec and run_code stop at 2 s.
        r = await mcp.sh("sleep 30")
        assert r["timed_out"] is True and r["duration_ms"] < 15_000
        r = await mcp("run_code", code="import time\ntime.sleep(30)")
        assert r["timed_out"] is True and r["duration_ms"] < 15_000
