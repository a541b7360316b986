"""Ids of the things an agent holds: minted ones (``proc-3``) and checked ones from the host."""

from __future__ import annotations

from typing import Container

from .names import id_problem
from .protocol import AgentError


class Ids:
    """Mints ids from a format such as ``"proc-%d"``, counting up and skipping ids in use (a
    caller may have chosen ``proc-2`` itself)."""

    def __init__(self, pattern: str) -> None:
        self._pattern = pattern
        self.count = 0  # how many were minted: kept through a rest, so that no id comes twice

    def mint(self, taken: Container[str] = ()) -> str:
        while True:
            self.count += 1
            value = self._pattern % self.count
            if value not in taken:
                return value


def check_id(kind: str, value: str) -> str:
    """``value`` if it is a valid id of a ``kind`` (session, process...), else INVALID_ARGUMENT."""
    problem = id_problem(kind, value)
    if problem is not None:
        raise AgentError("INVALID_ARGUMENT", problem)
    return value
