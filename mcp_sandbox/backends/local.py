"""The local backend: the agent as a host process, isolated with bubblewrap when available.

Each sandbox is a directory ``<workspace root>/<sandbox id>`` holding ``workspace`` (bound at
``/workspace``) and ``tmp`` (bound at ``/tmp``, private to the sandbox). Under bubblewrap the rest
of the host is read-only, other sandboxes' directories are hidden, the network is unshared unless
allowed, and everything dies with the server (``--die-with-parent`` and a pid namespace).
"""

from __future__ import annotations

import getpass
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
from ..settings import Settings
from .base import AgentConfig, SandboxSpec

logger = logging.getLogger(__name__)

SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
AGENT_DIR = str(Path(agent.__file__).resolve().parent.parent)
# The agent needs only the standard library, so the real interpreter behind a virtualenv does.
AGENT_PYTHON = os.path.realpath(sys.executable)
OWNER_FILE = "owner.json"
_bwrap_usable: bool | None = None


def bwrap_usable() -> bool:
    """bubblewrap is installed and can make namespaces here (it cannot in some containers)."""
    global _bwrap_usable
    if _bwrap_usable is None:
        exe = shutil.which("bwrap")
        _bwrap_usable = exe is not None and (
            subprocess.run(
                [exe, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10,
            ).returncode == 0
        )
    return _bwrap_usable


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
        if settings.isolation == "none":
            self.isolation = "none"
        elif bwrap_usable():
            self.isolation = "bwrap"
        elif settings.isolation == "bwrap":
            raise SandboxError(
                "BACKEND_UNAVAILABLE",
                "bubblewrap is not installed or cannot create namespaces here; install it "
                "(apt-get install bubblewrap) or start with --isolation none",
            )
        else:
            self.isolation = "none"
        if self.isolation == "none":
            logger.warning(
                "local backend without isolation: commands run unisolated on this host as %s, with its "
                "network and files; install bubblewrap for isolation", getpass.getuser()
            )

    async def start(self, spec: SandboxSpec, config: AgentConfig) -> LocalAgent:
        directory = self.root / spec.sandbox_id
        (directory / "workspace").mkdir(parents=True)
        (directory / "tmp").mkdir()
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
            "USER": getpass.getuser(),
            "LOGNAME": getpass.getuser(),
            "SHELL": "/bin/bash",
            "TMPDIR": tmp,
        }
        env.update(spec.env)
        agent_config = config.for_agent(
            spec.sandbox_id, workspace, env, state_dir=os.path.join(tmp, ".mcp-sandbox")
        )
        command = [AGENT_PYTHON, "-I", "-S", "-c", agent.BOOTSTRAP, AGENT_DIR, json.dumps(agent_config)]
        if self.isolation == "bwrap":
            command = self._bwrap_args(directory, spec.network and self.allow_network) + ["--"] + command
        try:
            process = await anyio.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, start_new_session=True,
                env={"PATH": SANDBOX_PATH, "LANG": "C.UTF-8"},
            )
        except OSError as exc:
            await anyio.to_thread.run_sync(remove_tree, directory)
            raise SandboxError("BACKEND_UNAVAILABLE", f"could not start the sandbox agent: {exc}") from exc
        return LocalAgent(process, directory, self.isolation, workspace)

    def _bwrap_args(self, directory: Path, network: bool) -> list[str]:
        args = ["bwrap"]
        # Bind the host's top-level entries one by one (not / itself) so that /workspace can be a
        # new mount point without touching the host's root directory.
        for entry in sorted(os.listdir("/")):
            path = "/" + entry
            if entry in ("proc", "dev", "tmp", "workspace"):
                continue
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            else:
                args += ["--ro-bind", path, path]
        args += ["--dev", "/dev", "--proc", "/proc"]
        if self.root.exists():
            args += ["--tmpfs", str(self.root)]  # other sandboxes stay out of sight
        args += [
            "--bind", str(directory / "workspace"), "/workspace",
            "--bind", str(directory / "tmp"), "/tmp",
            "--unshare-all", "--hostname", "sandbox", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--chdir", "/workspace",
            # The agent is pid 1: bubblewrap's own init would hold the channel's pipes where any
            # process in the sandbox could open them (/proc/1/fd), and the agent reaps orphans itself.
            "--as-pid-1",
        ]
        # The sandbox's own /tmp and the hidden workspace root would hide the agent's code or
        # interpreter if they live there (a checkout in /tmp): show those read-only where they are.
        for needed in (AGENT_DIR, str(Path(AGENT_PYTHON).parent.parent)):
            if Path(needed).is_relative_to("/tmp") or Path(needed).is_relative_to(self.root):
                args += ["--ro-bind", needed, needed]
        if network:
            args.append("--share-net")
        return args

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
