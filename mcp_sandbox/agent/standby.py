"""A session's standby: a bash that restored the session's state and waits for its command
(see sessions.py for when one is started, used and dropped)."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Dict, Optional, Tuple

from .pipes import write_and_close
from .tasks import TaskSet

_PIPE_MIN_BUFFER = 65536  # what any pipe holds: a write this big never blocks on an empty pipe


class Standby:
    """A bash that restored one generation of a session's state and waits for its command."""

    def __init__(
        self,
        pid: int,
        exited: "asyncio.Future[int]",
        number: int,
        cwd_id: Optional[Tuple[int, int]],
        command_fd: int,
        out_fds: Dict[str, int],
    ) -> None:
        self.pid = pid
        self.exited = exited
        self.number = number
        self.cwd_id = cwd_id
        self.command_fd = command_fd
        self.out_fds = out_fds

    def go(self, text: str, tasks: TaskSet) -> None:
        """Hand it its command: write the text into the pipe it sources, then close the pipe."""
        data = text.encode("utf-8", "surrogateescape")
        if len(data) <= _PIPE_MIN_BUFFER:
            os.write(self.command_fd, data)
            os.close(self.command_fd)
        else:  # the standby reads while a thread writes
            tasks.in_thread(write_and_close, self.command_fd, data)
        self.command_fd = -1

    def discard(self) -> None:
        """Kill it (it started nothing yet: one process, its own group) and close its pipes."""
        if not self.exited.done():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass
        for fd in (self.command_fd, *self.out_fds.values()):
            try:
                os.close(fd)
            except OSError:
                pass
