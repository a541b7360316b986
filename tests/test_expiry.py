"""Expiry: idle sandboxes are destroyed, idle temporary sessions deleted; running work is use."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import anyio
import pytest

pytestmark = pytest.mark.anyio


async def test_idle_sandbox_is_destroyed_but_not_while_a_command_runs(mcp_with: Any) -> None:
    async with mcp_with(idle_timeout=1.5) as mcp:
        busy = (await mcp("create_sandbox"))["sandbox_id"]
        idle = (await mcp("create_sandbox"))["sandbox_id"]
        info = await mcp("sandbox_info", sandbox_id=idle)
        expires = datetime.fromisoformat(info["idle_expires_at"])
        created = datetime.fromisoformat(info["created_at"])
        assert 1 <= (expires - created).total_seconds() <= 5
        r = await mcp.sh("sleep 4; echo survived", sandbox_id=busy)
        assert r["stdout"] == "survived\n"
        assert "SANDBOX_NOT_FOUND" in await mcp.error("exec", command="true", sandbox_id=idle)
        await anyio.sleep(3)
        assert "SANDBOX_NOT_FOUND" in await mcp.error("exec", command="true", sandbox_id=busy)
        # The default sandbox comes back fresh after expiring.
        await mcp.sh("echo x > f.txt")
        await anyio.sleep(3)
        r = await mcp.sh("cat f.txt 2>/dev/null || echo fresh")
        assert r["stdout"] == "fresh\n"


async def test_idle_sessions_are_deleted_but_not_default_or_busy(mcp_with: Any) -> None:
    async with mcp_with(session_idle_timeout=1) as mcp:
        await mcp("create_session", session_id="temp")
        await mcp("create_session", session_id="working")
        async with anyio.create_task_group() as tg:
            tg.start_soon(mcp.sh, "sleep 3")  # the default session is busy meanwhile
            r = await mcp.sh("sleep 3; echo still here", session_id="working")
            assert r["stdout"] == "still here\n"
        sessions = {s["session_id"] for s in (await mcp("list_sessions"))["sessions"]}
        assert "temp" not in sessions and "default" in sessions
        await anyio.sleep(2.5)
        sessions = {s["session_id"] for s in (await mcp("list_sessions"))["sessions"]}
        assert sessions == {"default"}
