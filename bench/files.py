"""write_file + read_file: 1 MiB over MCP, and a big file through the chunked channel."""

from __future__ import annotations

import base64
import io
import os
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

from mcp_sandbox.manager import SandboxManager
from mcp_sandbox.settings import Settings

from .config import Config
from .harness import (
    Report,
    Row,
    mcp_sandbox,
    median_ms,
    memory_kb,
    reset_peak,
    sync_median_ms,
)


def settings_for(backend: str) -> Settings:
    root = Path(tempfile.gettempdir()) / f"mcp-sandbox-bench-{uuid.uuid4().hex[:8]}"
    if backend == "docker":
        return Settings(backend="docker", workspace_root=root, image=os.environ.get("MCP_SANDBOX_IMAGE"))
    return Settings(backend="local", isolation=backend, workspace_root=root)  # type: ignore[arg-type]


async def small_file_over_mcp(report: Report, cfg: Config, backend: str) -> None:
    data = os.urandom(1024 * 1024)
    encoded = base64.b64encode(data).decode()
    async with mcp_sandbox(backend) as server:

        async def round_trip() -> None:
            await server.call("write_file", path="one.bin", content=encoded, encoding="base64")
            result = await server.call("read_file", path="one.bin")
            assert len(result["content"]) == len(encoded)

        ours = await median_ms(round_trip, max(3, cfg.runs // 5))
    floor = docker_archive_floor(cfg, data) if backend == "docker" else host_file_floor(data)
    report.add(Row(f"1 MiB write_file + read_file over MCP ({backend})", ours,
                   floor_name="put_archive + get_archive" if backend == "docker" else "host file write + read",
                   floor=floor))


async def big_file(report: Report, cfg: Config, backend: str) -> None:
    data = os.urandom(cfg.big_file_bytes)
    size = f"{cfg.big_file_bytes >> 20} MiB"
    async with SandboxManager(settings_for(backend)) as manager:
        sandbox = await manager.create()
        me = os.getpid()
        before = memory_kb(me)
        reset_peak(me)
        started = time.perf_counter()
        await sandbox.write_file("big.bin", data)
        back = await sandbox.read_file_bytes("big.bin")
        ours = (time.perf_counter() - started) * 1000
        growth = (memory_kb(me, "VmHWM") - before) / 1024
        assert back == data
        del back
    floor = docker_archive_floor(cfg, data, runs=1) if backend == "docker" else host_file_floor(data, runs=1)
    report.add(Row(f"{size} write_file + read_file, Python API ({backend})", ours,
                   floor_name="put_archive + get_archive" if backend == "docker" else "host file write + read",
                   floor=floor))
    report.add(Row(f"host RSS growth during the {size} round trip ({backend})", growth, unit="MB",
                   note=f"(the file itself: {cfg.big_file_bytes / 1e6:.0f} MB)"))


def host_file_floor(data: bytes, runs: int = 5) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.bin"

        def once() -> None:
            path.write_bytes(data)
            assert len(path.read_bytes()) == len(data)

        return sync_median_ms(once, runs, warmup=1)


def docker_archive_floor(cfg: Config, data: bytes, runs: int = 5) -> float:
    import docker

    client = docker.from_env()
    container = client.containers.run(cfg.image, ["sleep", "600"], detach=True, network_mode="none",
                                      user="root", remove=True)
    try:

        def once() -> None:
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as tar:
                info = tarfile.TarInfo("f.bin")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            container.put_archive("/tmp", buffer.getvalue())
            stream, _ = container.get_archive("/tmp/f.bin")
            received = b"".join(stream)
            assert len(received) >= len(data)

        return sync_median_ms(once, runs, warmup=1)
    finally:
        container.kill()
