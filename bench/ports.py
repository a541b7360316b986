"""expose_port: an HTTP request, a big download and many connections at once through the door,
each beside the same server reached directly on the host's loopback (the floor)."""

from __future__ import annotations

import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from anyio.abc import ByteStream

from .config import Config
from .harness import Report, Row, interleaved_medians_ms, mcp_sandbox

# The same server on both sides: threads, and a backlog that takes 100 connections at once (the
# standard library's default of 5 would measure SYN retries, not the door).
SERVER = """\
import functools, http.server, sys
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True
class Quiet(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keeps connections open for the kept-alive measurement
    disable_nagle_algorithm = True  # head and body are two writes: no 40 ms wait for an ACK
    def log_message(self, *args):
        pass
handler = functools.partial(Quiet, directory=sys.argv[2])
server = Server(("127.0.0.1", int(sys.argv[1])), handler)
print("serving", flush=True)
server.serve_forever()
"""
CONCURRENT = 100


def free_port() -> int:
    with socket.socket() as s:  # without isolation the sandbox's loopback is the host's
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def get(port: int, path: str) -> int:
    """One GET on a new connection, closed after it; the bytes of the answer."""
    total = 0
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        try:
            while True:
                total += len(await stream.receive(1 << 20))
        except anyio.EndOfStream:
            return total


class KeptAlive:
    """GETs one after another on one open connection."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream

    async def get(self, path: str) -> int:
        await self.stream.send(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += await self.stream.receive()
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += await self.stream.receive()
        return len(body)


async def many(port: int) -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(CONCURRENT):
            tg.start_soon(get, port, "/small.txt")


def attach_stream_mb_s(cfg: Config, size: int) -> float:
    """Docker's floor: ``size`` bytes a container writes to stdout (in 256 KiB writes, as the
    agent's stream chunks), read raw from the engine's attach socket, from first byte to last."""
    import docker

    client = docker.from_env()
    container = client.containers.create(
        cfg.image, ["sh", "-c", f"sleep 0.3; dd if=/dev/zero bs=256k count={size // (256 << 10)} 2>/dev/null"],
        stdin_open=True, network_mode="none", log_config={"type": "none", "config": {}},
        labels={"mcp-sandbox.bench": "attach-floor"},
    )
    try:
        sock = container.attach_socket(params={"stdin": 1, "stdout": 1, "stream": 1})
        raw = getattr(sock, "_sock", sock)
        container.start()
        buffer = memoryview(bytearray(1 << 20))
        raw.recv_into(buffer)  # the first bytes: the clock starts
        started, received = time.perf_counter(), 0
        while n := raw.recv_into(buffer):
            received += n
        # The engine's 8-byte frame headers count too: a few hundredths of a percent.
        return received / 1e6 / (time.perf_counter() - started)
    finally:
        container.remove(force=True)


async def exposed_ports(report: Report, cfg: Config, backend: str) -> None:
    size = cfg.big_file_bytes
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp)
        (site / "small.txt").write_bytes(b"x" * 100)
        (site / "server.py").write_text(SERVER)
        direct = free_port()
        floor = subprocess.Popen([sys.executable, str(site / "server.py"), str(direct), str(site)],
                                 stdout=subprocess.PIPE)
        try:
            assert floor.stdout is not None and floor.stdout.readline() == b"serving\n"
            async with mcp_sandbox(backend) as server:
                port = free_port()
                await server.call("write_file", path="server.py", content=SERVER)
                await server.call("exec", command="mkdir -p site && head -c 100 /dev/zero | tr '\\0' x > site/small.txt")
                await server.call("start_process", command=f"exec python3 -u server.py {port} site", process_id="web")
                await server.call("get_process_logs", process_id="web", wait_for="serving", timeout=30)
                door = (await server.call("expose_port", port=port))["host_port"]
                assert await get(door, "/small.txt") == await get(direct, "/small.txt")

                latency = await interleaved_medians_ms(
                    {"door": lambda: get(door, "/small.txt"), "direct": lambda: get(direct, "/small.txt")}, cfg.runs * 2
                )
                report.add(Row(f"HTTP GET through expose_port, new connection ({backend})", latency["door"],
                               floor_name="the same server on host loopback", floor=latency["direct"],
                               target="<= +1 ms", note=f"(+{latency['door'] - latency['direct']:.2f} ms)"))
                async with await anyio.connect_tcp("127.0.0.1", door) as a, \
                        await anyio.connect_tcp("127.0.0.1", direct) as b:
                    through, beside = KeptAlive(a), KeptAlive(b)
                    kept = await interleaved_medians_ms(
                        {"door": lambda: through.get("/small.txt"), "direct": lambda: beside.get("/small.txt")},
                        cfg.runs * 2,
                    )
                report.add(Row(f"HTTP GET through expose_port, kept-alive connection ({backend})", kept["door"],
                               floor_name="the same server on host loopback", floor=kept["direct"],
                               target="<= +1 ms", note=f"(+{kept['door'] - kept['direct']:.2f} ms)"))

                # The big files only now: their writeback would load the machine while latency is measured.
                (site / "big.bin").write_bytes(bytes(size))
                await server.call("exec", command=f"head -c {size} /dev/zero > site/big.bin")
                runs = max(1, cfg.sandbox_runs // 3)
                download = await interleaved_medians_ms(
                    {"door": lambda: get(door, "/big.bin"), "direct": lambda: get(direct, "/big.bin")}, runs, warmup=1
                )
                mb = size / 1e6
                report.add(Row(f"{mb:.0f} MB download through expose_port ({backend})", mb / download["door"] * 1000,
                               unit="MB/s", floor_name="host loopback", floor=mb / download["direct"] * 1000,
                               target=">= 200 MB/s"))
                if backend == "docker":  # what the agent channel runs through, alone
                    rates = [await anyio.to_thread.run_sync(attach_stream_mb_s, cfg, size) for _ in range(3)]
                    report.add(Row(f"{mb:.0f} MB through Docker's attach stream alone ({backend})",
                                   statistics.median(rates), unit="MB/s", note="(dd in a container, read raw)"))

                concurrent = await interleaved_medians_ms({"door": lambda: many(door), "direct": lambda: many(direct)},
                                                          max(3, cfg.sandbox_runs // 2), warmup=1)
                report.add(Row(f"{CONCURRENT} concurrent GETs through expose_port ({backend})", concurrent["door"],
                               floor_name="host loopback", floor=concurrent["direct"], target="all answered"))
        finally:
            floor.kill()
            floor.wait()
