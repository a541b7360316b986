"""Tools: create_session, list_sessions, delete_session, exec, set_env_vars."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult
from pydantic import Field

from ..manager import SandboxManager
from ..models import EnvVarsSet, ExecResult, SessionCreated, SessionDeleted, SessionList
from ..ui.page import TOOL_META
from .common import (
    CREATES,
    DESTRUCTIVE,
    IDEMPOTENT,
    READ_ONLY,
    Env,
    SandboxId,
    SessionId,
    cut_note,
    output_sections,
    progress_reporter,
    result,
    runs_code,
    tool_errors,
    with_settings,
)

Timeout = Annotated[
    float | None,
    Field(gt=0, description="Seconds before the command is killed; omit for the default this tool's description names."),
]


def render_exec(r: ExecResult) -> str:
    """The exec result as a model reads it best: a status line, then the output as real lines."""
    status = f"exit code {r.exit_code}"
    if r.timed_out:
        status = f"timed out (killed), exit code {r.exit_code}"
    parts = [f"{status} · {r.duration_ms:.0f} ms · cwd {r.cwd}"]
    parts += output_sections(r, cut_note)
    if not r.stdout and not r.stderr:
        parts.append("(no output)")
    return "\n".join(parts)


def register(server: MCPServer, manager: SandboxManager) -> None:
    @server.tool(annotations=runs_code(manager.settings.network), meta=TOOL_META)
    @with_settings(manager.settings)
    @tool_errors
    async def exec(
        command: Annotated[str, Field(description="A bash command line or script (multi-line is fine).")],
        ctx: Context,
        session_id: SessionId = None,
        timeout: Timeout = None,
        cwd: Annotated[str | None, Field(description="Run in this directory, for this command only.")] = None,
        env: Annotated[Env, Field(description="Extra environment variables for this command only.")] = None,
        stdin: Annotated[str | None, Field(description="Text fed to the command's standard input.")] = None,
        sandbox_id: SandboxId = None,
    ) -> Annotated[CallToolResult, ExecResult]:
        """Run a bash command in a persistent shell session and return its exit code, stdout and stderr.

        State persists between calls in the same session: `cd`, `export`, shell variables,
        functions, aliases and `source venv/bin/activate` carry over (unless cwd or env is given,
        which apply to this command only). stdin is empty unless `stdin` is given, so nothing waits
        for input. `exit N` ends only this command. At the timeout ({command_timeout} unless the
        session or `timeout` says otherwise) the command and everything it started are killed and
        the session keeps its earlier state. A non-zero exit
        code is a normal result, not an error. Long output keeps its head and tail and the full
        text is saved to stdout_file/stderr_file in the sandbox (read it with read_file or grep).
        For servers or anything long-running, use start_process instead.
        """
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.exec(
            command, session_id=session_id, timeout=timeout, cwd=cwd, env=env, stdin=stdin,
            on_output=progress_reporter(ctx),
        )
        return result(r, render_exec(r), meta=TOOL_META)

    @server.tool(annotations=CREATES)
    @with_settings(manager.settings)
    @tool_errors
    async def create_session(
        session_id: Annotated[
            str | None, Field(description="Name for the session (letters, digits, _ . -); omit to get one minted.")
        ] = None,
        cwd: Annotated[str | None, Field(description="Starting directory (default: the workspace).")] = None,
        env: Annotated[Env, Field(description="Environment variables for this session.")] = None,
        timeout: Annotated[
            float | None, Field(gt=0, description="Default command timeout for this session, seconds.")
        ] = None,
        sandbox_id: SandboxId = None,
    ) -> Annotated[CallToolResult, SessionCreated]:
        """Create another shell session with its own cwd, environment and shell state.

        Sessions share the sandbox's files and processes but run commands in parallel with each
        other (commands within one session run one at a time). Use one per independent workflow,
        e.g. a build and a test run side by side. Sessions unused for {session_idle_timeout} are deleted.
        """
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.create_session(session_id, cwd=cwd, env=dict(env or {}), timeout=timeout)
        return result(r, f"Created session {r.session_id!r} in {r.cwd}.")

    @server.tool(annotations=READ_ONLY)
    @tool_errors
    async def list_sessions(sandbox_id: SandboxId = None) -> Annotated[CallToolResult, SessionList]:
        """List the sandbox's shell sessions with their cwd and whether a command is running."""
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.list_sessions()
        lines = [
            f"{s.session_id}: cwd {s.cwd}{' (busy)' if s.busy else ''}, last used {s.last_used_at:%H:%M:%S}"
            for s in r.sessions
        ]
        return result(r, "\n".join(lines))

    @server.tool(annotations=DESTRUCTIVE)
    @tool_errors
    async def delete_session(
        session_id: Annotated[str, Field(description="The session to delete (not 'default').")],
        sandbox_id: SandboxId = None,
    ) -> Annotated[CallToolResult, SessionDeleted]:
        """Delete a shell session: kills its running command and the processes it started.
        Files are kept. The 'default' session cannot be deleted."""
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.delete_session(session_id)
        return result(r, f"Deleted session {session_id!r}.")

    @server.tool(annotations=IDEMPOTENT)
    @tool_errors
    async def set_env_vars(
        env: Annotated[
            dict[str, str | None], Field(description="Variables to set; a null value unsets the variable.")
        ],
        session_id: SessionId = None,
        sandbox_id: SandboxId = None,
    ) -> Annotated[CallToolResult, EnvVarsSet]:
        """Set or unset environment variables in a session; later commands in it see them."""
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.set_env_vars(env, session_id)
        return result(r, f"Session {r.session_id!r}: set {', '.join(r.set) or 'nothing'}; unset {', '.join(r.unset) or 'nothing'}.")
