"""Many sandboxes alive at once over MCP, and what they cost: time to create them, memory per
sandbox, the server's RSS, and exec latency with many concurrent callers across them.

    python -m bench.scale [--backend bwrap|docker] [--sandboxes N] [--callers 50] [--idle-wait S] [--json]

Memory per sandbox is the PSS (``/proc/<pid>/smaps_rollup``) summed over the sandbox's processes:
for the local backend the tree under each of the server's sandbox processes (bubblewrap's and all
inside); for Docker the tree under each container's init as the host sees it, with the engine's
own cost (one containerd shim per container, and the growth of dockerd and containerd) apart.
With ``--idle-wait`` it is read again once the sandboxes have been idle that long (sessions idle
for a minute keep no standby bash; past the server's --rest-after, 300 s, agents rest), and then an
exec in each is timed, which wakes its agent. Exec latency is measured beside its floor, an MCP
server whose tool only runs ``bash -c``, in alternating rounds. Creations and execs that fail are counted and shown, not
fatal to the run.

A run is bounded (a deadline, a check of the memory available before it starts) and removes
everything it made, also when it fails: the server destroys its sandboxes when its client goes,
and the run then removes what would still be there (its workspace root, its containers).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from .config import Config
from .harness import BIN, Report, Row, Server, find_pid, floor_server, memory_kb
from .procs import (
    container_pids, cpu_ms, docker_memory, engine_rss_kb, host_cpu_ms, local_memory, memory_kb_of_host, percentile,
    sandboxes_cpu_ms, threads,
)

IDLE_SAMPLE = 5.0  # seconds over which the server's CPU use is read while nothing is asked of it
CREATE_PARALLEL = 32  # creations in flight at once: enough to keep 2 cores busy
# What a run may assume a sandbox costs, with some margin (its processes, the kernel's part, the
# server's), to refuse a run the machine cannot hold.
BUDGET_PER_SANDBOX_KB = {"bwrap": 14 * 1024, "none": 14 * 1024, "docker": 28 * 1024}


@dataclass
class Figures:
    backend: str
    sandboxes: int
    created: int = 0  # with its exec answered as it should
    errors: list[str] = field(default_factory=list)  # the first few failed creations or execs
    create_s: float = 0.0  # all of them, CREATE_PARALLEL at a time, each with one exec
    create_p50_ms: float = 0.0
    create_p99_ms: float = 0.0
    pss_kb: list[int] = field(default_factory=list)  # per sandbox, right after the exec run
    idle_pss_kb: list[int] = field(default_factory=list)  # per sandbox, after --idle-wait
    processes: float = 0.0  # per sandbox, on average
    idle_processes: float = 0.0
    engine_kb: float = 0.0  # per container: its shim's PSS and the engine's growth (Docker)
    server_rss_kb: int = 0
    server_rss_one_kb: int = 0  # with one sandbox
    server_threads: int = 0
    server_idle_cpu: float = 0.0  # share of one core the server uses while the sandboxes are idle
    callers: int = 0
    execs: int = 0
    exec_ok: int = 0
    exec_p50_ms: float = 0.0
    exec_p99_ms: float = 0.0
    exec_per_s: float = 0.0
    server_cpu_ms_per_exec: float = 0.0  # the server's own CPU time per exec in the latency run
    sandbox_cpu_ms_per_exec: float = 0.0  # the sandboxes' (agent and bash; for Docker, and the engine)
    client_cpu_ms_per_exec: float = 0.0  # this benchmark's own (the MCP client), in the same run
    host_cpu_ms_per_exec: float = 0.0  # the whole host's (everything else running here included)
    wake_ms: list[float] = field(default_factory=list)  # an exec in each after --idle-wait (agents at rest)
    wake_cpu_ms: float = 0.0  # the sandboxes' CPU per such exec: mostly their agents' start
    floor_p50_ms: float = 0.0  # the same callers on an MCP server whose tool only runs bash -c
    floor_p99_ms: float = 0.0

    def note(self, error: str) -> None:
        """Keep the first few errors."""
        if len(self.errors) < 10:
            self.errors.append(error)

    @property
    def pss_mb(self) -> float:
        return statistics.mean(self.pss_kb) / 1024 if self.pss_kb else 0.0

    @property
    def idle_pss_mb(self) -> float:
        return statistics.mean(self.idle_pss_kb) / 1024 if self.idle_pss_kb else 0.0


# ---------------------------------------------------------------------------- the run


@asynccontextmanager
async def server_for(backend: str, count: int) -> AsyncIterator[Server]:
    """The real server over stdio, allowed ``count`` sandboxes; and whatever it leaves, removed
    afterwards."""
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"mcp-sandbox-scale-{uuid.uuid4().hex[:8]}"
    backend_args = ["--backend", "docker"] if backend == "docker" else ["--backend", "local", "--isolation", backend]
    params = StdioServerParameters(
        command=str(BIN / "mcp-sandbox"),
        args=[*backend_args, "--workspace-root", str(root), "--log-level", "WARNING",
              "--max-sandboxes", str(count)],
        env={k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "MCP_SANDBOX_IMAGE")},
    )
    pids: list[int] = []
    try:
        async with Client(params) as client:
            pids.append(find_pid(f"--workspace-root {root}"))
            yield Server(client, pids[0], root)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(leftovers_removed, root, backend, pids)


def leftovers_removed(root: Path, backend: str, server_pids: list[int]) -> None:
    """What the server did not remove: its containers (labelled with its pid), its directory."""
    if backend == "docker" and server_pids:
        import docker

        client = docker.from_env()
        for container in client.api.containers(all=True, filters={"label": "mcp-sandbox.managed=true"}):
            owner = (container.get("Labels") or {}).get("mcp-sandbox.server", "")
            if owner.split(":")[1:2] == [str(server_pids[0])]:
                try:
                    client.api.remove_container(container["Id"], force=True)
                except docker.errors.APIError:  # being removed already (auto_remove)
                    pass
    shutil.rmtree(root, ignore_errors=True)


def check_room(backend: str, count: int) -> None:
    need = count * BUDGET_PER_SANDBOX_KB[backend]
    available = memory_kb_of_host("MemAvailable")
    if need > available * 0.8:
        raise SystemExit(f"refusing: {count} {backend} sandboxes may need {need // 1024} MB, "
                         f"and only {available // 1024} MB are available")


async def measure(backend: str, count: int, callers: int = 50, execs: int | None = None,
                  idle_wait: float = 0.0, deadline: float | None = None) -> Figures:
    check_room(backend, count)
    figures = Figures(backend, count, callers=callers)
    deadline = deadline or 300 + count * 1.0 + idle_wait
    with anyio.fail_after(deadline):
        async with server_for(backend, count) as server:
            engine_before = engine_rss_kb() if backend == "docker" else 0
            ids: list[str] = []
            create_ms: list[float] = []
            limiter = anyio.CapacityLimiter(CREATE_PARALLEL)

            async def create() -> None:
                async with limiter:
                    started = time.perf_counter()
                    try:
                        sid = (await server.call("create_sandbox"))["sandbox_id"]
                        await echo(server, sid)
                    except RuntimeError as exc:
                        figures.note(str(exc))
                        return
                    create_ms.append((time.perf_counter() - started) * 1000)
                    ids.append(sid)

            started = time.perf_counter()
            await create()
            figures.server_rss_one_kb = memory_kb(server.pid)
            async with anyio.create_task_group() as tg:
                for _ in range(count - 1):
                    tg.start_soon(create)
            figures.create_s = time.perf_counter() - started
            figures.created = len(ids)
            if not ids:
                raise RuntimeError(f"no sandbox started: {figures.errors[:3]}")
            figures.create_p50_ms = percentile(create_ms, 0.5)
            figures.create_p99_ms = percentile(create_ms, 0.99)
            # Every sandbox used once more, so that the latency run meets awake agents: creating a
            # thousand takes longer than the minute after which an idle agent rests.
            await each_once(server, ids, figures)
            await exec_latency(figures, server, ids, callers, execs or max(count, 1000))
            # Memory once every sandbox ran a command within the last seconds (creating them all
            # may take longer than a minute, after which the first ones are idle already).
            await read_memory(figures, backend, server.pid, ids, idle=False)
            if backend == "docker":
                figures.engine_kb += (engine_rss_kb() - engine_before) / count
            figures.server_rss_kb = memory_kb(server.pid)
            figures.server_threads = threads(server.pid)
            idle_cpu = cpu_ms(server.pid)
            await anyio.sleep(IDLE_SAMPLE)
            figures.server_idle_cpu = (cpu_ms(server.pid) - idle_cpu) / (IDLE_SAMPLE * 1000)
            if idle_wait:
                await anyio.sleep(max(0.0, idle_wait - IDLE_SAMPLE))
                await read_memory(figures, backend, server.pid, ids, idle=True)
                # Then an exec in each, CREATE_PARALLEL at a time: each wakes its resting agent.
                inits = await anyio.to_thread.run_sync(container_pids, ids) if backend == "docker" else None
                before = sandboxes_cpu_ms(server.pid, inits)
                figures.wake_ms = await each_once(server, ids, figures)
                figures.wake_cpu_ms = (sandboxes_cpu_ms(server.pid, inits) - before) / max(1, len(figures.wake_ms))
    return figures


def printed(where: str, out: Any) -> None:
    """RuntimeError unless an ``echo hi`` printed what it should."""
    if out != "hi\n":
        raise RuntimeError(f"exec in {where} printed {out!r}")


async def echo(server: Server, sid: str) -> None:
    printed(sid, (await server.call("exec", command="echo hi", sandbox_id=sid))["stdout"])


async def each_once(server: Server, ids: list[str], figures: Figures) -> list[float]:
    """An exec in each sandbox, CREATE_PARALLEL at a time; how long each took (ms)."""
    limiter = anyio.CapacityLimiter(CREATE_PARALLEL)
    took: list[float] = []

    async def one(sid: str) -> None:
        async with limiter:
            started = time.perf_counter()
            try:
                await echo(server, sid)
            except RuntimeError as exc:
                figures.note(str(exc))
                return
            took.append((time.perf_counter() - started) * 1000)

    async with anyio.create_task_group() as tg:
        for sid in ids:
            tg.start_soon(one, sid)
    return took


async def read_memory(figures: Figures, backend: str, server_pid: int, ids: list[str], *, idle: bool) -> None:
    if backend == "docker":
        per, procs, shims = await anyio.to_thread.run_sync(docker_memory, ids)
        if not idle:
            figures.engine_kb = statistics.mean(shims) if shims else 0.0
    else:
        per, procs = await anyio.to_thread.run_sync(local_memory, server_pid)
    if idle:
        figures.idle_pss_kb, figures.idle_processes = per, procs
    else:
        figures.pss_kb, figures.processes = per, procs


ROUNDS = 4  # the latency run alternates between mcp-sandbox and the floor this many times each


async def exec_latency(figures: Figures, server: Server, ids: list[str], callers: int, execs: int) -> None:
    """``execs`` calls of exec by ``callers`` concurrent callers, each going round its share of
    the sandboxes; and as many calls, by as many callers, of the floor: an MCP server whose tool
    runs ``bash -c`` and nothing else. The two alternate in rounds, so that both meet the same
    machine."""
    samples: list[float] = []
    floor_samples: list[float] = []
    failures = {"ours": 0, "floor": 0}  # a tool error, or a call that did not print what it should
    elapsed = 0.0

    async def run(who: str, call: Callable[[str], Awaitable[None]], count: int, into: list[float]) -> None:
        async def caller(number: int) -> None:
            mine = ids[number::callers] or ids
            for i in range(number, count, callers):
                sid = mine[(i // callers) % len(mine)]
                started = time.perf_counter()
                try:
                    await call(sid)
                except RuntimeError as exc:
                    failures[who] += 1
                    figures.note(f"{who}: {exc}")
                    continue
                into.append((time.perf_counter() - started) * 1000)

        async with anyio.create_task_group() as tg:
            for number in range(callers):
                tg.start_soon(caller, number)

    inits = await anyio.to_thread.run_sync(container_pids, ids) if figures.backend == "docker" else None
    server_cpu = sandboxes_cpu = client_cpu = host_cpu = 0.0
    async with floor_server() as floor:

        async def bare(sid: str) -> None:
            result = await floor.call_tool("bash", {"command": "echo hi"})
            if result.is_error or result.structured_content is None:
                raise RuntimeError(f"the floor's bash failed: {result.content}")
            printed("the floor", result.structured_content["stdout"])

        for turn in range(ROUNDS):
            per_round = execs // ROUNDS + (turn < execs % ROUNDS)
            before = cpu_ms(server.pid), host_cpu_ms(), sandboxes_cpu_ms(server.pid, inits), cpu_ms(os.getpid())
            started = time.perf_counter()
            await run("ours", functools.partial(echo, server), per_round, samples)
            elapsed += time.perf_counter() - started
            server_cpu += cpu_ms(server.pid) - before[0]
            host_cpu += host_cpu_ms() - before[1]
            sandboxes_cpu += sandboxes_cpu_ms(server.pid, inits) - before[2]
            client_cpu += cpu_ms(os.getpid()) - before[3]
            await run("floor", bare, per_round, floor_samples)
    figures.server_cpu_ms_per_exec = server_cpu / execs
    figures.host_cpu_ms_per_exec = host_cpu / execs
    figures.client_cpu_ms_per_exec = client_cpu / execs
    figures.sandbox_cpu_ms_per_exec = sandboxes_cpu / execs
    figures.execs, figures.exec_ok = execs, execs - failures["ours"]
    figures.exec_p50_ms = percentile(samples, 0.5)
    figures.exec_p99_ms = percentile(samples, 0.99)
    figures.exec_per_s = len(samples) / elapsed
    figures.floor_p50_ms = percentile(floor_samples, 0.5)
    figures.floor_p99_ms = percentile(floor_samples, 0.99)


# ---------------------------------------------------------------------------- reporting


FLOOR = "MCP server running bash -c, same callers"


def rows(f: Figures) -> list[Row]:
    b, n = f.backend, f.sandboxes
    found = [
        Row(f"{f.created} of {n} sandboxes created, {CREATE_PARALLEL} at a time, one exec each ({b})",
            f.create_s * 1000, note=f"(each {f.create_p50_ms:.0f} ms p50, {f.create_p99_ms:.0f} ms p99)"),
        Row(f"memory per sandbox, PSS of its processes ({b})", f.pss_mb, unit="MB", target="<= 6 MB",
            note=f"({f.processes:.1f} processes each)"),
    ]
    if f.idle_pss_kb:
        found.append(Row(f"memory per sandbox once idle ({b})", f.idle_pss_mb, unit="MB", target="<= 6 MB",
                         note=f"({f.idle_processes:.1f} processes each)"))
    if f.wake_ms:
        found.append(Row(f"exec in each idle sandbox, its agent at rest, {CREATE_PARALLEL} at a time ({b})",
                         percentile(f.wake_ms, 0.5),
                         note=f"p50 ({percentile(f.wake_ms, 0.99):.0f} ms p99; {len(f.wake_ms)} of {n}; "
                              f"CPU per exec in the sandbox {f.wake_cpu_ms:.1f} ms, mostly the agent's start)"))
    if b == "docker":
        found.append(Row(f"engine's own memory per container ({b})", f.engine_kb / 1024, unit="MB",
                         note="(its shim's PSS and dockerd's and containerd's growth)"))
    found += [
        Row(f"server RSS with {n} sandboxes ({b})", f.server_rss_kb / 1024, unit="MB", target="<= 250 MB",
            note=f"(+{(f.server_rss_kb - f.server_rss_one_kb) / 1024:.1f} MB over one; {f.server_threads} threads)"),
        Row(f"server CPU with {n} idle sandboxes ({b})", f.server_idle_cpu * 100, unit="% of a core"),
        Row(f"exec p50, {f.callers} callers across {n} sandboxes ({b})", f.exec_p50_ms,
            floor_name=FLOOR, floor=f.floor_p50_ms,
            note=f"({f.exec_ok} of {f.execs} right; {f.exec_per_s:.0f} execs/s; "
                 f"CPU per exec: server {f.server_cpu_ms_per_exec:.1f} ms, "
                 + f"sandbox {f.sandbox_cpu_ms_per_exec:.1f} ms" + (" with the engine, " if b == "docker" else ", ")
                 + f"client {f.client_cpu_ms_per_exec:.1f} ms, host {f.host_cpu_ms_per_exec:.1f} ms)"),
        Row(f"exec p99, {f.callers} callers across {n} sandboxes ({b})", f.exec_p99_ms, target="<= 100 ms",
            floor_name=FLOOR, floor=f.floor_p99_ms),
    ]
    return found


async def many_sandboxes(report: Report, cfg: Config, backend: str) -> None:
    count = cfg.many_containers if backend == "docker" else cfg.many_sandboxes
    figures = await measure(backend, count, callers=min(50, count), execs=max(count, cfg.runs * 20))
    for row in rows(figures):
        report.add(row)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["bwrap", "none", "docker"], default="bwrap")
    parser.add_argument("--sandboxes", type=int, help="how many (default: 1000 local, 200 docker)")
    parser.add_argument("--callers", type=int, default=50, help="concurrent exec callers")
    parser.add_argument("--execs", type=int, help="exec calls in the latency run (default: max(N, 1000))")
    parser.add_argument("--idle-wait", type=float, default=0.0, help="read memory again after this many idle seconds")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON, not a table")
    args = parser.parse_args()
    cfg = Config()
    os.environ.setdefault("MCP_SANDBOX_IMAGE", cfg.image)
    count = args.sandboxes or (cfg.many_containers if args.backend == "docker" else cfg.many_sandboxes)
    figures = anyio.run(lambda: measure(args.backend, count, args.callers, args.execs, args.idle_wait))
    for error in figures.errors:
        print("error:", error, file=sys.stderr)
    if args.json:
        print(json.dumps({**asdict(figures), "pss_mb": figures.pss_mb, "idle_pss_mb": figures.idle_pss_mb}))
    else:
        report = Report()
        for row in rows(figures):
            report.add(row)
        print()
        print(report.table())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
