"""Soak: many cycles of create_sandbox, exec, run_code, start_process and destroy over MCP, against
the real server command, measuring what the server holds before and after and what it leaves.

    python -m bench.soak [--cycles 500] [--concurrency 5] [--backend bwrap|none|docker ...]

tests/test_soak.py runs a short form (50 cycles per backend) with the same code and asserts on it.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from mcp_sandbox.backends.docker import LABEL_SERVER
from mcp_sandbox.backends.ownership import process_start_time

from .harness import Server, mcp_sandbox

WARMUP = 2  # rounds of `concurrency` cycles before the first reading
IMAGE = os.environ.get("MCP_SANDBOX_TEST_IMAGE") or "mcp-sandbox-test:latest"


@dataclass
class Usage:
    """What the server process holds: open descriptors, threads and resident memory."""

    fds: int
    threads: int
    rss_kb: int

    @classmethod
    def of(cls, pid: int) -> Usage:
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        return cls(len(os.listdir(f"/proc/{pid}/fd")), int(status["Threads"]), int(status["VmRSS"].split()[0]))


@dataclass
class Leftovers:
    """What a server still holds once every sandbox it made is destroyed: should all be empty."""

    processes: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    directories: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.processes or self.containers or self.directories or self.cgroups)


@dataclass
class SoakResult:
    backend: str
    cycles: int
    seconds: float
    before: Usage
    after: Usage
    leftovers: Leftovers
    errors: list[str]
    alive: Leftovers  # what the same checks found while one sandbox lived: proves they see things
    after_exit: list[str]  # the server's own cgroups still there once it exited


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc's parent links (only this server's children count)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            line = f.read().replace(b"\0", b" ").decode(errors="replace")
        return f"{pid}: {line[:120]}"
    except OSError:
        return f"{pid}: (gone)"


def server_cgroups(pid: int) -> list[Path]:
    """The server's own cgroups (cgroups.py: <mount>/mcp-sandbox/srv-<pid>-<start time>)."""
    owner = f"srv-{pid}-{process_start_time(pid)}"
    bases = [*Path("/sys/fs/cgroup").glob("*/mcp-sandbox"), Path("/sys/fs/cgroup/mcp-sandbox")]
    return [base / owner for base in bases if (base / owner).is_dir()]


def cgroups_of(pid: int) -> list[str]:
    """Sandbox cgroups still under the server's own."""
    return [str(p) for server in server_cgroups(pid) for p in server.iterdir() if p.is_dir()]


def containers_of(pid: int) -> list[str]:
    import docker

    owner = f"{socket.gethostname()}:{pid}:{process_start_time(pid)}"
    client = docker.from_env(timeout=30)
    try:
        found = client.api.containers(all=True, filters={"label": f"{LABEL_SERVER}={owner}"})
    finally:
        client.close()
    return [c["Id"][:12] for c in found]


def leftovers(server: Server, backend: str) -> Leftovers:
    return Leftovers(
        processes=[describe(p) for p in descendants(server.pid)],
        containers=containers_of(server.pid) if backend == "docker" else [],
        directories=sorted(str(p) for p in server.root.iterdir()) if server.root.exists() else [],
        cgroups=cgroups_of(server.pid),
    )


async def cycle(server: Server, n: int) -> None:
    """One sandbox's life, each step checked."""
    sid = (await server.call("create_sandbox"))["sandbox_id"]
    try:
        r = await server.call("exec", command=f"echo cycle {n}", sandbox_id=sid)
        assert r["stdout"] == f"cycle {n}\n", r
        r = await server.call("run_code", code=f"print({n} * 2)", sandbox_id=sid)
        assert r["stdout"] == f"{n * 2}\n", r
        # Still running when the sandbox goes: destroy must take it along.
        await server.call("start_process", command="sleep 300", process_id="sleeper", sandbox_id=sid)
    finally:
        await server.call("destroy", sandbox_id=sid)


async def settle(server: Server, backend: str, seconds: float = 20) -> Leftovers:
    """Leftovers once the server had time to finish removals it does in the background."""
    deadline = time.monotonic() + seconds
    while True:
        found = leftovers(server, backend)
        if found.empty() or time.monotonic() > deadline:
            return found
        await anyio.sleep(0.2)


async def soak(backend: str, cycles: int, concurrency: int = 5) -> SoakResult:
    args = ["--image", IMAGE] if backend == "docker" else []
    async with mcp_sandbox(backend, "--max-sandboxes", str(concurrency + 1), *args) as server:
        errors: list[str] = []

        async def run(numbers: range) -> None:
            for n in numbers:
                try:
                    await cycle(server, n)
                except Exception as exc:  # counted and reported: the soak goes on
                    errors.append(f"cycle {n}: {exc!r}")

        async def batch(first: int, count: int) -> None:
            async with anyio.create_task_group() as tg:
                for lane in range(concurrency):
                    tg.start_soon(run, range(first + lane, first + count, concurrency))

        await batch(0, WARMUP * concurrency)
        sid = (await server.call("create_sandbox"))["sandbox_id"]
        await server.call("start_process", command="sleep 300", sandbox_id=sid)
        alive = leftovers(server, backend)
        await server.call("destroy", sandbox_id=sid)
        await settle(server, backend)
        before = Usage.of(server.pid)
        started = time.monotonic()
        await batch(WARMUP * concurrency, cycles)
        seconds = time.monotonic() - started
        found = await settle(server, backend)
        after = Usage.of(server.pid)
        own = server_cgroups(server.pid)
    deadline = time.monotonic() + 10
    while any(p.exists() for p in own) and time.monotonic() < deadline:
        await anyio.sleep(0.1)
    return SoakResult(backend, cycles, seconds, before, after, found, errors, alive, [str(p) for p in own if p.exists()])


def summary(r: SoakResult) -> str:
    return (
        f"{r.backend}: {r.cycles} cycles in {r.seconds:.1f} s ({r.cycles / r.seconds:.1f}/s), {len(r.errors)} errors; "
        f"fds {r.before.fds}->{r.after.fds}, threads {r.before.threads}->{r.after.threads}, "
        f"RSS {r.before.rss_kb / 1024:.1f}->{r.after.rss_kb / 1024:.1f} MB; "
        f"left behind: {'nothing' if r.leftovers.empty() else r.leftovers}"
        + (f"; after its exit: {r.after_exit}" if r.after_exit else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=5)
    parser.add_argument("--backend", action="append", choices=["bwrap", "none", "docker"])
    args = parser.parse_args()
    failed = False
    for backend in args.backend or ["bwrap", "none", "docker"]:
        result = anyio.run(soak, backend, args.cycles, args.concurrency)
        print(summary(result), flush=True)
        for error in result.errors[:5]:
            print("  ", error)
        failed |= bool(result.errors) or not result.leftovers.empty() or bool(result.after_exit)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
