"""What an agent keeps in memory, saved before it rests and restored when it wakes (rest.py).

Only an agent with nothing live rests: no process, request, stream, code context or file transfer.
What is left is records: the sessions (their shell state is in files already; here are their cwd,
option commands, generation and times), the ended background processes (their logs are files),
the counters that mint ids (so that no id is used twice), the job cgroups still known, the spill
files kept, and the listeners' sockets. The agent's config and channel fds travel along, so that
the woken agent needs nothing else. Plain JSON: ids and paths may hold lone surrogates, which JSON
keeps. Each component gives its part of the records as a few top-level keys (its ``records``) and
takes them back from the whole state (its ``restore``): this module only puts them together.
"""

from __future__ import annotations

import json
import os
import socket
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Protocol, Tuple

from .children import Children
from .processes import Processes
from .protocol import Connection
from .sessions import Sessions
from .streams import Streams

if TYPE_CHECKING:
    from .contexts import Contexts
    from .files import Files

_VERSION = 1


class Recorded(Protocol):
    """A component with records: ``records`` gives them as top-level keys of the saved state, and
    ``restore`` takes them back from the whole state."""

    def records(self) -> Dict[str, Any]: ...

    def restore(self, state: Dict[str, Any]) -> None: ...


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

    def recorded(self) -> Iterator[Recorded]:
        """The components loaded, each with its records."""
        yield from (self.sessions, self.processes, self.children)
        yield from self.contexts
        yield from self.files
        yield self.streams


def save(parts: Parts) -> bytes:
    state: Dict[str, Any] = {"version": _VERSION, "config": parts.config, "channel": parts.channel}
    state.update(context_ids=None, file_handles=None)  # code contexts and files not loaded yet
    for part in parts.recorded():
        state.update(part.records())
    state["listeners"] = [[kind, fd] for kind, fd in listening(parts.streams)]
    return json.dumps(state).encode()


def listening(streams: Streams) -> List[Tuple[str, int]]:
    """The listeners' kinds and sockets: the sockets stay open through the rest, so that their
    ports stay taken and the woken agent accepts on them again (nothing can connect meanwhile:
    only the sandbox's processes could, and there are none)."""
    return [(kind, server.sockets[0].fileno()) for server, kind in streams.listeners]


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
    """Put the records back into freshly made components (the Sessions made without a default).
    Code contexts and files loaded before the rest are loaded again first, which adds them to
    ``parts``, so that they take back their records too."""
    if state["context_ids"] is not None:
        contexts()
    if state["file_handles"] is not None:
        files()
    for part in parts.recorded():
        part.restore(state)


async def restore_listeners(state: Dict[str, Any], streams: Streams, connection: Connection) -> None:
    for kind, fd in state["listeners"]:
        os.set_inheritable(fd, False)
        await streams.serve(connection, kind, sock=socket.socket(fileno=fd))
