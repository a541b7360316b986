"""run_code: context creation and an `x + 1` round trip, against a Jupyter kernel."""

from __future__ import annotations

import subprocess
import time

from .config import Config
from .harness import Report, Row, mcp_sandbox, median_ms


async def run_code(report: Report, cfg: Config, backend: str) -> None:
    kernel_start, kernel_execute = jupyter_floor(cfg)
    floor_name = "Jupyter kernel (jupyter_client + ipykernel)" if kernel_start is not None else "jupyter_client not installed"
    async with mcp_sandbox(backend) as server:
        starts = []
        for i in range(cfg.sandbox_runs):
            started = time.perf_counter()
            await server.call("create_code_context", context_id=f"c{i}")
            await server.call("run_code", code="1", context_id=f"c{i}")
            starts.append((time.perf_counter() - started) * 1000)
            await server.call("delete_code_context", context_id=f"c{i}")
        starts.sort()
        await server.call("run_code", code="x = 1")
        ours = await median_ms(lambda: server.call("run_code", code="x + 1"), cfg.runs)
    report.add(Row(f"code context start + first run_code ({backend})", starts[len(starts) // 2],
                   floor_name=floor_name + " start", floor=kernel_start))
    report.add(Row(f"run_code `x + 1` round trip ({backend})", ours, floor_name=floor_name + " execute",
                   floor=kernel_execute, target="<= 1.0x"))


def jupyter_floor(cfg: Config) -> tuple[float | None, float | None]:
    try:
        from jupyter_client.manager import start_new_kernel
    except ImportError:
        return None, None
    starts, executes = [], []
    for _ in range(max(1, cfg.sandbox_runs // 2)):
        started = time.perf_counter()
        manager, client = start_new_kernel(kernel_name="python3", stderr=subprocess.DEVNULL)
        client.execute_interactive("1", timeout=30, output_hook=lambda msg: None)
        starts.append((time.perf_counter() - started) * 1000)
        try:
            client.execute_interactive("x = 1", timeout=30, output_hook=lambda msg: None)
            for _ in range(cfg.runs):
                started = time.perf_counter()
                client.execute_interactive("x + 1", timeout=30, output_hook=lambda msg: None)
                executes.append((time.perf_counter() - started) * 1000)
        finally:
            client.stop_channels()
            manager.shutdown_kernel(now=True)
    starts.sort()
    executes.sort()
    return starts[len(starts) // 2], executes[len(executes) // 2]
