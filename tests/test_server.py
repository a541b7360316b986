"""The installed `mcp-sandbox` command over stdio: it works, and nothing outlives it."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from .conftest import Tools, require_backend
from .helpers import COMMAND, eventually, pids_with, server_params

pytestmark = pytest.mark.anyio

LOCAL = ["bwrap", "none"]


def local_params(isolation: str, root: Path, *extra: str) -> StdioServerParameters:
    return server_params("--backend", "local", "--isolation", isolation, "--workspace-root", str(root), *extra)


@asynccontextmanager
async def stdio_server(isolation: str, root: Path, *extra: str) -> AsyncIterator[Tools]:
    async with Client(local_params(isolation, root, *extra)) as client:
        yield Tools(client, isolation)


def server_pid(root: Path) -> int:
    pids = pids_with(f"--workspace-root {root}")
    assert len(pids) == 1, pids
    return pids[0]


@pytest.mark.parametrize("isolation", LOCAL)
async def test_stdio_server_works_and_cleans_up_on_stdin_close(isolation: str, tmp_path: Path) -> None:
    require_backend(isolation)
    root = tmp_path / "root"
    marker = "987650"
    async with stdio_server(isolation, root) as mcp:
        tools = await mcp.client.list_tools()
        names = {t.name for t in tools.tools}
        assert {"create_sandbox", "sandbox_info", "destroy", "create_session", "list_sessions",
                "delete_session", "exec", "set_env_vars"} <= names
        r = await mcp.sh("cd /tmp && echo hi")
        assert r["stdout"] == "hi\n"
        assert (await mcp.sh("pwd"))["stdout"] == "/tmp\n"
        other = await mcp("create_sandbox")
        assert other["sandbox_id"].startswith("sbx_") and len(other["sandbox_id"]) >= 20
        # The server raised its soft limit of open files (a few per sandbox) to its hard limit.
        limits = Path(f"/proc/{server_pid(root)}/limits").read_text()
        soft, hard = next(line.split()[3:5] for line in limits.splitlines() if line.startswith("Max open files"))
        assert soft == hard or int(soft) >= 65536, limits
        await mcp.sh(f"sleep {marker} &")
        await mcp.sh(f"setsid sleep {marker}1 &", sandbox_id=other["sandbox_id"])
        assert await eventually(lambda: len(pids_with(f"sleep {marker}")) == 2)
        assert len(list(root.iterdir())) == 2
    # Leaving the client closes the server's stdin: everything must be gone within seconds.
    assert await eventually(lambda: not pids_with(f"sleep {marker}"))
    assert await eventually(lambda: not any(root.iterdir()))


@pytest.mark.parametrize("isolation", LOCAL)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_destroys_every_sandbox(isolation: str, signum: int, tmp_path: Path) -> None:
    require_backend(isolation)
    root = tmp_path / "root"
    marker = f"98766{signum}"
    with anyio.CancelScope() as scope:
        async with stdio_server(isolation, root) as mcp:
            await mcp.sh(f"setsid sleep {marker} & sleep {marker}2 &")
            assert await eventually(lambda: len(pids_with(f"sleep {marker}")) == 2)
            pid = server_pid(root)
            os.kill(pid, signum)
            assert await eventually(lambda: not pids_with(f"sleep {marker}"))
            assert await eventually(lambda: not any(root.iterdir()))
            assert await eventually(lambda: not os.path.exists(f"/proc/{pid}"))
            scope.cancel()


@pytest.mark.parametrize("isolation", LOCAL)
async def test_sigkill_leaves_no_process_and_next_start_removes_directories(isolation: str, tmp_path: Path) -> None:
    require_backend(isolation)
    root = tmp_path / "root"
    marker = "987670"
    with anyio.CancelScope() as scope:
        async with stdio_server(isolation, root) as mcp:
            await mcp.sh(f"setsid sleep {marker} & sleep {marker}1 &")
            assert await eventually(lambda: len(pids_with(f"sleep {marker}")) == 2)
            os.kill(server_pid(root), signal.SIGKILL)
            assert await eventually(lambda: not pids_with(f"sleep {marker}"))
            scope.cancel()
    assert any(root.iterdir())  # a crash cannot clean up its directories ...
    async with stdio_server(isolation, root) as mcp:
        assert not any(root.iterdir())  # ... but the next server removes them at start
        assert (await mcp.sh("echo again"))["stdout"] == "again\n"


async def test_help_documents_every_option() -> None:
    from mcp_sandbox.cli import flag_name
    from mcp_sandbox.settings import Settings

    result = await anyio.run_process([COMMAND, "--help"])
    text = result.stdout.decode()
    for name in Settings.model_fields:
        assert flag_name(name) in text
        assert "MCP_SANDBOX_" + name.upper() in text


async def test_options_from_environment_and_bad_values(tmp_path: Path) -> None:
    bad = await anyio.run_process([COMMAND, "--command-timeout", "-3"], check=False)
    assert bad.returncode == 2 and b"command-timeout" in bad.stderr
    bad = await anyio.run_process([COMMAND, "--backend", "nope"], check=False)
    assert bad.returncode == 2
    params = local_params("none", tmp_path / "root")
    params.env = {**(params.env or {}), "MCP_SANDBOX_MAX_OUTPUT": "200"}
    async with Client(params) as client:
        mcp = Tools(client, "none")
        r = await mcp.sh("seq 1 1000")
        assert r["truncated"] is True and len(r["stdout"]) < 400


INITIALIZE = (
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
    b'"capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}\n'
)


async def test_raw_stdio_survives_garbage_lines(tmp_path: Path) -> None:
    """Bad lines on stdin (not JSON, not UTF-8) get an error; the server goes on."""
    import json
    import subprocess

    proc = subprocess.Popen(
        [COMMAND, "--backend", "local", "--isolation", "none", "--workspace-root", str(tmp_path / "root")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None

    def answer(request_id: int) -> dict[str, object]:
        while True:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line, "the server closed stdout"
            message = json.loads(line)
            if message.get("id") == request_id:
                return message  # type: ignore[no-any-return]

    try:
        proc.stdin.write(b"not json at all\n\xff\xfe{\n\n" + INITIALIZE)
        proc.stdin.flush()
        assert "result" in await anyio.to_thread.run_sync(answer, 1)
        proc.stdin.write(
            b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n'
            b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"exec","arguments":{"command":"echo hi"}}}\n'
        )
        proc.stdin.flush()
        reply = await anyio.to_thread.run_sync(answer, 2)
        assert reply["result"]["structuredContent"]["stdout"] == "hi\n"  # type: ignore[index]
    finally:
        proc.stdin.close()
        assert await anyio.to_thread.run_sync(proc.wait, 20) == 0


async def test_stdin_from_a_regular_file(tmp_path: Path) -> None:
    """stdin that asyncio cannot watch (a file) is read in a worker thread."""
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(INITIALIZE)
    with requests.open("rb") as stdin:
        result = await anyio.run_process(
            [COMMAND, "--backend", "local", "--isolation", "none", "--workspace-root", str(tmp_path / "root")],
            stdin=stdin, check=False,
        )
    assert result.returncode == 0
    assert b'"id":1,"result"' in result.stdout
