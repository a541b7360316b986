"""MCP over stdin/stdout on the event loop itself.

The SDK's stdio transport reads and writes through worker threads: three thread hand-offs per
tool call (read the request, write the answer, flush it), a sizeable part of a fast ``exec``. This
transport uses asyncio pipe transports instead and speaks the same newline-delimited JSON-RPC.
Like the SDK's, it points fd 0 at /dev/null and fd 1 at stderr while it serves, so nothing a
library or child process prints can corrupt the protocol stream, and restores them afterwards.

When stdin or stdout is not a pipe, socket or terminal (a regular file, say), asyncio cannot watch
it, and the SDK's transport serves instead.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import stat
from typing import Any

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server import MCPServer
from mcp.shared.message import SessionMessage

logger = logging.getLogger(__name__)

_MAX_LINE = 1 << 31  # a line is one message; file contents travel inside them


def _watchable(fd: int) -> bool:
    """Whether asyncio can watch the fd: a pipe, socket or character device."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


async def serve_stdio(server: MCPServer) -> None:
    """Serve ``server`` over this process's stdin and stdout until stdin closes."""
    lowlevel: Any = getattr(server, "_lowlevel_server", None)
    if lowlevel is None or not (_watchable(0) and _watchable(1)):
        await server.run_stdio_async()
        return
    saved_in, saved_out = _private_copy(0), _private_copy(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    try:
        # The transports own (and close) copies of their own.
        await _serve(lowlevel, _private_copy(saved_in), _private_copy(saved_out))
    finally:
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)


def _private_copy(fd: int) -> int:
    """A close-on-exec duplicate above the standard fds: no child inherits the wire."""
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)


async def _serve(lowlevel: Any, in_fd: int, out_fd: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_MAX_LINE)
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(in_fd, "rb", 0)
    )
    write_transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(out_fd, "wb", 0)
    )
    writer = asyncio.StreamWriter(write_transport, protocol, None, loop)
    incoming_send, incoming = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    outgoing, outgoing_receive = anyio.create_memory_object_stream[SessionMessage](0)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_read_messages, reader, incoming_send)

            async def write_then_stop() -> None:
                await _write_messages(writer, outgoing_receive)
                tg.cancel_scope.cancel()  # the client stopped reading: nobody hears us any more

            tg.start_soon(write_then_stop)
            await lowlevel.run(incoming, outgoing, lowlevel.create_initialization_options())
            tg.cancel_scope.cancel()
    finally:
        read_transport.close()
        write_transport.close()


async def _read_messages(reader: asyncio.StreamReader, send: MemoryObjectSendStream[SessionMessage | Exception]) -> None:
    async with send:
        while True:
            try:
                line = await reader.readline()
            except (ValueError, OSError) as exc:  # a line over the limit, or stdin broke
                logger.warning("stopped reading stdin: %s", exc)
                return
            if not line:
                return
            try:
                message = types.jsonrpc_message_adapter.validate_json(line.decode("utf-8", "replace"), by_name=False)
            except Exception as exc:  # the SDK's transport passes bad lines on the same way
                await send.send(exc)
                continue
            await send.send(SessionMessage(message))


async def _write_messages(writer: asyncio.StreamWriter, receive: MemoryObjectReceiveStream[SessionMessage]) -> None:
    async with receive:
        async for session_message in receive:
            data = session_message.message.model_dump_json(by_alias=True, exclude_unset=True)
            try:
                writer.write(data.encode("utf-8") + b"\n")
                await writer.drain()
            except (ConnectionError, OSError, RuntimeError):
                return  # the client stopped reading; stdin's end ends the server
