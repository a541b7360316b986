"""Tools: create_code_context, run_code, list_code_contexts, delete_code_context."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, ContentBlock, ImageContent
from pydantic import Field

from ..manager import SandboxManager
from ..models import CodeContextCreated, CodeContextDeleted, CodeContextList, CodeResult
from ..ui.page import TOOL_META
from .common import (
    CREATES,
    DESTRUCTIVE,
    READ_ONLY,
    SandboxId,
    cut_note,
    output_sections,
    progress_reporter,
    result,
    runs_code,
    tool_errors,
    with_settings,
)

IMAGE_TYPES = ("image/png", "image/jpeg")
# The representation a model reads best, first; images go along as image content.
TEXT_TYPES = ("text/plain", "text/markdown", "text/html", "application/json", "image/svg+xml", "text/latex")

Language = Annotated[
    str | None,
    Field(description="python (the default), javascript or typescript (where the sandbox's Node.js can run it)."),
]
ContextId = Annotated[
    str | None,
    Field(description="The code context to use; omit for the language's default context (created on first use)."),
]


# What repr() gives an object that defines none: `<__main__.Table at 0x7f...>`, `<IPython.core.display.HTML object>`.
DEFAULT_REPR = re.compile(r"^<[\w.]+ (object|at 0x[0-9a-f]+)>$")


def _text_of(bundle: dict[str, Any]) -> str | None:
    """The bundle's most readable text: text/plain, unless it is a bare default repr and a
    richer text form (markdown, HTML, JSON, ...) says more."""
    mimes = [mime for mime in TEXT_TYPES if mime in bundle]
    if len(mimes) > 1 and mimes[0] == "text/plain" and DEFAULT_REPR.match(str(bundle["text/plain"])):
        mimes = mimes[1:]
    if not mimes:
        return None
    data = bundle[mimes[0]]
    return data if isinstance(data, str) else json.dumps(data, indent=2)


def render_code(r: CodeResult) -> str:
    """A run as a model reads it best: a status line, output, results, then the error."""
    status = f"{r.language} context {r.context_id!r}"
    if r.execution_count is not None:
        status += f" · run {r.execution_count}"
    status += f" · {r.duration_ms:.0f} ms"
    if r.timed_out and not r.restarted:
        status += " · timed out: interrupted; the context keeps its state"
    elif r.restarted:
        status += " · interpreter restarted: the context's variables, imports and definitions are gone"
    parts = [status]
    parts += output_sections(r, cut_note, mark_end=False)
    for index, bundle in enumerate(r.results, 1):
        label = f"result {index}" if len(r.results) > 1 else "result"
        shown = _text_of(bundle)
        images = [mime for mime in IMAGE_TYPES if mime in bundle]
        kinds = ", ".join(bundle)
        parts.append(f"--- {label} ({kinds}) ---")
        if shown is not None:
            parts.append(shown)
        for mime in images:
            parts.append(f"[{mime} image attached]")
    if r.error is not None:
        parts.append(f"--- error: {r.error.name} ---")
        parts.append("\n".join(r.error.traceback) or f"{r.error.name}: {r.error.value}")
    if len(parts) == 1:
        parts.append("(no output and no result)")
    return "\n".join(parts)


def image_blocks(r: CodeResult) -> list[ContentBlock]:
    return [
        ImageContent(type="image", data=bundle[mime], mime_type=mime)
        for bundle in r.results
        for mime in IMAGE_TYPES
        if isinstance(bundle.get(mime), str)
    ]


def register(server: MCPServer, manager: SandboxManager) -> None:
    @server.tool(annotations=runs_code(manager.settings.network), meta=TOOL_META)
    @with_settings(manager.settings)
    @tool_errors
    async def run_code(
        code: Annotated[str, Field(description="The code to run: one or more statements, like a notebook cell.")],
        ctx: Context,
        context_id: ContextId = None,
        language: Language = None,
        timeout: Annotated[
            float | None, Field(
                gt=0,
                description="Seconds before the code is interrupted; omit for the default this tool's description names.",
            ),
        ] = None,
        sandbox_id: SandboxId = None,
    ) -> Annotated[CallToolResult, CodeResult]:
        """Run Python or JavaScript in a persistent interpreter, like a Jupyter notebook cell, and
        return its stdout, stderr, results and error.

        Variables, imports and functions persist from one call to the next in the same code
        context; without context_id the code runs in the language's default context. The value
        of the last expression is a result, as in Jupyter, and display() adds more; results are
        MIME bundles (text/plain, text/html, application/json, image/png, ...). Open matplotlib
        figures become PNG results, and every image is also returned as an image you can see.
        An exception comes back in `error` with its traceback; the context keeps its state.
        At the timeout ({command_timeout} unless `timeout` says otherwise) the code is interrupted (KeyboardInterrupt) and the
        context keeps its state; code that will not stop gets its interpreter restarted
        (`restarted: true`, state lost). Python runs under IPython when the sandbox has it
        (`%pip install x`, `!ls`, magics); JavaScript on Node.js (let/const persist, top-level
        await, require). Long output is cut like exec's. For shell commands use exec.
        """
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.run_code(
            code, context_id=context_id, language=language, timeout=timeout, on_output=progress_reporter(ctx)
        )
        return result(r, render_code(r), image_blocks(r), meta=TOOL_META)

    @server.tool(annotations=CREATES)
    @with_settings(manager.settings)
    @tool_errors
    async def create_code_context(
        language: Language = None,
        context_id: Annotated[
            str | None, Field(description="Name for the context (letters, digits, _ . -); omit to get one minted.")
        ] = None,
        cwd: Annotated[str | None, Field(description="The interpreter's working directory (default: the workspace).")] = None,
        env: Annotated[
            dict[str, str | None] | None,
            Field(description="Environment variables for the interpreter, on top of the sandbox's; null removes one."),
        ] = None,
        sandbox_id: SandboxId = None,
    ) -> Annotated[CallToolResult, CodeContextCreated]:
        """Start a new, separate interpreter (code context) for run_code: its own variables and
        imports, isolated from other contexts, with its own cwd and environment.

        Not needed for simple use: run_code without context_id uses the language's default
        context. Create one to keep independent pieces of work apart, or to run code in
        parallel (runs in one context are serialised). Contexts unused for {session_idle_timeout}
        are deleted. Returns the context_id to pass to run_code.
        """
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.create_code_context(language, context_id=context_id, cwd=cwd, env=env)
        return result(r, f"Created {r.language} context {r.context_id!r} ({r.engine} {r.version}) in {r.cwd}.")

    @server.tool(annotations=READ_ONLY)
    @tool_errors
    async def list_code_contexts(sandbox_id: SandboxId = None) -> Annotated[CallToolResult, CodeContextList]:
        """List the sandbox's code contexts: language, cwd, whether code is running, last use."""
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.list_code_contexts()
        lines = [
            f"{c.context_id}: {c.language}{' (default)' if c.default else ''}, cwd {c.cwd}"
            f"{' (busy)' if c.busy else ''}, last used {c.last_used_at:%H:%M:%S}"
            for c in r.contexts
        ]
        return result(r, "\n".join(lines) or "No code contexts yet; run_code creates the default one.")

    @server.tool(annotations=DESTRUCTIVE)
    @tool_errors
    async def delete_code_context(
        context_id: Annotated[str, Field(description="The code context to delete.")],
        sandbox_id: SandboxId = None,
    ) -> Annotated[CallToolResult, CodeContextDeleted]:
        """Delete a code context: kills its interpreter (and code running in it), losing its
        state. Deleting a default context resets it: the next run_code starts a fresh one."""
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.delete_code_context(context_id)
        return result(r, f"Deleted code context {context_id!r}.")
