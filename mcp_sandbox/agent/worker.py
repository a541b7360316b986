"""One code context's interpreter: a worker process, its control pipes and its output.

The agent talks to a worker over two pipes of JSON lines (requests in, messages out) and captures
its stdout and stderr like a command's; ``contexts.py`` decides when to start, interrupt and
replace workers.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import signal
import sys
from typing import Any, Dict, List, Optional, Set, Tuple

from .children import Children
from .output import STREAMS, Capture
from .pipes import PipeReader, make_pipe
from .protocol import AgentError

WORKERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers")
# After a worker's exit, how long its last control message may still take to arrive.
EXIT_GRACE = 0.5
# The workers expect their control pipes at fds 3 and 4, which the agent cannot hand over at
# those numbers (its own channel may sit there). This runs first, on the agent's interpreter:
# it moves the pipes into place and becomes the worker (same pid, same process group).
_PLACE_CONTROL_FDS = (
    "import os, sys\n"
    "os.dup2(int(sys.argv[1]), 3)\n"
    "os.dup2(int(sys.argv[2]), 4)\n"
    "os.close(int(sys.argv[1]))\n"
    "os.close(int(sys.argv[2]))\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)
# Where the control pipes' child ends are moved before the fork: above 4, so that placing one
# can never overwrite the other.
_HIGH_FD = 10

Message = Dict[str, Any]
Captures = Dict[str, Capture]


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return "was killed by signal %s" % signal.Signals(-code).name
        except ValueError:
            return "was killed by signal %d" % -code
    return "exited with code %d" % code


class Worker:
    """One running interpreter: its process, control pipes and output."""

    def __init__(
        self,
        pid: int,
        exited: "asyncio.Future[int]",
        tag: str,
        executable: str,
        readers: Dict[str, PipeReader],
        captures: Captures,
        control_fds: Tuple[int, int],
    ) -> None:
        self.pid = pid
        self.exited = exited
        self.tag = tag
        self.executable = executable
        self.readers = readers
        self.captures: Optional[Captures] = captures
        self.engine = ""
        self.version = ""
        self.closed = False
        self._control_in: Optional[asyncio.StreamWriter] = None
        self._control_out: Optional[asyncio.StreamReader] = None
        self._read_transport: Optional[asyncio.BaseTransport] = None
        self._pending: Optional["asyncio.Future[Optional[Message]]"] = None
        self._control_fds = control_fds  # (to its stdin, from its stdout) until connect takes them

    async def connect(self) -> None:
        control_in_fd, control_out_fd = self._control_fds
        loop = asyncio.get_running_loop()
        # Results carry images as base64: allow long lines.
        self._control_out = asyncio.StreamReader(limit=1 << 30)
        reader = self._control_out
        self._read_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(control_out_fd, "rb", 0)
        )
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(control_in_fd, "wb", 0)
        )
        self._control_in = asyncio.StreamWriter(transport, protocol, None, loop)

    @property
    def alive(self) -> bool:
        return not self.closed and not self.exited.done()

    async def send(self, message: Message) -> bool:
        """Write one control message; False if the worker cannot take it any more."""
        writer = self._control_in
        if writer is None or writer.transport.is_closing():
            return False
        try:
            writer.write((json.dumps(message) + "\n").encode("utf-8", "surrogatepass"))
            await writer.drain()
        except (OSError, RuntimeError):
            return False
        return True

    async def wait_for(self, kind: str, timeout: float) -> Tuple[str, Optional[Message]]:
        """The next control message of type ``kind``, as ("message", message); or ("exited", None)
        when the worker exits or closes its control pipe first; or ("timeout", None)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            pending = self._next_message()
            waited: "Set[asyncio.Future[Any]]" = {pending, self.exited}
            await asyncio.wait(
                waited, timeout=max(deadline - loop.time(), 0), return_when=asyncio.FIRST_COMPLETED
            )
            if not pending.done() and self.exited.done():
                # The message may have been written just before the exit and still be in flight.
                await asyncio.wait({pending}, timeout=EXIT_GRACE)
            if not pending.done():
                return ("exited", None) if self.exited.done() else ("timeout", None)
            self._pending = None
            message = pending.result()
            if message is None:
                return "exited", None
            if message.get("type") == kind:
                return "message", message

    def _next_message(self) -> "asyncio.Future[Optional[Message]]":
        # The same read stays pending across waits, so a message is never lost to a timeout.
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._receive())
        return self._pending

    async def _receive(self) -> Optional[Message]:
        # The same loop as the worker's own receive (workers/python_worker.py), deliberately: the
        # worker runs standalone in the sandbox's interpreter and imports nothing from the agent.
        assert self._control_out is not None
        while True:
            try:
                line = await self._control_out.readline()
            except (OSError, ValueError):
                return None
            if not line:
                return None
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                return message

    def rotate(self, captures: Optional[Captures]) -> Optional[Captures]:
        """Take the output so far (what is in the pipes now included); later output goes to
        ``captures`` (None: discarded). Returns None if it was taken before."""
        taken = self.captures
        for name, reader in self.readers.items():
            reader.redirect(captures[name] if captures is not None else None)
        self.captures = captures
        return taken

    async def aclose(self) -> None:
        """Close, and wait until the pending read of its control pipe has ended."""
        pending = self._pending
        self.close()
        if pending is not None:
            await asyncio.gather(pending, return_exceptions=True)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
        if self._control_in is not None:
            self._control_in.close()
        if self._read_transport is not None:
            self._read_transport.close()
        for reader in self.readers.values():
            reader.finish()


def worker_command(language: str, path: str) -> List[str]:
    """The worker of ``language`` (normalised) with an interpreter found on ``path``."""
    if language == "python":
        python = shutil.which("python3", path=path)
        if python is None:
            raise AgentError(
                "LANGUAGE_NOT_AVAILABLE",
                "python needs python3 (>= 3.8) on the sandbox's PATH (%s), and there is none; "
                "install Python in the sandbox or its image" % path,
            )
        return [python, os.path.join(WORKERS, "python_worker.py")]
    node = shutil.which("node", path=path) or shutil.which("nodejs", path=path)
    if node is None:
        raise AgentError(
            "LANGUAGE_NOT_AVAILABLE",
            "%s needs Node.js (node) on the sandbox's PATH (%s), and there is none; install Node.js "
            "in the sandbox or its image, or use python" % (language, path),
        )
    command = [node, os.path.join(WORKERS, "node_worker.js")]
    if language == "typescript":
        command.append("--typescript")
    return command


def launch_worker(
    children: Children, command: List[str], tag: str, language: str, env: Dict[str, str], cwd: str, captures: Captures
) -> Worker:
    """Start ``command`` as a worker (its output to ``captures``); ``connect`` it next."""
    control_in_r, control_in_w = os.pipe()
    control_out_r, control_out_w = os.pipe()
    child_in = fcntl.fcntl(control_in_r, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
    child_out = fcntl.fcntl(control_out_w, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
    os.close(control_in_r)
    os.close(control_out_w)
    pipes = {name: make_pipe() for name in STREAMS}
    launcher = [sys.executable or "python3", "-I", "-S", "-c", _PLACE_CONTROL_FDS, str(child_in), str(child_out)]
    try:
        pid, exited = children.spawn(
            launcher + command,
            tag=tag,
            env=env,
            cwd=cwd,
            stdout=pipes["stdout"][1],
            stderr=pipes["stderr"][1],
            pass_fds=(child_in, child_out),
        )
    except OSError as exc:
        for fd in [control_in_w, control_out_r] + [r for r, _ in pipes.values()]:
            os.close(fd)
        where = " in %s" % cwd if not os.path.isdir(cwd) else ""
        raise AgentError(
            "FILE_NOT_FOUND" if where else "LANGUAGE_NOT_AVAILABLE",
            "could not start the %s interpreter%s: %s" % (language, where, exc),
        ) from None
    finally:
        for fd in [child_in, child_out] + [w for _, w in pipes.values()]:
            os.close(fd)
    readers = {name: PipeReader(pipes[name][0], captures[name], live=True) for name in STREAMS}
    return Worker(pid, exited, tag, command[0], readers, captures, (control_in_w, control_out_r))
