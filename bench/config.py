"""How much each benchmark does: a full run, or a smoke run that only proves the harness works."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Config:
    runs: int = 50
    sandbox_runs: int = 10
    output_bytes: int = 100_000_000
    big_file_bytes: int = 100 * 1024 * 1024
    many_sandboxes: int = 1000  # local sandboxes at once (bench/scale.py)
    many_containers: int = 200  # Docker sandboxes at once
    image: str = os.environ.get("MCP_SANDBOX_IMAGE", "mcp-sandbox-test:latest")

    @classmethod
    def smoke(cls) -> Config:
        return cls(runs=2, sandbox_runs=1, output_bytes=1_000_000, big_file_bytes=1024 * 1024, many_sandboxes=2,
                   many_containers=2)
