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
    return [sum(pss_kb(p) for p in t) for t in trees], statistics.mean(len(t) for t in trees) if trees else 0.0


def docker_memory(sandbox_ids: list[str]) -> tuple[list[int], float, list[int]]:
    """PSS per container (its processes as the host sees them), processes per container, and the
    PSS of each container's shim."""
    import docker

    client = docker.from_env()
    kids = children_by_parent()
    per, counts, shims = [], [], []
    for sid in sandbox_ids:
        pid = client.api.inspect_container(f"mcp-sandbox-{sid}")["State"]["Pid"]
        if not pid:
            continue
        procs = tree(pid, kids)
        per.append(sum(pss_kb(p) for p in procs))
        counts.append(len(procs))
        shims.append(pss_kb(parent_of(pid)))
    return per, statistics.mean(counts) if counts else 0.0, shims


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def engine_rss_kb() -> int:
    """dockerd's and containerd's RSS together (0 where they are not visible)."""
    total = 0
    for name in os.listdir("/proc"):
        if name.isdigit() and cmdline(int(name)).split(" ")[0].rsplit("/", 1)[-1] in ("dockerd", "containerd"):
            try:
                total += memory_kb(int(name))
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


def sandboxes_cpu_ms(server_pid: int) -> float:
    """The CPU time of the local sandboxes' processes, those they waited for included."""
    kids = children_by_parent()
    return sum(cpu_ms(p, children=True) for root in local_sandbox_roots(server_pid, kids) for p in tree(root, kids))


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
