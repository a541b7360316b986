"""What every tool module shares: the sandbox_id parameter, error mapping, progress."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, ParamSpec, Protocol, TypeVar

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import (
    ResourceError,
    ResourceNotFoundError,
    ToolError,
)
from mcp_types import CallToolResult, ContentBlock, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from ..errors import SandboxError
from ..manager import SandboxManager
from ..sandbox import Sandbox
from ..settings import Settings

P = ParamSpec("P")
R = TypeVar("R")

# Tool annotations, set honestly: nothing here reaches outside the sandbox except code a sandbox
# with network access runs (see runs_code).
READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
CREATES = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
IDEMPOTENT = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False)
OVERWRITES = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)


def runs_code(network: bool) -> ToolAnnotations:
    """For tools that run arbitrary code: it may overwrite files, and reach the world with network."""
    return ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=network)


SandboxId = Annotated[
    str | None,
    Field(description="Sandbox to use; omit for the default sandbox (stdio), or pass the id from create_sandbox."),
]
SessionId = Annotated[
    str | None, Field(description="Shell session to use; omit for the 'default' session.")
]
Env = Annotated[
    dict[str, str] | None, Field(description="Environment variables, name to value.")
]


def _mapped(fn: Callable[P, Awaitable[R]], to_error: Callable[[SandboxError], Exception]) -> Callable[P, Awaitable[R]]:
    """``fn`` with the SandboxError it raises replaced by ``to_error(error)``."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except SandboxError as exc:
            raise to_error(exc) from None

    return wrapper


_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any) -> bool:
    """Whether text in ``value`` holds a lone surrogate, which no UTF-8 (file name, line to the
    agent, JSON answer) can hold. The transports refuse them (stdio.py); an in-process client
    (``Client(server)``) passes them through."""
    if isinstance(value, str):
        return not value.isascii() and _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_lone_surrogate(v) for v in value)
    return False


def tool_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn SandboxError into the tool error text the model reads: ``CODE: message``."""

    @functools.wraps(fn)
    async def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        for name, value in kwargs.items():
            if _lone_surrogate(value):
                raise SandboxError(
                    "INVALID_ARGUMENT", f"{name} holds text that is not valid Unicode (a lone surrogate); send UTF-8 text"
                )
        return await fn(*args, **kwargs)

    wrapper = _mapped(checked, lambda exc: ToolError(f"{exc.code}: {exc.message}"))
    # The docstring becomes the tool's description: without the source's indentation.
    wrapper.__doc__ = inspect.cleandoc(fn.__doc__ or "")
    return wrapper


def duration(seconds: float) -> str:
    """Seconds as a person says them: 120 s, 15 min, 2 h."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 600 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def with_settings(settings: Settings) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Write the settings this server runs with where a tool's docstring names them
    ({command_timeout}, {max_output}, {idle_timeout}, {session_idle_timeout}): the model reads
    the values in force, not the defaults."""
    values = {
        "{command_timeout}": duration(settings.command_timeout),
        "{max_output}": f"{settings.max_output:,}",
        "{idle_timeout}": duration(settings.idle_timeout),
        "{session_idle_timeout}": duration(settings.session_idle_timeout),
    }

    def fill(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        doc = fn.__doc__ or ""
        for name, value in values.items():
            doc = doc.replace(name, value)
        fn.__doc__ = doc
        return fn

    return fill


def _resource_error(exc: SandboxError) -> Exception:
    text = f"{exc.code}: {exc.message}"
    return ResourceNotFoundError(text) if exc.code.endswith("_NOT_FOUND") else ResourceError(text)


def resource_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn SandboxError into the resource error a client reads: ``CODE: message``."""
    return _mapped(fn, _resource_error)


async def resource_sandbox(manager: SandboxManager, sandbox_id: str) -> Sandbox:
    """The sandbox a resource URI names; 'default' is the default sandbox."""
    return await manager.get(None if sandbox_id == "default" else sandbox_id)


def result(
    model: BaseModel, text: str, extra: list[ContentBlock] | None = None, *, meta: dict[str, Any] | None = None
) -> CallToolResult:
    """A tool result: readable text (and images) for the model, the model as structured content;
    ``meta`` becomes its ``_meta`` (the live view's link, for MCP Apps hosts)."""
    return CallToolResult(
        content=[TextContent(type="text", text=text), *(extra or [])],
        structured_content=model.model_dump(mode="json"),
        _meta=meta,
    )


class HasOutput(Protocol):
    """What exec, run_code and process logs share: two streams and the files holding them whole."""

    @property
    def stdout(self) -> str: ...
    @property
    def stderr(self) -> str: ...
    @property
    def stdout_file(self) -> str | None: ...
    @property
    def stderr_file(self) -> str | None: ...


def output_sections(r: HasOutput, note: Callable[[str | None], str], *, mark_end: bool = True) -> list[str]:
    """The non-empty streams as ``--- stdout (note) ---`` sections, each followed by its text.

    ``note(file)`` says where the whole stream is (empty: nothing to say). With ``mark_end``
    the text is shown as it is, a missing final newline marked (exec and process logs: what a
    command printed, to the byte); without, trailing newlines are dropped (run_code, whose
    sections go on with its results).
    """
    parts = []
    for name, text, path in (("stdout", r.stdout, r.stdout_file), ("stderr", r.stderr, r.stderr_file)):
        if text:
            said = note(path)
            parts.append(f"--- {name}{f' ({said})' if said else ''} ---")
            if not mark_end:
                parts.append(text.rstrip("\n"))
            else:
                parts.append(text if text.endswith("\n") else text + "\n[no newline at end]")
    return parts


def cut_note(path: str | None) -> str:
    """The note for a stream cut to its head and tail, whose whole text is in ``path``."""
    return f"cut; full output in {path}" if path else ""


class Waited(Protocol):
    """What get_process_logs and get_process_screen answer after waiting for a pattern."""

    @property
    def matched(self) -> str | None: ...
    @property
    def timed_out(self) -> bool: ...
    @property
    def status(self) -> str: ...


def wait_outcome(r: Waited, wait_for: str, missed: str, at_timeout: str = "") -> str:
    """The line that says how waiting for ``wait_for`` ended: what matched, or ``missed`` (what
    did not match it) and why the wait stopped, with ``at_timeout`` added when time ran out."""
    if r.matched is not None:
        return f"matched: {r.matched}"
    if r.timed_out:
        return f"{missed} {wait_for!r} before the timeout{at_timeout}"
    return f"{missed} {wait_for!r}; the process ended ({r.status})"


Progress = Callable[[str, str, int], Awaitable[None]]


def progress_reporter(ctx: Context) -> Progress:
    """Forward new command output to the client as progress notifications.

    The agent sends output at most four times a second; the SDK drops the notifications when
    the client gave no progress token.
    """
    totals = {"stdout": 0, "stderr": 0}

    async def report(stream: str, text: str, total: int) -> None:
        totals[stream] = total  # progress must grow: report bytes of both streams together
        await ctx.report_progress(sum(totals.values()), None, f"[{stream}] {text}" if stream == "stderr" else text)

    return report

