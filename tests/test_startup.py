"""Starting the `mcp-sandbox` command: a refusal is one clear line and exit status 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest

pytestmark = pytest.mark.anyio

COMMAND = str(Path(sys.executable).parent / "mcp-sandbox")


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    with open(os.devnull, "rb") as stdin, anyio.fail_after(60):
        result = await anyio.run_process(
            [COMMAND, *args], stdin=stdin, check=False, env={**os.environ, **(env or {})}
        )
    return result.returncode, result.stderr.decode().splitlines()


async def test_refusing_to_listen_is_one_line_and_status_2() -> None:
    code, lines = await run("--transport", "http", "--host", "0.0.0.0", "--port", "0")
    assert code == 2, lines
    assert len(lines) == 1, lines  # no traceback, no exception group
    assert "refusing to listen on 0.0.0.0 without --auth-token" in lines[0]


async def test_docker_backend_without_an_engine_says_what_it_tried(tmp_path: Path) -> None:
    socket = tmp_path / "no-engine.sock"
    code, lines = await run("--backend", "docker", env={"DOCKER_HOST": f"unix://{socket}"})
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert "BACKEND_UNAVAILABLE" in lines[0]
    assert f"DOCKER_HOST=unix://{socket} (No such file or directory)" in lines[0]


async def test_auto_backend_logs_why_docker_was_not_used(tmp_path: Path) -> None:
    code, lines = await run(
        "--backend", "auto", "--workspace-root", str(tmp_path / "root"),
        env={"DOCKER_HOST": "tcp://127.0.0.1:1"},
    )
    assert code == 0, lines
    assert any(
        "no Docker engine answers at DOCKER_HOST=tcp://127.0.0.1:1 (Connection refused); using the local backend"
        in line for line in lines
    ), lines
