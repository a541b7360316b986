"""One background process's record: how it was started, how it ended, and where its logs are.

The processes themselves are started, watched and killed by processes.py; an ended one's record
is all that is left of it, and a rest keeps it (saved_state.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any, Dict, Optional

from .terminal import Terminal

# What a rest keeps of a process besides its id, command, session and terminal.
_SAVED = ("pid", "status", "exit_code", "signal", "error", "started_at", "ended_at", "stdout_path", "stderr_path")


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
        self.terminal: Optional[Terminal] = None  # with tty=true; its stream is the stdout log
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

    def record(self) -> Dict[str, Any]:
        """What a rest keeps of an ended process (saved_state.py): its logs are files already."""
        saved = {name: getattr(self, name) for name in _SAVED}
        saved.update(id=self.id, command=self.command, session_id=self.session_id)
        if self.terminal is not None:
            saved["terminal"] = self.terminal.record()
        return saved

    @classmethod
    def from_record(cls, saved: Dict[str, Any]) -> "Process":
        """The ended process that ``record`` kept."""
        process = cls(saved["id"], saved["command"], saved["session_id"], "")
        for name in _SAVED:
            setattr(process, name, saved[name])
        if "terminal" in saved:
            process.terminal = Terminal.ended(saved["terminal"])
        process.ended.set_result(None)
        return process

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
            "tty": self.terminal is not None,
            "cols": self.terminal.cols if self.terminal is not None else None,
            "rows": self.terminal.rows if self.terminal is not None else None,
        }
