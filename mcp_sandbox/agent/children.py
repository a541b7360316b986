"""Starting, reaping and killing the processes the agent runs.

Every process the agent starts carries an environment tag (``MCP_SANDBOX_JOB``) and leads its own
process group. Killing a job signals its group and then every process whose environment still
carries the tag, so grandchildren that moved to another group (``setsid``, daemons) die too. The
agent reaps all children itself, with one SIGCHLD handler, because it may be a subreaper that
inherits orphans; Popen is used only to start processes, never to wait for them.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import time
from typing import IO, Any, Dict, Optional, Sequence, Set, Tuple, Union

from .protocol import AgentError

TAG = "MCP_SANDBOX_JOB"
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36

FileArg = Union[int, IO[Any], None]


def prctl(option: int, value: int) -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (ImportError, OSError, AttributeError):  # minimal images may lack ctypes; best effort
        pass


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

    def kill_all_but(self, tag_prefix: str, keep: Set[str]) -> int:
        """SIGKILL every process whose tag starts with ``tag_prefix`` and is not one of ``keep``;
        how many there were.

        What is found is stopped first, and killed once a look finds nothing new: a stopped
        process cannot fork, so a fork bomb is frozen whole before it dies.
        """
        prefix = self._prefix + tag_prefix
        kept = {self._prefix + tag for tag in keep}
        stopped: Set[int] = set()
        ended: Set[int] = set()
        for _ in range(100):
            found = {pid for pid, tag in tagged(prefix).items() if tag not in kept}
            fresh = found - stopped
            if fresh:
                _send(fresh, signal.SIGSTOP)
                stopped |= fresh
            elif found:
                _send(stopped, signal.SIGKILL)
                ended |= stopped
                stopped = set()
            else:
                break
        _send(stopped, signal.SIGKILL)  # only if the rounds ran out
        return len(ended | stopped)


def spawn_error(exc: OSError) -> Exception:
    """A process that could not start for want of room, as an error that says what to do."""
    if exc.errno not in (errno.EAGAIN, errno.ENOMEM):
        return exc
    return AgentError(
        "LIMIT_REACHED",
        "the sandbox cannot start another process (%s): it is at its process or memory limit, often "
        "because of jobs earlier commands left running in the background (cmd &) or a fork bomb; "
        "kill_all_processes ends them (and the background processes), delete_session ends one "
        "session's, destroy ends everything" % (exc.strerror or exc),
    )


def _send(pids: Set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def tagged(prefix: str) -> Dict[int, str]:
    """Live processes whose tag starts with ``prefix``: pid to whole tag."""
    needle = ("\0%s=%s" % (TAG, prefix)).encode()
    first = ("%s=%s" % (TAG, prefix)).encode()
    me = os.getpid()
    found: Dict[int, str] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open("/proc/%s/environ" % name, "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if environ.startswith(first):
            start = len(TAG) + 1
        else:
            at = environ.find(needle)
            if at < 0:
                continue
            start = at + len(TAG) + 2
        end = environ.find(b"\0", start)
        found[int(name)] = environ[start : end if end >= 0 else len(environ)].decode("utf-8", "replace")
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
        pids = list(tagged(tag_prefix))
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if sig != signal.SIGKILL or not pids:
            return
        time.sleep(0.001)
