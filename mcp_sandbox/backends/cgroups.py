"""Cgroups for local sandboxes: their memory, CPU and process limits, and the cgroup of each job
through which the agent's kills reach everything a command started.

Every sandbox gets the cgroup ``<base>/srv-<server pid>-<start time>/<sandbox id>`` in each
hierarchy used; the server part lets a server remove what servers that are gone left (``reap``).

- cgroup v1, only as root: ``<mount>/mcp-sandbox`` in the memory, pids and cpu hierarchies.
- cgroup v2: ``<mount>/mcp-sandbox`` as root (as Docker's cgroupfs driver does); otherwise the
  server's own cgroup if it is delegated to the server's user and holds only the server (a systemd
  service with ``Delegate=yes``, a container with a cgroup tree of its own); otherwise a scope
  made for the server by ``systemd-run --user --scope -p Delegate=yes``. A limit holds where its
  controller can be enabled there (``enforced``).
- A hybrid host (v1 controllers beside a v2 tree without any) takes its limits from v1 and tracks
  jobs in the v2 tree, whose ``cgroup.kill`` kills a job at once.

A sandbox's processes are in its cgroups from their first instruction: the backend starts the
sandbox through a gate (``GATE``), writes the gate's pid into the cgroups, and only then opens the
gate, so bubblewrap (whose cgroup namespace is rooted there) and all it starts are inside.

The agent makes one child cgroup per job in the sandbox's cgroup of the tracking hierarchy. That
directory (and on v2 its ``cgroup.procs``, which moving a process between its children requires)
is made over to the sandbox's user, and the agent gets it as an open descriptor (see agent/jobs.py).
"""

from __future__ import annotations

import atexit
import errno
import functools
import logging
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

LIMITS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
# Started instead of the sandbox's first program, which it becomes once a line arrives on stdin.
GATE = ["/bin/sh", "-c", 'read -r _ && exec "$@"', "mcp-sandbox-gate"]


@dataclass(frozen=True)
class Tree:
    """One cgroup hierarchy as this server uses it."""

    path: Path  # this server's cgroup in it: <base>/srv-...
    v2: bool
    controllers: frozenset[str]  # the limits (of LIMITS) set in it


@dataclass(frozen=True)
class SandboxLimits:
    memory: int  # bytes
    cpus: float
    pids: int


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


@dataclass
class SandboxCgroup:
    """A sandbox's cgroups, one per hierarchy used."""

    dirs: list[tuple[Tree, Path]]
    jobs: tuple[Path, bool] | None  # the directory the agent makes job cgroups in, and whether it is v2

    def join(self, pid: int) -> None:
        """Move a process (the gate) into the sandbox's cgroups."""
        for _tree, directory in self.dirs:
            _write(directory / "cgroup.procs", str(pid))

    def open_jobs(self) -> int | None:
        """A descriptor of the job directory, for the agent."""
        return None if self.jobs is None else os.open(self.jobs[0], os.O_RDONLY | os.O_DIRECTORY)

    def kill(self) -> None:
        """Kill everything in the sandbox's cgroups (blocking: a thread)."""
        for tree, directory in self.dirs:
            kill_all(directory, tree.v2)

    def remove(self) -> None:
        """Kill what is left and remove the cgroups (blocking: a thread)."""
        self.kill()
        for _tree, directory in self.dirs:
            remove_tree(directory)


@dataclass
class Cgroups:
    """The cgroups a server puts its sandboxes in."""

    trees: list[Tree]
    tracker: Tree | None  # where job cgroups are made
    keep: list[subprocess.Popen[bytes]] = field(default_factory=list)  # holds a systemd scope open

    @property
    def controllers(self) -> frozenset[str]:
        return frozenset().union(*(tree.controllers for tree in self.trees))

    def create(self, sandbox_id: str, limits: SandboxLimits, uid: int, gid: int) -> SandboxCgroup:
        """Make a sandbox's cgroups with its limits, the job directory made over to ``uid``."""
        cgroup = SandboxCgroup([], None)
        try:
            for tree in self.trees:
                directory = tree.path / sandbox_id
                directory.mkdir()
                cgroup.dirs.append((tree, directory))
                for controller in sorted(tree.controllers):
                    for name, value in _limit_files(controller, tree.v2, limits):
                        if name.endswith("swap.limit_in_bytes") or name.endswith("swap.max"):
                            if not (directory / name).exists():
                                continue  # no swap accounting here: nothing to turn off
                        _write(directory / name, value)
                if tree is self.tracker:
                    cgroup.jobs = (directory, tree.v2)
                    os.chown(directory, uid, gid)
                    if tree.v2:
                        os.chown(directory / "cgroup.procs", uid, gid)
        except OSError:
            cgroup.remove()
            raise
        return cgroup

    def reap(self, alive: Callable[[str], bool]) -> None:
        """Kill and remove what servers that are gone left (``alive`` gets a ``srv-...`` name)."""
        for tree in self.trees:
            for directory in tree.path.parent.iterdir():
                if directory.is_dir() and directory.name.startswith("srv-") and directory != tree.path:
                    if not alive(directory.name):
                        logger.info("removing cgroup %s, left by a server that is gone", directory)
                        kill_all(directory, tree.v2)
                        remove_tree(directory)


def _limit_files(controller: str, v2: bool, limits: SandboxLimits) -> list[tuple[str, str]]:
    quota = max(1000, int(limits.cpus * CPU_PERIOD_US))
    if v2:
        return {
            "memory": [("memory.max", str(limits.memory)), ("memory.swap.max", "0")],
            "pids": [("pids.max", str(limits.pids))],
            "cpu": [("cpu.max", f"{quota} {CPU_PERIOD_US}")],
        }[controller]
    return {
        # memsw (memory + swap) after memory: no swap on top of the limit, as with Docker.
        "memory": [("memory.limit_in_bytes", str(limits.memory)), ("memory.memsw.limit_in_bytes", str(limits.memory))],
        "pids": [("pids.max", str(limits.pids))],
        "cpu": [("cpu.cfs_period_us", str(CPU_PERIOD_US)), ("cpu.cfs_quota_us", str(quota))],
    }[controller]


def members(directory: Path) -> list[int]:
    """Pids in a cgroup and all its descendants."""
    pids: list[int] = []
    for root, _dirs, _files in os.walk(directory):
        try:
            pids.extend(int(pid) for pid in _read(Path(root) / "cgroup.procs").split())
        except OSError:
            pass  # removed meanwhile
    return pids


def kill_all(directory: Path, v2: bool) -> None:
    """SIGKILL everything in a cgroup tree and wait until it is empty (a few seconds at most)."""
    if v2:
        try:
            _write(directory / "cgroup.kill", "1")
        except OSError:
            pass  # before Linux 5.14: one by one below
    deadline = time.monotonic() + 5
    while (pids := members(directory)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.002)


def remove_tree(directory: Path) -> None:
    """Remove a cgroup and its children, deepest first; a cgroup whose last processes are still
    exiting is busy for a moment."""
    for root, _dirs, _files in os.walk(directory, topdown=False):
        deadline = time.monotonic() + 2
        while True:
            try:
                os.rmdir(root)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    logger.warning("could not remove cgroup %s: %s", root, exc)
                    break
                time.sleep(0.01)


# -- finding the hierarchies ---------------------------------------------------------------------


@functools.cache  # once per server process: it may start a systemd scope
def detect(owner: str) -> Cgroups | None:
    """The cgroups this server can use, made ready (``owner``: its ``srv-...`` name), or None.
    They are removed when the process exits, once its sandboxes' are (a server killed before
    that leaves them to the next server's ``reap``)."""
    found = _detect(owner)
    if found is not None:
        _OWN.extend(tree.path for tree in found.trees)
        atexit.register(remove_own)
    return found


_OWN: list[Path] = []  # this process's cgroups, made by detect


def remove_own() -> None:
    """Remove this process's cgroups, at its exit (cli.py's ends with os._exit, without atexit)."""
    while _OWN:
        try:
            _OWN.pop().rmdir()
        except OSError:  # still in use (a sandbox was not destroyed): the next server reaps it
            pass


def _detect(owner: str) -> Cgroups | None:
    mounts = [line.split() for line in _read(Path("/proc/self/mounts")).splitlines()]
    trees: list[Tree] = []
    if os.geteuid() == 0:
        for point, fstype, options in ((m[1], m[2], m[3]) for m in mounts if len(m) > 3):
            controllers = frozenset(options.split(",")) & frozenset(LIMITS)
            if fstype == "cgroup" and controllers:
                tree = _v1_tree(Path(point) / "mcp-sandbox" / owner, controllers)
                if tree is not None:
                    trees.append(tree)
    v2_mount = next((Path(m[1]) for m in mounts if len(m) > 2 and m[2] == "cgroup2"), None)
    if v2_mount is not None:
        taken = frozenset().union(*(tree.controllers for tree in trees))
        tree, keep = _v2_tree(v2_mount, owner, frozenset(LIMITS) - taken)
        if tree is not None:
            return Cgroups(trees + [tree], tree, keep)
    if not trees:
        return None
    return Cgroups(trees, next((tree for tree in trees if "pids" in tree.controllers), trees[0]))


def _v1_tree(path: Path, controllers: frozenset[str]) -> Tree | None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        logger.debug("cgroup v1 %s is not usable: %s", path, exc)
        return None
    return Tree(path, False, controllers)


def _v2_tree(mount: Path, owner: str, wanted: frozenset[str]) -> tuple[Tree | None, list[subprocess.Popen[bytes]]]:
    """This server's cgroup in the v2 tree, with the ``wanted`` controllers that can be had."""
    keep: list[subprocess.Popen[bytes]] = []
    try:
        if os.geteuid() == 0:
            base = mount / "mcp-sandbox"
            base.mkdir(exist_ok=True)
        else:
            own = mount / _read(Path("/proc/self/cgroup")).split("0::/", 1)[1].splitlines()[0]
            if _delegated_to_us(own):
                base = own
                _move_out(base, [os.getpid()])
            else:
                scope = _systemd_scope(mount, owner)
                if scope is None:
                    return None, keep
                base, placeholder = scope
                keep.append(placeholder)
                _move_out(base, [placeholder.pid])
        path = base / owner
        path.mkdir(exist_ok=True)
        enabled = _enable(base, wanted) & _enable(path, wanted)
    except (OSError, IndexError) as exc:
        logger.debug("cgroup v2 under %s is not usable: %s", mount, exc)
        for placeholder in keep:
            placeholder.kill()
        return None, []
    return Tree(path, True, enabled), keep


def _delegated_to_us(cgroup: Path) -> bool:
    """Our user may manage this cgroup, and the server is alone in it."""
    writable = all(os.access(cgroup / name, os.W_OK) for name in ("", "cgroup.procs", "cgroup.subtree_control"))
    return writable and _read(cgroup / "cgroup.procs").split() == [str(os.getpid())]


def _move_out(cgroup: Path, pids: list[int]) -> None:
    """Move the processes of a cgroup into a leaf of it, so that it may enable controllers for
    its children (v2 allows processes only in leaves then)."""
    leaf = cgroup / "server"
    leaf.mkdir(exist_ok=True)
    for pid in pids:
        _write(leaf / "cgroup.procs", str(pid))


def _enable(cgroup: Path, wanted: frozenset[str]) -> frozenset[str]:
    """Enable the wanted controllers for the cgroup's children, as far as its parent offers them."""
    offered = frozenset(_read(cgroup / "cgroup.controllers").split()) & wanted
    for controller in offered:
        try:
            _write(cgroup / "cgroup.subtree_control", "+" + controller)
        except OSError as exc:
            logger.debug("cannot enable %s in %s: %s", controller, cgroup, exc)
    return frozenset(_read(cgroup / "cgroup.subtree_control").split()) & wanted


def _systemd_scope(mount: Path, owner: str) -> tuple[Path, subprocess.Popen[bytes]] | None:
    """A scope delegated to us by the user's systemd, held open by a placeholder that ends when
    the server does (its stdin closes). Sandboxes keep the scope alive until they end too."""
    try:
        placeholder = subprocess.Popen(
            ["systemd-run", "--user", "--scope", "--quiet", "--collect", "-p", "Delegate=yes",
             f"--unit=mcp-sandbox-{owner}", "--", "/bin/sh", "-c", "grep ^0:: /proc/self/cgroup && read -r _"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
    except OSError:
        return None
    assert placeholder.stdout is not None
    ready, _, _ = select.select([placeholder.stdout], [], [], 5)
    line = placeholder.stdout.readline().decode() if ready else ""
    if not line.startswith("0::/"):
        placeholder.kill()
        placeholder.wait()
        return None
    return mount / line[4:].strip(), placeholder
