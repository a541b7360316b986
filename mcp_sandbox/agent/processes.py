"""Background processes: started from a session's state, logged whole to files, killed as trees.

A process is a bash that restores its session's state (cwd, variables, functions, options) as it is
at start time and then runs the command; nothing flows back into the session. It leads its own
process group and carries the tag ``proc:<id>;``, so a kill reaches every descendant. Its stdout and
stderr are files in the sandbox that the process writes directly: the agent never has to drain a
pipe, the logs survive the process, and reading them later costs nothing until someone asks.
Statuses come from the exit the agent reaps itself, so a dead process is never left ``running``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import time
from typing import Any, Dict, Optional, Pattern, Tuple

from .children import Children
from .output import render_log
from .pipes import write_when_ready
from .protocol import AgentError
from .ids import Ids, check_id
from .sessions import Sessions
from .shell_state import check_env
from .tasks import TaskSet

STATUSES = ("running", "completed", "failed", "killed", "error")
KILL_GRACE = 5.0
POLL_INTERVAL = 0.05
DEFAULT_WAIT = 30.0
_BLOCK = 1 << 20
# A "line" longer than this without a newline is searched as it is rather than buffered further.
_MAX_LINE = 1 << 20
_SIGNAL_NUMBER = re.compile(r"[0-9]{1,3}")


class Process:
    def __init__(self, process_id: str, command: str, session_id: str, stem: str) -> None:
        self.id = process_id
        self.command = command
        self.session_id = session_id
        self.tag = "proc:%s;" % process_id
        self.stdout_path = stem + ".stdout"
        self.stderr_path = stem + ".stderr"
        self.pid: Optional[int] = None
        self.status = "running"
        self.exit_code: Optional[int] = None
        self.signal: Optional[str] = None
        self.error: Optional[str] = None
        self.started_at = time.time()
        self.ended_at: Optional[float] = None
        self.stdin_fd: Optional[int] = None
        self.stdin_lock = asyncio.Lock()
        self.kill_requested = False
        self.ended: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()

    @property
    def running(self) -> bool:
        return self.status == "running"

    def fail_to_start(self, message: str) -> None:
        self.status = "error"
        self.error = message
        self._end()

    def exited(self, code: int) -> None:
        """Record how the process ended (``code`` negative for a signal, as Popen reports it)."""
        if code < 0:
            try:
                self.signal = signal.Signals(-code).name
            except ValueError:
                self.signal = "SIG%d" % -code
            self.exit_code = 128 - code
        else:
            self.exit_code = code
        if self.kill_requested:
            self.status = "killed"
        elif code == 0:
            self.status = "completed"
        else:
            self.status = "failed"
        self._end()

    def _end(self) -> None:
        self.ended_at = time.time()
        if not self.stdin_lock.locked():  # else the writer closes it, once it stops using the fd
            self.close_stdin()
        if not self.ended.done():
            self.ended.set_result(None)

    def close_stdin(self) -> None:
        if self.stdin_fd is not None:
            try:
                os.close(self.stdin_fd)
            except OSError:
                pass
            self.stdin_fd = None

    def info(self) -> Dict[str, Any]:
        return {
            "process_id": self.id,
            "pid": self.pid,
            "command": self.command,
            "session_id": self.session_id,
            "status": self.status,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "error": self.error,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "stdout_file": self.stdout_path,
            "stderr_file": self.stderr_path,
        }


class Processes:
    """Every background process of the sandbox, kept with its logs for the sandbox's lifetime."""

    def __init__(self, children: Children, sessions: Sessions, config: Dict[str, Any]) -> None:
        self._children = children
        self._sessions = sessions
        self._max_output: int = config["max_output"]
        self._max_running: int = config["limits"]["max_processes"]
        self._path = config["env"].get("PATH", os.defpath)
        self._bash = shutil.which("bash", path=self._path) or "/bin/bash"
        self._dir = os.path.join(config["state_dir"], "processes")
        os.makedirs(self._dir, exist_ok=True)
        self.processes: Dict[str, Process] = {}
        self._ids = Ids("proc-%d")
        self._escalations = TaskSet()

    def get(self, process_id: Optional[str]) -> Process:
        process = self.processes.get(process_id or "")
        if process is None:
            known = ", ".join(sorted(self.processes)) or "none"
            raise AgentError(
                "PROCESS_NOT_FOUND",
                "no process %r; processes: %s; list them with list_processes" % (process_id, known),
            )
        return process

    def start(self, params: Dict[str, Any]) -> Dict[str, Any]:
        command: str = params["command"]
        if "\0" in command:
            raise AgentError("INVALID_ARGUMENT", "the command contains a NUL byte; pass binary data through a file")
        if not command.strip():
            raise AgentError("INVALID_ARGUMENT", "the command is empty; pass the bash command line to run")
        process_id = params.get("process_id") or self._ids.mint(self.processes)
        check_id("process", process_id)
        if process_id in self.processes:
            raise AgentError(
                "PROCESS_ALREADY_EXISTS",
                "process %r already exists (status %s); pick another process_id or omit it"
                % (process_id, self.processes[process_id].status),
            )
        session = self._sessions.get(params.get("session_id"))
        env = check_env(params.get("env"))
        cwd: Optional[str] = params.get("cwd")
        running = sum(1 for p in self.processes.values() if p.running)
        if running >= self._max_running:
            raise AgentError(
                "LIMIT_REACHED",
                "%d processes are running, the most this sandbox allows (--max-processes); stop one with "
                "kill_process, or wait for one to end" % running,
            )
        process = Process(process_id, command, session.id, os.path.join(self._dir, process_id))
        self.processes[process_id] = process
        session.last_used_at = time.time()
        start_dir = os.path.normpath(os.path.join(session.cwd, cwd or "."))
        os.makedirs(self._dir, exist_ok=True)  # a command may have cleaned the state directory
        with open(process.stdout_path, "wb") as out, open(process.stderr_path, "wb") as err:
            if not os.path.isdir(start_dir):
                return self._not_started(
                    process, err, "directory %s does not exist; create it first (mkdir) or pass another cwd" % start_dir
                )
            stdin_r, stdin_w = os.pipe()
            try:
                pid, exited = self._children.spawn(
                    [self._bash, "--noprofile", "--norc", "-c", session.unsaved_script(command, env, start_dir), "bash"],
                    tag=process.tag,
                    env={"PATH": self._path},
                    cwd=start_dir,
                    stdin=stdin_r,
                    stdout=out,
                    stderr=err,
                    script_at=4,
                )
            except OSError as exc:
                os.close(stdin_w)
                return self._not_started(process, err, "could not start: %s" % exc)
            finally:
                os.close(stdin_r)
        process.pid = pid
        process.stdin_fd = stdin_w
        exited.add_done_callback(lambda f: self._ended(process, f.result()))
        return process.info()

    @staticmethod
    def _not_started(process: Process, err: Any, message: str) -> Dict[str, Any]:
        err.write(message.encode("utf-8", "replace") + b"\n")
        process.fail_to_start(message)
        return process.info()

    def list(self, params: Dict[str, Any]) -> Dict[str, Any]:
        status = params.get("status")
        if status is not None and status not in STATUSES:
            raise AgentError("INVALID_ARGUMENT", "unknown status %r; use one of %s" % (status, ", ".join(STATUSES)))
        return {
            "processes": [p.info() for p in self.processes.values() if status is None or p.status == status]
        }

    def info(self, params: Dict[str, Any]) -> Dict[str, Any]:
        return self.get(params.get("process_id")).info()

    async def logs(self, params: Dict[str, Any]) -> Dict[str, Any]:
        process = self.get(params.get("process_id"))
        tail = params.get("tail")
        if tail is not None and (not isinstance(tail, int) or tail < 0):
            raise AgentError("INVALID_ARGUMENT", "tail must be a number of lines, 0 or more")
        timeout = params.get("timeout")
        timeout = DEFAULT_WAIT if timeout is None else float(timeout)
        if timeout < 0:
            raise AgentError("INVALID_ARGUMENT", "timeout must be 0 or more seconds")
        pattern = None
        if params.get("wait_for") is not None:
            try:
                pattern = re.compile(params["wait_for"])
            except (re.error, TypeError) as exc:
                raise AgentError("INVALID_ARGUMENT", "wait_for is not a valid regular expression: %s" % exc)
        wait_for_exit = bool(params.get("wait_for_exit"))
        matched, timed_out = await self._wait(process, pattern, wait_for_exit, timeout)
        result = process.info()
        result.update({"matched": matched, "timed_out": timed_out, "truncated": False})
        for name, path in (("stdout", process.stdout_path), ("stderr", process.stderr_path)):
            text, truncated = await render_log(path, tail, self._max_output)
            result[name] = text
            result["truncated"] = result["truncated"] or truncated
        return result

    async def _wait(
        self, process: Process, pattern: Optional[Pattern[str]], wait_for_exit: bool, timeout: float
    ) -> Tuple[Optional[str], bool]:
        if pattern is None and not wait_for_exit:
            return None, False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        scanners = [LineScanner(path, pattern) for path in (process.stdout_path, process.stderr_path)] if pattern else []
        matched: Optional[str] = None
        try:
            while True:
                # Seen before scanning, so that all output written before the exit gets scanned.
                ended = process.ended.done()
                if pattern is not None and matched is None:
                    for scanner in scanners:
                        matched = await scanner.scan()
                        if matched is not None:
                            break
                if (pattern is None or matched is not None) and (not wait_for_exit or ended):
                    return matched, False
                if ended:
                    return matched, False  # no line can match any more
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return matched, True
                await asyncio.wait([process.ended], timeout=min(POLL_INTERVAL, remaining))
        finally:
            for scanner in scanners:
                scanner.close()

    async def send_input(self, params: Dict[str, Any]) -> Dict[str, Any]:
        process = self.get(params.get("process_id"))
        data = (params.get("data") or "").encode("utf-8", "surrogateescape")
        async with process.stdin_lock:
            if process.stdin_fd is None or not process.running:
                reason = "it is %s" % process.status if not process.running else "its stdin was closed (eof)"
                raise AgentError(
                    "INVALID_ARGUMENT", "cannot write to process %r: %s; start a new process" % (process.id, reason)
                )
            try:
                written = await write_when_ready(process.stdin_fd, data)
            except OSError as exc:
                process.close_stdin()
                raise AgentError(
                    "INVALID_ARGUMENT", "process %r stopped reading its stdin (%s)" % (process.id, exc.strerror)
                )
            finally:
                # The exit left the pipe to us while we were writing: close it now.
                if not process.running:
                    process.close_stdin()
            if params.get("eof"):
                process.close_stdin()
        return {"process_id": process.id, "bytes_written": written}

    async def kill(self, params: Dict[str, Any]) -> Dict[str, Any]:
        process = self.get(params.get("process_id"))
        await self._kill(process, parse_signal(params.get("signal")))
        return process.info()

    async def kill_all(self, params: Dict[str, Any]) -> Dict[str, Any]:
        running = [p for p in self.processes.values() if p.running]
        await asyncio.gather(*(self._kill(p, signal.SIGTERM) for p in running))
        # What finished processes left behind (daemons, `cmd &`) goes too, and so do the
        # background jobs of exec commands.
        self._children.kill(None, "proc:", signal.SIGKILL)
        return {"killed": len(running), "jobs_killed": self._sessions.kill_background_jobs()}

    def session_busy(self, session_id: str) -> bool:
        """A process the session started still runs (so the session is not idle)."""
        return any(p.running and p.session_id == session_id for p in self.processes.values())

    def _ended(self, process: Process, code: int) -> None:
        process.exited(code)
        # The session's idle time counts from the end of its last process.
        session = self._sessions.sessions.get(process.session_id)
        if session is not None:
            session.last_used_at = max(session.last_used_at, time.time())

    async def kill_session(self, session_id: str) -> None:
        """End the processes a session started (the session is being deleted): at once, no grace."""
        owned = [p for p in self.processes.values() if p.session_id == session_id]
        for process in owned:
            if process.running:
                process.kill_requested = True
                self._children.kill(process.pid, process.tag, signal.SIGKILL)
            else:
                self._children.kill(None, process.tag, signal.SIGKILL)
        pending = [p.ended for p in owned if not p.ended.done()]
        if pending:
            await asyncio.wait(pending, timeout=KILL_GRACE)

    async def _kill(self, process: Process, sig: int) -> None:
        """Signal the whole tree; SIGKILL what is left after the grace period.

        Returns when the process is gone, or after the escalation: never the full grace period
        when it dies sooner (the escalation for its leftovers then runs on its own).
        """
        if process.running:
            process.kill_requested = True
            self._children.kill(process.pid, process.tag, sig)
        else:
            self._children.kill(None, process.tag, sig)
        if sig != signal.SIGKILL:
            self._escalations.spawn(self._escalate(process))
        if not process.ended.done():
            await asyncio.wait([process.ended], timeout=KILL_GRACE + 5)

    async def aclose(self) -> None:
        """On the agent's way out, after its children were killed: the escalations are moot."""
        await self._escalations.aclose()

    async def _escalate(self, process: Process) -> None:
        await asyncio.sleep(KILL_GRACE)
        self._children.kill(process.pid if process.running else None, process.tag, signal.SIGKILL)


def parse_signal(value: Any) -> int:
    """TERM, SIGTERM, term, 15 or "15" -> 15."""
    if value is None or value == "":
        return signal.SIGTERM
    # Taken as given, in full: no stripping, so "TERM\n" is as wrong as any other name.
    text = str(value)
    try:
        if _SIGNAL_NUMBER.fullmatch(text):
            number = int(text)
            if number in signal.valid_signals() and number != 0:
                return number
        else:
            name = text.upper()
            return int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
    except (KeyError, ValueError):
        pass
    raise AgentError(
        "INVALID_ARGUMENT",
        "unknown signal %r; use a name such as TERM, INT, KILL, HUP, QUIT, USR1, USR2 or a number" % value,
    )


class LineScanner:
    """Searches a growing log line by line, reading each byte once (so huge logs stay cheap)."""

    def __init__(self, path: str, pattern: Pattern[str]) -> None:
        self._pattern = pattern
        # Searching a whole block first skips the per-line loop for blocks without a match.
        self._block_pattern = re.compile(pattern.pattern, pattern.flags | re.MULTILINE)
        self._pending = b""
        try:
            self._file: Optional[Any] = open(path, "rb")
        except OSError:
            self._file = None

    async def scan(self) -> Optional[str]:
        """The first matching line among what was logged since the last call, or None."""
        if self._file is None:
            return None
        while True:
            data = self._file.read(_BLOCK)
            if not data:
                break
            block = self._pending + data
            cut = block.rfind(b"\n") + 1
            if cut == 0 and len(block) > _MAX_LINE:
                cut = len(block)
            self._pending = block[cut:]
            found = self._search(block[:cut])
            if found is not None:
                return found
            await asyncio.sleep(0)
        # The line being written counts too: a prompt may never get its newline.
        return self._search(self._pending) if self._pending else None

    def _search(self, data: bytes) -> Optional[str]:
        text = data.decode("utf-8", "replace")
        hit = self._block_pattern.search(text)
        if hit is None:
            return None
        start = text.rfind("\n", 0, hit.start()) + 1
        for line in text[start:].split("\n"):
            if self._pattern.search(line):
                return line[:-1] if line.endswith("\r") else line
        return None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
