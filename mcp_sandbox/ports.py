"""Exposed ports: for each sandbox port a tool exposed, a host TCP listener (a "door") whose every
connection is carried to 127.0.0.1:<port> inside the sandbox over a stream of the sandbox's agent
channel, and pumped both ways.

With stdio the doors listen on 127.0.0.1; on the HTTP transport on the server's --host. When the
server has auth, a door admits only HTTP requests carrying its token (port_gate.py); else it
carries any TCP as it comes. The manager closes a sandbox's doors when the sandbox goes, and all of
them when it stops (this object's block).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Protocol

import anyio
from anyio.abc import ByteStream, SocketAttribute, SocketListener, SocketStream, TaskGroup, TaskStatus
from anyio.streams.stapled import MultiListener

from . import port_gate
from .errors import SandboxError
from .port_gate import Buffered, DoorKey, GateError, Signer
from .settings import Settings

logger = logging.getLogger(__name__)

CHUNK = port_gate.CHUNK
MAX_PORTS = 16  # exposed ports per sandbox
# Live connections per sandbox, over all its doors; more wait in the listeners' backlog until one
# ends. Each holds a stream, whose window (api.STREAM_WINDOW) the server buffers at most when a
# client reads slower than the sandbox sends.
MAX_CONNECTIONS = 128
ACCEPT_RETRY = 0.1  # seconds before accepting again after accept failed (e.g. out of file descriptors)
CLOSE_TIMEOUT = 5.0  # seconds to close a connection's two ends



class Connector(Protocol):
    """Opens a stream to a port inside the sandbox: sandbox.open_stream. ``wait=False``: it may
    return before the connection is made, and break on first use if none can be."""

    def __call__(self, port: int, *, wait: bool = ...) -> Awaitable[ByteStream]: ...


# Both ends of a connection failing this way is the peer going away, not a fault of the server.
GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError, SandboxError, GateError)


async def copy(src: ByteStream, dst: ByteStream) -> None:
    """Copy until ``src`` ends, then pass its EOF on: the other direction goes on (half-close)."""
    try:
        while True:
            await dst.send(await src.receive(CHUNK))
    except anyio.EndOfStream:
        await dst.send_eof()


async def join(client: ByteStream, sandbox: ByteStream, *directions: Callable[[], Awaitable[None]]) -> None:
    """Run both directions of a connection until both have ended; a failure in either closes both
    ends at once (a reset, not a hang)."""
    try:
        async with anyio.create_task_group() as tg:

            async def run(direction: Callable[[], Awaitable[None]]) -> None:
                try:
                    await direction()
                except GONE as exc:
                    logger.debug("exposed port connection ended: %r", exc)
                    tg.cancel_scope.cancel()

            for direction in directions[1:]:
                tg.start_soon(run, direction)
            await run(directions[0])  # in this task: one task fewer to start per connection
    finally:
        await close_both(client, sandbox)


async def close_both(*streams: ByteStream) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
        for stream in streams:
            try:
                await stream.aclose()
            except GONE:
                pass


class Door:
    """One exposed port: its listener, its live connections, and its URL."""

    def __init__(
        self, key: DoorKey, connect: Connector, listener: MultiListener[SocketStream], host_port: int,
        base_url: str, signer: Signer | None, slots: anyio.Semaphore,
    ) -> None:
        self.key = key
        self.host_port = host_port
        self.base_url = base_url
        self._connect = connect
        self._listener = listener
        self._signer = signer
        self._token = ""
        self._token_expires = 0.0
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()
        self._slots = slots  # the sandbox's live connections, shared by its doors

    @property
    def port(self) -> int:
        return self.key.port

    @property
    def closed(self) -> bool:
        return self._done.is_set()

    @property
    def url(self) -> str:
        """The URL to open, with a token when the server has auth. The same URL while its token
        has more than half its life left; then one with a fresh token (the old one still works
        until it expires)."""
        if self._signer is None:
            return self.base_url
        if self._token_expires - time.time() < port_gate.TOKEN_TTL / 2:
            self._token_expires = int(time.time()) + port_gate.TOKEN_TTL
            self._token = self._signer.sign(self.key, int(self._token_expires))
        return f"{self.base_url}?{port_gate.TOKEN_PARAM.decode()}={self._token}"

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Accept connections until closed; then close the listener and every connection."""
        try:
            with self._scope:
                async with self._listener, anyio.create_task_group() as connections:
                    for listener in self._listener.listeners:  # one per address family of --host
                        assert isinstance(listener, SocketListener)  # what create_tcp_listener makes
                        connections.start_soon(self._accept, listener, connections)
                    task_status.started()
        except Exception:  # a bug, not a peer: this door is gone, the others and the server go on
            logger.exception("sandbox %s: exposed port %d failed", self.key.sandbox_id, self.port)
        finally:
            self._done.set()

    async def _accept(self, listener: SocketListener, connections: TaskGroup) -> None:
        """Accept connections while the sandbox has a free slot: past MAX_CONNECTIONS, one accepted
        connection waits for a slot and the next ones in the backlog, instead of being refused."""
        while True:
            try:
                client = await listener.accept()
            except OSError as exc:
                logger.warning("sandbox %s: accepting on exposed port %d failed: %s", self.key.sandbox_id, self.port, exc)
                await anyio.sleep(ACCEPT_RETRY)
                continue
            try:
                await self._slots.acquire()
            except BaseException:
                await close_both(client)
                raise
            connections.start_soon(self._serve, client)

    async def close(self) -> None:
        self._scope.cancel()
        await self._done.wait()

    async def _serve(self, client: ByteStream) -> None:
        try:
            if self._signer is None:
                await self._carry(client)
            else:
                await self._carry_gated(client, self._signer)
        finally:
            self._slots.release()

    async def _open(self, wait: bool) -> ByteStream:
        try:
            return await self._connect(self.port, wait=wait)
        except OSError as exc:  # a connector to a real socket (the tests'); open_stream says it itself
            raise SandboxError(
                "INVALID_ARGUMENT", f"nothing accepts connections on port {self.port} in the sandbox ({exc})"
            ) from None

    async def _carry(self, client: ByteStream) -> None:
        """Carry a connection as it comes: what the client sends first travels right behind the
        request to connect (no round trip to the agent first). If nothing accepts connections in
        the sandbox, the stream breaks and the client's connection is closed, as a refused
        connection would be."""
        try:
            sandbox = await self._open(wait=False)
        except SandboxError as exc:
            logger.info("%s", exc.message)
            await close_both(client)
            return
        await join(client, sandbox, lambda: copy(client, sandbox), lambda: copy(sandbox, client))

    async def _carry_gated(self, client: ByteStream, signer: Signer) -> None:
        """Admit the connection if its first request carries the door's token, then carry it."""
        reader = Buffered(client)
        refusal = None
        try:
            with anyio.fail_after(port_gate.HEAD_TIMEOUT):
                head = port_gate.parse_head(await reader.until(b"\r\n\r\n", port_gate.MAX_HEAD), self.host_port)
            query_valid = signer.valid(self.key, head.query_token)
            if not query_valid and not signer.valid(self.key, head.cookie_token):
                refusal = port_gate.answer(
                    "403 Forbidden",
                    "This port needs the link expose_port gave, with its token (a token is for one port of one "
                    "sandbox, and expires); ask for the link again.",
                )
            elif not query_valid:
                head.check_origin()
        except GateError as exc:
            refusal = port_gate.answer(exc.status, exc.reason)
        except (TimeoutError, *GONE):
            refusal = b""
        if refusal is None:
            try:  # connected first, so that nothing listening gets a 502 that says so
                sandbox = await self._open(wait=True)
            except SandboxError as exc:
                refusal = port_gate.answer("502 Bad Gateway", exc.message)
        if refusal is not None:
            try:
                with anyio.move_on_after(CLOSE_TIMEOUT):
                    await client.send(refusal)
            except GONE:
                pass
            await close_both(client)
            return
        cookie = port_gate.set_cookie_line(self.host_port, head.query_token or b"") if query_valid else None
        await join(
            client, sandbox,
            lambda: port_gate.forward_requests(reader, sandbox, head, self.host_port),
            lambda: copy(sandbox, client) if cookie is None else port_gate.copy_with_cookie(sandbox, client, cookie),
        )


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return host == ""


_NAME = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]")


def _host_name(host_header: str) -> str | None:
    """The host of a Host header (``name``, ``name:port``, ``[v6]:port``), if it is a plain one."""
    name = host_header[: host_header.find("]") + 1] if host_header.startswith("[") else host_header.partition(":")[0]
    return name if _NAME.fullmatch(name) else None


def _url_host(host: str) -> str:
    return f"[{host.strip('[]')}]" if ":" in host else host


class ExposedPorts:
    """Every door of a server, by sandbox; an async context manager whose block the doors live in."""

    def __init__(self, settings: Settings) -> None:
        stdio = settings.transport == "stdio"
        self.bind_host = "127.0.0.1" if stdio else settings.host
        auth = not stdio and bool(settings.auth_token or settings.auth_tokens_file)
        self._signer = Signer() if auth else None
        self._doors: dict[str, dict[int, Door]] = {}
        self._slots: dict[str, anyio.Semaphore] = {}  # by sandbox: its live connections' slots
        self._lock = anyio.Lock()
        self._task_group: TaskGroup | None = None

    async def __aenter__(self) -> ExposedPorts:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._task_group is not None
        task_group, self._task_group = self._task_group, None
        with anyio.CancelScope(shield=True):
            for sandbox_id in list(self._doors):
                await self.close_sandbox(sandbox_id)
        return await task_group.__aexit__(exc_type, exc, tb)

    def public_host(self, request_host: str | None) -> str:
        """The host name for URLs: the address listened on, unless that is every address (0.0.0.0,
        ::); then the name the client reached the server by (its Host header), else this machine's."""
        if not _is_wildcard(self.bind_host):
            return _url_host(self.bind_host)
        name = _host_name(request_host or "")
        if name:
            return name
        return _url_host(socket.gethostname())

    def listed(self, sandbox_id: str) -> list[Door]:
        return sorted(
            (d for d in self._doors.get(sandbox_id, {}).values() if not d.closed), key=lambda d: d.port
        )

    async def expose(
        self, sandbox_id: str, port: int, connect: Connector, request_host: str | None = None,
        alive: Callable[[], bool] = lambda: True,
    ) -> Door:
        """The door of a sandbox port: the existing one, or a new listener. ``alive`` says whether
        the sandbox is still there: asked under the lock that close_sandbox takes, so that a door
        never outlives a sandbox destroyed while the tool ran."""
        if not 1 <= port <= 65535:
            raise SandboxError("INVALID_ARGUMENT", f"port {port} is not a TCP port; give one from 1 to 65535")
        async with self._lock:
            if not alive():
                raise SandboxError("SANDBOX_NOT_FOUND", f"sandbox {sandbox_id} was destroyed meanwhile")
            doors = self._doors.setdefault(sandbox_id, {})
            door = doors.get(port)
            if door is not None and not door.closed:
                return door
            if len(self.listed(sandbox_id)) >= MAX_PORTS:
                raise SandboxError(
                    "LIMIT_REACHED",
                    f"sandbox {sandbox_id} has {MAX_PORTS} exposed ports, the most it may have; "
                    "unexpose_port one you no longer need",
                )
            if self._task_group is None:
                raise RuntimeError("ExposedPorts is not running; use 'async with ExposedPorts(...)'")
            try:
                # "::" as the server's host means every address, IPv4 too: anyio's dual-stack socket.
                every = self.bind_host.strip("[]") in ("", "::")
                listener = await anyio.create_tcp_listener(local_host=None if every else self.bind_host, local_port=0)
            except OSError as exc:
                raise SandboxError(
                    "INTERNAL", f"could not listen on {self.bind_host} for port {port}: {exc}; check the server's --host"
                ) from None
            host_port = int(listener.listeners[0].extra(SocketAttribute.local_port))
            key = DoorKey(sandbox_id, port, secrets.token_hex(8))
            door = Door(
                key, connect, listener, host_port,
                f"http://{self.public_host(request_host)}:{host_port}/", self._signer,
                self._slots.setdefault(sandbox_id, anyio.Semaphore(MAX_CONNECTIONS)),
            )
            await self._task_group.start(door.run)
            doors[port] = door
            logger.info("sandbox %s: port %d exposed on %s:%d", sandbox_id, port, self.bind_host, host_port)
            return door

    async def unexpose(self, sandbox_id: str, port: int) -> None:
        async with self._lock:
            door = self._doors.get(sandbox_id, {}).pop(port, None)
        if door is None or door.closed:
            exposed = ", ".join(str(d.port) for d in self.listed(sandbox_id)) or "none"
            raise SandboxError(
                "INVALID_ARGUMENT", f"port {port} of sandbox {sandbox_id} is not exposed; exposed ports: {exposed}"
            )
        await door.close()
        logger.info("sandbox %s: port %d unexposed", sandbox_id, port)

    async def close_sandbox(self, sandbox_id: str) -> None:
        """Close every door of a sandbox (it is being destroyed)."""
        async with self._lock:
            doors = self._doors.pop(sandbox_id, {})
            self._slots.pop(sandbox_id, None)
        for door in doors.values():
            await door.close()
