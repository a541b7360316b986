"""The one error type of mcp-sandbox: a code (the README lists them under "Tools") and a message
that says what to do."""

from __future__ import annotations

from typing import Literal

ErrorCode = Literal[
    "INVALID_ARGUMENT",
    "SANDBOX_REQUIRED",
    "SANDBOX_NOT_FOUND",
    "SESSION_NOT_FOUND",
    "SESSION_ALREADY_EXISTS",
    "DEFAULT_SESSION",
    "PROCESS_NOT_FOUND",
    "PROCESS_ALREADY_EXISTS",
    "CONTEXT_NOT_FOUND",
    "CONTEXT_ALREADY_EXISTS",
    "LANGUAGE_NOT_AVAILABLE",
    "FILE_NOT_FOUND",
    "IS_DIRECTORY",
    "NOT_DIRECTORY",
    "FILE_EXISTS",
    "FILE_TOO_LARGE",
    "PERMISSION_DENIED",
    "LIMIT_REACHED",
    "BACKEND_UNAVAILABLE",
    "INTERNAL",
]


class SandboxError(Exception):
    """Raised wherever a problem is known; the MCP layer turns it into ``CODE: message``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code: ErrorCode = code
        self.message = message
