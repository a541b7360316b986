"""Tool results, as the README's tool tables name them: the structured content every tool returns."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class Enforced(BaseModel):
    memory: bool
    cpus: bool
    pids: bool
    disk: bool


class Limits(BaseModel):
    """Each field but ``enforced`` is the Settings field of its name (manager.limits())."""

    command_timeout: float = Field(description="Default exec and run_code timeout, seconds.")
    max_output: int = Field(description="Characters of each output stream returned.")
    idle_timeout: float = Field(description="Seconds without a tool call before the sandbox is destroyed.")
    session_idle_timeout: float = Field(description="Idle seconds before temporary sessions/contexts are deleted.")
    max_sessions: int = Field(description="Most shell sessions in this sandbox.")
    max_processes: int = Field(description="Most background processes running at once in this sandbox.")
    max_code_contexts: int = Field(description="Most code contexts in this sandbox.")
    memory: str | None = Field(None, description="Memory limit of the whole sandbox.")
    cpus: float | None = Field(None, description="CPUs the sandbox may use at once.")
    pids_limit: int | None = Field(None, description="Most processes alive at once in the sandbox.")
    disk: str | None = Field(None, description="Disk budget of the workspace and temporary directories.")
    enforced: Enforced | None = Field(None, description="Which of memory, cpus, pids and disk hold on this host.")


class SandboxCreated(BaseModel):
    sandbox_id: str
    backend: str
    isolation: str = Field(description="docker, bwrap or none (unisolated).")
    workspace: str = Field(description="Absolute path of the workspace inside the sandbox.")
    network: bool


class SandboxInfo(SandboxCreated):
    created_at: datetime
    idle_expires_at: datetime
    sessions: list[str]
    processes: list[str]
    code_contexts: list[str]
    limits: Limits


class Destroyed(BaseModel):
    sandbox_id: str
    destroyed: bool = True


class SessionCreated(BaseModel):
    session_id: str
    cwd: str


class SessionInfo(BaseModel):
    session_id: str
    cwd: str
    busy: bool = Field(description="A command is running in it.")
    created_at: datetime
    last_used_at: datetime


class SessionList(BaseModel):
    sessions: list[SessionInfo]


class SessionDeleted(BaseModel):
    session_id: str
    deleted: bool = True


class ExecResult(BaseModel):
    exit_code: int = Field(description="The command's exit code; 124 on timeout.")
    success: bool = Field(description="exit_code == 0.")
    stdout: str
    stderr: str
    timed_out: bool
    duration_ms: float
    session_id: str
    cwd: str = Field(description="The session's working directory after the command.")
    truncated: bool = Field(description="Output was cut; the full output is in stdout_file/stderr_file.")
    stdout_file: str | None = None
    stderr_file: str | None = None


class EnvVarsSet(BaseModel):
    session_id: str
    set: list[str]
    unset: list[str]


ProcessStatus = Literal["running", "completed", "failed", "killed", "error"]


class ProcessInfo(BaseModel):
    process_id: str
    pid: int | None = Field(description="Its process id in the sandbox; null if it never started.")
    command: str
    session_id: str = Field(description="The session whose cwd and environment it started from.")
    status: ProcessStatus = Field(
        description="running; completed (exit 0); failed (other exit code); killed (ended by a signal "
        "sent with kill_process, kill_all_processes or delete_session); error (could not start)."
    )
    exit_code: int | None = Field(description="Null while running; 128+N when ended by signal N.")
    signal: str | None = Field(None, description="The signal that ended it (e.g. SIGTERM), if any.")
    error: str | None = Field(None, description="Why it could not start (status error).")
    started_at: datetime
    ended_at: datetime | None = None
    stdout_file: str = Field(description="Its whole stdout, as a file in the sandbox.")
    stderr_file: str = Field(description="Its whole stderr, as a file in the sandbox.")
    tty: bool = Field(False, description="It runs on a pseudo-terminal; its raw stream is its stdout.")
    cols: int | None = Field(None, description="Its terminal's width, with tty.")
    rows: int | None = Field(None, description="Its terminal's height, with tty.")


class ProcessStarted(ProcessInfo):
    pass


class ProcessList(BaseModel):
    processes: list[ProcessInfo]


class ProcessLogs(ProcessInfo):
    stdout: str
    stderr: str
    matched: str | None = Field(description="The first line that matched wait_for, or null.")
    timed_out: bool = Field(description="The wait ended at its timeout before what was waited for happened.")
    truncated: bool = Field(description="A stream was cut to --max-output characters; the whole is in its file.")


class ProcessInputSent(BaseModel):
    process_id: str
    bytes_written: int


class TerminalResized(BaseModel):
    process_id: str
    cols: int
    rows: int


class Cursor(BaseModel):
    row: int = Field(description="0-based: 0 is the first line of text.")
    col: int = Field(description="0-based: 0 is the first column.")
    visible: bool = Field(True, description="The program has not hidden it.")


class ProcessScreen(BaseModel):
    process_id: str
    status: ProcessStatus
    exit_code: int | None = None
    text: str = Field(description="The screen as it looks now: `rows` lines, trailing spaces removed.")
    cursor: Cursor
    cols: int
    rows: int
    title: str = Field("", description="The window title the program set, if any.")
    matched: str | None = Field(None, description="The screen line(s) where wait_for matched, or null.")
    timed_out: bool = Field(False, description="wait_for did not match before the timeout.")


class TerminalOutput(BaseModel):
    """A piece of a tty process's raw stream (host-level: for screens and live views)."""

    process_id: str
    status: ProcessStatus
    exit_code: int | None = None
    data: bytes = Field(description="The stream's bytes from the offset asked for.")
    next_offset: int = Field(description="The offset right after data: where to read on.")
    size: int = Field(description="Bytes of the stream so far.")
    closed: bool = Field(description="The terminal is closed: no more bytes will come.")
    cols: int = Field(description="The terminal's width where data starts.")
    rows: int
    resizes: list[tuple[int, int, int]] = Field(description="(offset, cols, rows) of each resize within data.")


class ProcessKilled(ProcessInfo):
    pass


class ProcessesKilled(BaseModel):
    killed: int = Field(description="How many running processes were killed.")
    jobs_killed: int = Field(
        0, description="How many processes that exec commands had left running in the background (cmd &) were ended."
    )


class FileWritten(BaseModel):
    path: str = Field(description="Absolute path of the file written.")
    bytes_written: int


class FileContent(BaseModel):
    path: str = Field(description="Absolute path of the file read.")
    content: str
    encoding: Literal["utf-8", "base64"]
    size: int = Field(description="Size of the whole file, bytes.")
    mime_type: str
    truncated: bool = Field(description="The size cap cut the content; continue from next_offset.")
    offset: int = Field(1, description="Line number (1-based) the content starts at.")
    next_offset: int | None = Field(None, description="Pass as offset to read on; null when nothing follows.")


FileType = Literal["file", "directory", "symlink", "other"]


class FileEntry(BaseModel):
    name: str
    path: str = Field(description="Absolute path.")
    type: FileType
    size: int = Field(description="Bytes (of the link itself for a symlink).")
    modified_at: datetime
    mode: str = Field(description="Permission bits in octal, e.g. 0644.")
    target: str | None = Field(None, description="Where a symlink points.")


class FileList(BaseModel):
    path: str = Field(description="Absolute path of the directory listed.")
    files: list[FileEntry]
    truncated: bool = Field(description="The list stopped at its cap of entries.")


class DirectoryCreated(BaseModel):
    path: str
    created: bool = Field(True, description="False if it existed already (recursive).")


class FileDeleted(BaseModel):
    path: str
    deleted: bool = True


class FileMoved(BaseModel):
    source: str
    destination: str


Language = Literal["python", "javascript", "typescript"]


class CodeContextCreated(BaseModel):
    context_id: str
    language: Language
    cwd: str = Field(description="The interpreter's working directory.")
    engine: str = Field(description="ipython (IPython semantics), python (plain-Python fallback) or node.")
    version: str = Field(description="The interpreter's version.")


class CodeError(BaseModel):
    name: str = Field(description="The exception's type, e.g. ZeroDivisionError, KeyboardInterrupt, TypeError.")
    value: str = Field(description="Its message.")
    traceback: list[str] = Field(description="The traceback, one line per item.")


class CodeResult(BaseModel):
    context_id: str
    language: Language
    stdout: str
    stderr: str
    results: list[dict[str, Any]] = Field(
        description="What the code displayed, in order: the last expression's value and each display(), "
        "as {MIME type: data} bundles (text/plain, text/html, text/markdown, text/latex, application/json, "
        "image/svg+xml; image/png and image/jpeg as base64)."
    )
    error: CodeError | None = Field(description="The exception that ended the code, or null.")
    execution_count: int | None = Field(description="The run's number in its interpreter; null if the code did not run.")
    duration_ms: float
    timed_out: bool = Field(description="The code ran past its timeout and was interrupted.")
    restarted: bool = Field(
        False, description="The context's interpreter was replaced by a fresh one: its variables, imports and "
        "definitions are gone (error says why)."
    )
    truncated: bool = Field(False, description="Output was cut; the full output is in stdout_file/stderr_file.")
    stdout_file: str | None = None
    stderr_file: str | None = None


class CodeContextInfo(BaseModel):
    context_id: str
    language: Language
    cwd: str
    created_at: datetime
    last_used_at: datetime
    busy: bool = Field(False, description="Code is running in it.")
    default: bool = Field(False, description="The language's default context (it never expires).")
    engine: str | None = Field(None, description="ipython, python or node; null before its first run.")
    pid: int | None = Field(None, description="The interpreter's process id in the sandbox, while it runs.")


class CodeContextList(BaseModel):
    contexts: list[CodeContextInfo]


class CodeContextDeleted(BaseModel):
    context_id: str
    deleted: bool = True
