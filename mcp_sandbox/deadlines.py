"""How long the host waits for each agent call, and in which order calls that queue are sent.

No agent call outlives its tool's time limit plus a short grace (TOOLS.md "Hostile input"), so an
agent that hangs, or lies, cannot hold a call forever. Some calls wait in the agent for others to
finish (commands in one session, runs in one code context); such calls take turns here instead, so
that each one's deadline starts when the agent can start it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from .agent.api import Method
from .agent.contexts import INTERRUPT_GRACE, START_TIMEOUT, normalise_language
from .agent.processes import DEFAULT_WAIT
from .agent.protocol import AgentError

# Beyond a call's own time limit: killing what ran past it and sending back its output.
GRACE = 10.0
# Calls that do one small thing: a chunk of a file, a listing, a signal.
QUICK = 60.0


def deadline(method: str, params: dict[str, Any], command_timeout: float) -> float:
    """Seconds ``method`` may take, for its parameters; ``command_timeout`` is the exec timeout of
    its session (or the server's, which is also run_code's default)."""
    timeout = params.get("timeout")
    given = float(timeout) if isinstance(timeout, (int, float)) and timeout >= 0 else None
    if method == Method.EXEC:
        return (given or command_timeout) + GRACE
    if method == Method.RUN_CODE:
        # An interpreter may have to start before the run and another one after it if the run
        # would not stop.
        return (given or command_timeout) + INTERRUPT_GRACE + 2 * START_TIMEOUT + GRACE
    if method == Method.CREATE_CODE_CONTEXT:
        return START_TIMEOUT + GRACE
    if method == Method.GET_PROCESS_LOGS:
        return (DEFAULT_WAIT if given is None else given) + GRACE
    if method in (Method.DELETE_FILE, Method.MOVE_FILE):  # a whole tree: as long as a command may take
        return max(command_timeout + GRACE, QUICK)
    if method == Method.CREATE_SESSION or given is None:  # create_session's timeout is for its commands
        return QUICK
    return max(given + GRACE, QUICK)


def turn(method: str, params: dict[str, Any]) -> str | None:
    """What the call waits for in the agent, if anything: its session or its code context."""
    if method in (Method.EXEC, Method.SET_ENV_VARS):
        return "session:" + str(params.get("session_id") or "default")
    if method == Method.RUN_CODE:
        language = params.get("language") or "python"
        try:
            default = normalise_language(language)
        except AgentError:  # the agent refuses it at once
            default = str(language)
        return "context:" + str(params.get("context_id") or default)
    return None


class Turns:
    """One call at a time per key, in the order they came (anyio's locks are fair)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[anyio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def take(self, key: str | None) -> AsyncIterator[None]:
        if key is None:
            yield
            return
        lock, users = self._locks.setdefault(key, (anyio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]
