"""The local backend: the agent as a host process, isolated with bubblewrap when available.

Each sandbox is a directory ``<workspace root>/<sandbox id>`` holding ``workspace`` (bound at
``/workspace``), ``tmp`` and ``var-tmp`` (``/tmp`` and ``/var/tmp``, private to the sandbox). Under
bubblewrap the sandbox sees only an allow-list of the host (bwrap.py), runs as an unprivileged
user when the server is root (``--sandbox-user``), has no network unless allowed, and everything
in it dies with the server (``--die-with-parent`` and a pid namespace).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

from .. import agent
from ..errors import SandboxError
from ..mounts import check_mounts
from ..settings import Settings
from . import bwrap
from .base import AgentConfig, SandboxSpec
from .hostuser import current_user, resolve_user

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
OWNER_FILE = "owner.json"


def process_start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


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


@dataclass
class LocalAgent:
    process: Process
    directory: Path
    isolation: str
    workspace: str

    @property
    def receive(self) -> ByteReceiveStream:
        assert self.process.stdout is not None
        return self.process.stdout

    @property
    def send(self) -> ByteSendStream:
        assert self.process.stdin is not None
        return self.process.stdin

    async def destroy(self) -> None:
        with anyio.CancelScope(shield=True):
            if self.process.returncode is None:
                if self.isolation == "none":
                    # Only the agent knows its processes here: closing its stdin makes it kill them.
                    await self.send.aclose()
                    with anyio.move_on_after(3):
                        await self.process.wait()
                if self.process.returncode is None:
                    # Under bubblewrap the pid namespace dies with this process, and all in it.
                    self.process.send_signal(signal.SIGKILL)
                    await self.process.wait()
            await self.process.aclose()
            await anyio.to_thread.run_sync(remove_tree, self.directory)


class LocalBackend:
    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.root = settings.workspace_root.expanduser().resolve()
        self.allow_network = settings.network
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

    def resource_limits(self) -> dict[str, Any]:
        return {}  # no memory, CPU or process limit of its own (README, "Security model")

    async def start(self, spec: SandboxSpec, config: AgentConfig) -> LocalAgent:
        directory = self.root / spec.sandbox_id
        directory.mkdir(parents=True)
        bwrap.make_own_dirs(directory, self.uid, self.gid)
        (directory / OWNER_FILE).write_text(
            json.dumps({"pid": os.getpid(), "start_time": process_start_time(os.getpid())})
        )
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
        agent_config = config.for_agent(
            spec.sandbox_id, workspace, env, state_dir=os.path.join(tmp, ".mcp-sandbox")
        )
        command = [AGENT_PYTHON, "-I", "-S", "-c", agent.BOOTSTRAP, AGENT_DIR, json.dumps(agent_config)]
        seccomp = None
        if self.isolation == "bwrap":
            seccomp = bwrap.seccomp_fd()
            command = self.bwrap.command(directory, command, network=spec.network and self.allow_network, seccomp=seccomp)
        try:
            process = await anyio.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, start_new_session=True,
                env={"PATH": SANDBOX_PATH, "LANG": "C.UTF-8"}, pass_fds=() if seccomp is None else (seccomp,),
            )
        except OSError as exc:
            await anyio.to_thread.run_sync(remove_tree, directory)
            raise SandboxError("BACKEND_UNAVAILABLE", f"could not start the sandbox agent: {exc}") from exc
        finally:
            if seccomp is not None:
                os.close(seccomp)
        return LocalAgent(process, directory, self.isolation, workspace)

    async def reap_orphans(self) -> None:
        """Remove sandbox directories whose server is no longer running."""
        if not self.root.is_dir():
            return
        for directory in self.root.iterdir():
            try:
                owner = json.loads((directory / OWNER_FILE).read_text())
            except (OSError, ValueError):
                owner = {}
            pid = owner.get("pid")
            if isinstance(pid, int) and process_start_time(pid) == owner.get("start_time") and pid != 0:
                continue
            logger.info("removing %s, left by a server that is gone", directory)
            await anyio.to_thread.run_sync(remove_tree, directory)
