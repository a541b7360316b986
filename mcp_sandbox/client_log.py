"""MCP logging: the server's own log records, sent to the clients that ask for them.

A client picks a level with ``logging/setLevel`` (protocol versions up to 2025-11-25), or per
request with the ``io.modelcontextprotocol/logLevel`` entry of ``_meta`` (2026-07-28). From then on
each record of the ``mcp_sandbox`` loggers at or above that level reaches it as a
``notifications/message``:

- a record made while serving one of its requests (a sandbox created without isolation, the
  progress of an image pull) goes to that client only, on that request, before its answer;
- a record of the server's own doing (a sandbox that expired or stopped unexpectedly) goes to
  every client of the sandbox's tenant that set a level with ``logging/setLevel`` (records that
  name no tenant: to the clients of the single tenant of a server without a tokens file), so no
  tenant hears of another's sandboxes.

Records are made at the server's --log-level and above, so a client's ``debug`` sees no more than
the server logs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from . import tenants

# MCP's levels (RFC 5424) on Python's scale.
LEVELS: dict[str, int] = {
    "debug": logging.DEBUG, "info": logging.INFO, "notice": 25, "warning": logging.WARNING,
    "error": logging.ERROR, "critical": logging.CRITICAL, "alert": 60, "emergency": 70,
}
# Records waiting for the clients; past this, new ones are dropped rather than held.
QUEUE = 1000
# A client that does not read its stream must not hold up the others for long.
SEND_TIMEOUT = 5.0
# How long a request's answer waits for the records its work made to go out first.
FLUSH_TIMEOUT = 5.0


def mcp_level(levelno: int) -> types.LoggingLevel:
    if levelno >= logging.CRITICAL:
        return "critical"
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    return "info" if levelno >= logging.INFO else "debug"


def connection_of(ctx: ServerRequestContext[Any, Any]) -> Connection | None:
    # The SDK hands handlers the per-request session only; its connection is what lives (and
    # says when it closes) as long as the client. Private: without it, no records are sent
    # (tests/test_client_log.py says so), but every request is still served.
    connection: Connection | None = getattr(ctx.session, "_connection", None)
    return connection


def asked_level(ctx: ServerRequestContext[Any, Any]) -> int | None:
    """The level a 2026-07-28 request asks for in its ``_meta``, if any (before the SDK has
    checked the request: anything may be there)."""
    meta = (ctx.params or {}).get("_meta")
    asked = meta.get(types.LOG_LEVEL_META_KEY) if isinstance(meta, dict) else None
    return LEVELS.get(asked) if isinstance(asked, str) else None


@dataclass(eq=False)
class Request:
    """A request being served, whose client asked for records at ``level`` and above; a level
    of None means the connection's ``logging/setLevel`` level at the time of the record."""

    ctx: ServerRequestContext[Any, Any]
    connection: Connection
    level: int | None
    done: bool = False
    queued: int = 0  # records of it not yet sent
    flushed: anyio.Event | None = None


Record = tuple[int, str, str, Request | None, str]  # level number, logger, message, request, tenant


class ClientLog(logging.Handler):
    """A logging handler that forwards ``mcp_sandbox`` records to MCP clients (see the module)."""

    def __init__(self) -> None:
        super().__init__()
        self.levels: dict[Connection, int] = {}  # logging/setLevel, per connection
        self.tenants: dict[Connection, str | None] = {}  # whom each connection acts for
        self._guard = threading.Lock()  # levels is read from whatever thread logs
        self._users = 0
        self._loop_thread: int | None = None
        self._send: MemoryObjectSendStream[Record] | None = None
        self._call_soon: Any = None
        self._serving: ContextVar[Request | None] = ContextVar("mcp_sandbox_serving", default=None)

    def install(self, server: MCPServer) -> None:
        """Serve ``logging/setLevel`` (which declares the logging capability) and see every
        request. The server must have been built with ``lifespan=self.lifespan``."""
        lowlevel: Any = getattr(server, "_lowlevel_server")
        lowlevel.add_request_handler("logging/setLevel", types.SetLevelRequestParams, self.set_level)
        server.middleware.append(self.serve_request)

    async def set_level(self, ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams) -> types.EmptyResult:
        connection = connection_of(ctx)
        if connection is None:
            return types.EmptyResult()
        with self._guard:
            first = connection not in self.levels
            self.levels[connection] = LEVELS[params.level]
            self.tenants[connection] = tenants.current.get()
        if first:
            connection.exit_stack.callback(self._forget, connection)
        return types.EmptyResult()

    def _forget(self, connection: Connection) -> None:
        with self._guard:
            self.levels.pop(connection, None)
            self.tenants.pop(connection, None)

    async def serve_request(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """Middleware: mark what a request's work logs as its own, and send it before the answer."""
        if ctx.request_id is None:  # a notification
            return await call_next(ctx)
        connection = connection_of(ctx)
        if connection is None:
            return await call_next(ctx)
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            level = asked_level(ctx)
            if level is None:
                return await call_next(ctx)
            request = Request(ctx, connection, level)
        elif connection in self.levels:
            request = Request(ctx, connection, None)
        else:
            return await call_next(ctx)
        token = self._serving.set(request)
        try:
            return await call_next(ctx)
        finally:
            self._serving.reset(token)
            try:
                if request.queued:
                    request.flushed = anyio.Event()
                    with anyio.move_on_after(FLUSH_TIMEOUT):
                        await request.flushed.wait()
            finally:
                request.done = True  # what its tasks log from now on is the server's own doing

    def emit(self, record: logging.LogRecord) -> None:
        # Called from any thread: a worker thread pulls images, for one.
        request = self._serving.get()
        if request is not None and request.done:
            request = None
        with self._guard:
            if request is None:
                wanted = min(self.levels.values(), default=None)
            else:
                wanted = request.level if request.level is not None else self.levels.get(request.connection)
        if wanted is None or record.levelno < wanted or self._call_soon is None:
            return
        item: Record = (
            record.levelno, record.name, record.getMessage(), request, getattr(record, "tenant", tenants.SINGLE)
        )
        try:
            if threading.get_ident() == self._loop_thread:
                self._queue(item)
            else:
                self._call_soon(self._queue, item)
        except RuntimeError:  # the event loop is closed: the server is gone
            pass

    def _queue(self, item: Record) -> None:
        if self._send is None:
            return
        try:
            self._send.send_nowait(item)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            return
        if item[3] is not None:
            item[3].queued += 1

    @asynccontextmanager
    async def lifespan(self, _: MCPServer) -> AsyncIterator[dict[str, Any]]:
        """The server's lifespan: forward records while at least one transport serves."""
        self._users += 1
        try:
            if self._users > 1:
                yield {}
                return
            loop = asyncio.get_running_loop()
            send, receive = anyio.create_memory_object_stream[Record](QUEUE)
            self._send, self._call_soon, self._loop_thread = send, loop.call_soon_threadsafe, threading.get_ident()
            logger = logging.getLogger("mcp_sandbox")
            logger.addHandler(self)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._forward, receive)
                    yield {}
                    tg.cancel_scope.cancel()
            finally:
                logger.removeHandler(self)
                self._send = None
                self._call_soon = None
                self._loop_thread = None
                send.close()
        finally:
            self._users -= 1

    async def _forward(self, receive: MemoryObjectReceiveStream[Record]) -> None:
        async with receive:
            async for levelno, name, message, request, tenant in receive:
                params = types.LoggingMessageNotificationParams(level=mcp_level(levelno), logger=name, data=message)
                with anyio.move_on_after(SEND_TIMEOUT):
                    if request is None or request.done:
                        await self._broadcast(levelno, tenant, params)
                    else:
                        await request.ctx.session.send_notification(
                            types.LoggingMessageNotification(params=params), related_request_id=request.ctx.request_id
                        )
                if request is not None:
                    request.queued -= 1
                    if request.queued == 0 and request.flushed is not None:
                        request.flushed.set()

    async def _broadcast(self, levelno: int, tenant: str, params: types.LoggingMessageNotificationParams) -> None:
        with self._guard:
            targets = [c for c, wanted in self.levels.items() if levelno >= wanted and self.tenants.get(c) == tenant]
        for connection in targets:
            await connection.notify("notifications/message", params.model_dump(by_alias=True, exclude_none=True))
