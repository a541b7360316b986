"""Tool results, as TOOLS.md names them: the structured content every tool returns."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class Limits(BaseModel):
    command_timeout: float = Field(description="Default exec timeout, seconds.")
    max_output: int = Field(description="Characters of each output stream returned.")
    idle_timeout: float = Field(description="Seconds without a tool call before the sandbox is destroyed.")
    session_idle_timeout: float = Field(description="Idle seconds before temporary sessions/contexts are deleted.")
    memory: str | None = Field(None, description="Memory limit (docker).")
    cpus: float | None = Field(None, description="CPU limit (docker).")
    pids_limit: int | None = Field(None, description="Process limit (docker).")


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
