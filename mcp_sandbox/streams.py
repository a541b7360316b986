"""Byte streams over the agent channel, the host's end (the agent's: agent/streams.py).

A stream is an ``anyio.abc.ByteStream`` joined to a TCP connection on the sandbox's loopback.
Flow control: each end sends only what the other has credited, at most api.STREAM_WINDOW per
stream and direction, so a slow reader never makes either end buffer more, and a data message is
at most api.STREAM_CHUNK, so a busy stream never holds the channel long for other streams or calls.
Everything the agent says about streams is checked as the rest of the channel is (Violation).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
from anyio.abc import ByteStream, TaskGroup

from .agent.api import MAX_STREAMS, STREAM_CHUNK, STREAM_WINDOW, Stream
from .errors import SandboxError

logger = logging.getLogger(__name__)

StreamHandler = Callable[[ByteStream], Awaitable[None]]


class Violation(Exception):
    """Something a well-behaved agent never sends: the channel can no longer be trusted.
    ``what`` is for the caller; ``raw``, the start of the offending message, only for the log."""

    def __init__(self, what: str, raw: bytes | bytearray = b"") -> None:
        super().__init__(what)
        self.what = what
        self.raw = bytes(raw[:100])


class Poster(Protocol):
    """What streams need of the channel: sending a message, and a stream's bytes."""

    async def post(self, message: dict[str, Any]) -> None: ...

    async def post_data(self, stream: int, data: bytes | memoryview) -> None: ...


class ChannelStream(ByteStream):
    """One stream; see the module's docstring and anyio's ByteStream for the semantics."""

    def __init__(self, owner: Streams, stream_id: int) -> None:
        self._owner = owner
        self.id = stream_id
        self._inbox: deque[memoryview] = deque()
        self._inbox_bytes = 0
        self._eof_received = False
        self._taken = 0  # bytes the reader took that the agent was not yet credited for
        self._credit = STREAM_WINDOW  # what we may still send
        self._send_lock = anyio.Lock()
        self._eof_sent = False
        self._closed = False  # by us
        self._broken: str | None = None  # by the agent, or the channel went away
        self._refused = False  # the agent could not connect it (then _broken says why)
        self._connected = stream_id % 2 == 0  # the agent's own streams are connected when opened
        self._wake = anyio.Event()

    def _changed(self) -> None:
        self._wake.set()
        self._wake = anyio.Event()

    # -- what the agent sent (the channel's reader; never blocks) -------------------------------

    def data(self, data: memoryview) -> None:
        if self._eof_received:
            raise Violation(f"data on stream {self.id} after its end")
        if self._inbox_bytes + len(data) > STREAM_WINDOW:
            raise Violation(f"more data on stream {self.id} than its window of {STREAM_WINDOW} bytes")
        self._inbox.append(data)
        self._inbox_bytes += len(data)
        self._changed()

    def credit(self, n: int) -> None:
        if self._credit + n > STREAM_WINDOW:
            raise Violation(f"credit on stream {self.id} for more than was sent")
        self._credit += n
        self._changed()

    def eof(self) -> None:
        self._eof_received = True
        self._changed()

    def connected(self) -> None:
        if self._connected:
            raise Violation(f"stream {self.id} connected twice, or one the agent opened")
        self._connected = True
        self._changed()

    def broken(self, reason: str, refused: bool = False) -> None:
        """A reset: what was not read yet is dropped, as a TCP reset does. ``refused``: the agent
        could not connect it."""
        if self._broken is None:
            self._broken = reason
            self._refused = refused
        self._inbox.clear()
        self._changed()

    async def opened(self) -> None:
        """Wait until the agent has connected this stream it was asked to (Streams.new). Raises
        SandboxError: INVALID_ARGUMENT with the agent's reason if nothing accepts connections
        there, BACKEND_UNAVAILABLE if the channel went away."""
        while not self._connected:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._broken is not None:
                raise SandboxError("INVALID_ARGUMENT" if self._refused else "BACKEND_UNAVAILABLE", self._broken)
            await self._wake.wait()

    # -- ByteStream --------------------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._broken is not None:
            raise anyio.BrokenResourceError(self._broken)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._taken >= STREAM_WINDOW // 4 and not self._eof_received and self._broken is None:
            # Credit for what was taken, before taking more: a cancel here loses nothing.
            await self._post({"method": Stream.CREDIT, "params": {"stream": self.id, "bytes": self._taken}})
            self._taken = 0
        while not self._inbox:
            self._check()
            if self._eof_received:
                raise anyio.EndOfStream
            await self._wake.wait()
        view = self._inbox.popleft()
        if len(view) > max_bytes:
            self._inbox.appendleft(view[max_bytes:])
            view = view[:max_bytes]
        data = bytes(view)
        self._inbox_bytes -= len(data)
        self._taken += len(data)
        return data

    async def send(self, item: bytes | bytearray | memoryview) -> None:
        view = memoryview(item).cast("B")
        async with self._send_lock:
            if self._eof_sent:
                raise anyio.ClosedResourceError
            while view:
                while self._credit <= 0:
                    self._check()
                    await self._wake.wait()
                self._check()
                n = min(self._credit, STREAM_CHUNK, len(view))
                self._credit -= n  # before: the agent may credit it back as soon as it is out
                try:
                    await self._owner.channel.post_data(self.id, view[:n])
                except SandboxError as exc:
                    raise anyio.BrokenResourceError(exc.message) from None
                except BaseException:
                    # Cancelled while it waited for the channel: a frame that started goes out
                    # whole (channel.py), and then no cancel comes from there.
                    self._credit += n
                    raise
                view = view[n:]

    async def send_eof(self) -> None:
        async with self._send_lock:
            self._check()
            if not self._eof_sent:
                self._eof_sent = True
                await self._post({"method": Stream.EOF, "params": {"stream": self.id}})

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.clear()
        self._changed()
        if self._owner.forget(self.id) and self._broken is None:
            with anyio.CancelScope(shield=True):
                try:
                    await self._owner.channel.post({"method": Stream.CLOSE, "params": {"stream": self.id}})
                except SandboxError:
                    pass  # the channel is gone, and the stream with it

    async def _post(self, message: dict[str, Any]) -> None:
        try:
            await self._owner.channel.post(message)
        except SandboxError as exc:
            raise anyio.BrokenResourceError(exc.message) from None


class Streams:
    """The streams of one channel, and the handlers for those the agent opens (by kind)."""

    def __init__(self, channel: Poster, name: str) -> None:
        self.channel = channel
        self._name = name
        self._streams: dict[int, ChannelStream] = {}
        self._handlers: dict[str, StreamHandler] = {}
        self._last_ours = -1  # odd ids
        self._last_theirs = 0  # even ids
        self._task_group: TaskGroup | None = None
        self._handler_scopes: set[anyio.CancelScope] = set()
        self._closed: str | None = None

    def on_stream(self, kind: str, handler: StreamHandler) -> None:
        self._handlers[kind] = handler

    def handles(self, kind: str) -> bool:
        return kind in self._handlers

    def new(self) -> ChannelStream:
        """A stream the host opens; the caller asks the agent to connect it (Stream.CONNECT)."""
        if self._closed is not None:
            raise SandboxError("BACKEND_UNAVAILABLE", f"{self._closed}; create a new sandbox")
        self._last_ours += 2
        stream = ChannelStream(self, self._last_ours)
        self._streams[stream.id] = stream
        return stream

    def forget(self, stream_id: int) -> bool:
        """Whether the stream was still known (then the agent may still hold its end)."""
        return self._streams.pop(stream_id, None) is not None

    def serve(self, task_group: TaskGroup) -> None:
        """Run the handlers of streams the agent opens in this task group (the channel reader's)."""
        self._task_group = task_group

    # -- from the agent ----------------------------------------------------------------------------

    def received(self, method: str, params: dict[str, Any]) -> None:
        """A stream message from the agent (not data); raises Violation for what is wrong."""
        stream_id = params.get("stream")
        if method == Stream.OPEN:
            self._opened(stream_id, params.get("kind"))
            return
        stream = self._find(stream_id)
        if stream is None:
            return
        if method == Stream.CREDIT:
            n = params.get("bytes")
            if type(n) is not int or n <= 0:
                raise Violation("a malformed stream credit")
            stream.credit(n)
        elif method == Stream.EOF:
            stream.eof()
        elif method == Stream.CONNECTED:
            stream.connected()
        elif method == Stream.CLOSE:
            error = params.get("error")
            if error is not None and (type(error) is not str or stream.id % 2 == 0):
                raise Violation("a malformed stream close")
            self._streams.pop(stream.id, None)
            stream.broken(error or "the connection in the sandbox was reset", refused=error is not None)
        else:
            raise Violation(f"an unknown stream message {method!r}")

    def received_data(self, stream_id: Any, data: memoryview) -> None:
        stream = self._find(stream_id)
        if stream is not None:
            stream.data(data)

    def _find(self, stream_id: Any) -> ChannelStream | None:
        """The stream, or None if it ended here already (what was under way is dropped)."""
        if type(stream_id) is not int or stream_id <= 0 or stream_id > (
            self._last_ours if stream_id % 2 else self._last_theirs
        ):
            raise Violation(f"a message for a stream that was never opened: {stream_id!r}")
        return self._streams.get(stream_id)

    def _opened(self, stream_id: Any, kind: Any) -> None:
        if type(stream_id) is not int or stream_id % 2 or stream_id <= self._last_theirs:
            raise Violation(f"a stream opened with an id that is not new and even: {stream_id!r}")
        if not isinstance(kind, str) or kind not in self._handlers:
            raise Violation(f"a stream opened of a kind nobody listens for: {kind!r}")
        # The agent forgets a stream at its end both ways, the host only when the handler is done:
        # room for as many again. At most 2 * MAX_STREAMS * STREAM_WINDOW (64 MiB) held here.
        if sum(1 for known in self._streams if known % 2 == 0) >= 2 * MAX_STREAMS:
            raise Violation(f"more than {MAX_STREAMS} streams opened at once")
        self._last_theirs = stream_id
        stream = ChannelStream(self, stream_id)
        self._streams[stream_id] = stream
        if self._task_group is None or self._closed is not None:
            stream.broken(self._closed or "the channel is not being read")
            return
        self._task_group.start_soon(self._handle, self._handlers[kind], stream)

    async def _handle(self, handler: StreamHandler, stream: ChannelStream) -> None:
        scope = anyio.CancelScope()
        self._handler_scopes.add(scope)
        try:
            with scope:
                await handler(stream)
        except Exception:  # one handler's failure ends its stream, nothing else
            logger.exception("%s: the handler of stream %d failed", self._name, stream.id)
        finally:
            self._handler_scopes.discard(scope)
            await stream.aclose()

    def close(self, reason: str) -> None:
        """The channel closed: every stream breaks, every handler is cancelled."""
        if self._closed is None:
            self._closed = reason
        for stream in self._streams.values():
            stream.broken(reason)
        self._streams.clear()
        for scope in self._handler_scopes:
            scope.cancel()
