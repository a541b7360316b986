"""Background processes: started from a session's state, logged whole to files, killed as trees.

A process is a bash that restores its session's state (cwd, variables, functions, options) as it is
at start time and then runs the command; nothing flows back into the session. It leads its own
process group and carries the tag ``proc:<id>;``, so a kill reaches every descendant. Its stdout and
stderr are files in the sandbox that the process writes directly: the agent never has to drain a
pipe, the logs survive the process, and reading them later costs nothing until someone asks. A
process started with tty=true writes to a pseudo-terminal instead, whose stream the agent appends
to its stdout log (terminal.py).
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

from .api import TerminalResized
from .children import Children
from .keys import key_bytes
from .line_scanner import LineScanner
from .output import render_log
from .process import Process
from .pipes import write_when_ready
from .protocol import AgentError
from .ids import Ids, check_id
from .sessions import Sessions
from .signals import parse_signal
from .shell_state import check_env
from .tasks import TaskSet
from .terminal import TERM, Terminal, check_size, take_as_controlling_terminal

STATUSES = ("running", "completed", "failed", "killed", "error")
KILL_GRACE = 5.0
POLL_INTERVAL = 0.05
DEFAULT_WAIT = 30.0


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
        self._drains = TaskSet()

    def records(self) -> Dict[str, Any]:
        """What a rest keeps (saved_state.py, which rests only when none runs): the id counter and
        the ended processes' records."""
        return {"process_ids": self._ids.count, "processes": [p.record() for p in self.processes.values()]}

    def restore(self, state: Dict[str, Any]) -> None:
        self._ids.count = state["process_ids"]
        for saved in state["processes"]:
            process = Process.from_record(saved)
            self.processes[process.id] = process

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
        tty = bool(params.get("tty"))
        if tty:
            cols, rows = check_size(params.get("cols"), params.get("rows"))
            # Programs take the size from the terminal, never from stale variables.
            env = dict({"TERM": TERM, "COLUMNS": None, "LINES": None}, **env)
            # Job control, as in an interactive shell: each command runs in its own process group,
            # the terminal's foreground one, so Ctrl-C reaches the program and not the bash
            # around it (which would end the process when the program merely caught it).
            script = "builtin set -m\n" + command
        elif params.get("cols") is not None or params.get("rows") is not None:
            raise AgentError("INVALID_ARGUMENT", "cols and rows are the size of a terminal: pass them with tty=true")
        else:
            script = command
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
            if tty:
                try:
                    process.terminal = Terminal(process.stdout_path, cols, rows)
                except OSError as exc:
                    return self._not_started(process, err, "could not open a pseudo-terminal: %s" % exc)
                stdio: Tuple[Any, Any, Any] = (process.terminal.slave,) * 3
            else:
                stdin_r, stdin_w = os.pipe()
                stdio = (stdin_r, out, err)
            try:
                pid, exited = self._children.spawn(
                    [self._bash, "--noprofile", "--norc", "-c", session.unsaved_script(script, env, start_dir), "bash"],
                    tag=process.tag,
                    env={"PATH": self._path},
                    cwd=start_dir,
                    stdin=stdio[0],
                    stdout=stdio[1],
                    stderr=stdio[2],
                    script_at=4,
                    preexec=take_as_controlling_terminal if tty else None,
                )
            except OSError as exc:
                if process.terminal is not None:
                    process.terminal.abandon()
                else:
                    os.close(stdin_w)
                return self._not_started(process, err, "could not start: %s" % exc)
            finally:
                if not tty:
                    os.close(stdin_r)
        process.pid = pid
        if process.terminal is not None:
            process.terminal.started()
            terminal = process.terminal
            exited.add_done_callback(lambda f: self._drains.spawn(self._drained(process, terminal, f.result())))
        else:
            process.stdin_fd = stdin_w
            exited.add_done_callback(lambda f: self._ended(process, f.result()))
        return process.info()

    async def _drained(self, process: Process, terminal: Terminal, code: int) -> None:
        """A terminal's process ended: its status once its last output is in the log."""
        await terminal.drained()
        self._ended(process, code)

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
        terminal = process.terminal
        keys = key_bytes(params.get("keys"), terminal is not None, terminal is not None and terminal.application_cursor)
        data = ((params.get("data") or "") + keys).encode("utf-8", "surrogateescape")
        if terminal is not None:
            return await terminal.type(process.id, process.status, data + (b"\x04" if params.get("eof") else b""))
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

    def terminal(self, params: Dict[str, Any]) -> Tuple[Process, Terminal]:
        process = self.get(params.get("process_id"))
        if process.terminal is None:
            raise AgentError(
                "INVALID_ARGUMENT",
                "process %r has no terminal (it was started without tty=true); read its output with "
                "get_process_logs, or start it again with tty=true" % process.id,
            )
        return process, process.terminal

    async def read_terminal(self, params: Dict[str, Any]) -> Dict[str, Any]:
        process, terminal = self.terminal(params)
        result = await terminal.read(params, process.stdout_path)
        result.update(process_id=process.id, status=process.status, exit_code=process.exit_code)
        return result

    def resize_terminal(self, params: Dict[str, Any]) -> TerminalResized:
        process, terminal = self.terminal(params)
        cols, rows = check_size(params.get("cols"), params.get("rows"))
        if not process.running:
            raise AgentError("INVALID_ARGUMENT", "process %r is %s: there is nothing to resize" % (process.id, process.status))
        terminal.resize(cols, rows)
        return TerminalResized(process_id=process.id, cols=cols, rows=rows)

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
        """On the agent's way out, after its children were killed: the escalations are moot, and
        so is the output still coming from a terminal."""
        await self._escalations.aclose()
        await self._drains.aclose()
        for process in self.processes.values():
            if process.terminal is not None:
                process.terminal.close()

    async def _escalate(self, process: Process) -> None:
        await asyncio.sleep(KILL_GRACE)
        self._children.kill(process.pid if process.running else None, process.tag, signal.SIGKILL)
