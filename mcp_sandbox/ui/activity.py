"""What a sandbox did lately, for the live view: the commands, code and processes its tools ran,
with their output, in a small ring buffer per sandbox.

An MCP middleware (``ActivityRecorder``) watches the tools that run things. Which sandbox a call
used is learnt from the manager, which tells ``note`` of every sandbox it hands out (to the
callback the middleware puts in a context variable for the call): the manager has already
checked the tenant and resolved the default sandbox, so the middleware needs neither.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp_types import CallToolResult

if TYPE_CHECKING:
    from ..sandbox import Sandbox

# Bounds: at most about 30 x 5 x 2,000 characters of text and 2 x 200 kB of images per sandbox.
ENTRIES = 30  # per sandbox
TEXT_MAX = 2000  # characters kept of each input, output stream, result and error (the end of longer ones)
IMAGE_MAX = 200_000  # base64 characters of one image kept (a plot); bigger ones are not kept
IMAGES = 2  # most images kept per sandbox; older entries lose theirs

# The tools whose calls the view shows, and the argument holding what they ran.
# (Not send_process_input: the view's own terminal sends every key stroke with it.)
WATCHED = {"exec": "command", "run_code": "code", "start_process": "command"}

# Told of each sandbox the tool call being served gets from the manager.
noting: ContextVar[Callable[[Sandbox], None] | None] = ContextVar("mcp_sandbox_activity", default=None)


def note(sandbox: Sandbox) -> None:
    """Called by the manager for each sandbox it hands to a tool call."""
    used = noting.get()
    if used is not None:
        used(sandbox)


def _cut(text: object) -> str:
    text = text if isinstance(text, str) else ""
    return text if len(text) <= TEXT_MAX else f"[... {len(text) - TEXT_MAX} characters before ...]" + text[-TEXT_MAX:]


class ActivityLog:
    """One sandbox's recent tool calls, newest last; ``seq`` grows with every change, so that a
    reader polling with the last seq it saw learns whether anything is new."""

    def __init__(self) -> None:
        self.entries: deque[dict[str, Any]] = deque(maxlen=ENTRIES)
        self.seq = 0
        self._next_id = 0

    def start(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        self._next_id += 1
        entry: dict[str, Any] = {
            "id": self._next_id,
            "tool": tool,
            "input": _cut(arguments.get(WATCHED[tool])),
            "target": next(
                (str(arguments[k]) for k in ("session_id", "context_id", "process_id") if arguments.get(k)), None
            ),
            "started_at": time.time(),
            "ended_at": None,
            "status": "running",
        }
        self.entries.append(entry)
        self.seq += 1
        return entry

    def finish(self, entry: dict[str, Any], result: HandlerResult) -> None:
        entry["ended_at"] = time.time()
        if isinstance(result, dict):  # the wire form, as middleware sees it
            try:
                result = CallToolResult.model_validate(result)
            except ValueError:
                pass
        if not isinstance(result, CallToolResult):
            entry["status"] = "error"
            entry["error"] = "the call ended without a result"
        elif result.is_error:
            entry["status"] = "error"
            entry["error"] = _cut(" ".join(getattr(block, "text", "") for block in result.content))
        else:
            entry["status"] = "done"
            self._keep(entry, result)
        self.seq += 1

    def _keep(self, entry: dict[str, Any], result: CallToolResult) -> None:
        data = result.structured_content or {}
        for key in ("exit_code", "timed_out", "session_id", "context_id", "process_id", "pid", "cwd", "language"):
            if data.get(key) is not None:
                entry[key] = data[key]
        entry["target"] = entry["target"] or next(
            (str(data[k]) for k in ("session_id", "context_id", "process_id") if data.get(k)), None
        )
        entry["stdout"] = _cut(data.get("stdout"))
        entry["stderr"] = _cut(data.get("stderr"))
        error = data.get("error")
        if isinstance(error, dict):
            entry["error"] = _cut("\n".join(error.get("traceback") or []) or f"{error.get('name')}: {error.get('value')}")
        shown = []
        for bundle in data.get("results") or []:
            if isinstance(bundle, dict):
                text = bundle.get("text/plain")
                if isinstance(text, str):
                    shown.append(text)
                image = bundle.get("image/png")
                if isinstance(image, str) and len(image) <= IMAGE_MAX and "image" not in entry:
                    entry["image"] = "data:image/png;base64," + image
        if shown:
            entry["result"] = _cut("\n".join(shown))
        if "image" in entry:
            with_images = [e for e in self.entries if "image" in e]
            for old in with_images[:-IMAGES]:
                del old["image"]
                old["image_dropped"] = True


class ActivityRecorder:
    """MCP middleware: record the watched tools' calls in their sandbox's ActivityLog."""

    def __init__(self, logs: dict[str, ActivityLog]) -> None:
        self.logs = logs  # the manager's, by sandbox id

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        params = ctx.params or {}
        tool = params.get("name")
        arguments = params.get("arguments")
        if ctx.method != "tools/call" or tool not in WATCHED or not isinstance(arguments, dict):
            return await call_next(ctx)
        opened: list[tuple[ActivityLog, dict[str, Any]]] = []

        def used(sandbox: Sandbox) -> None:
            # Opened when the tool gets its sandbox, so that a long command shows as running.
            if not any(log is self.logs.get(sandbox.id) for log, _ in opened):
                log = self.logs.setdefault(sandbox.id, ActivityLog())
                opened.append((log, log.start(str(tool), arguments)))

        result: HandlerResult = None
        reset = noting.set(used)
        try:
            result = await call_next(ctx)
            return result
        finally:
            noting.reset(reset)
            for log, entry in opened:
                log.finish(entry, result)
