"""Starting, reaping and killing the processes the agent runs.

Every process the agent starts carries an environment tag (``MCP_SANDBOX_JOB``) and leads its own
process group. Killing a job signals its group and then every process whose environment still
carries the tag, so grandchildren that moved to another group (``setsid``, daemons) die too. The
agent reaps all children itself, with one SIGCHLD handler, because it may be a subreaper that
inherits orphans; Popen is used only to start processes, never to wait for them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple, Union

TAG = "MCP_SANDBOX_JOB"
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36

FileArg = Union[int, IO[Any], None]


def prctl(option: int, value: int) -> bool:
    """Whether it worked: minimal images may lack ctypes, so every use is best effort."""
    try:
        import ctypes

        return int(ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)) == 0
    except (ImportError, OSError, AttributeError):
        return False


class Children:
    """The agent's children: spawn with a tag, await exit, kill whole trees."""

    def __init__(self, sandbox_id: str) -> None:
        # Tags start with the sandbox id: without isolation, other sandboxes' processes are visible.
        self._prefix = sandbox_id + "/"
        self._waiting: Dict[int, Tuple["subprocess.Popen[bytes]", "asyncio.Future[int]"]] = {}

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        prctl(_PR_SET_CHILD_SUBREAPER, 1)
        loop.add_signal_handler(signal.SIGCHLD, self._reap)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        tag: str,
        env: Dict[str, str],
        cwd: Optional[str] = None,
        stdin: FileArg = subprocess.DEVNULL,
        stdout: FileArg = None,
        stderr: FileArg = None,
        pass_fds: Sequence[int] = (),
    ) -> Tuple[int, "asyncio.Future[int]"]:
        """Start a process in a new session; returns its pid and a future for its exit code.

        The exit code is negative for a signal, like Popen's returncode.
        """
        env = dict(env)
        env[TAG] = self._prefix + tag
        proc = subprocess.Popen(
            list(argv), env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr,
            pass_fds=tuple(pass_fds), start_new_session=True, close_fds=True,
        )
        future: "asyncio.Future[int]" = asyncio.get_running_loop().create_future()
        self._waiting[proc.pid] = (proc, future)
        # The child may already have exited; its SIGCHLD is handled on the next loop turn, after
        # this registration, so no exit is ever missed.
        return proc.pid, future

    def _reap(self) -> None:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG)
            except ChildProcessError:
                return
            if info is None:
                return
            entry = self._waiting.pop(info.si_pid, None)
            if entry is None:
                continue  # an orphan we inherited as subreaper
            code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
            proc, future = entry
            proc.returncode = code  # so Popen never waits on a pid that may be reused
            if not future.done():
                future.set_result(code)


    def kill(self, pgid: Optional[int], tag_prefix: str, sig: int = signal.SIGKILL) -> None:
        """Signal a job's process group and every process whose tag starts with ``tag_prefix``."""
        kill_tree(pgid, self._prefix + tag_prefix, sig)


def tagged_pids(prefix: str) -> List[int]:
    """Pids of live processes whose tag starts with ``prefix``."""
    needle = ("\0%s=%s" % (TAG, prefix)).encode()
    first = ("%s=%s" % (TAG, prefix)).encode()
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open("/proc/%s/environ" % name, "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if needle in environ or environ.startswith(first):
            found.append(int(name))
    return found


def kill_tree(pgid: Optional[int], tag_prefix: str, sig: int = signal.SIGKILL) -> None:
    """Signal a job's process group and every process carrying its tag.

    With SIGKILL this repeats until nothing tagged is left, so a process forking while we kill
    does not get away.
    """
    for _ in range(50):
        if pgid is not None:
            try:
                os.killpg(pgid, sig)
            except OSError:
                pass
        pids = tagged_pids(tag_prefix)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if sig != signal.SIGKILL or not pids:
            return
        time.sleep(0.001)
