"""Job cgroups: every process the agent starts enters a cgroup of its own, which none of its
descendants can leave, so that a kill reaches all of them whatever they do to their environment,
process group or session (``env -i setsid cmd &``).

The host hands the agent an open directory: the sandbox's cgroup, made over to the sandbox's user.
It is mounted nowhere in the sandbox, and the agent is not dumpable (its descriptors cannot be
opened through /proc by the sandbox's processes), so commands cannot reach any cgroup's
``cgroup.procs`` to move themselves out. A job's cgroup is a child of that directory, made when the
job starts and removed once the job's first process has exited and nothing is left in it.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from typing import Any, Dict, List, Set, Tuple

# How a bash -c script enters its job's cgroup itself, as its first command; nothing of the
# sandbox's runs before it (the bash gets --noprofile --norc and no BASH_ENV). Writing 0 moves the
# writer. If it cannot, the command must not run outside its cgroup.
BASH_ENTER = (
    "{ builtin echo 0 >&%d; } 2>/dev/null || { builtin echo 'mcp-sandbox: could not enter the cgroup of "
    "this command' >&2; builtin exit 126; }; builtin exec %d>&-\n"
)


class Jobs:
    """The job cgroups under the sandbox's cgroup (open as ``dir_fd``)."""

    def __init__(self, dir_fd: int, v2: bool) -> None:
        self._fd = dir_fd
        self._v2 = v2
        self._serial = 0
        self._tags: Dict[str, str] = {}  # cgroup name -> the job's tag
        self._finished: Dict[str, bool] = {}  # cgroup name -> its first process has exited

    def records(self) -> Dict[str, Any]:
        """The jobs' numbering and the cgroups still known, kept through a rest (saved_state.py)."""
        return {"serial": self._serial, "tags": self._tags, "finished": self._finished}

    def restore(self, saved: Dict[str, Any]) -> None:
        self._serial, self._tags, self._finished = saved["serial"], saved["tags"], saved["finished"]

    def open(self, tag: str) -> Tuple[str, int]:
        """Make the cgroup of a new job: its name and a descriptor of its ``cgroup.procs``, where a
        process writes ``0`` to enter."""
        self._serial += 1
        name = "job%d" % self._serial
        os.mkdir(name, dir_fd=self._fd)
        try:
            fd = os.open(name + "/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=self._fd)
        except OSError:
            os.rmdir(name, dir_fd=self._fd)
            raise
        self._tags[name] = tag
        self._finished[name] = False
        return name, fd

    def finished(self, name: str) -> None:
        """The job's first process exited: remove its cgroup, unless something still runs in it."""
        if name in self._finished:
            self._finished[name] = True
            self._remove(name)

    def kill(self, tag_prefix: str, sig: int) -> None:
        """Signal every process in the jobs whose tag starts with ``tag_prefix``."""
        for name, tag in list(self._tags.items()):
            if tag.startswith(tag_prefix):
                self._signal(name, sig)
                if self._finished.get(name):
                    self._remove(name)

    def kill_all_but(self, tag_prefix: str, keep: Set[str]) -> int:
        """SIGKILL the jobs whose tag starts with ``tag_prefix`` and is not one of ``keep``; how
        many processes they held."""
        killed: Set[int] = set()
        for name, tag in list(self._tags.items()):
            if tag.startswith(tag_prefix) and tag not in keep:
                killed |= self._signal(name, signal.SIGKILL)
                if self._finished.get(name):
                    self._remove(name)
        return len(killed)

    def _signal(self, name: str, sig: int) -> Set[int]:
        """Signal the job's processes; the pids it found there."""
        found = set(self.members(name))
        if sig == signal.SIGKILL and self._v2:
            try:
                fd = os.open(name + "/cgroup.kill", os.O_WRONLY, dir_fd=self._fd)
                try:
                    os.write(fd, b"1")  # all of them at once; none can fork away meanwhile
                    return found
                finally:
                    os.close(fd)
            except OSError:
                pass  # before Linux 5.14: one by one, as on v1
        # With SIGKILL, again until none is left: one forking while we kill lands in the same cgroup.
        for round in range(200 if sig == signal.SIGKILL else 1):
            pids = self.members(name) if round else sorted(found)
            found.update(pids)
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            if not pids or sig != signal.SIGKILL:
                return found
            time.sleep(0.001)
        return found

    def members(self, name: str) -> List[int]:
        try:
            fd = os.open(name + "/cgroup.procs", os.O_RDONLY, dir_fd=self._fd)
        except OSError:
            return []
        try:
            data = b""
            while True:
                part = os.read(fd, 65536)
                if not part:
                    break
                data += part
        finally:
            os.close(fd)
        return [int(pid) for pid in data.split() if int(pid) > 0]  # 0: not in our pid namespace

    def _remove(self, name: str) -> None:
        try:
            os.rmdir(name, dir_fd=self._fd)
        except OSError as exc:
            if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
                return  # something still runs in it (``cmd &``): kept, with its tag, for later kills
        del self._tags[name]
        del self._finished[name]
