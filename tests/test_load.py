"""Load over Streamable HTTP, short form: 20 concurrent clients on each protocol era, each with its
own sandbox, making checked mixed calls against the real server; no call may fail. The long form,
20 clients x 100 calls with code runs, is ``python -m bench.load``."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load import ERAS, http_server, load

pytestmark = pytest.mark.anyio

CLIENTS = 20
# One round but its last call: run_code's first call in each sandbox starts a code worker (a
# CPU-second each), which the long form measures.
CALLS = 7


async def test_concurrent_clients_on_both_eras(tmp_path: Path) -> None:
    with http_server(tmp_path / "sandboxes", "none", "--max-sandboxes", str(CLIENTS)) as url:
        for era in ERAS:
            result = await load(url, era, CLIENTS, CALLS)
            print(result.summary())
            assert result.errors == [], result.errors[:5]
            assert len(result.latencies_ms) == CLIENTS * CALLS
            # Generous: a ceiling against a stuck server, not a benchmark.
            assert max(result.latencies_ms) < 30_000
