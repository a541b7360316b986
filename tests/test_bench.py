"""A smoke run of the benchmark harness, so that `python -m bench` cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_bench_smoke_prints_figures_floors_and_ratios() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--backend", "none", "--only", "exec", "--only", "output",
         "--only", "files", "--only", "bigfile", "--only", "stream", "--only", "ports"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout[result.stdout.index("| measurement |"):]
    assert "exec `echo hi` over stdio (none)" in table
    assert "MCP no-op call + bash spawn" in table
    assert "server RSS growth" in table
    assert "1 MiB write_file + read_file over MCP (none)" in table
    assert "1 MiB download through open_stream (none)" in table
    assert "HTTP GET through expose_port, new connection (none)" in table
    ratios = [line.split("|")[4].strip() for line in table.splitlines()[2:]]
    assert any(r.endswith("x") for r in ratios)


def test_bench_peers_skip_when_not_installed() -> None:
    """The optional peer comparison never fails a run: a peer that does not import is skipped."""
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--backend", "none", "--only", "peers"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| measurement |" in result.stdout
