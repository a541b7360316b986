"""exec: round trip over stdio, big output, parallel sessions, and sandbox start and destroy."""

from __future__ import annotations

import subprocess
import time

import anyio

from .config import Config
from .harness import (
    Report,
    Row,
    floor_server,
    interleaved_medians_ms,
    mcp_sandbox,
    median_ms,
    memory_kb,
    reset_peak,
    sync_median_ms,
)


async def exec_round_trip(report: Report, cfg: Config, backend: str) -> None:
    async def spawn() -> None:
        subprocess.run(["bash", "-c", "echo hi"], stdout=subprocess.DEVNULL)

    async with floor_server() as floor, mcp_sandbox(backend) as server:
        await server.call("exec", command="true")
        medians = await interleaved_medians_ms(
            {
                "noop": lambda: floor.call_tool("noop", {}),
                "spawn": spawn,
                "ours": lambda: server.call("exec", command="echo hi"),
            },
            cfg.runs * 2,
        )
    ours = medians["ours"]
    report.add(Row(f"exec `echo hi` over stdio ({backend})", ours, floor_name="MCP no-op call + bash spawn",
                   floor=medians["noop"] + medians["spawn"], target="<= 1.4x"))
    if backend == "docker":
        await docker_exec_floor(report, cfg, ours)


async def docker_exec_floor(report: Report, cfg: Config, ours: float) -> None:
    import docker

    client = docker.from_env()
    container = client.containers.run(cfg.image, ["sleep", "600"], detach=True, network_mode="none", remove=True)
    try:
        per_call = sync_median_ms(lambda: container.exec_run(["sh", "-c", "echo hi"]), max(5, cfg.runs // 4))
    finally:
        container.kill()
    report.add(Row("exec (docker) vs a `docker exec` per command", ours, floor_name="docker exec_run",
                   floor=per_call, target="<= 0.125x (8x faster)"))


async def warm_start(report: Report, cfg: Config, backend: str) -> None:
    """create_sandbox + first exec with --warm-sandboxes 1: a sandbox started ahead is handed out."""
    async with mcp_sandbox(backend, "--warm-sandboxes", "1") as server:
        await server.call("exec", command="true")  # the default sandbox took the first warm one
        starts = []
        for _ in range(cfg.sandbox_runs):
            await anyio.sleep(1.5 if backend == "docker" else 0.5)  # time to start the next one
            started = time.perf_counter()
            sid = (await server.call("create_sandbox"))["sandbox_id"]
            await server.call("exec", command="echo hi", sandbox_id=sid)
            starts.append((time.perf_counter() - started) * 1000)
            await server.call("destroy", sandbox_id=sid)
    starts.sort()
    report.add(Row(f"create_sandbox + first exec, --warm-sandboxes 1 ({backend})", starts[len(starts) // 2]))


async def cold_start_and_destroy(report: Report, cfg: Config, backend: str) -> None:
    async with mcp_sandbox(backend) as server:
        await server.call("exec", command="true")  # the default sandbox: warms images and caches
        starts, destroys = [], []
        for _ in range(cfg.sandbox_runs):
            started = time.perf_counter()
            sid = (await server.call("create_sandbox"))["sandbox_id"]
            await server.call("exec", command="echo hi", sandbox_id=sid)
            starts.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await server.call("destroy", sandbox_id=sid)
            destroys.append((time.perf_counter() - started) * 1000)
    starts.sort()
    destroys.sort()
    start_floor = destroy_floor = None
    if backend == "docker":
        start_floor, destroy_floor = docker_lifecycle_floor(cfg)
    report.add(Row(f"cold start: create_sandbox + first exec ({backend})", starts[len(starts) // 2],
                   floor_name="docker create+start+exec_run" if backend == "docker" else "",
                   floor=start_floor, target="<= 1.3x" if backend == "docker" else ""))
    report.add(Row(f"destroy ({backend})", destroys[len(destroys) // 2],
                   floor_name="docker remove(force)" if backend == "docker" else "",
                   floor=destroy_floor, target="<= 1.5x" if backend == "docker" else ""))


def docker_lifecycle_floor(cfg: Config) -> tuple[float, float]:
    import docker

    client = docker.from_env()
    starts, removes = [], []
    for _ in range(cfg.sandbox_runs):
        started = time.perf_counter()
        container = client.containers.create(cfg.image, ["sleep", "600"], network_mode="none", init=True)
        container.start()
        container.exec_run(["sh", "-c", "echo hi"])
        starts.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        container.remove(force=True)
        removes.append((time.perf_counter() - started) * 1000)
    starts.sort()
    removes.sort()
    return starts[len(starts) // 2], removes[len(removes) // 2]


async def big_output(report: Report, cfg: Config, backend: str) -> None:
    command = f"yes | head -c {cfg.output_bytes}"
    floor = sync_median_ms(lambda: subprocess.run(["bash", "-c", command + " > /dev/null"]), 3, warmup=1)
    async with mcp_sandbox(backend) as server:
        await server.call("exec", command="true")
        before = memory_kb(server.pid)
        reset_peak(server.pid)
        ours = await median_ms(lambda: server.call("exec", command=command), 3, warmup=0)
        growth = (memory_kb(server.pid, "VmHWM") - before) / 1024
    size = f"{cfg.output_bytes / 1e6:.0f} MB"
    report.add(Row(f"{size} of command output ({backend})", ours, floor_name="bash, output to /dev/null", floor=floor))
    report.add(Row(f"server RSS growth during {size} of output ({backend})", growth, unit="MB", target="< 50 MB"))


async def parallel_sessions(report: Report, cfg: Config, backend: str) -> None:
    async with mcp_sandbox(backend) as server:
        for i in range(8):
            await server.call("create_session", session_id=f"p{i}")
        for width in (1, 2, 4, 8):
            per_session = max(2, cfg.runs // 2)

            async def worker(i: int) -> None:
                for _ in range(per_session):
                    await server.call("exec", command="echo hi", session_id=f"p{i}")

            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for i in range(width):
                    tg.start_soon(worker, i)
            rate = width * per_session / (time.perf_counter() - started)
            report.add(Row(f"throughput, {width} session(s) in parallel ({backend})", rate, unit="exec/s"))
