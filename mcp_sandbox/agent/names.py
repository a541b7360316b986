"""The names callers choose: session, process and context ids, environment variable names.

Each must match its pattern in full (``fullmatch``; ``$`` would let a trailing newline through): a
name becomes part of file paths, process tags and the ``export`` lines a session's state is made
of. The host checks the same before a request leaves it (mcp_sandbox/sandbox.py).
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ENV_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ID_KINDS = ("session", "process", "context")


def id_problem(kind: str, value: Any) -> Optional[str]:
    """Why ``value`` is not a valid ``kind`` id, or None."""
    if isinstance(value, str) and ID_PATTERN.fullmatch(value):
        return None
    return (
        "%s id %r is not valid; use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        % (kind, value)
    )


def env_problem(env: Any) -> Optional[str]:
    """Why ``env`` (names to values, None to unset) cannot be used, or None."""
    if env is None:
        return None
    if not isinstance(env, dict):
        return "env must be an object of names to values"
    for name, value in env.items():
        if not (isinstance(name, str) and ENV_NAME_PATTERN.fullmatch(name)):
            return (
                "%r is not a valid environment variable name; use letters, digits and '_', not starting "
                "with a digit" % (name,)
            )
        if value is not None and (not isinstance(value, str) or "\0" in value):
            return "the value of %s must be a string without NUL bytes" % name
    return None


def params_problem(params: Dict[str, Any]) -> Optional[str]:
    """The first invalid id or environment variable among a request's parameters, or None."""
    for kind in ID_KINDS:
        value = params.get(kind + "_id")
        if value is not None:
            problem = id_problem(kind, value)
            if problem is not None:
                return problem
    return env_problem(params.get("env"))
