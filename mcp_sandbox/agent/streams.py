"""Byte streams between the host and TCP connections on the sandbox's loopback.

``connect`` connects to 127.0.0.1:port for the host; ``listen`` accepts on 127.0.0.1:port and
hands each connection to the host as a new stream. Each stream is two pumps: socket to host, sending
only as much as the host has credited (api.STREAM_WINDOW at most in flight), and host to socket,
crediting the host with what the socket took. So neither end buffers more than a window per stream
and direction, however slow the other is.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from .api import MAX_STREAMS, STREAM_CHUNK, STREAM_WINDOW, Stream
from .protocol import AgentError, Connection, Request


def _port(params: Dict[str, Any], lowest: int) -> int:
    port = params.get("port")
    if type(port) is not int or not lowest <= port <= 65535:
        raise AgentError("INVALID_ARGUMENT", "port must be a number from %d to 65535, not %r" % (lowest, port))
    return port


class _Stream:
    def __init__(self, owner: "Streams", conn: Connection, stream_id: int) -> None:
        self.owner = owner
        self.conn = conn
        self.id = stream_id
        self.reader: Optional[asyncio.StreamReader] = None  # both set once connected
        self.writer: Optional[asyncio.StreamWriter] = None
        self.credit = STREAM_WINDOW  # what we may still send the host
        self.credited = asyncio.Event()
        self.inbox: Deque[Optional[bytes]] = deque()  # from the host; None: its EOF
        self.inbox_bytes = 0
        self.arrived = asyncio.Event()
        self.done = 0  # directions finished (EOF both ways: the connection closes)
        self.tasks: List["asyncio.Task[None]"] = []

    def start(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        self.reader, self.writer = reader, writer
        self.tasks = [loop.create_task(self._to_host()), loop.create_task(self._from_host())]

    async def connect(self, port: int, confirm: bool) -> None:
        """Connect for the host, then pump: this task goes on as the pump to the host (one task
        fewer to start per connection). ``confirm``: the host waits to hear it connected."""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            self.owner.streams.pop(self.id, None)
            self.conn.send({"method": Stream.CLOSE, "params": {"stream": self.id, "error": (
                "nothing accepts connections on port %d in the sandbox (%s); start the server first, "
                "listening on 127.0.0.1 or 0.0.0.0 port %d" % (port, exc.strerror or exc, port)
            )}})
            return
        self.reader, self.writer = reader, writer
        if confirm:
            self.conn.send({"method": Stream.CONNECTED, "params": {"stream": self.id}})
        self.tasks.append(asyncio.get_running_loop().create_task(self._from_host()))
        await self._to_host()

    async def _to_host(self) -> None:
        conn, reader = self.conn, self.reader
        assert reader is not None
        try:
            while True:
                while self.credit <= 0:
                    self.credited.clear()
                    await self.credited.wait()
                data = await reader.read(min(self.credit, STREAM_CHUNK))
                if not data:
                    break
                self.credit -= len(data)
                conn.send_data(self.id, data)
                await conn.drain()
        except OSError:
            self.abort(tell_host=True)
            return
        conn.send({"method": Stream.EOF, "params": {"stream": self.id}})
        self._finished()

    async def _from_host(self) -> None:
        writer = self.writer
        assert writer is not None
        taken = 0  # written, and not credited yet: credits go in quarter windows, as the host's do
        try:
            while True:
                while not self.inbox:
                    self.arrived.clear()
                    await self.arrived.wait()
                data = self.inbox.popleft()
                if data is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    break
                self.inbox_bytes -= len(data)
                writer.write(data)
                await writer.drain()
                taken += len(data)
                if taken >= STREAM_WINDOW // 4:
                    self.conn.send({"method": Stream.CREDIT, "params": {"stream": self.id, "bytes": taken}})
                    taken = 0
        except OSError:
            self.abort(tell_host=True)
            return
        self._finished()

    def _finished(self) -> None:
        self.done += 1
        if self.done == 2:
            self.abort(tell_host=False)

    def receive(self, data: Optional[bytes]) -> None:
        if data is not None:
            if self.inbox_bytes + len(data) > STREAM_WINDOW:  # the host broke flow control
                self.abort(tell_host=True)
                return
            self.inbox_bytes += len(data)
        self.inbox.append(data)
        self.arrived.set()

    def abort(self, tell_host: bool) -> None:
        """End both directions now; the other pump, if still running, is cancelled."""
        if self.owner.streams.pop(self.id, None) is None:
            return
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        # As a TCP socket's close: what the host sent before is still delivered (the transport
        # writes out its buffer, at most a window, before it closes), then the connection ends.
        # A stream still connecting drops it: its connection is never made.
        if self.writer is not None:
            try:
                for data in self.inbox:
                    if data is not None:
                        self.writer.write(data)
            except (OSError, RuntimeError):
                pass  # the connection is gone already
            self.writer.close()
        self.inbox.clear()
        if tell_host:
            self.conn.send({"method": Stream.CLOSE, "params": {"stream": self.id}})


class Streams:
    """The streams and listeners of one agent; ``notifications`` are the channel's stream messages."""

    def __init__(self) -> None:
        self.conn: Optional[Connection] = None  # the channel, for the streams the host opens
        self.streams: Dict[int, _Stream] = {}
        # Each listener's server and kind; a rest hands their sockets on (saved_state.py).
        self.listeners: List[Tuple[asyncio.Server, str]] = []
        self._next_id = 0  # even: the agent's own

    def records(self) -> Dict[str, Any]:
        """What a rest keeps (saved_state.py): the last stream id minted, so that none comes twice."""
        return {"stream_id": self._next_id}

    def restore(self, state: Dict[str, Any]) -> None:
        self._next_id = state["stream_id"]

    def notifications(self) -> Dict[str, Callable[[Dict[str, Any]], None]]:
        return {
            Stream.DATA: lambda p: self._to(p, lambda s: s.receive(p["data"])),
            Stream.EOF: lambda p: self._to(p, lambda s: s.receive(None)),
            Stream.CREDIT: lambda p: self._to(p, self._credit(int(p["bytes"]))),
            Stream.CLOSE: lambda p: self._to(p, lambda s: s.abort(tell_host=False)),
            Stream.CONNECT: self.connect,
        }

    def _to(self, params: Dict[str, Any], action: Callable[[_Stream], None]) -> None:
        stream = self.streams.get(params.get("stream"))  # type: ignore[arg-type]
        if stream is not None:  # else it ended already: what was under way is dropped
            action(stream)

    @staticmethod
    def _credit(n: int) -> Callable[[_Stream], None]:
        def grant(stream: _Stream) -> None:
            stream.credit += n
            stream.credited.set()

        return grant

    def connect(self, params: Dict[str, Any]) -> None:
        """The host opens a stream. It is known from now on, before its connection is made, so
        that the data the host sends right behind waits in its inbox (at most a window)."""
        conn = self.conn
        stream_id = params.get("stream")
        if conn is None or type(stream_id) is not int or stream_id % 2 != 1 or stream_id in self.streams:
            return  # a host bug: dropped, as other malformed stream messages are
        try:
            port = _port(params, 1)
        except AgentError as exc:
            conn.send({"method": Stream.CLOSE, "params": {"stream": stream_id, "error": exc.message}})
            return
        stream = _Stream(self, conn, stream_id)
        self.streams[stream_id] = stream
        stream.tasks = [asyncio.get_running_loop().create_task(stream.connect(port, params.get("confirm") is True))]

    async def listen(self, request: Request) -> Dict[str, Any]:
        port = _port(request.params, 0)
        kind = request.params.get("kind")
        if not isinstance(kind, str) or not kind:
            raise AgentError("INVALID_ARGUMENT", "kind must be a non-empty string")
        try:
            server = await self.serve(request.conn, kind, host="127.0.0.1", port=port)
        except OSError as exc:
            raise AgentError(
                "INVALID_ARGUMENT", "cannot listen on 127.0.0.1:%d in the sandbox: %s; choose another port"
                % (port, exc.strerror or exc),
            )
        return {"port": server.sockets[0].getsockname()[1]}

    async def serve(self, conn: Connection, kind: str, **where: Any) -> asyncio.Server:
        """Accept connections (on ``host`` and ``port``, or an open ``sock``) as streams of ``kind``."""
        server = await asyncio.start_server(lambda reader, writer: self._accepted(conn, kind, reader, writer), **where)
        self.listeners.append((server, kind))
        return server

    def _accepted(self, conn: Connection, kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.streams) >= MAX_STREAMS:
            writer.close()
            return
        self._next_id += 2
        conn.send({"method": Stream.OPEN, "params": {"stream": self._next_id, "kind": kind}})
        stream = _Stream(self, conn, self._next_id)
        self.streams[stream.id] = stream
        stream.start(reader, writer)

    async def aclose(self) -> None:
        for server, _ in self.listeners:
            server.close()
        tasks = [task for stream in self.streams.values() for task in stream.tasks]
        for stream in list(self.streams.values()):
            stream.abort(tell_host=False)
        await asyncio.gather(*tasks, return_exceptions=True)
