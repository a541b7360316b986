"""MCP over stdin/stdout on the event loop itself.

The SDK's stdio transport reads and writes through worker threads: three thread hand-offs per
tool call (read the request, write the answer, flush it), a sizeable part of a fast ``exec``. This
transport uses asyncio pipe transports instead and speaks the same newline-delimited JSON-RPC.
Like the SDK's, it points fd 0 at /dev/null and fd 1 at stderr while it serves, so nothing a
library or child process prints can corrupt the protocol stream, and restores them afterwards.
When stdin or stdout is something asyncio cannot watch (a regular file, say), that side is read
or written in a worker thread instead.

Every line gets an answer: a line that is not JSON gets a parse error (-32700), JSON that is not
a message this server can decode gets an invalid-request error (-32600) with the request's id
when one can be read. When stdin closes, the requests already read are answered before the
server stops, each bounded by its own timeout: ``printf '<requests>' | mcp-sandbox`` prints them.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import selectors
import stat
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server import MCPServer
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

logger = logging.getLogger(__name__)

_MAX_LINE = 1 << 31  # a line is one message; file contents travel inside them

ReadLine = Callable[[], Awaitable[bytes]]
Write = Callable[[bytes], Awaitable[None]]


def _watchable(fd: int, events: int) -> bool:
    """Whether asyncio can watch the fd: a pipe, socket or character device that the
    selector takes (epoll refuses /dev/null, for one)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
        return False
    with selectors.DefaultSelector() as selector:
        try:
            selector.register(fd, events)
        except (OSError, ValueError):
            return False
    return True


async def serve_stdio(server: MCPServer) -> None:
    """Serve ``server`` over this process's stdin and stdout until stdin closes and every
    request read has its answer."""
    lowlevel: Any = getattr(server, "_lowlevel_server")
    saved_in, saved_out = _private_copy(0), _private_copy(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    try:
        # The readers and writers own (and close) copies of their own.
        await _serve(lowlevel, _private_copy(saved_in), _private_copy(saved_out))
    finally:
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)


def _private_copy(fd: int) -> int:
    """A close-on-exec duplicate above the standard fds: no child inherits the wire."""
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)


async def _open_input(fd: int) -> tuple[ReadLine, Callable[[], None]]:
    """A line reader on fd, and how to close it."""
    if _watchable(fd, selectors.EVENT_READ):
        reader = asyncio.StreamReader(limit=_MAX_LINE)
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0)
        )
        return reader.readline, transport.close
    file = os.fdopen(fd, "rb")

    async def read_line() -> bytes:
        # A regular file, say: a read never waits for long.
        return await anyio.to_thread.run_sync(file.readline, _MAX_LINE, abandon_on_cancel=True)

    return read_line, file.close


async def _open_output(fd: int) -> tuple[Write, Callable[[], None]]:
    """A writer of whole lines to fd, and how to close it."""
    if _watchable(fd, selectors.EVENT_WRITE):
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, os.fdopen(fd, "wb", 0))
        writer = asyncio.StreamWriter(transport, protocol, None, loop)

        async def write_pipe(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        return write_pipe, transport.close
    file = os.fdopen(fd, "wb")

    def put(data: bytes) -> None:
        file.write(data)
        file.flush()

    async def write_file(data: bytes) -> None:
        await anyio.to_thread.run_sync(put, data)

    return write_file, file.close


class _Unanswered:
    """The ids of requests read and not yet answered, so that stdin's end can wait for them."""

    def __init__(self) -> None:
        self.ids: set[types.RequestId] = set()
        self._none_left: anyio.Event | None = None

    def discard(self, request_id: types.RequestId | None) -> None:
        if request_id is None:
            return
        self.ids.discard(request_id)
        if not self.ids and self._none_left is not None:
            self._none_left.set()

    async def wait(self) -> None:
        if self.ids:
            logger.info("stdin closed; %d requests read before still run, answering them first", len(self.ids))
            self._none_left = anyio.Event()
            await self._none_left.wait()


async def _serve(lowlevel: Any, in_fd: int, out_fd: int) -> None:
    read_line, close_input = await _open_input(in_fd)
    try:
        write, close_output = await _open_output(out_fd)
    except BaseException:
        close_input()
        raise
    incoming_send, incoming = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    outgoing, outgoing_receive = anyio.create_memory_object_stream[SessionMessage](0)
    unanswered = _Unanswered()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_read_messages, read_line, incoming_send, outgoing.clone(), unanswered)

            async def write_then_stop() -> None:
                await _write_messages(write, outgoing_receive, unanswered)
                tg.cancel_scope.cancel()  # the client stopped reading: nobody hears us any more

            tg.start_soon(write_then_stop)
            await lowlevel.run(incoming, outgoing, lowlevel.create_initialization_options())
            tg.cancel_scope.cancel()
    finally:
        close_input()
        close_output()


async def _read_messages(
    read_line: ReadLine,
    send: MemoryObjectSendStream[SessionMessage | Exception],
    reply: MemoryObjectSendStream[SessionMessage],
    unanswered: _Unanswered,
) -> None:
    async with send, reply:
        while True:
            try:
                line = await read_line()
            except (ValueError, OSError) as exc:  # a line over the limit, or stdin broke
                logger.warning("stopped reading stdin: %s", exc)
                break
            if not line:
                break
            try:
                message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
            except ValidationError as exc:
                if line.strip():  # a blank line holds no message: nothing to answer
                    await reply.send(SessionMessage(_undecodable(line, exc)))
                continue
            if isinstance(message, types.JSONRPCRequest):
                if message.method != "subscriptions/listen":  # a stream that ends only when cancelled
                    unanswered.ids.add(message.id)
            elif isinstance(message, types.JSONRPCNotification):
                if message.method == "notifications/cancelled":
                    # A cancelled request is never answered.
                    unanswered.discard((message.params or {}).get("requestId"))
                elif b'"id"' in line and (error := _bad_id(line)) is not None:
                    await reply.send(SessionMessage(error))
                    continue
            await send.send(SessionMessage(message))
        # Requests read before stdin closed are answered before the session ends (it cancels
        # whatever still runs then).
        await unanswered.wait()


def _error(request_id: types.RequestId | None, code: int, message: str) -> types.JSONRPCError:
    return types.JSONRPCError(jsonrpc="2.0", id=request_id, error=types.ErrorData(code=code, message=message))


def _request_id(value: Any) -> types.RequestId | None:
    """The value as a JSON-RPC request id, if it is one (a string or an integer)."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    return None


def _undecodable(line: bytes, exc: ValidationError) -> types.JSONRPCError:
    """The answer to a line that is not a message: a parse error, or an invalid request with
    the id it holds."""
    try:
        value = json.loads(line)  # more lenient than the message parser: it reads lone surrogates
    except ValueError:
        return _error(None, types.PARSE_ERROR, "Parse error: the line is not JSON (one JSON-RPC message per line)")
    if isinstance(value, list):
        return _error(None, types.INVALID_REQUEST, "Invalid Request: batches and arrays are not supported; "
                      "send one JSON-RPC message object per line")
    if not isinstance(value, dict):
        return _error(None, types.INVALID_REQUEST, "Invalid Request: not a JSON-RPC message object")
    request_id = _request_id(value.get("id"))
    if exc.errors()[0]["type"] == "json_invalid":
        return _error(request_id, types.INVALID_REQUEST, "Invalid Request: the message holds text that is not "
                      "valid Unicode (a lone surrogate escape such as \\ud800)")
    problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'message'}: {e['msg']}" for e in exc.errors()[:3])
    return _error(request_id, types.INVALID_REQUEST, f"Invalid Request: {problems}")


def _bad_id(line: bytes) -> types.JSONRPCError | None:
    """An error if a message read as a notification has an ``id`` that is no request id."""
    value = json.loads(line)
    if isinstance(value, dict) and "id" in value:
        return _error(None, types.INVALID_REQUEST, "Invalid Request: id must be a string or an integer")
    return None


async def _write_messages(write: Write, receive: MemoryObjectReceiveStream[SessionMessage], unanswered: _Unanswered) -> None:
    async with receive:
        async for session_message in receive:
            message = session_message.message
            try:
                data = message.model_dump_json(by_alias=True, exclude_unset=True).encode("utf-8")
            except ValueError:  # text that is not valid Unicode (lone surrogates) in a result
                data = _rescued(message)
            try:
                await write(data + b"\n")
            except (ConnectionError, OSError, RuntimeError):
                return  # the client stopped reading; stdin's end ends the server
            if isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
                unanswered.discard(message.id)


def _rescued(message: types.JSONRPCMessage) -> bytes:
    """The message with what cannot be encoded replaced by '?', rather than no answer at all."""
    text = json.dumps(message.model_dump(mode="json", by_alias=True, exclude_unset=True), ensure_ascii=False)
    return text.encode("utf-8", "replace")
