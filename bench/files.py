"""write_file + read_file: 1 MiB over MCP, and a big file through the chunked channel; a download
through a stream."""

from __future__ import annotations

import base64
import io
import os
import shutil
import sys
import tarfile
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteStream

from mcp_sandbox.manager import SandboxManager
from mcp_sandbox.settings import Settings

from .config import Config
from .harness import (
    Report,
    Row,
    interleaved_medians_ms,
    mcp_sandbox,
    median_ms,
    memory_kb,
    reset_peak,
    sync_median_ms,
)


@asynccontextmanager
async def manager_for(backend: str) -> AsyncIterator[SandboxManager]:
    """A SandboxManager in this process, on a workspace root of its own, removed afterwards."""
    root = Path(tempfile.gettempdir()) / f"mcp-sandbox-bench-{uuid.uuid4().hex[:8]}"
    if backend == "docker":
        settings = Settings(backend="docker", workspace_root=root, image=os.environ.get("MCP_SANDBOX_IMAGE"))
    else:
        settings = Settings(backend="local", isolation=backend, workspace_root=root)
    try:
        async with SandboxManager(settings) as manager:
            yield manager
    finally:
        shutil.rmtree(root, ignore_errors=True)


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
    """The round trip and its floor in turn, several times (a busy machine hits both alike); the
    memory figure is the first round trip's."""
    data = os.urandom(cfg.big_file_bytes)
    size = f"{cfg.big_file_bytes >> 20} MiB"
    runs = max(1, cfg.sandbox_runs // 2)
    async with manager_for(backend) as manager, floor_for(cfg, backend, data) as floor_once:
        sandbox = await manager.create()
        me = os.getpid()
        growth = 0.0

        async def round_trip() -> None:
            nonlocal growth
            before = memory_kb(me)
            reset_peak(me)
            await sandbox.write_file("big.bin", data)
            back = await sandbox.read_file_bytes("big.bin")
            growth = growth or (memory_kb(me, "VmHWM") - before) / 1024
            assert back == data

        async def floor() -> None:
            await anyio.to_thread.run_sync(floor_once)

        medians = await interleaved_medians_ms({"ours": round_trip, "floor": floor}, runs, warmup=1)
    report.add(Row(f"{size} write_file + read_file, Python API ({backend})", medians["ours"],
                   floor_name="put_archive + get_archive" if backend == "docker" else "host file write + read",
                   floor=medians["floor"], target="<= 1.5x" if backend == "docker" else "<= 3x"))
    report.add(Row(f"host RSS growth during the {size} round trip ({backend})", growth, unit="MB",
                   note=f"(the file itself: {cfg.big_file_bytes / 1e6:.0f} MB)"))


async def stream_download(report: Report, cfg: Config, backend: str) -> None:
    """Bytes from a TCP server in the sandbox through open_stream, beside the same bytes over a
    loopback TCP connection on the host, in turn."""
    size = cfg.big_file_bytes
    async with manager_for(backend) as manager:
        sandbox = await manager.create()
        await sandbox.write_file("source.py", SOURCE)
        started = await sandbox.start_process(f"python3 source.py {size}")
        port = int((await sandbox.get_process_logs(started.process_id, wait_for="listening", timeout=30)).stdout.split()[1])
        with tempfile.TemporaryDirectory() as tmp:
            host = await anyio.open_process([sys.executable, "-c", SOURCE, str(size)], cwd=tmp)
            try:
                assert host.stdout is not None
                line = b""
                while not line.endswith(b"\n"):
                    line += await host.stdout.receive()
                host_port = int(line.split()[1])

                async def through_stream() -> None:
                    await drain(await sandbox.open_stream(port), size)

                async def loopback() -> None:
                    await drain(await anyio.connect_tcp("127.0.0.1", host_port), size)

                medians = await interleaved_medians_ms({"ours": through_stream, "floor": loopback}, max(3, cfg.runs // 10), warmup=1)
            finally:
                host.kill()
                await host.aclose()
    report.add(Row(f"{size >> 20} MiB download through open_stream ({backend})", medians["ours"],
                   floor_name="loopback TCP on the host", floor=medians["floor"],
                   note=f"({size / medians['ours'] / 1e3:.0f} MB/s)"))


# A TCP server that sends N bytes to each connection; it prints the port it listens on.
SOURCE = """
import socket, sys, threading
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
print("listening", s.getsockname()[1], flush=True)
block = b"x" * (1 << 20)
def serve(c):
    with c:
        left = int(sys.argv[1])
        while left > 0:
            left -= c.send(block[: min(left, len(block))])
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""


async def drain(stream: ByteStream, size: int) -> None:
    got = 0
    async with stream:
        while got < size:
            got += len(await stream.receive(1 << 20))


@asynccontextmanager
async def floor_for(cfg: Config, backend: str, data: bytes) -> AsyncIterator[Callable[[], None]]:
    """One floor round trip for the big file, ready to run (Docker's needs a container)."""
    if backend != "docker":
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "f.bin"

            def host_once() -> None:
                path.write_bytes(data)
                assert len(path.read_bytes()) == len(data)

            yield host_once
        return
    import docker

    container = docker.from_env().containers.run(cfg.image, ["sleep", "600"], detach=True, network_mode="none",
                                                 user="root", remove=True)
    try:
        yield lambda: archive_round_trip(container, data)
    finally:
        container.kill()


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
        return sync_median_ms(lambda: archive_round_trip(container, data), runs, warmup=1)
    finally:
        container.kill()


def archive_round_trip(container: Any, data: bytes) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("f.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    container.put_archive("/tmp", buffer.getvalue())
    stream, _ = container.get_archive("/tmp/f.bin")
    received = b"".join(stream)
    assert len(received) >= len(data)
