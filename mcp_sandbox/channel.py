"""The host's end of the agent channel: frames (agent/protocol.py) over one byte stream each way.

Requests carry an id; the agent answers each once and may send notifications tied to it in
between (output while a command runs). A caller that is cancelled, or waits past its deadline,
tells the agent to cancel too, so a client's cancel or a dropped connection kills what was running
in the sandbox. The agent runs beside code the host does not trust: see AgentChannel.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, get_args

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream
from anyio.streams.memory import MemoryObjectSendStream

from .agent.api import STREAM_CHUNK, STREAM_MESSAGES, Stream
from .agent.protocol import DATA, HEADER, NOTIFICATION_MAX, encode
from .errors import ErrorCode, SandboxError
from .frames import Frames
from .streams import Streams, Violation

logger = logging.getLogger(__name__)

Notify = Callable[[str, dict[str, Any]], Awaitable[None]]
Bytes = bytes | bytearray | memoryview

ERROR_CODES = frozenset(get_args(ErrorCode))
# Notifications held for a caller that has not taken them yet (progress: a few a second).
NOTIFICATIONS_QUEUED = 16
CANCEL_TIMEOUT = 5.0
# How long a frame that has begun to go out may take to finish (see _write_frame).
FRAME_TIMEOUT = 10.0
# What every channel reads small frames into: one buffer for the process, not a megabyte per
# sandbox. Sharing is safe because a read fills it and Frames.feed copies everything out of it
# before the reading channel awaits again (read_into returns as soon as readv has filled it).
_SCRATCH = memoryview(bytearray(1 << 20))


class _Call:
    """A request waiting for its answer; notifications tied to it queue in ``notes``."""

    __slots__ = ("notes", "answer", "into")

    def __init__(self, notes: MemoryObjectSendStream[dict[str, Any]], into: memoryview | None) -> None:
        self.notes = notes
        self.answer: dict[str, Any] | None = None
        self.into = into  # where the bytes beside the answer go, if they fit


class AgentChannel:
    """The host's end. Everything the agent sends is checked before it is used: what a well-behaved
    agent never sends (an unreadable or over-long message, an answer to no request, a malformed
    message) closes the channel, which ends this sandbox and nothing else."""

    def __init__(self, receive: ByteReceiveStream, send: ByteSendStream, name: str, max_message: int) -> None:
        self._receive = receive
        self._send = send
        # Streams that can write without waiting (backends/pipes.py): a frame the channel takes at
        # once (most) is written without a timer for FRAME_TIMEOUT or a turn of the event loop.
        self._send_now: Callable[[list[Bytes]], int] | None = getattr(send, "send_now", None)
        self._name = name
        self._max_message = max_message
        self._send_lock = anyio.Lock(fast_acquire=True)
        self._pending: dict[int, _Call] = {}
        self._next_id = 0
        self._closed_reason: str | None = None
        self._closed = anyio.Event()
        self.streams = Streams(self, name)

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    async def run(self) -> None:
        """Read the agent's messages until its stream ends. Once the channel is closed, what still
        comes is read and dropped: Docker's engine removes a container only after its output was
        taken, and the sandbox's removal ends the stream."""
        async with anyio.create_task_group() as task_group:
            self.streams.serve(task_group)  # handlers of the streams the agent opens
            try:
                await self._read()
            finally:
                self.close("the sandbox's agent stopped (the sandbox was destroyed or crashed)")

    async def _read(self) -> None:
        frames = Frames(self._max_message, self._sink)
        # A stream that reads into our buffers (backends/pipes.py) gets big payloads read straight
        # into theirs, and the rest into the shared _SCRATCH: no copies beyond those.
        receive_into: Callable[[memoryview], Awaitable[int]] | None = getattr(self._receive, "receive_into", None)
        while True:
            room = frames.room() if receive_into is not None and self._closed_reason is None else None
            try:
                if room is not None:
                    assert receive_into is not None
                    received = frames.filled(await receive_into(room))
                elif receive_into is not None:
                    received = frames.feed(_SCRATCH[: await receive_into(_SCRATCH)])
                else:
                    received = frames.feed(await self._receive.receive(1 << 20))
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                return
            if self._closed_reason is not None:
                continue
            try:
                for kind, frame_id, payload, data in received:
                    if kind == DATA:
                        self.streams.received_data(frame_id, memoryview(payload))
                    else:
                        self._dispatch(payload, frame_id, data)
            except Violation as exc:
                logger.warning(
                    "%s: the agent broke the channel protocol (%s%s); stopping the sandbox",
                    self._name, exc.what, f": {exc.raw!r}" if exc.raw else "",
                )
                self.close(f"the sandbox's agent broke the channel protocol ({exc.what}), so the sandbox was stopped")

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _sink(self, request_id: int) -> memoryview | None:
        """Where the call ``request_id`` wants the bytes beside its answer, if it said."""
        call = self._pending.get(request_id)
        return call.into if call is not None else None

    def _dispatch(self, raw: bytearray, frame_id: int, data: memoryview | None) -> None:
        """Pass one message to the call it belongs to; cheap type checks only (the hot path).
        ``data``: the bytes beside an answer (a BLOB frame), whose header named its request."""
        try:
            message = json.loads(raw)
        except (ValueError, RecursionError):
            raise Violation("an unreadable message", raw) from None
        if type(message) is not dict:
            raise Violation("a message that is not a JSON object", raw)
        request_id = message.get("id")
        if data is not None:
            if request_id != frame_id or type(message.get("result")) is not dict:
                raise Violation("bytes beside a message that is no answer, or another request's", raw)
            message["result"]["data"] = data
        if request_id is None and message.get("method") in STREAM_MESSAGES:
            self._stream_message(message, raw)
            return
        if request_id is None:  # a notification: {"method": m, "params": {"id": n, ...}}
            params = message.get("params")
            if type(message.get("method")) is not str or type(params) is not dict or len(raw) > NOTIFICATION_MAX:
                raise Violation("a malformed notification", raw)
            call = self._pending.get(self._issued(params.get("id"), raw))
            if call is not None:
                try:
                    call.notes.send_nowait(message)
                except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass  # progress is best effort: a caller that cannot keep up misses some
            return
        if "error" in message:
            error = message["error"]
            if "result" in message or type(error) is not dict or type(error.get("code")) is not str \
                    or type(error.get("message")) is not str:
                raise Violation("a malformed error", raw)
        elif type(message.get("result")) is not dict:
            raise Violation("an answer without a result", raw)
        # Answers to calls that gave up (cancelled, past their deadline) still arrive: dropped.
        call = self._pending.pop(self._issued(request_id, raw), None)
        if call is not None:
            call.answer = message
            call.notes.close()

    def _stream_message(self, message: dict[str, Any], raw: bytearray) -> None:
        params = message.get("params")
        if type(params) is not dict or len(raw) > NOTIFICATION_MAX:
            raise Violation("a malformed stream message", raw)
        self.streams.received(message["method"], params)

    def _issued(self, request_id: Any, raw: bytearray) -> int:
        if type(request_id) is not int or not 0 < request_id <= self._next_id:
            raise Violation("a message for a request that was never sent", raw)
        return request_id

    def close(self, reason: str) -> None:
        """Fail every call in flight; the sandbox's watcher then removes the sandbox."""
        if self._closed_reason is None:
            self._closed_reason = reason
        self._closed.set()
        self.streams.close(self._closed_reason)
        for call in self._pending.values():
            call.notes.close()
        self._pending.clear()

    async def request(
        self, method: str, params: dict[str, Any], notify: Notify | None = None, *, timeout: float,
        into: memoryview | None = None,
    ) -> Any:
        """Send a request and wait for its answer, passing notifications to ``notify``. Past
        ``timeout`` seconds the call fails with BACKEND_UNAVAILABLE and the agent is told to cancel it.
        Bytes beside the answer (its ``data``) are read into ``into`` where they fit."""
        if self._closed_reason is not None:
            raise SandboxError("BACKEND_UNAVAILABLE", f"{self._closed_reason}; create a new sandbox")
        self._next_id += 1
        request_id = self._next_id
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](NOTIFICATIONS_QUEUED)
        call = _Call(send, into)
        self._pending[request_id] = call
        try:
            with anyio.move_on_after(timeout):
                await self._write({"id": request_id, "method": method, "params": params})
                async with receive:
                    async for message in receive:  # until the answer closes the stream
                        if notify is not None:
                            await notify(message["method"], message["params"])
            answer = call.answer
            if answer is None:
                if self._closed_reason is not None:
                    raise SandboxError("BACKEND_UNAVAILABLE", f"{self._closed_reason}; create a new sandbox")
                raise SandboxError(
                    "BACKEND_UNAVAILABLE",
                    f"the sandbox did not answer {method} within {timeout:g} s (its time limit plus a grace); "
                    "it was told to stop it. If the sandbox stays unresponsive, destroy it and create a new one",
                )
            if "error" in answer:
                error = answer["error"]
                if error["code"] == "CANCELLED":  # the agent is stopping: it cancels what runs
                    raise SandboxError("BACKEND_UNAVAILABLE", "the sandbox stopped while this call ran")
                raise SandboxError(error["code"] if error["code"] in ERROR_CODES else "INTERNAL", error["message"])
            return answer["result"]
        finally:
            self._pending.pop(request_id, None)
            if call.answer is None and self._closed_reason is None:
                await self._cancel(request_id)

    async def _cancel(self, request_id: int) -> None:
        """Tell the agent to stop a call we no longer wait for; an agent that does not even take
        that within a few seconds no longer reads its requests, and its sandbox is ended."""
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(CANCEL_TIMEOUT) as scope:
                try:
                    await self._write({"method": "cancel", "params": {"id": request_id}})
                except SandboxError:
                    pass  # the agent is gone: the channel is closed already
            if scope.cancelled_caught:
                logger.warning("%s: the agent takes no requests any more; stopping the sandbox", self._name)
                self.close("the sandbox's agent stopped taking requests, so the sandbox was stopped")

    async def post(self, message: dict[str, Any]) -> None:
        """A message that is no request (streams.py's); fails with BACKEND_UNAVAILABLE if the agent is gone."""
        if self._closed_reason is not None:
            raise SandboxError("BACKEND_UNAVAILABLE", f"{self._closed_reason}; create a new sandbox")
        await self._write(message)

    async def post_data(self, stream: int, data: bytes | memoryview) -> None:
        """Bytes of a stream (at most STREAM_CHUNK): one frame, one write."""
        if self._closed_reason is not None:
            raise SandboxError("BACKEND_UNAVAILABLE", f"{self._closed_reason}; create a new sandbox")
        await self._write_frame([HEADER.pack(DATA, stream, len(data)), data])

    async def _write(self, message: dict[str, Any]) -> None:
        await self._write_frame(encode(message, "surrogatepass"))

    async def _write_frame(self, pieces: list[Bytes]) -> None:
        """Write one frame whole. A frame cut in the middle would garble every later one, so once
        it has the channel it is finished even if its caller gives up meanwhile; an agent that
        takes nothing for FRAME_TIMEOUT no longer reads, and its sandbox is ended."""
        try:
            async with self._send_lock:
                rest = self._write_now(pieces)
                if rest:
                    with anyio.CancelScope(shield=True), anyio.fail_after(FRAME_TIMEOUT):
                        for piece in rest:
                            await self._send.send(piece)  # type: ignore[arg-type]  # any bytes-like goes
        except TimeoutError:
            logger.warning("%s: the agent takes no requests any more; stopping the sandbox", self._name)
            self.close("the sandbox's agent stopped taking requests, so the sandbox was stopped")
            raise SandboxError("BACKEND_UNAVAILABLE", f"{self._closed_reason}; create a new sandbox") from None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self.close("the sandbox's agent is gone")
            raise SandboxError("BACKEND_UNAVAILABLE", "the sandbox's agent is gone; create a new sandbox") from exc

    def _write_now(self, pieces: list[Bytes]) -> list[Bytes]:
        """Write what the channel takes at once of a frame (in one system call); what is left."""
        if self._send_now is None:
            return pieces
        n = self._send_now(pieces)
        rest: list[Bytes] = []
        for piece in pieces:
            view = memoryview(piece).cast("B")
            if n >= len(view):
                n -= len(view)
            else:
                rest.append(view[n:])
                n = 0
        return rest
