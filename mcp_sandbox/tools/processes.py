"""Tools: start_process, list_processes, get_process_logs, send_process_input, kill_process,
kill_all_processes; and the resource template for a process's log."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult
from pydantic import Field

from ..errors import SandboxError
from ..manager import SandboxManager
from ..models import (
    ProcessesKilled,
    ProcessInfo,
    ProcessInputSent,
    ProcessKilled,
    ProcessList,
    ProcessLogs,
    ProcessStarted,
    ProcessStatus,
)
from ..ui.page import TOOL_META
from .common import (
    CREATES,
    OVERWRITES,
    READ_ONLY,
    Env,
    SandboxId,
    SessionId,
    output_sections,
    resource_errors,
    resource_sandbox,
    result,
    runs_code,
    tool_errors,
    wait_outcome,
    with_settings,
)

ProcessId = Annotated[str, Field(description="The process, as start_process or list_processes named it.")]

# Resources return a log whole up to this size; beyond it, its end.
LOG_RESOURCE_MAX = 10 << 20


def describe(p: ProcessInfo) -> str:
    """One line: id, status, exit, pid, command."""
    if p.status == "running":
        state = "running"
    elif p.status == "error":
        state = f"error: {p.error}"
    else:
        state = f"{p.status}, exit code {p.exit_code}" + (f" ({p.signal})" if p.signal else "")
    pid = f"pid {p.pid}" if p.pid is not None else "no pid"
    return f"{p.process_id}: {state} · {pid} · {p.command}"


def render_logs(r: ProcessLogs, wait_for: str | None, wait_for_exit: bool, tail: int | None) -> str:
    parts = [describe(r)]
    if wait_for is not None:
        parts.append(wait_outcome(r, wait_for, "no line matched", f"; the process is {r.status}"))
    elif wait_for_exit and r.timed_out:
        parts.append("still running at the timeout")
    scope = f"last {tail} lines" if tail is not None else "whole log"
    parts += output_sections(r, lambda path: f"{scope}{f'; cut, full log in {path}' if r.truncated else ''}")
    if not r.stdout and not r.stderr:
        parts.append("(no output yet)" if r.status == "running" else "(no output)")
    return "\n".join(parts)


def register(server: MCPServer, manager: SandboxManager) -> None:
    @server.tool(annotations=runs_code(manager.settings.network), meta=TOOL_META)
    @tool_errors
    async def start_process(
        command: Annotated[str, Field(description="A bash command line to run in the background.")],
        process_id: Annotated[
            str | None, Field(description="Name for the process (letters, digits, _ . -); omit to get one minted.")
        ] = None,
        session_id: SessionId = None,
        cwd: Annotated[
            str | None, Field(description="Directory to start in, absolute or relative to the session's cwd.")
        ] = None,
        env: Annotated[Env, Field(description="Extra environment variables for this process.")] = None,
        tty: Annotated[
            bool,
            Field(
                description="Run it on a pseudo-terminal (TERM=xterm-256color), for interactive programs: "
                "REPLs, editors, pagers, installers that ask questions, anything that draws a screen."
            ),
        ] = False,
        cols: Annotated[int | None, Field(ge=1, le=500, description="Terminal width with tty (default 80).")] = None,
        rows: Annotated[int | None, Field(ge=1, le=200, description="Terminal height with tty (default 24).")] = None,
        sandbox_id: SandboxId = None,
    ) -> Annotated[CallToolResult, ProcessStarted]:
        """Start a long-running command in the background (a dev server, a watcher, a build) and
        return at once with its process_id.

        It starts from the session's current cwd, environment, functions and aliases; what it
        changes does not flow back into the session. Its stdout and stderr are logged whole to files
        in the sandbox (stdout_file/stderr_file). Use get_process_logs to read them or wait for a
        line such as 'listening on' (wait_for) or for its exit (wait_for_exit), send_process_input to
        write to its stdin, kill_process to stop it and everything it started. Status 'error' means
        it could not start (the reason is in 'error'). For a command that finishes quickly, use exec.

        With tty=true it runs on a terminal of cols x rows: type into it with send_process_input
        (data and named keys such as Enter, Up, C-c), look at it with get_process_screen (the
        rendered screen and cursor; wait_for a prompt), resize it with resize_terminal;
        get_process_logs then returns the raw terminal stream as stdout.
        """
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.start_process(
            command, process_id=process_id, session_id=session_id, cwd=cwd, env=env, tty=tty, cols=cols, rows=rows
        )
        if r.status == "error":
            text = f"Process {r.process_id!r} could not start: {r.error}"
        elif r.tty:
            text = (
                f"Started process {r.process_id!r} (pid {r.pid}) on a {r.cols}x{r.rows} terminal: {r.command}\n"
                f"See its screen with get_process_screen (process_id={r.process_id!r}), type with "
                f"send_process_input (data, keys); raw stream: {r.stdout_file}."
            )
        else:
            text = (
                f"Started process {r.process_id!r} (pid {r.pid}) from session {r.session_id!r}: {r.command}\n"
                f"Read its output with get_process_logs (process_id={r.process_id!r}); "
                f"logs: {r.stdout_file}, {r.stderr_file}."
            )
        return result(r, text, meta=TOOL_META)

    @server.tool(annotations=READ_ONLY)
    @tool_errors
    async def list_processes(
        status: Annotated[ProcessStatus | None, Field(description="Only processes with this status.")] = None,
        sandbox_id: SandboxId = None,
    ) -> Annotated[CallToolResult, ProcessList]:
        """List the sandbox's background processes (running and ended) with status, exit code and command."""
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.list_processes(status)
        text = "\n".join(describe(p) for p in r.processes) or (
            f"No {status} processes." if status else "No processes; start one with start_process."
        )
        return result(r, text)

    @server.tool(annotations=READ_ONLY)
    @with_settings(manager.settings)
    @tool_errors
    async def get_process_logs(
        process_id: ProcessId,
        tail: Annotated[int | None, Field(ge=0, description="Only the last N lines of each stream.")] = None,
        wait_for: Annotated[
            str | None,
            Field(
                description="A regular expression (Python syntax) to wait for in the output, line by line; "
                "what is already logged counts. The matching line comes back in 'matched'."
            ),
        ] = None,
        wait_for_exit: Annotated[bool, Field(description="Wait until the process has ended.")] = False,
        timeout: Annotated[
            float | None, Field(ge=0, description="Seconds to wait for wait_for/wait_for_exit (default 30).")
        ] = None,
        sandbox_id: SandboxId = None,
    ) -> Annotated[CallToolResult, ProcessLogs]:
        """Read a background process's stdout and stderr and its status, optionally waiting first.

        With wait_for, returns as soon as a line of stdout or stderr matches the regex (e.g.
        'Listening on|ready'), when the process ends without one matching, or at the timeout;
        with wait_for_exit, when it ends or at the timeout. A wait that runs out is not an error:
        check 'matched', 'timed_out' and 'status'. Each stream comes back whole, or its last `tail`
        lines, cut to {max_output} characters (head and tail kept, 'truncated' set);
        the whole logs stay in stdout_file/stderr_file in the sandbox.
        """
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.get_process_logs(
            process_id, tail=tail, wait_for=wait_for, wait_for_exit=wait_for_exit, timeout=timeout
        )
        return result(r, render_logs(r, wait_for, wait_for_exit, tail))

    @server.tool(annotations=CREATES)
    @tool_errors
    async def send_process_input(
        process_id: ProcessId,
        data: Annotated[str, Field(description="Text to write to its stdin; include '\\n' to end a line.")] = "",
        eof: Annotated[
            bool, Field(description="Close its stdin after writing (end of input); on a tty, send Ctrl-D.")
        ] = False,
        keys: Annotated[
            list[str] | None,
            Field(
                description="Named keys to press after data, in order: Enter, Tab, BackTab, Escape, Backspace, "
                "Delete, Insert, Up, Down, Left, Right, Home, End, PageUp, PageDown, Space, F1-F12, C-a..C-z "
                "(Ctrl: C-c, C-d, C-z, ...), M-<key> (Alt), or one character (itself). Without tty only Enter, Tab, "
                "Space and single characters."
            ),
        ] = None,
        sandbox_id: SandboxId = None,
    ) -> Annotated[CallToolResult, ProcessInputSent]:
        """Write text to a running background process's standard input (answer a prompt, feed a
        REPL); with eof=true its stdin is closed afterwards, as Ctrl-D would. Read the reply with
        get_process_logs (wait_for).

        For a process started with tty=true this is typing: data and keys go to its terminal as
        a keyboard sends them (C-c interrupts, C-z suspends, C-d ends input; Enter is a carriage
        return, what full-screen programs expect). See the result with get_process_screen."""
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.send_process_input(process_id, data, eof=eof, keys=keys)
        return result(r, f"Wrote {r.bytes_written} bytes to {r.process_id!r}{' and ended its input' if eof else ''}.")

    @server.tool(annotations=OVERWRITES)
    @tool_errors
    async def kill_process(
        process_id: ProcessId,
        signal: Annotated[
            str | int | None,
            Field(description="Signal to send first: TERM (default), INT, HUP, QUIT, KILL, USR1, ... or a number."),
        ] = None,
        sandbox_id: SandboxId = None,
    ) -> Annotated[CallToolResult, ProcessKilled]:
        """Stop a background process and everything it started: sends the signal to the whole
        process tree, and SIGKILL to whatever is left after 5 seconds. Returns once it has ended,
        with status 'killed'. Its logs are kept."""
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.kill_process(process_id, signal)
        return result(r, describe(r))

    @server.tool(annotations=OVERWRITES)
    @tool_errors
    async def kill_all_processes(sandbox_id: SandboxId = None) -> Annotated[CallToolResult, ProcessesKilled]:
        """Stop every running background process of the sandbox (SIGTERM, then SIGKILL after 5 s),
        with everything they started, and every job an exec command left running in the
        background (cmd &, a runaway loop or fork bomb). Commands running now, sessions and files
        are untouched."""
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.kill_all_processes()
        return result(
            r,
            f"Killed {r.killed} running process{'es' if r.killed != 1 else ''} and {r.jobs_killed} "
            f"background job process{'es' if r.jobs_killed != 1 else ''} left by exec commands.",
        )

    @server.resource(
        "sandbox://{sandbox_id}/processes/{process_id}/{stream}",
        name="process_log",
        title="Background process log",
        description="The stdout or stderr log of a background process (stream: stdout or stderr); "
        "the last 10 MiB of a longer log. sandbox_id 'default' names the default sandbox.",
        mime_type="text/plain",
    )
    @resource_errors
    async def process_log(sandbox_id: str, process_id: str, stream: str) -> str:
        sandbox = await resource_sandbox(manager, sandbox_id)
        if stream not in ("stdout", "stderr"):
            raise SandboxError("FILE_NOT_FOUND", f"no stream {stream!r}; use stdout or stderr")
        process = await sandbox.get_process(process_id)
        path = process.stdout_file if stream == "stdout" else process.stderr_file
        data, size = await sandbox.read_file_tail(path, LOG_RESOURCE_MAX)
        text = data.decode("utf-8", "replace")
        if size > len(data):
            # Start on a whole line (and character) after the cut.
            text = text[text.find("\n") + 1 :]
            text = f"[... the first {size - len(data)}+ bytes omitted; the whole log is in {path} ...]\n{text}"
        return text
