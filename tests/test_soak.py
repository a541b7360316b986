"""Soak, short form: 50 sandbox lives per backend over MCP against the real server command (the long
form is ``python -m bench.soak``). The server must hold no more than it held after a warm-up, and
leave nothing behind: processes, containers, workspace directories, cgroups."""

from __future__ import annotations

import pytest

from bench.soak import soak, summary

pytestmark = pytest.mark.anyio

CYCLES = 50
# Small constants, whatever the number of cycles: a leak grows with them. The Docker SDK keeps a
# pool of up to 10 connections to the engine, opened as concurrent calls need them, and a
# container's attach stream lives until its removal ends.
FDS = {"docker": 16}
THREADS = 4
RSS_KB = 16 * 1024


async def test_soak(backend: str) -> None:
    result = await soak(backend, CYCLES)
    print(summary(result))
    assert result.errors == []
    # The checks see a live sandbox's parts, so that finding none of them at the end means something.
    alive = result.alive
    assert alive.processes and alive.directories and alive.cgroups if backend != "docker" else alive.containers, alive
    assert result.leftovers.empty(), result.leftovers
    assert result.after_exit == [], "the server's own cgroups outlived it"
    assert result.after.fds - result.before.fds <= FDS.get(backend, 3), summary(result)
    assert result.after.threads - result.before.threads <= THREADS, summary(result)
    assert result.after.rss_kb - result.before.rss_kb <= RSS_KB, summary(result)
