"""Tools for processes started with tty=true: get_process_screen, resize_terminal."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult
from pydantic import Field

from ..manager import SandboxManager
from ..models import ProcessScreen, TerminalResized
from .common import IDEMPOTENT, READ_ONLY, SandboxId, result, tool_errors, wait_outcome
from .processes import ProcessId


def render_screen(r: ProcessScreen, wait_for: str | None) -> str:
    state = r.status if r.exit_code is None else f"{r.status}, exit code {r.exit_code}"
    cursor = f"cursor at row {r.cursor.row}, col {r.cursor.col}" + ("" if r.cursor.visible else " (hidden)")
    parts = [f"{r.process_id}: {state} · {r.cols}x{r.rows} · {cursor} (0-based)"]
    if wait_for is not None:
        parts.append(wait_outcome(r, wait_for, "the screen did not match"))
    lines = r.text.split("\n")
    while lines and not lines[-1]:
        lines.pop()
    blank = f" (the last {r.rows - len(lines)} of {r.rows} rows are blank)" if len(lines) < r.rows else ""
    parts.append(f"--- screen{blank} ---")
    parts.extend(lines)
    return "\n".join(parts)


def register(server: MCPServer, manager: SandboxManager) -> None:
    @server.tool(annotations=READ_ONLY)
    @tool_errors
    async def get_process_screen(
        process_id: ProcessId,
        wait_for: Annotated[
            str | None,
            Field(
                description="A regular expression (Python syntax, ^ and $ match at each line) to wait for on the "
                "screen, e.g. a prompt '>>> $' or 'Continue\\? \\[y/n\\]'; the matching line comes back in 'matched'."
            ),
        ] = None,
        timeout: Annotated[
            float | None,
            Field(ge=0, description="Seconds to wait: for wait_for (default 30), else for the output to settle (default 2)."),
        ] = None,
        sandbox_id: SandboxId = None,
    ) -> Annotated[CallToolResult, ProcessScreen]:
        """See the screen of a process started with tty=true, as a person at the terminal would:
        its text, `rows` lines, and the cursor position (0-based row and col).

        Without wait_for it returns once the program has printed nothing for 0.2 s (it has drawn
        what the last input asked for), or at the timeout for a program that never stops drawing.
        With wait_for it returns as soon as the screen matches, when the process has ended, or at
        the timeout (not an error: check 'matched' and 'timed_out')."""
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.get_process_screen(process_id, wait_for=wait_for, timeout=timeout)
        return result(r, render_screen(r, wait_for))

    @server.tool(annotations=IDEMPOTENT)
    @tool_errors
    async def resize_terminal(
        process_id: ProcessId,
        cols: Annotated[int, Field(ge=1, le=500, description="New width, in characters.")],
        rows: Annotated[int, Field(ge=1, le=200, description="New height, in lines.")],
        sandbox_id: SandboxId = None,
    ) -> Annotated[CallToolResult, TerminalResized]:
        """Resize the terminal of a running process started with tty=true; the program gets
        SIGWINCH and redraws for the new size (see it with get_process_screen)."""
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.resize_terminal(process_id, cols, rows)
        return result(r, f"Resized the terminal of {r.process_id!r} to {r.cols}x{r.rows}.")
