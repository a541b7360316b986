"""What an agent keeps in memory, saved before it rests and restored when it wakes (rest.py).

Only an agent with nothing live rests: no process, request, stream, code context or file transfer.
What is left is records: the sessions (their shell state is in files already; here are their cwd,
option commands, generation and times), the ended background processes (their logs are files),
the counters that mint ids (so that no id is used twice), the job cgroups still known, the spill
files kept, and the listeners' sockets. The agent's config and channel fds travel along, so that
the woken agent needs nothing else. Plain JSON: ids and paths may hold lone surrogates, which JSON
keeps. The records are read where the components keep them: this module is their one other user.
"""

from __future__ import annotations

import json
import os
import socket
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Tuple

from .children import Children
from .processes import Process, Processes
from .protocol import Connection
from .sessions import Session, Sessions
from .streams import Streams
from .terminal import Terminal

if TYPE_CHECKING:
    from .contexts import Contexts
    from .files import Files

_VERSION = 1
_PROCESS_FIELDS = ("pid", "status", "exit_code", "signal", "error", "started_at", "ended_at", "stdout_path", "stderr_path")


class Parts:
    """The agent's components whose records are saved; contexts and files only if loaded."""

    def __init__(
        self,
        config: Dict[str, Any],
        channel: List[int],
        children: Children,
        sessions: Sessions,
        processes: Processes,
        streams: Streams,
        contexts: List["Contexts"],
        files: List["Files"],
    ) -> None:
        self.config = config
        self.channel = channel  # its input and output fds
        self.children = children
        self.sessions = sessions
        self.processes = processes
        self.streams = streams
        self.contexts = contexts
        self.files = files


def save(parts: Parts) -> bytes:
    sessions, processes = parts.sessions, parts.processes
    jobs = parts.children._jobs
    contexts = parts.contexts[0] if parts.contexts else None
    files = parts.files[0] if parts.files else None
    state = {
        "version": _VERSION,
        "config": parts.config,
        "channel": parts.channel,
        "session_ids": sessions._ids._count,
        "sessions": [
            {
                "id": s.id, "dir": s.dir, "cwd": s.cwd, "timeout": s.timeout, "generation": s.generation,
                "opts": s.opts, "created_at": s.created_at, "last_used_at": s.last_used_at, "commands": s.commands,
            }
            for s in sessions.sessions.values()
        ],
        "spills": list(sessions._spills._kept),
        "process_ids": processes._ids._count,
        "processes": [_process(p) for p in processes.processes.values()],
        "jobs": None if jobs is None else {"serial": jobs._serial, "tags": jobs._tags, "finished": jobs._finished},
        "context_ids": None if contexts is None else [contexts._ids._count, contexts._serial],
        "file_handles": None if files is None else files._handles._count,
        "stream_id": parts.streams._next_id,
        "listeners": [[kind, fd] for kind, fd in listening(parts.streams)],
    }
    return json.dumps(state).encode()


def listening(streams: Streams) -> List[Tuple[str, int]]:
    """The listeners' kinds and sockets: the sockets stay open through the rest, so that their
    ports stay taken and the woken agent accepts on them again (nothing can connect meanwhile:
    only the sandbox's processes could, and there are none)."""
    return [(kind, server.sockets[0].fileno()) for server, kind in streams.listeners]


def _process(process: Process) -> Dict[str, Any]:
    saved = {name: getattr(process, name) for name in _PROCESS_FIELDS}
    saved.update(id=process.id, command=process.command, session_id=process.session_id)
    terminal = process.terminal
    if terminal is not None:
        saved["terminal"] = [terminal.cols, terminal.rows, terminal.size, terminal.sizes]
    return saved


def load(fd: int) -> Dict[str, Any]:
    """The state an agent saved into ``fd`` before it rested; the fd is closed."""
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    state: Dict[str, Any] = json.loads(data)
    if state.get("version") != _VERSION:
        raise ValueError("the saved agent state is of another version")
    return state


def restore(
    state: Dict[str, Any], parts: Parts, contexts: Callable[[], "Contexts"], files: Callable[[], "Files"]
) -> None:
    """Put the records back into freshly made components (the Sessions made without a default)."""
    sessions, processes = parts.sessions, parts.processes
    sessions._ids._count = state["session_ids"]
    for saved in state["sessions"]:
        session = Session(saved["id"], saved["dir"], saved["cwd"], saved["timeout"])
        session.generation, session.opts, session.commands = saved["generation"], saved["opts"], saved["commands"]
        session.created_at, session.last_used_at = saved["created_at"], saved["last_used_at"]
        sessions.sessions[session.id] = session
    sessions._spills._kept = deque(state["spills"])
    processes._ids._count = state["process_ids"]
    for saved in state["processes"]:
        process = Process(saved["id"], saved["command"], saved["session_id"], "")
        for name in _PROCESS_FIELDS:
            setattr(process, name, saved[name])
        if "terminal" in saved:
            cols, rows, size, sizes = saved["terminal"]
            process.terminal = Terminal.ended(cols, rows, size, [tuple(entry) for entry in sizes])
        process.ended.set_result(None)
        processes.processes[process.id] = process
    jobs = parts.children._jobs
    if jobs is not None and state["jobs"] is not None:
        jobs._serial, jobs._tags, jobs._finished = state["jobs"]["serial"], state["jobs"]["tags"], state["jobs"]["finished"]
    if state["context_ids"] is not None:
        loaded = contexts()
        loaded._ids._count, loaded._serial = state["context_ids"]
    if state["file_handles"] is not None:
        files()._handles._count = state["file_handles"]
    parts.streams._next_id = state["stream_id"]


async def restore_listeners(state: Dict[str, Any], streams: Streams, connection: Connection) -> None:
    for kind, fd in state["listeners"]:
        os.set_inheritable(fd, False)
        await streams.serve(connection, kind, sock=socket.socket(fileno=fd))
