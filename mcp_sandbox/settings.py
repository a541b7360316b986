"""Server settings: one pydantic model, filled from the command line and MCP_SANDBOX_* variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from .egress.broker import parse_injection
from .egress.rules import AllowList
from .mounts import Mount, parse_mount
from .sizes import parse_size


def default_workspace_root() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "mcp-sandbox" / "sandboxes"


class Settings(BaseModel):
    transport: Literal["stdio", "http"] = Field("stdio", description="MCP transport: stdio, or streamable HTTP at /mcp.")
    host: str = Field("127.0.0.1", description="HTTP: address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP: port to listen on.")
    backend: Literal["auto", "local", "docker"] = Field(
        "auto", description="Where sandboxes run: docker when an engine answers (auto), else local processes."
    )
    isolation: Literal["auto", "bwrap", "none"] = Field(
        "auto", description="Local backend: bubblewrap when available (auto), or none (unisolated, for trusted use)."
    )
    image: str | None = Field(
        None,
        description="Docker backend: the sandbox image (default: mcp-sandbox:latest if built, see "
        "'mcp-sandbox image build', else python:3.12-slim).",
    )
    workspace_root: Path = Field(
        default_factory=default_workspace_root, description="Local backend: where sandbox directories are made."
    )
    sandbox_user: str = Field(
        "nobody",
        description="Local backend, when the server runs as root: the unprivileged host user sandboxes run "
        "as (USER or UID, optionally :GROUP or :GID; never root). Without root, sandboxes run as the server's user.",
    )
    mounts: list[Mount] = Field(
        default_factory=list,
        description="A host directory in every sandbox, HOST:SANDBOX[:ro|rw] (read-only unless rw); repeatable; "
        "in the environment separated by ';'. Local (bubblewrap) and a local Docker engine.",
        json_schema_extra={"flag": "--mount", "separator": ";"},
    )
    network: bool = Field(False, description="Allow sandboxes network access (off by default).")
    allow_hosts: list[str] = Field(
        default_factory=list,
        description="Egress allow-list: a host sandboxes may reach through a proxy inside each one (without "
        "full --network), as example.org, *.example.com, an IP address, each optionally :port; repeatable; "
        "in the environment separated by ','.",
        json_schema_extra={"flag": "--allow-host", "separator": ","},
    )
    inject_headers: list[str] = Field(
        default_factory=list,
        description="Credential brokering: HOST_PATTERN:Header-Name=VALUE, or =env:NAME to read the value from "
        "the server's environment; the egress proxy adds the header to HTTPS requests to matching allowed "
        "hosts (terminating TLS for them with a CA of this server that isolated sandboxes trust), so the value "
        "never enters a sandbox; repeatable; in the environment separated by ';'. Needs --allow-host.",
        json_schema_extra={"flag": "--inject-header", "separator": ";"},
    )
    memory: str = Field(
        "2g", description="Memory limit per sandbox (Docker; local sandboxes through cgroups where the host has them)."
    )
    cpus: float = Field(1.0, gt=0, description="CPU limit per sandbox (Docker; local sandboxes through cgroups).")
    pids_limit: int = Field(
        512, gt=0, description="Process limit per sandbox (Docker; local sandboxes through cgroups)."
    )
    disk: str = Field(
        "10g", description="Local backend: disk budget per sandbox, for its workspace and temporary directories."
    )
    runtime: str | None = Field(None, description="Docker: container runtime (e.g. runsc for gVisor).")
    docker_channel: Literal["auto", "attach"] = Field(
        "auto",
        description="Docker: how the server talks to a sandbox's agent. auto: over a unix socket mounted into "
        "the container where the engine runs on this machine (faster), else through the engine's attached "
        "stdin and stdout; attach: always through the engine.",
    )
    command_timeout: float = Field(120.0, gt=0, description="Default exec and run_code timeout in seconds.")
    max_output: int = Field(30_000, ge=100, description="Characters of each output stream returned by a tool.")
    idle_timeout: float = Field(1800.0, gt=0, description="Destroy a sandbox after this many seconds without use.")
    session_idle_timeout: float = Field(
        900.0, gt=0, description="Delete temporary sessions and code contexts after this many idle seconds."
    )
    rest_after: float = Field(
        300.0, ge=0,
        description="An idle sandbox's agent rests after this many seconds without a request and with nothing "
        "running: it swaps itself for a small stub (about 3 MB instead of 10) and the next call waits about "
        "0.1-0.2 s for it to start again; 0: never rest.",
    )
    max_sandboxes: int = Field(16, gt=0, description="Most sandboxes alive at once.")
    warm_sandboxes: int = Field(
        0, ge=0, le=8,
        description="Sandboxes kept started ahead, so that create_sandbox (and the stdio default sandbox) "
        "is ready at once; they use memory while they wait (0: off).",
    )
    max_sessions: int = Field(32, gt=0, description="Most shell sessions per sandbox.")
    max_processes: int = Field(64, gt=0, description="Most background processes running at once per sandbox.")
    max_code_contexts: int = Field(8, gt=0, description="Most code contexts per sandbox.")
    default_sandbox: bool = Field(False, description="HTTP: give calls without sandbox_id a default sandbox.")
    auth_token: str | None = Field(None, description="HTTP: bearer token required on every request.")
    auth_tokens_file: Path | None = Field(
        None,
        description="HTTP: a file of 'name token' lines; each bearer token is a tenant that sees, uses and "
        "lists only the sandboxes it created.",
    )
    ui_port: int | None = Field(
        None, ge=0, le=65535,
        description="stdio: also serve the live view (a page showing the sandbox as the model uses it) on "
        "127.0.0.1:PORT (0: any free port); its URL, with a one-time token, goes to stderr. "
        "The HTTP transport serves it at /ui.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field("INFO", description="Log level.")

    @field_validator("mounts", mode="before")
    @classmethod
    def _parse_mounts(cls, value: object) -> object:
        if isinstance(value, list):
            return [parse_mount(v) if isinstance(v, str) else v for v in value]
        return value

    @field_validator("allow_hosts")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        return AllowList.parse(value).texts  # ValueError says which pattern is wrong

    @field_validator("inject_headers")
    @classmethod
    def _injections(cls, value: list[str]) -> list[str]:
        for text in value:
            parse_injection(text)  # ValueError says which is wrong (never with its value)
        return value

    @model_validator(mode="after")
    def _injections_need_an_allow_list(self) -> Settings:
        if self.inject_headers and not self.allow_hosts:
            raise ValueError("--inject-header needs --allow-host: headers go only to allowed hosts")
        return self

    @field_validator("memory", "disk")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return value
