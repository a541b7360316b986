"""The host's end of the agent channel: JSON lines over one byte stream each way.

Requests carry an id; the agent answers each once and may send notifications tied to it in
between (output while a command runs). A caller that is cancelled tells the agent to cancel too,
so a client's cancel or a dropped connection kills what was running in the sandbox.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream
from anyio.streams.memory import MemoryObjectSendStream

from .errors import SandboxError

logger = logging.getLogger(__name__)

Notify = Callable[[str, dict[str, Any]], Awaitable[None]]


class Base64Text(str):
    """Base64, which needs no escaping in JSON: as a request's ``data`` parameter (file chunks of
    up to 1.4 MB) it is put into the line as it is, where json.dumps would spend milliseconds
    scanning it."""


def encode_request(message: dict[str, Any]) -> bytes:
    """One JSON line; a Base64Text ``params["data"]`` goes in last, unscanned."""
    params = message.get("params")
    payload = params.get("data") if isinstance(params, dict) else None
    if not isinstance(params, dict) or not isinstance(payload, Base64Text):
        return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass") + b"\n"
    rest = {key: value for key, value in params.items() if key != "data"}
    head = json.dumps(
        {**{key: value for key, value in message.items() if key != "params"}, "params": rest},
        ensure_ascii=False, separators=(",", ":"),
    )  # ends with the params' closing brace and the message's
    opening = b',"data":"' if rest else b'"data":"'
    return head[:-2].encode("utf-8", "surrogatepass") + opening + payload.encode("ascii") + b'"}}\n'


class AgentChannel:
    def __init__(self, receive: ByteReceiveStream, send: ByteSendStream, name: str) -> None:
        self._receive = receive
        self._send = send
        self._name = name
        self._send_lock = anyio.Lock()
        self._pending: dict[int, MemoryObjectSendStream[dict[str, Any]]] = {}
        self._next_id = 0
        self._closed_reason: str | None = None

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    async def run(self) -> None:
        """Read the agent's messages until its stream ends; then fail whatever still waits."""
        buffer = bytearray()
        try:
            while True:
                try:
                    chunk = await self._receive.receive(1 << 20)
                except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                    break
                scan = len(buffer)  # what came before has no newline: search only the new part
                buffer += chunk
                start = 0
                while (end := buffer.find(b"\n", scan)) >= 0:
                    self._dispatch(bytes(buffer[start:end]))
                    start = scan = end + 1
                del buffer[:start]
        finally:
            self.close("the sandbox's agent stopped (the sandbox was destroyed or crashed)")

    def _dispatch(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            logger.warning("%s: unreadable agent line %r", self._name, line[:200])
            return
        request_id = message.get("id")
        if request_id is None:
            request_id = message.get("params", {}).get("id")
        stream = self._pending.get(request_id)
        if stream is not None:
            try:
                stream.send_nowait(message)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    def close(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason
        for stream in self._pending.values():
            stream.close()
        self._pending.clear()

    async def request(self, method: str, params: dict[str, Any], notify: Notify | None = None) -> Any:
        """Send a request and wait for its answer, passing notifications to ``notify``."""
        if self._closed_reason is not None:
            raise SandboxError("BACKEND_UNAVAILABLE", f"{self._closed_reason}; create a new sandbox")
        self._next_id += 1
        request_id = self._next_id
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](float("inf"))
        self._pending[request_id] = send
        answered = False
        try:
            await self._write({"id": request_id, "method": method, "params": params})
            async with receive:
                async for message in receive:
                    if "method" in message:
                        if notify is not None:
                            await notify(message["method"], message["params"])
                        continue
                    answered = True
                    if "error" in message:
                        error = message["error"]
                        raise SandboxError(error.get("code", "INTERNAL"), error.get("message", "agent error"))
                    return message.get("result")
            raise SandboxError("BACKEND_UNAVAILABLE", f"{self._closed_reason}; create a new sandbox")
        finally:
            self._pending.pop(request_id, None)
            if not answered and self._closed_reason is None:
                with anyio.CancelScope(shield=True):
                    try:
                        await self._write({"method": "cancel", "params": {"id": request_id}})
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        pass

    async def _write(self, message: dict[str, Any]) -> None:
        data = encode_request(message)
        try:
            async with self._send_lock:
                await self._send.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self.close("the sandbox's agent is gone")
            raise SandboxError("BACKEND_UNAVAILABLE", "the sandbox's agent is gone; create a new sandbox") from exc
