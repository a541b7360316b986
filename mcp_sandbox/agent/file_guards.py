"""What the file tools guard against: deleting or moving what the sandbox stands on, and reading
kernel files that would wait for data or never end."""

from __future__ import annotations

import errno
import os
from typing import IO, Callable, Set, Tuple

from .protocol import AgentError

# Kernel files report size 0; past this much, one is taken to be endless.
PSEUDO_FILE_MAX = 64 << 20


class VitalPaths:
    """``/``, the workspace and every directory above it, and the agent's state directory with
    everything in it: deleting or moving those would wreck the sandbox (or, without isolation, the
    host). Each as named and with symlinks resolved."""

    def __init__(self, workspace: str, state_dir: str) -> None:
        self._holders: Set[str] = {os.sep}
        for path in (workspace, state_dir):
            for form in _forms(path):
                while form not in self._holders:
                    self._holders.add(form)
                    form = os.path.dirname(form)
        self._state: Tuple[str, ...] = tuple(_forms(state_dir))

    def refuse(self, path: str, action: str) -> None:
        """INVALID_ARGUMENT if ``path`` is vital."""
        # The path as named, and with its directories' symlinks resolved (not its last part: a
        # link to / is only a link).
        real = os.path.normpath(os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path)))
        for candidate in (path, real):
            in_state = any(candidate == state or candidate.startswith(state + os.sep) for state in self._state)
            if candidate in self._holders or in_state:
                raise AgentError(
                    "INVALID_ARGUMENT",
                    "refusing to %s %s: it is /, the workspace, a directory that holds it, or the sandbox's "
                    "own state; %s what is inside the workspace instead" % (action, path, action),
                )


def _forms(path: str) -> Set[str]:
    return {os.path.normpath(path), os.path.realpath(path)}


def bounded_reader(f: IO[bytes], size: int, path: str) -> Callable[[int], bytes]:
    """``f.read`` that fails rather than wait (a non-blocking kernel file with nothing to give) and,
    for a kernel file that claims size 0, stops after PSEUDO_FILE_MAX bytes (/proc/self/pagemap
    would go on for hundreds of gigabytes)."""
    left = PSEUDO_FILE_MAX if size == 0 else -1

    def read(count: int) -> bytes:
        nonlocal left
        data = f.read(count)
        if data is None:
            raise BlockingIOError(errno.EAGAIN, "it has no data without waiting")
        if left >= 0:
            left -= len(data)
            if left < 0:
                raise AgentError(
                    "INVALID_ARGUMENT",
                    "%s is a kernel file that does not end within %d MiB; read a part of it with exec, "
                    "e.g. head -c 4096 %s" % (path, PSEUDO_FILE_MAX >> 20, path),
                )
        return data

    return read
