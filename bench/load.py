"""Load over Streamable HTTP: concurrent MCP clients, each with its own sandbox, making mixed calls
against the real server command, on both protocol eras; every result is checked.

    python -m bench.load [--clients 20] [--calls 100] [--backend none|bwrap|docker]

tests/test_load.py runs a short form with the same code and asserts 0 errors.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp.client import Client

from .harness import BIN

ERAS = ("auto", "legacy")  # the client's modes: the current protocol era, and the 2025 one
IMAGE = os.environ.get("MCP_SANDBOX_TEST_IMAGE") or "mcp-sandbox-test:latest"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def http_server(root: Path, backend: str = "none", *extra: str) -> Iterator[str]:
    """The installed server on Streamable HTTP on a free local port; its URL."""
    port = free_port()
    backend_args = ["--backend", "docker", "--image", IMAGE] if backend == "docker" else ["--backend", "local", "--isolation", backend]
    proc = subprocess.Popen(
        [str(BIN / "mcp-sandbox"), "--transport", "http", "--port", str(port), *backend_args,
         "--workspace-root", str(root), "--log-level", "ERROR", *extra],
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the HTTP server exited with status {proc.returncode}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not listen within 30 s")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class LoadResult:
    era: str
    clients: int
    calls: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    slowest: dict[str, float] = field(default_factory=dict)  # per tool, ms
    warm_ms: list[float] = field(default_factory=list)  # all but each client's first run_code (a worker start)
    errors: list[str] = field(default_factory=list)

    def percentile(self, p: float, of: list[float] | None = None) -> float:
        ordered = sorted(self.latencies_ms if of is None else of)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0

    def summary(self) -> str:
        return (
            f"{self.era}: {self.clients} clients x {self.calls} calls in {self.seconds:.1f} s, "
            f"{len(self.latencies_ms) / self.seconds:.0f} calls/s, p50 {statistics.median(self.latencies_ms):.1f} ms, "
            f"p99 {self.percentile(99):.1f} ms (without the code workers' starts: {self.percentile(99, self.warm_ms):.1f} ms), "
            f"{len(self.errors)} errors; slowest: "
            + ", ".join(f"{tool} {ms:.0f} ms" for tool, ms in sorted(self.slowest.items()))
        )


Check = Callable[[dict[str, Any]], bool]


def mixed_call(n: int, sid: str) -> tuple[str, dict[str, Any], Check]:
    """The n-th call of a client: a tool, its arguments, and what its result must hold. Calls come
    in rounds of eight; in each, a file is written and then read back twice."""
    rnd = n // 8
    path, text = f"load/f{rnd % 7}.txt", f"round {rnd}\n"
    calls: list[tuple[str, dict[str, Any], Check]] = [
        ("exec", {"command": f"echo {n}"}, lambda r: r["stdout"] == f"{n}\n"),
        ("write_file", {"path": path, "content": text}, lambda r: r["bytes_written"] == len(text.encode())),
        ("exec", {"command": f"cat {path}"}, lambda r: r["stdout"] == text),
        ("read_file", {"path": path}, lambda r: r["content"] == text),
        ("list_files", {"path": "load"}, lambda r: any(e["name"] == f"f{rnd % 7}.txt" for e in r["files"])),
        ("sandbox_info", {}, lambda r: r["sandbox_id"] == sid),
        ("list_processes", {}, lambda r: isinstance(r["processes"], list)),
        # Last: its first call in a sandbox starts the code worker, which costs a CPU-second.
        ("run_code", {"code": f"print({n} + 1)"}, lambda r: r["stdout"] == f"{n + 1}\n"),
    ]
    tool, arguments, check = calls[n % 8]
    return tool, {**arguments, "sandbox_id": sid}, check


async def one_client(url: str, era: str, calls: int, result: LoadResult) -> None:
    async with Client(url, mode=era) as client:
        async def call(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
            r = await client.call_tool(tool, arguments)
            if r.is_error or r.structured_content is None:
                raise AssertionError(f"{tool}: {r.content[0].text if r.content else r}")  # type: ignore[union-attr]
            content: dict[str, Any] = r.structured_content
            return content

        sid = (await call("create_sandbox", {}))["sandbox_id"]
        await call("mkdir", {"path": "load", "sandbox_id": sid})
        for n in range(calls):
            tool, arguments, check = mixed_call(n, sid)
            started = time.perf_counter()
            try:
                r = await call(tool, arguments)
                if not check(r):
                    raise AssertionError(f"{tool} {arguments}: unexpected {r}")
            except Exception as exc:  # counted: the load goes on
                result.errors.append(f"{era} {tool}: {exc!r}"[:300])
            elapsed = (time.perf_counter() - started) * 1000
            result.latencies_ms.append(elapsed)
            if tool != "run_code" or n >= 8:
                result.warm_ms.append(elapsed)
            result.slowest[tool] = max(elapsed, result.slowest.get(tool, 0.0))
        await call("destroy", {"sandbox_id": sid})


async def load(url: str, era: str, clients: int, calls: int) -> LoadResult:
    result = LoadResult(era, clients, calls, 0.0)
    started = time.perf_counter()

    async def guarded(job: Callable[[], Awaitable[None]]) -> None:
        try:
            await job()
        except Exception as exc:
            result.errors.append(f"{era} client: {exc!r}"[:300])

    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(guarded, lambda: one_client(url, era, calls, result))
    result.seconds = time.perf_counter() - started
    return result


async def run(backend: str, clients: int, calls: int) -> list[LoadResult]:
    with tempfile.TemporaryDirectory(prefix="mcp-sandbox-load-") as root:
        with http_server(Path(root) / "sandboxes", backend, "--max-sandboxes", str(clients + 1)) as url:
            return [await load(url, era, clients, calls) for era in ERAS]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--backend", default="none", choices=["bwrap", "none", "docker"])
    args = parser.parse_args()
    results = anyio.run(run, args.backend, args.clients, args.calls)
    for r in results:
        print(f"{args.backend} {r.summary()}")
        for error in r.errors[:5]:
            print("  ", error)
    sys.exit(1 if any(r.errors for r in results) else 0)


if __name__ == "__main__":
    main()
