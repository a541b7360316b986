"""The channel's framing, and the agent's side of it: frames in on one fd, frames out on another.

Every frame is a header (``HEADER``: its kind, a stream id, the payload's length) and a payload:
- ``MESSAGE``: a JSON object. Host -> agent: ``{"id": n, "method": m, "params": {...}}`` (a
  request), ``{"method": "cancel", "params": {"id": n}}``, or a stream message (api.Stream).
  Agent -> host: ``{"id": n, "result": ...}``, ``{"id": n, "error": {"code": c, "message": s}}``,
  a notification ``{"method": m, "params": {"id": n, ...}}`` tied to a request still running, or
  a stream message.
- ``BLOB``: a message with bytes beside it, unencoded: a 4-byte length, the JSON object, then the
  bytes, which are the request's ``params["data"]`` or the answer's ``result["data"]`` (file chunks).
- ``DATA``: the bytes of the stream the header names (api.Stream), at most api.STREAM_CHUNK.
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
from typing import Any, Awaitable, Callable, Dict, List, Optional, Union

from .api import CANCEL, STREAM_CHUNK, Stream
from .channel_io import FdReader, FdWriter

HEADER = struct.Struct(">BII")
LENGTH = struct.Struct(">I")
MESSAGE, BLOB, DATA = 1, 2, 3
Bytes = Union[bytes, bytearray, memoryview]


class AgentError(Exception):
    """An error with one of the codes the README lists under "Tools", reported to the host as-is."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Request:
    """One request being served; lets its handler send notifications tied to it."""

    def __init__(self, conn: "Connection", request_id: int, params: Dict[str, Any]) -> None:
        self.conn = conn
        self.id = request_id
        self.params = params

    def notify(self, method: str, **params: Any) -> None:
        params["id"] = self.id
        self.conn.send({"method": method, "params": params})


Handler = Callable[[Request], Awaitable[Any]]

# The host stops a sandbox whose agent sends a longer message (channel.py), so the agent never
# does: room for a file chunk or an image read whole (5 MiB as base64), and for the two output
# streams of max_output characters each, escaped in JSON (up to 6 bytes a character).
LINE_BASE = 8 << 20
# Notifications (command output while it runs) are small; the host holds a few per call at most.
NOTIFICATION_MAX = 1 << 20


def line_limit(max_output: int) -> int:
    """The longest message (a frame's payload) either end accepts from the agent, for a given
    --max-output."""
    return LINE_BASE + 12 * max_output


# Lone surrogates: names that are not UTF-8 (os gives their bytes as surrogate escapes) or text
# passed in by an in-process host.
SURROGATES = re.compile("[\ud800-\udfff]")


def utf8(text: str) -> bytes:
    """``text`` in valid UTF-8, the only lines the host reads: a lone surrogate becomes U+FFFD, as
    undecodable bytes in command output do (a file named b'\\xff' must not stop the sandbox)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return SURROGATES.sub("\ufffd", text).encode("utf-8")


def _json(message: Dict[str, Any], errors: Optional[str]) -> bytes:
    text = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
    return utf8(text) if errors is None else text.encode("utf-8", errors)


def encode(message: Dict[str, Any], errors: Optional[str] = None) -> List[Bytes]:
    """A message as the pieces of one frame: bytes in ``params["data"]`` or ``result["data"]`` go
    beside the JSON as they are (a BLOB), without a copy. ``errors``: how lone surrogates are
    encoded: by default (the agent's, from file names) as U+FFFD, see utf8; the host passes
    "surrogatepass" for the JSON it was given, which the agent's json.loads reads back."""
    inner = message.get("params", message.get("result"))
    data = inner.get("data") if isinstance(inner, dict) else None
    if not isinstance(data, (bytes, bytearray, memoryview)):
        payload = _json(message, errors)
        return [HEADER.pack(MESSAGE, 0, len(payload)) + payload]
    key = "params" if "params" in message else "result"
    outer = dict(message)
    outer[key] = dict((name, value) for name, value in inner.items() if name != "data")  # type: ignore[union-attr]
    head = _json(outer, errors)
    # The header names the request, so that the host can read the bytes to where that call wants them.
    header = HEADER.pack(BLOB, message.get("id") or 0, LENGTH.size + len(head) + len(data))
    return [header + LENGTH.pack(len(head)) + head, data]


def decode_blob(payload: Bytes) -> Dict[str, Any]:
    """A BLOB's message, its bytes put back in as ``data`` (a view of the payload, no copy).
    Raises ValueError if it is malformed."""
    view = memoryview(payload)
    if len(view) < LENGTH.size:
        raise ValueError("a blob without its length")
    (length,) = LENGTH.unpack_from(view)
    if length > len(view) - LENGTH.size:
        raise ValueError("a blob shorter than its message")
    message: Dict[str, Any] = json.loads(bytes(view[LENGTH.size : LENGTH.size + length]))
    inner = message.get("params", message.get("result")) if type(message) is dict else None
    if type(inner) is not dict:
        raise ValueError("a blob whose message has no params or result object")
    inner["data"] = view[LENGTH.size + length :]
    return message


class Connection:
    """Reads requests, runs each in its own task, writes responses; cancel kills a task."""

    def __init__(
        self, in_fd: int, out_fd: int, handlers: Dict[str, Handler], max_line: int,
        notifications: Optional[Dict[str, Callable[[Dict[str, Any]], None]]] = None,
    ) -> None:
        self._in_fd = in_fd
        self._out_fd = out_fd
        self._handlers = handlers
        # Messages that are no request (streams.py's): handled at once, in the order they came.
        self._notifications = notifications or {}
        self._max_line = max_line
        self._tasks: Dict[int, "asyncio.Task[None]"] = {}
        self._reader: Optional[FdReader] = None
        self._writer: Optional[FdWriter] = None
        self._out_buffer: List[bytes] = []
        # For rest.py: when the last frame came in or the last request ended (the loop's clock),
        # and whether serve waits for a frame of which nothing has been read yet.
        self.last_active = 0.0
        self._between_frames = False

    async def serve(self) -> None:
        """Serve until the host closes its end of the channel."""
        loop = asyncio.get_running_loop()
        reader = self._reader = FdReader(self._in_fd)
        self._writer = FdWriter(self._out_fd)
        for early in self._out_buffer:
            self._writer.write(early)
        self._out_buffer.clear()
        self.last_active = loop.time()
        while True:
            try:
                self._between_frames = True
                head = await reader.readexactly(HEADER.size)
                self._between_frames = False
                self.last_active = loop.time()
                kind, stream, length = HEADER.unpack(head)
                payload = await reader.readexactly(length)
            except EOFError:
                return
            if kind == DATA:
                on_data = self._notifications.get(Stream.DATA)
                if on_data is not None:
                    self._notify(on_data, {"stream": stream, "data": payload})
                continue
            try:
                message: Any = json.loads(payload) if kind == MESSAGE else decode_blob(payload)
            except ValueError:
                continue
            if message.get("method") == CANCEL:
                task = self._tasks.get(message.get("params", {}).get("id"))
                if task is not None:
                    task.cancel()
                continue
            notification = self._notifications.get(message.get("method"))
            if notification is not None:
                self._notify(notification, message.get("params"))
                continue
            request_id = message.get("id")
            self._tasks[request_id] = loop.create_task(
                self._run(Request(self, request_id, message.get("params") or {}), message.get("method"))
            )
            # Keep the host's big writes from piling up unboundedly behind a slow reader.
            await self._writer.drain()

    def _notify(self, notification: Callable[[Dict[str, Any]], None], params: Any) -> None:
        """A stream message; a malformed one (a host bug) is dropped."""
        try:
            notification(params)
        except (AttributeError, KeyError, TypeError, ValueError):
            pass

    def send_data(self, stream: int, data: bytes) -> None:
        """Bytes of a stream to the host (at most STREAM_CHUNK)."""
        assert len(data) <= STREAM_CHUNK
        self._write([HEADER.pack(DATA, stream, len(data)), data])

    async def _run(self, request: Request, method: str) -> None:
        try:
            handler = self._handlers.get(method)
            if handler is None:
                raise AgentError("INVALID_ARGUMENT", "unknown agent method %r" % method)
            result = await handler(request)
            self.send({"id": request.id, "result": result})
        except AgentError as exc:
            self.send({"id": request.id, "error": {"code": exc.code, "message": exc.message}})
        except asyncio.CancelledError:
            self.send({"id": request.id, "error": {"code": "CANCELLED", "message": "cancelled"}})
        except Exception as exc:  # a bug in the agent must not take the channel down
            self.send({"id": request.id, "error": {"code": "INTERNAL", "message": "%s: %s" % (type(exc).__name__, exc)}})
        finally:
            self._tasks.pop(request.id, None)
            self.last_active = asyncio.get_running_loop().time()

    def quiet(self) -> bool:
        """Nothing under way on the channel: no request running, nothing of a frame read, nothing
        waiting to be written. The agent may then hand the channel's fds over (rest.py)."""
        return (
            not self._tasks
            and self._between_frames
            and self._reader is not None
            and self._reader.empty()
            and self._writer is not None
            and not self._writer.pending
        )

    def send(self, message: Dict[str, Any]) -> None:
        pieces = encode(message)
        size = sum(len(piece) for piece in pieces) - HEADER.size
        if size > (self._max_line if "id" in message else NOTIFICATION_MAX):
            if "id" not in message:
                return  # progress is best effort
            # E.g. run_code displaying a huge image: the call fails, the sandbox lives on.
            pieces = encode({"id": message["id"], "error": {"code": "LIMIT_REACHED", "message": (
                "the answer was %.1f MB, more than the %.0f MB a sandbox may send at once; return less "
                "(write big results to a file and read it in parts)" % (size / 1e6, self._max_line / 1e6)
            )}})
        self._write(pieces)

    def _write(self, pieces: List[Bytes]) -> None:
        if self._writer is None:
            self._out_buffer.extend(bytes(piece) for piece in pieces)
        else:
            self._writer.write(*pieces)

    async def drain(self) -> None:
        """Wait until the host has taken what was written (for big streamed transfers)."""
        if self._writer is not None:
            await self._writer.drain()

    def cancel_all(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()

    async def aclose(self) -> None:
        """Cancel the requests still running and wait until each has ended (and answered)."""
        while self._tasks:
            self.cancel_all()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
