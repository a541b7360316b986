"""The Docker channel past the engine: a unix socket the agent connects to, where the engine runs
on this machine.

Through the attached stdin and stdout every byte of the channel is relayed twice by the engine
(dockerd and the container's shim), which caps a port's download at about 170 MB/s here and
adds a few hundred microseconds to every message. So for a local engine (a unix socket address)
the server bind-mounts a directory of its own into the container, read-only, with one listening
socket in it; the agent connects to it first thing and tells which way it talks by one byte on
stdout: ``S`` for the socket, ``P`` for the attached pipes. ``P`` comes where the socket cannot be
reached: an engine in a VM (Docker Desktop), gVisor, a security module that forbids it. The
attached stream then carries the channel as before; with ``S`` it carries only the agent's
stderr, for the server log.

Who can reach the socket: the server accepts one connection, the agent's (nothing else runs in
the container before the agent has connected), then closes the listener and removes the socket
and its directory. The directory lies in a directory of the server's own, mode 0700, so no other
user of this machine can reach it either; inside the container the mount is its own root, so the
agent reaches it as any user. Code in the sandbox finds afterwards only the read-only mount point
of a directory that no longer exists.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import anyio

from ..agent.api import ON_PIPES, ON_SOCKET
from ..errors import SandboxError
from .docker_stream import ContainerStream, PolledSocketStream
from .ownership import server_alive, server_name

MOUNT = "/.mcp-sandbox-channel"  # where the agent finds the socket (a directory of its own)
SOCKET = "agent.sock"
AGENT_CONFIG = {"channel_socket": f"{MOUNT}/{SOCKET}"}  # what tells the agent to try it (api.Config)
CONNECT_TIMEOUT = 60.0  # for the agent to start and say which way it talks (as the manager's hello)

PREFIX = "mcp-sandbox-"  # then this server's name and a random part: <tmp>/mcp-sandbox-srv-<pid>-<start>-xxxx
_root: Path | None = None


def _server_dir() -> Path:
    """This server's directory of sockets, mode 0700, named after the server (ownership.py); removed
    when the server exits, else by the next server's reap."""
    global _root
    if _root is None:
        _root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{server_name()}-"))
        atexit.register(shutil.rmtree, _root, True)
    return _root


def reap() -> None:
    """Remove the directories of servers that are gone (killed before their exit could)."""
    top = Path(tempfile.gettempdir())
    for path in top.glob(f"{PREFIX}srv-*"):
        try:
            info = path.lstat()
        except OSError:
            continue
        name = path.name[len(PREFIX):].rsplit("-", 1)[0]  # srv-<pid>-<start time>
        if name.endswith("-None"):
            continue  # a host without /proc: whether that server runs cannot be told
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not server_alive(name):
            shutil.rmtree(path, ignore_errors=True)


class ChannelSocket:
    """A sandbox's listening socket, until the agent has connected to it."""

    def __init__(self) -> None:
        # Short names: a socket's path has room for 107 bytes, and temporary directories can be deep.
        self.directory = Path(tempfile.mkdtemp(prefix="", dir=_server_dir()))
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # 0711 and 0666: the agent may run as any user of the image (or a remapped root).
            self.directory.chmod(0o711)
            path = self.directory / SOCKET
            self._listener.bind(str(path))
            path.chmod(0o666)
            self._listener.listen(1)
            self._listener.setblocking(False)
        except BaseException:
            self.close()
            raise

    @property
    def bind(self) -> str:
        """The bind mount, as Docker writes it."""
        return f"{self.directory}:{MOUNT}:ro"

    async def take(self, attached: ContainerStream, image: str) -> PolledSocketStream | None:
        """The agent's connection, once it says it made one (None: it talks over the attached
        stream). The listener is closed after this in any case."""
        try:
            with anyio.fail_after(CONNECT_TIMEOUT):
                try:
                    marker = await attached.receive(1)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
                    stderr = attached.stderr_tail.decode("utf-8", "replace").strip()
                    raise SandboxError(
                        "BACKEND_UNAVAILABLE",
                        f"the sandbox agent did not start in image {image!r} ({type(exc).__name__})"
                        + (f"; its output: {stderr[-1000:]}" if stderr else "") + "; the image needs python3 >= 3.8",
                    ) from exc
                if marker == ON_PIPES:
                    return None
                if marker != ON_SOCKET:
                    raise SandboxError("BACKEND_UNAVAILABLE", f"the sandbox agent began with {marker!r}, not a channel")
                await anyio.wait_readable(self._listener)
                connection, _ = self._listener.accept()
            return PolledSocketStream(connection)
        finally:
            self.close()

    def close(self) -> None:
        self._listener.close()
        shutil.rmtree(self.directory, ignore_errors=True)
