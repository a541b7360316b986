"""Host directories shown in every sandbox: ``--mount HOST:SANDBOX[:ro|rw]``."""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from .errors import SandboxError

# Where a mount would hide what the sandbox itself needs: the kernel's views, and /tmp, which
# holds the agent's state (/tmp/x is fine).
RESERVED = ("/proc", "/dev", "/sys")


@dataclass(frozen=True)
class Mount:
    host: Path
    sandbox: str
    read_only: bool = True

    def __str__(self) -> str:
        return f"{self.host}:{self.sandbox}:{'ro' if self.read_only else 'rw'}"


def parse_mount(text: str) -> Mount:
    """``HOST:SANDBOX[:ro|rw]``; HOST may be relative (to the current directory) or start with ~."""
    parts = text.split(":")
    mode = "ro"
    if len(parts) == 3:
        *parts, mode = parts
    if len(parts) != 2 or not parts[0] or not parts[1] or mode not in ("ro", "rw"):
        raise ValueError(f"{text!r} is not HOST:SANDBOX[:ro|rw] (paths cannot contain ':')")
    host = Path(os.path.abspath(os.path.expanduser(parts[0])))
    sandbox = posixpath.normpath(parts[1])
    if not sandbox.startswith("/"):
        raise ValueError(f"{text!r}: the sandbox path must be absolute, e.g. /workspace/project")
    if sandbox in ("/", "/tmp") or any(sandbox == r or sandbox.startswith(r + "/") for r in RESERVED):
        raise ValueError(f"{text!r}: cannot mount over {sandbox}; choose a path such as /workspace/project or /data")
    return Mount(host, sandbox, read_only=mode == "ro")


def check_mounts(mounts: list[Mount]) -> None:
    """Fail at server start, not at the first sandbox, when a host path is missing."""
    for mount in mounts:
        if not mount.host.exists():
            raise SandboxError(
                "INVALID_ARGUMENT",
                f"--mount {mount}: {mount.host} does not exist on this host; create it or correct the path",
            )
