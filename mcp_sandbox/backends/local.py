"""The local backend: the agent as a host process, isolated with bubblewrap when available.

Each sandbox is a directory ``<workspace root>/<sandbox id>`` holding ``workspace`` (bound at
``/workspace``), ``tmp`` and ``var-tmp`` (``/tmp`` and ``/var/tmp``, private to the sandbox). Under
bubblewrap the sandbox sees only an allow-list of the host (bwrap.py), runs as an unprivileged
user when the server is root (``--sandbox-user``), has a network namespace of its own (with
slirp4netns's NAT when allowed), and everything in it dies with the server (``--die-with-parent``
and a pid namespace). Memory, CPU and processes are limited by cgroups where the host has them
(see cgroups.py), else by rlimits per process; the disk budget is kept by the server (see disk.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

from .. import agent
from ..disk import DiskBudget
from ..errors import SandboxError
from ..mounts import check_mounts
from ..settings import Settings
from ..sizes import parse_size
from . import bwrap, cgroups, slirp
from .base import AgentConfig, SandboxSpec
from .hostuser import current_user, resolve_user
from .pipes import PipeReceiveStream, PipeSendStream
from .ownership import owner_file_alive, server_alive, server_name, write_owner

logger = logging.getLogger(__name__)

SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
AGENT_DIR = str(Path(agent.__file__).resolve().parent.parent)
# The agent needs only the standard library, so the real interpreter behind a virtualenv does.
AGENT_PYTHON = os.path.realpath(sys.executable)
# What a bubblewrap sandbox shows read-only where it is on the host: the agent's package and its
# interpreter (which may live anywhere, even under /root/.pyenv).
AGENT_HOST_PATHS = bwrap.outside_system(
    [str(Path(agent.__file__).resolve().parent), sys.base_prefix, sys.base_exec_prefix, os.path.dirname(AGENT_PYTHON)]
)
# A sandbox that can import the agent can run it: what --isolation bwrap is checked with at start.
PROBE = (AGENT_PYTHON, "-I", "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); import agent.main", AGENT_DIR)


def remove_tree(path: Path) -> None:
    """Remove a sandbox directory even where the sandbox took permissions away."""

    def fix_and_retry(func: Any, failed: str, _exc: Any) -> None:
        try:
            os.chmod(os.path.dirname(failed), stat.S_IRWXU)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, stat.S_IRWXU)
            func(failed)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix_and_retry)


def processes_of(uid: int) -> int:
    return sum(1 for pid in os.listdir("/proc") if pid.isdigit() and _owner(pid) == uid)


def _owner(pid: str) -> int | None:
    try:
        return os.stat("/proc/" + pid).st_uid
    except OSError:
        return None


@dataclass
class LocalAgent:
    process: Process
    to_agent: PipeSendStream  # the channel: the agent's stdin
    from_agent: PipeReceiveStream  # and its stdout
    directory: Path
    isolation: str
    workspace: str
    cgroup: cgroups.SandboxCgroup | None = None
    network: slirp.Slirp | None = None
    disk: DiskBudget | None = None

    @property
    def receive(self) -> ByteReceiveStream:
        return self.from_agent

    @property
    def send(self) -> ByteSendStream:
        return self.to_agent

    async def watch(self) -> None:
        """Nothing to read beside the channel."""

    async def destroy(self) -> None:
        with anyio.CancelScope(shield=True):
            if self.process.returncode is None:
                if self.isolation == "none" and self.cgroup is None:
                    # Only the agent knows its processes here: closing its stdin makes it kill them.
                    await self.send.aclose()
                    with anyio.move_on_after(3):
                        await self.process.wait()
                if self.process.returncode is None:
                    # Under bubblewrap the pid namespace dies with this process, and all in it.
                    self.process.send_signal(signal.SIGKILL)
            if self.cgroup is not None:  # everything in the sandbox's cgroup, whatever it did
                await anyio.to_thread.run_sync(self.cgroup.kill)
            await self.process.wait()
            if self.network is not None:
                await self.network.close()
            if self.cgroup is not None:
                await anyio.to_thread.run_sync(self.cgroup.remove)
            await self.process.aclose()
            await self.to_agent.aclose()
            await self.from_agent.aclose()
            await anyio.to_thread.run_sync(remove_tree, self.directory)


class LocalBackend:
    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.root = settings.workspace_root.expanduser().resolve()
        self.allow_network = settings.network
        self.limits = cgroups.SandboxLimits(parse_size(settings.memory), settings.cpus, settings.pids_limit)
        self.disk_budget = parse_size(settings.disk)
        check_mounts(settings.mounts)
        # The host user sandboxes run as: never root under bubblewrap.
        self.user = resolve_user(settings.sandbox_user) if os.geteuid() == 0 else current_user()
        if os.geteuid() != 0 and "sandbox_user" in settings.model_fields_set:
            logger.warning("--sandbox-user applies only to a server running as root; sandboxes run as %s", self.user.name)
        self.bwrap = bwrap.Bubblewrap(
            self.user.uid, self.user.gid, self.root, tuple(settings.mounts), AGENT_HOST_PATHS
        )
        problem = None if settings.isolation == "none" else self.bwrap.problem(PROBE)
        self.isolation = "bwrap" if settings.isolation != "none" and problem is None else "none"
        if settings.isolation == "bwrap" and problem is not None:
            raise SandboxError("BACKEND_UNAVAILABLE", f"{problem}; or start with --isolation none")
        if self.isolation == "none":
            if settings.mounts:
                raise SandboxError(
                    "INVALID_ARGUMENT",
                    "--mount needs bubblewrap isolation (or the docker backend): without isolation a sandbox "
                    "sees the host's files at their own paths" + (f"; bubblewrap: {problem}" if problem else ""),
                )
            # Without isolation there is nothing to hide paths from another user, so commands run
            # as the server's own user, root included (README: "Security model").
            self.user = current_user()
            logger.warning(
                "local backend without isolation: commands run unisolated on this host as %s, with its "
                "network and files%s", self.user.name,
                f"; bubblewrap cannot be used: {problem}" if problem else "; install bubblewrap for isolation",
            )
        self.uid, self.gid = self.user.uid, self.user.gid
        if self.isolation == "bwrap" and self.allow_network and not slirp.available():
            raise SandboxError(
                "BACKEND_UNAVAILABLE",
                "--network on the local backend needs slirp4netns, so that sandboxes get a network of their "
                "own and not the host's; install it (apt-get install slirp4netns)",
            )
        self.use_cgroups(cgroups.detect(server_name()))

    def use_cgroups(self, found: cgroups.Cgroups | None) -> None:
        """Put sandboxes in these cgroups (None: none), and say which limits hold then."""
        self.cgroups = found
        held = found.controllers if found is not None else frozenset()
        # The disk budget is the server's to keep (disk.py), on every host.
        self.enforced = {"memory": "memory" in held, "cpus": "cpu" in held, "pids": "pids" in held, "disk": True}
        if found is None:
            logger.warning(
                "NO CGROUPS for local sandboxes here (cgroup v1 needs root; cgroup v2 a cgroup delegated to "
                "this user, or systemd --user): --memory and --pids-limit hold only per process (rlimits), "
                "--cpus not at all, and a command's descendants that drop its environment tag (env -i "
                "setsid ...) escape its timeout and kills"
            )
        elif held != frozenset(cgroups.LIMITS):
            logger.warning(
                "the cgroup controllers %s are not available to this server: those limits hold only per "
                "process (rlimits), or not at all for cpu", ", ".join(sorted(set(cgroups.LIMITS) - held))
            )

    async def start(self, spec: SandboxSpec, config: AgentConfig) -> LocalAgent:
        directory = self.root / spec.sandbox_id
        directory.mkdir(parents=True)
        bwrap.make_own_dirs(directory, self.uid, self.gid)
        write_owner(directory)
        if self.isolation == "bwrap":
            workspace, tmp = "/workspace", "/tmp"
        else:
            workspace, tmp = str(directory / "workspace"), str(directory / "tmp")
        env = {
            "PATH": SANDBOX_PATH,
            "HOME": workspace,
            "LANG": "C.UTF-8",
            "USER": self.user.name,
            "LOGNAME": self.user.name,
            "SHELL": "/bin/bash",
            "TMPDIR": tmp,
        }
        env.update(spec.env)
        uid, gid = self.uid, self.gid
        cgroup = jobs_fd = None
        if self.cgroups is not None:
            try:
                cgroup = self.cgroups.create(spec.sandbox_id, self.limits, uid, gid)
                jobs_fd = cgroup.open_jobs()
            except OSError as exc:
                if cgroup is not None:
                    await anyio.to_thread.run_sync(cgroup.remove)
                await anyio.to_thread.run_sync(remove_tree, directory)
                raise SandboxError("BACKEND_UNAVAILABLE", f"could not make the sandbox's cgroup: {exc}") from exc
        pass_fds = [] if jobs_fd is None else [jobs_fd]
        extra: dict[str, Any] = {"rlimits": self._rlimits(uid)}
        if jobs_fd is not None and cgroup is not None and cgroup.jobs is not None:
            extra["cgroup"] = {"fd": jobs_fd, "v2": cgroup.jobs[1]}
        agent_config = config.for_agent(
            spec.sandbox_id, workspace, env, state_dir=os.path.join(tmp, ".mcp-sandbox"), **extra
        )
        command = [AGENT_PYTHON, "-I", "-S", "-c", agent.BOOTSTRAP, AGENT_DIR, json.dumps(agent_config)]
        info_fd = None
        if self.isolation == "bwrap":
            info_w = None
            if spec.network and self.allow_network:
                info_fd, info_w = os.pipe()
                pass_fds.append(info_w)
            seccomp = bwrap.seccomp_fd()
            if seccomp is not None:
                pass_fds.append(seccomp)
            command = self.bwrap.command(directory, command, seccomp=seccomp, info_fd=info_w)
        if cgroup is not None:
            command = cgroups.GATE + command
        handle: LocalAgent | None = None
        # The channel's pipes are our own (pipes.py), not the subprocess streams.
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        to_agent, from_agent = PipeSendStream(stdin_w), PipeReceiveStream(stdout_r)
        try:
            try:
                process = await anyio.open_process(
                    command, stdin=stdin_r, stdout=stdout_w, stderr=None, start_new_session=True,
                    env={"PATH": SANDBOX_PATH, "LANG": "C.UTF-8"}, pass_fds=pass_fds,
                )
            except BaseException:
                await to_agent.aclose()
                await from_agent.aclose()
                raise
            finally:
                os.close(stdin_r)
                os.close(stdout_w)
            handle = LocalAgent(
                process, to_agent, from_agent, directory, self.isolation, workspace, cgroup,
                disk=DiskBudget(directory, self.disk_budget),
            )
            if cgroup is not None:
                cgroup.join(process.pid)
                await handle.send.send(b"\n")  # opens the gate: the sandbox starts in its cgroups
            if info_fd is not None:
                reports, info_fd = info_fd, None  # attach() closes it
                handle.network = await slirp.attach(reports, directory / "slirp4netns.log")
        except BaseException as exc:
            if handle is not None:
                await handle.destroy()
            elif cgroup is not None:
                await anyio.to_thread.run_sync(cgroup.remove)
            if handle is None:
                await anyio.to_thread.run_sync(remove_tree, directory)
            if isinstance(exc, (OSError, anyio.BrokenResourceError)):
                raise SandboxError("BACKEND_UNAVAILABLE", f"could not start the sandbox agent: {exc!r}") from exc
            raise
        finally:
            for fd in pass_fds + ([info_fd] if info_fd is not None else []):
                os.close(fd)
        return handle

    def _rlimits(self, uid: int) -> dict[str, int]:
        """Hard limits for everything in a sandbox: no file beyond the disk budget; and where no
        cgroup limits the sandbox, memory per process (RLIMIT_DATA: unlike RLIMIT_AS it leaves alone
        the address space that V8 and others reserve without using) and the processes of its user
        (those it has now plus the limit: RLIMIT_NPROC counts all of them, and never for root)."""
        limits = {"FSIZE": self.disk_budget}
        if not self.enforced["memory"]:
            limits["DATA"] = self.limits.memory
        if not self.enforced["pids"]:
            limits["NPROC"] = processes_of(uid) + self.limits.pids
        return limits

    async def reap_orphans(self) -> None:
        """Remove sandbox directories and cgroups whose server is no longer running."""
        if self.cgroups is not None:
            await anyio.to_thread.run_sync(self.cgroups.reap, server_alive)
        for directory in self.root.iterdir() if self.root.is_dir() else ():
            if owner_file_alive(directory):
                continue
            logger.info("removing %s, left by a server that is gone", directory)
            await anyio.to_thread.run_sync(remove_tree, directory)
