"""Many sandboxes alive at once, and what they cost the server."""

from __future__ import annotations

import time

import anyio

from .config import Config
from .harness import Report, Row, mcp_sandbox, memory_kb


async def many_sandboxes(report: Report, cfg: Config, backend: str) -> None:
    count = cfg.many_sandboxes
    async with mcp_sandbox(backend, "--max-sandboxes", str(count + 1)) as server:
        await server.call("exec", command="true")
        before = memory_kb(server.pid)
        ids: list[str] = []
        started = time.perf_counter()

        async def create() -> None:
            sid = (await server.call("create_sandbox"))["sandbox_id"]
            await server.call("exec", command="echo hi", sandbox_id=sid)
            ids.append(sid)

        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(create)
        elapsed = (time.perf_counter() - started) * 1000
        after = memory_kb(server.pid)
        started = time.perf_counter()
        for sid in ids:
            await server.call("exec", command="echo hi", sandbox_id=sid)
        per_exec = (time.perf_counter() - started) * 1000 / count
    report.add(Row(f"{count} sandboxes created in parallel ({backend})", elapsed))
    report.add(Row(f"server RSS with {count} sandboxes alive ({backend})", after / 1024, unit="MB",
                   note=f"(+{(after - before) / 1024:.1f} MB over one)"))
    report.add(Row(f"exec round trip with {count} sandboxes alive ({backend})", per_exec))
