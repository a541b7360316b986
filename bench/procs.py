"""Readings from /proc: process trees, their memory (PSS) and CPU time, and the host's."""

from __future__ import annotations

import os
import statistics

from .harness import memory_kb


def children_by_parent() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # the command name may hold spaces
        kids.setdefault(ppid, []).append(int(name))
    return kids


def tree(pid: int, kids: dict[int, list[int]]) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(kids.get(p, ()))
    return found


def pss_kb(pid: int) -> int:
    """Proportional set size: a page shared by n processes counts 1/n in each."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:  # gone meanwhile
        pass
    return 0


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def local_sandbox_roots(server_pid: int, kids: dict[int, list[int]]) -> list[int]:
    """The server's children that are sandboxes: bubblewrap, the cgroup gate before it, or (without
    isolation) the agent."""
    return [p for p in kids.get(server_pid, ()) if any(m in cmdline(p) for m in ("bwrap", "mcp-sandbox-gate", "agent.main"))]


def local_memory(server_pid: int) -> tuple[list[int], float]:
    """PSS per sandbox (kB) and processes per sandbox."""
    kids = children_by_parent()
    trees = [tree(root, kids) for root in local_sandbox_roots(server_pid, kids)]
    per_tree = [sum(pss_kb(p) for p in t) for t in trees]
    return per_tree, statistics.mean(len(t) for t in trees) if trees else 0.0


def container_pids(sandbox_ids: list[str]) -> list[int]:
    """The host pid of each sandbox's container's first process (where it runs)."""
    import docker

    client = docker.from_env()
    pids = (client.api.inspect_container(f"mcp-sandbox-{sid}")["State"]["Pid"] for sid in sandbox_ids)
    return [pid for pid in pids if pid]


def docker_memory(sandbox_ids: list[str]) -> tuple[list[int], float, list[int]]:
    """PSS per container (its processes as the host sees them), processes per container, and the
    PSS of each container's shim."""
    kids = children_by_parent()
    per, counts, shims = [], [], []
    for pid in container_pids(sandbox_ids):
        procs = tree(pid, kids)
        per.append(sum(pss_kb(p) for p in procs))
        counts.append(len(procs))
        shims.append(pss_kb(parent_of(pid)))
    return per, statistics.mean(counts) if counts else 0.0, shims


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def engine_pids() -> list[int]:
    """dockerd's and containerd's processes (none where they are not visible)."""
    return [int(name) for name in os.listdir("/proc")
            if name.isdigit() and cmdline(int(name)).split(" ")[0].rsplit("/", 1)[-1] in ("dockerd", "containerd")]


def engine_rss_kb() -> int:
    """dockerd's and containerd's RSS together."""
    total = 0
    for pid in engine_pids():
        try:
            total += memory_kb(pid)
        except (OSError, KeyError):
            pass
    return total


def threads(pid: int) -> int:
    return memory_kb(pid, "Threads")


def cpu_ms(pid: int, children: bool = False) -> float:
    """The CPU time (user and system) a process used so far; with ``children``, also that of
    the children it waited for."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    used = sum(int(v) for v in fields[11:15 if children else 13])
    return used * 1000 / os.sysconf("SC_CLK_TCK")


def sandboxes_cpu_ms(server_pid: int, containers: list[int] | None = None) -> float:
    """The CPU time of the sandboxes' processes, those they waited for included: the local ones
    under the server, or the containers under these inits with their shims and the engine."""
    kids = children_by_parent()
    if containers is None:
        pids = [p for root in local_sandbox_roots(server_pid, kids) for p in tree(root, kids)]
    else:
        alive = [pid for pid in containers if os.path.exists(f"/proc/{pid}")]
        pids = [p for pid in alive for p in tree(pid, kids)] + [parent_of(pid) for pid in alive] + engine_pids()
    return sum(cpu_ms(p, children=True) for p in pids)


def host_cpu_ms() -> float:
    """The CPU time all processes of the host used so far (not idle, not waiting)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) * 1000 / os.sysconf("SC_CLK_TCK")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def memory_kb_of_host(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)
