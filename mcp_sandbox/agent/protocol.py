"""The agent's side of the channel: JSON lines in on one fd, JSON lines out on another.

Messages host -> agent: ``{"id": n, "method": m, "params": {...}}`` (a request) or
``{"method": "cancel", "params": {"id": n}}``. Agent -> host: ``{"id": n, "result": ...}``,
``{"id": n, "error": {"code": c, "message": s}}`` or a notification
``{"method": m, "params": {"id": n, ...}}`` tied to a request still running.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any, Awaitable, Callable, Dict, List, Optional

from .api import CANCEL


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

# The host stops a sandbox whose agent sends a longer line (channel.py), so the agent never does:
# room for a file chunk or an image read whole (5 MiB as base64), and for the two output streams
# of max_output characters each, escaped in JSON (up to 6 bytes a character).
LINE_BASE = 8 << 20
# Notifications (command output while it runs) are small; the host holds a few per call at most.
NOTIFICATION_MAX = 1 << 20


def line_limit(max_output: int) -> int:
    """The longest line either end accepts from the agent, for a given --max-output."""
    return LINE_BASE + 12 * max_output


class Base64Text(str):
    """Base64, which needs no escaping in JSON: as a result's ``data`` (file chunks of up to
    1.4 MB) it is put into the line as it is, where json.dumps would spend milliseconds scanning it."""


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


def encode(message: Dict[str, Any]) -> bytes:
    """One JSON line; a Base64Text ``result["data"]`` goes in last, unscanned."""
    result = message.get("result")
    payload = result.get("data") if isinstance(result, dict) else None
    if not isinstance(result, dict) or not isinstance(payload, Base64Text):
        return utf8(json.dumps(message, ensure_ascii=False, separators=(",", ":"))) + b"\n"
    rest = dict((key, value) for key, value in result.items() if key != "data")
    outer = dict((key, value) for key, value in message.items() if key != "result")
    outer["result"] = rest
    head = json.dumps(outer, ensure_ascii=False, separators=(",", ":"))  # ends with two closing braces
    opening = b',"data":"' if rest else b'"data":"'
    return utf8(head[:-2]) + opening + payload.encode("ascii") + b'"}}\n'


class Connection:
    """Reads requests, runs each in its own task, writes responses; cancel kills a task."""

    def __init__(self, in_fd: int, out_fd: int, handlers: Dict[str, Handler], max_line: int) -> None:
        self._in_fd = in_fd
        self._out_fd = out_fd
        self._handlers = handlers
        self._max_line = max_line
        self._tasks: Dict[int, "asyncio.Task[None]"] = {}
        self._writer: Optional[asyncio.StreamWriter] = None
        self._out_buffer: List[bytes] = []

    async def serve(self) -> None:
        """Serve until the host closes its end of the channel."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 30)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(self._in_fd, "rb", 0))
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(self._out_fd, "wb", 0)
        )
        self._writer = asyncio.StreamWriter(transport, protocol, None, loop)
        for message in self._out_buffer:
            self._writer.write(message)
        self._out_buffer.clear()
        while True:
            line = await reader.readline()
            if not line:
                return
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("method") == CANCEL:
                task = self._tasks.get(message.get("params", {}).get("id"))
                if task is not None:
                    task.cancel()
                continue
            request_id = message.get("id")
            self._tasks[request_id] = loop.create_task(
                self._run(Request(self, request_id, message.get("params") or {}), message.get("method"))
            )
            # Keep the host's big writes from piling up unboundedly behind a slow reader.
            await self._writer.drain()

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

    def send(self, message: Dict[str, Any]) -> None:
        data = encode(message)
        if len(data) > (self._max_line if "id" in message else NOTIFICATION_MAX):
            if "id" not in message:
                return  # progress is best effort
            # E.g. run_code displaying a huge image: the call fails, the sandbox lives on.
            data = encode({"id": message["id"], "error": {"code": "LIMIT_REACHED", "message": (
                "the answer was %.1f MB, more than the %.0f MB a sandbox may send at once; return less "
                "(write big results to a file and read it in parts)" % (len(data) / 1e6, self._max_line / 1e6)
            )}})
        if self._writer is None:
            self._out_buffer.append(data)
        elif not self._writer.transport.is_closing():
            self._writer.write(data)

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
