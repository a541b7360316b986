"""Streamable HTTP: both protocol eras, bearer auth, no default sandbox, concurrent clients."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from .conftest import Tools

pytestmark = pytest.mark.anyio

COMMAND = str(Path(sys.executable).parent / "mcp-sandbox")
TOKEN = "s3cret-token-for-tests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(root: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [COMMAND, "--transport", "http", "--port", str(port), "--backend", "local", "--isolation", "none",
         "--workspace-root", str(root), *extra],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode() if proc.stderr else "server exited")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}/mcp"
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("HTTP server did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    proc, url = start_server(tmp_path / "root")
    yield url
    stop(proc)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_both_protocol_eras_and_no_default_sandbox(http_server: str, mode: str) -> None:
    async with Client(http_server, mode=mode) as client:
        mcp = Tools(client, "none")
        err = await mcp.error("exec", command="echo hi")
        assert "SANDBOX_REQUIRED" in err and "create_sandbox" in err
        sid = (await mcp("create_sandbox"))["sandbox_id"]
        await mcp.sh("cd /tmp; export V=1", sandbox_id=sid)
        r = await mcp.sh("pwd; echo $V", sandbox_id=sid)
        assert r["stdout"] == "/tmp\n1\n"
        await mcp("destroy", sandbox_id=sid)


async def test_sandboxes_are_shared_across_clients_and_calls_run_concurrently(http_server: str) -> None:
    async with Client(http_server) as first, Client(http_server, mode="legacy") as second:
        a, b = Tools(first, "none"), Tools(second, "none")
        sid = (await a("create_sandbox"))["sandbox_id"]
        for i in range(4):
            await a("create_session", session_id=f"s{i}", sandbox_id=sid)
        await b.sh("echo from-b > shared.txt", sandbox_id=sid)
        results: list[str] = []
        started = time.monotonic()

        async def run(tools: Tools, i: int) -> None:
            r = await tools.sh(f"sleep 1; echo {i}; cat shared.txt", sandbox_id=sid, session_id=f"s{i % 4}")
            results.append(r["stdout"])

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(run, a if i % 2 else b, i)
        assert sorted(results) == sorted(f"{i}\nfrom-b\n" for i in range(8))
        assert time.monotonic() - started < 5  # 4 sessions in parallel, 2 commands each


async def test_default_sandbox_option(tmp_path: Path) -> None:
    proc, url = start_server(tmp_path / "root", "--default-sandbox")
    try:
        async with Client(url) as client:
            assert (await Tools(client, "none").sh("echo default"))["stdout"] == "default\n"
    finally:
        stop(proc)


async def test_bearer_token_is_required(tmp_path: Path) -> None:
    proc, url = start_server(tmp_path / "root", env={"MCP_SANDBOX_AUTH_TOKEN": TOKEN})
    try:
        async with httpx2.AsyncClient() as http:
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
            assert (await http.post(url, json=body)).status_code == 401
            wrong = await http.post(url, json=body, headers={"Authorization": "Bearer wrong"})
            assert wrong.status_code == 401
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            async with Client(streamable_http_client(url, http_client=http)) as client:
                mcp = Tools(client, "none")
                sid = (await mcp("create_sandbox"))["sandbox_id"]
                assert (await mcp.sh("echo ok", sandbox_id=sid))["stdout"] == "ok\n"
    finally:
        stop(proc)


def test_refuses_public_address_without_token(tmp_path: Path) -> None:
    result = subprocess.run(
        [COMMAND, "--transport", "http", "--host", "0.0.0.0", "--port", str(free_port()),
         "--backend", "local", "--workspace-root", str(tmp_path)],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
    )
    assert result.returncode != 0
    assert b"auth-token" in result.stderr


async def test_dns_rebinding_protection(http_server: str) -> None:
    async with httpx2.AsyncClient() as http:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        response = await http.post(http_server, json=body, headers={"Host": "evil.example:80"})
        assert response.status_code in (400, 403, 421)
