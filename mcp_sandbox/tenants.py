"""Tenants: whom a request acts for, so that each sees, uses and lists only the sandboxes it created.

Without a token (stdio, loopback HTTP) and with one ``--auth-token`` there is one tenant, SINGLE.
With ``--auth-tokens-file`` each token is a tenant of its own. The HTTP transport sets ``current``
for each MCP message it serves (http.py); the manager reads it. Code that runs outside a request
(the Python API, expiry) sees the default, SINGLE.
"""

from __future__ import annotations

import hashlib
import hmac
from contextvars import ContextVar
from pathlib import Path

from .agent.names import ID_PATTERN
from .errors import SandboxError
from .settings import Settings

SINGLE = "default"
MIN_TOKEN_LENGTH = 16

# The tenant of the message being served; None: a request whose token names no tenant.
current: ContextVar[str | None] = ContextVar("mcp_sandbox_tenant", default=SINGLE)


def of(tenant: str) -> dict[str, str]:
    """``extra`` for a log record about a tenant's sandbox: client_log sends it to that tenant's
    clients only."""
    return {"tenant": tenant}


def _digest(value: bytes) -> bytes:
    # Compared as digests: equal lengths, so the comparison's time says nothing about a token.
    return hashlib.sha256(value).digest()


class Tokens:
    """The bearer tokens a server accepts, and the tenant each stands for."""

    def __init__(self, tenants: dict[str, str]) -> None:
        """``tenants``: token to tenant name."""
        self._expected = [(_digest(f"Bearer {token}".encode()), name) for token, name in tenants.items()]

    def tenant(self, authorization: bytes) -> str | None:
        """The tenant an ``Authorization`` header value names, or None."""
        given = _digest(authorization)
        found = None
        for expected, name in self._expected:  # all of them, whichever matches
            if hmac.compare_digest(given, expected):
                found = name
        return found


def load_tokens(settings: Settings) -> Tokens | None:
    """The tokens the settings ask for (None: no auth); SandboxError for an unusable file."""
    if settings.auth_tokens_file is not None and settings.auth_token:
        raise SandboxError(
            "INVALID_ARGUMENT",
            "--auth-token and --auth-tokens-file exclude each other; put the token in the file as one more tenant",
        )
    if settings.auth_tokens_file is not None:
        return Tokens(read_tokens_file(settings.auth_tokens_file))
    if settings.auth_token:
        return Tokens({settings.auth_token: SINGLE})
    return None


def read_tokens_file(path: Path) -> dict[str, str]:
    """Token to tenant name, from lines ``name token`` (blank lines and ``#`` comments allowed)."""
    where = f"--auth-tokens-file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SandboxError("INVALID_ARGUMENT", f"{where}: cannot be read ({exc})") from None
    tokens: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        problem = None
        if len(fields) != 2:
            problem = "want 'name token', two fields separated by spaces"
        elif not ID_PATTERN.fullmatch(fields[0]):
            problem = f"tenant name {fields[0]!r} is not 1-64 letters, digits, '_', '.' or '-'"
        elif fields[0] == SINGLE:
            problem = f"{SINGLE!r} is the name of the single tenant of a server without a tokens file; choose another"
        elif len(fields[1]) < MIN_TOKEN_LENGTH:
            problem = f"the token is shorter than {MIN_TOKEN_LENGTH} characters; make one with openssl rand -hex 32"
        elif fields[1] in tokens:
            problem = f"the token is the same as tenant {tokens[fields[1]]!r}'s"
        elif fields[0] in tokens.values():
            problem = f"tenant {fields[0]!r} is named twice"
        if problem is not None:
            raise SandboxError("INVALID_ARGUMENT", f"{where}, line {number}: {problem}")
        tokens[fields[1]] = fields[0]
    if not tokens:
        raise SandboxError("INVALID_ARGUMENT", f"{where}: no 'name token' lines; add one per tenant")
    return tokens
