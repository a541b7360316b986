"""Starting, reaping and killing the processes the agent runs.

Every process the agent starts is a job: it leads its own process group, carries an environment
tag (``MCP_SANDBOX_JOB``) and, where the host gave the agent a cgroup, enters a cgroup of its own
(see jobs.py). Killing a job signals its group and then everything in its cgroup, which nothing
started in it can leave; without a cgroup, every process whose environment still carries the tag,
so grandchildren that moved to another group (``setsid``, daemons) die too unless they also drop
the tag (``env -i``). The agent reaps all children itself, with one SIGCHLD handler, because it may
be a subreaper that inherits orphans; Popen is used only to start processes, never to wait for them.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import signal
import subprocess
import time
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

from .protocol import AgentError

from .jobs import BASH_ENTER, Jobs

TAG = "MCP_SANDBOX_JOB"
CHILD_OOM_SCORE_ADJ = b"500"
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

    def __init__(self, sandbox_id: str, jobs: Optional[Jobs] = None) -> None:
        # Tags start with the sandbox id: without isolation, other sandboxes' processes are visible.
        self._prefix = sandbox_id + "/"
        self._jobs = jobs
        # Children are born more likely than the agent to be chosen by the OOM killer when the
        # sandbox runs out of memory: the agent raises its own score around each fork (a process
        # may lower it again to where it was), and its children inherit the raised one.
        self._oom_fd: Optional[int] = None
        self._oom_own = b"0"
        try:
            self._oom_fd = os.open("/proc/self/oom_score_adj", os.O_RDWR | os.O_CLOEXEC)
            self._oom_own = os.read(self._oom_fd, 16).strip() or b"0"
        except OSError:
            pass
        # pid -> its Popen, the future of its exit code, and its job's cgroup (if any)
        self._waiting: Dict[int, Tuple["subprocess.Popen[bytes]", "asyncio.Future[int]", Optional[str]]] = {}

    @property
    def unreaped(self) -> int:
        """How many of the processes the agent started are not reaped yet."""
        return len(self._waiting)

    def records(self) -> Dict[str, Any]:
        """What a rest keeps (saved_state.py): the job cgroups' records, if there are cgroups."""
        return {"jobs": None if self._jobs is None else self._jobs.records()}

    def restore(self, state: Dict[str, Any]) -> None:
        if self._jobs is not None and state["jobs"] is not None:
            self._jobs.restore(state["jobs"])

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
        script_at: Optional[int] = None,
        preexec: Optional[Callable[[], None]] = None,
    ) -> Tuple[int, "asyncio.Future[int]"]:
        """Start a process in a new session; returns its pid and a future for its exit code.

        The exit code is negative for a signal, like Popen's returncode. When ``argv[script_at]``
        is a ``bash -c`` script, the bash enters the job's cgroup itself, as its first command;
        any other process enters it between fork and exec, which costs a full fork (~1 ms), as
        does ``preexec`` (run there after setsid, e.g. to take a controlling terminal).
        """
        env = dict(env)
        env[TAG] = self._prefix + tag
        argv = list(argv)
        fds = tuple(pass_fds)
        job, enter_fd = self._jobs.open(tag) if self._jobs is not None else (None, None)
        steps: List[Callable[[], Any]] = [preexec] if preexec is not None else []
        if enter_fd is not None:
            if script_at is not None:
                argv[script_at] = BASH_ENTER % (enter_fd, enter_fd) + argv[script_at]
                fds += (enter_fd,)
            else:
                steps.append(functools.partial(os.write, enter_fd, b"0"))
        try:
            self._set_oom_score(CHILD_OOM_SCORE_ADJ)
            proc = subprocess.Popen(
                argv, env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr,
                pass_fds=fds, start_new_session=True, close_fds=True,
                preexec_fn=functools.partial(_run_all, steps) if steps else None,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            if job is not None and self._jobs is not None:
                self._jobs.finished(job)
            if isinstance(exc, OSError):
                raise
            # The preexec_fn failed: the process must not run outside its cgroup (or terminal).
            what = "take its terminal or enter the job's cgroup" if preexec is not None else "enter the job's cgroup"
            raise OSError("could not %s (%s)" % (what, exc)) from None
        finally:
            self._set_oom_score(self._oom_own)
            if enter_fd is not None:
                os.close(enter_fd)
        future: "asyncio.Future[int]" = asyncio.get_running_loop().create_future()
        self._waiting[proc.pid] = (proc, future, job)
        # The child may already have exited; its SIGCHLD is handled on the next loop turn, after
        # this registration, so no exit is ever missed.
        return proc.pid, future

    def _set_oom_score(self, value: bytes) -> None:
        if self._oom_fd is not None:
            try:
                os.pwrite(self._oom_fd, value, 0)
            except OSError:
                pass

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
            proc, future, job = entry
            proc.returncode = code  # so Popen never waits on a pid that may be reused
            if job is not None and self._jobs is not None:
                self._jobs.finished(job)
            if not future.done():
                future.set_result(code)


    def kill(self, pgid: Optional[int], tag_prefix: str, sig: int = signal.SIGKILL) -> None:
        """Signal a job's process group and every process of the jobs whose tag starts with
        ``tag_prefix``: by their cgroups, or without them by their tags."""
        if self._jobs is None:
            kill_tree(pgid, self._prefix + tag_prefix, sig)
            return
        if pgid is not None:
            try:
                os.killpg(pgid, sig)
            except OSError:
                pass
        self._jobs.kill(tag_prefix, sig)

    def kill_all_but(self, tag_prefix: str, keep: Set[str]) -> int:
        """SIGKILL every process whose tag starts with ``tag_prefix`` and is not one of ``keep``;
        how many there were.

        What is found is stopped first, and killed once a look finds nothing new: a stopped
        process cannot fork, so a fork bomb is frozen whole before it dies.
        """
        if self._jobs is not None:  # by cgroup: nothing can leave its job's
            return self._jobs.kill_all_but(tag_prefix, keep)
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


def _run_all(steps: List[Callable[[], Any]]) -> None:
    for step in steps:
        step()


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
