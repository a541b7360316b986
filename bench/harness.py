"""Timing, reporting and the processes a benchmark drives.

Every figure is a median over repeated runs, printed beside a floor measured in the same run (the
thing it cannot beat: a bare bash spawn, a no-op MCP call, Docker's own API) and the ratio.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp_types import CallToolResult

BIN = Path(sys.executable).parent
HERE = Path(__file__).parent


@dataclass
class Row:
    name: str
    value: float
    unit: str = "ms"
    floor_name: str = ""
    floor: float | None = None
    target: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.floor in (None, 0):
            return None
        return self.value / self.floor


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(format_row(row), flush=True)

    def table(self) -> str:
        lines = [
            "| measurement | mcp-sandbox | floor | ratio | target |",
            "|---|---|---|---|---|",
        ]
        for r in self.rows:
            floor = f"{fmt(r.floor, r.unit)} ({r.floor_name})" if r.floor is not None else r.floor_name or "-"
            ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
            note = f" {r.note}" if r.note else ""
            lines.append(f"| {r.name} | {fmt(r.value, r.unit)}{note} | {floor} | {ratio} | {r.target or '-'} |")
        return "\n".join(lines)


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"
    if unit == "MB":
        return f"{value:.1f} MB"
    return f"{value:.1f} {unit}"


def format_row(r: Row) -> str:
    ratio = f"  ratio {r.ratio:.2f}x" if r.ratio is not None else ""
    floor = f"  floor {fmt(r.floor, r.unit)} ({r.floor_name})" if r.floor is not None else ""
    return f"{r.name:<48} {fmt(r.value, r.unit):>12}{floor}{ratio}  {r.note}"


async def median_ms(fn: Callable[[], Awaitable[Any]], runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        await fn()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def interleaved_medians_ms(fns: dict[str, Callable[[], Awaitable[Any]]], runs: int, warmup: int = 2) -> dict[str, float]:
    """Medians of several measurements taken in turn, so that a noisy moment hits them all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            await fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            started = time.perf_counter()
            await fn()
            samples[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def sync_median_ms(fn: Callable[[], Any], runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def memory_kb(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def reset_peak(pid: int) -> None:
    """Make VmHWM start again from the current RSS (Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def find_pid(marker: str) -> int:
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            return int(name)
    raise LookupError(marker)


@dataclass
class Server:
    client: Client
    pid: int
    root: Path  # its --workspace-root

    async def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        result: CallToolResult = await self.client.call_tool(tool, arguments)
        if result.is_error:
            raise RuntimeError(f"{tool} failed: {result.content[0].text}")  # type: ignore[union-attr]
        content: dict[str, Any] | None = result.structured_content
        assert content is not None
        return content


@asynccontextmanager
async def mcp_sandbox(backend: str, *args: str) -> AsyncIterator[Server]:
    """The real `mcp-sandbox` command over stdio, with its pid for memory readings."""
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"mcp-sandbox-bench-{uuid.uuid4().hex[:8]}"
    backend_args = ["--backend", "docker"] if backend == "docker" else ["--backend", "local", "--isolation", backend]
    params = StdioServerParameters(
        command=str(BIN / "mcp-sandbox"),
        args=[*backend_args, "--workspace-root", str(root), "--log-level", "WARNING", *args],
        env={k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "MCP_SANDBOX_IMAGE")},
    )
    try:
        async with Client(params) as client:
            yield Server(client, find_pid(f"--workspace-root {root}"), root)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # the server removed its sandboxes, not the root


@asynccontextmanager
async def floor_server() -> AsyncIterator[Client]:
    params = StdioServerParameters(command=sys.executable, args=[str(HERE / "floor_server.py")])
    async with Client(params) as client:
        yield client
