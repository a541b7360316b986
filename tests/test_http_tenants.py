"""HTTP tenants (--auth-tokens-file) and Host/Origin checks on every loopback address, over a real
HTTP server; the tenant label on Docker containers."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_sandbox import tenants
from mcp_sandbox.backends import docker
from mcp_sandbox.manager import SandboxManager

from .conftest import Tools, require_backend, settings_for
from .test_http import COMMAND, free_port, stop

pytestmark = pytest.mark.anyio

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef"
NOBODY = "sbx_00000000000000000000"


def start_at(root: Path, host: str, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [COMMAND, "--transport", "http", "--host", host, "--port", str(port), "--backend", "local",
         "--isolation", "none", "--workspace-root", str(root), *extra],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ),
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode() if proc.stderr else "server exited")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return proc, f"http://{host}:{port}/mcp"
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("HTTP server did not start")


@asynccontextmanager
async def connect(url: str, token: str, mode: str = "auto") -> AsyncIterator[Tools]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            yield Tools(client, "none")


def tokens_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens"
    path.write_text(text)
    return path


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_each_token_sees_uses_and_lists_only_its_own_sandboxes(tmp_path: Path, mode: str) -> None:
    path = tokens_file(tmp_path, f"# tenants\n\nalice {ALICE}\n  bob   {BOB}  \n")
    proc, url = start_at(tmp_path / "root", "127.0.0.1", "--auth-tokens-file", str(path), "--default-sandbox")
    try:
        async with connect(url, ALICE, mode) as alice, connect(url, BOB, mode) as bob:
            a = (await alice("create_sandbox"))["sandbox_id"]
            b = (await bob("create_sandbox"))["sandbox_id"]
            await alice.sh("echo alice > mine.txt", sandbox_id=a)
            # Another's sandbox reads exactly like one that does not exist, and no error lists it.
            for tool, args in (
                ("exec", {"command": "cat mine.txt"}),
                ("sandbox_info", {}),
                ("list_files", {}),
                ("destroy", {}),
            ):
                theirs = await bob.error(tool, sandbox_id=a, **args)
                nothing = await bob.error(tool, sandbox_id=NOBODY, **args)
                assert "SANDBOX_NOT_FOUND:" in theirs and theirs.replace(a, "X") == nothing.replace(NOBODY, "X")
                assert f"sandboxes: {b};" in theirs
            with pytest.raises(Exception) as caught:
                await bob.client.read_resource(f"sandbox://{a}/files/workspace/mine.txt")
            assert "SANDBOX_NOT_FOUND" in str(caught.value) and a not in str(caught.value).replace(f"'{a}'", "")
            assert (await alice.sh("cat mine.txt", sandbox_id=a))["stdout"] == "alice\n"  # bob's destroy failed
            # Each tenant has its own default sandbox.
            await alice.sh("echo a > default.txt")
            assert (await bob.sh("ls"))["stdout"] == ""
            assert (await alice("sandbox_info"))["sandbox_id"] != (await bob("sandbox_info"))["sandbox_id"]
            text = await alice.error("exec", command="true", sandbox_id=NOBODY)
            listed = set(re.search(r"sandboxes: ([^;]*);", text).group(1).split(", "))  # type: ignore[union-attr]
            assert a in listed and b not in listed and len(listed) == 2  # a and alice's default
            await bob("destroy", sandbox_id=b)
        async with httpx2.AsyncClient() as http:
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
            wrong = await http.post(url, json=body, headers={"Authorization": "Bearer not-a-known-token-at-all"})
            assert wrong.status_code == 401
    finally:
        stop(proc)
    assert proc.stderr is not None
    log = proc.stderr.read().decode()
    assert f"created sandbox {a} for tenant alice" in log and f"destroyed sandbox {b} of tenant bob" in log


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f"alice {ALICE}\nbob\n", "line 2"),
        (f"alice {ALICE}\nbob short\n", "shorter than"),
        (f"alice {ALICE}\nbob {ALICE}\n", "same as"),
        ("# nothing\n", "no 'name token' lines"),
        (f"default {ALICE}\n", "single tenant"),
    ],
)
def test_a_bad_tokens_file_is_one_error_line_and_exit_status_2(tmp_path: Path, text: str, problem: str) -> None:
    path = tokens_file(tmp_path, text)
    result = subprocess.run(
        [COMMAND, "--transport", "http", "--port", str(free_port()), "--backend", "local",
         "--workspace-root", str(tmp_path), "--auth-tokens-file", str(path)],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
    )
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "--auth-tokens-file" in lines[0] and problem in lines[0]


async def test_host_and_origin_checks_on_another_loopback_address(tmp_path: Path) -> None:
    proc, url = start_at(tmp_path / "root", "127.0.0.2")
    port = url.split(":")[2].split("/")[0]
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    try:
        async with httpx2.AsyncClient() as http:
            for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port}"):
                response = await http.post(url, json=body, headers={"Host": host})
                assert response.status_code == 421, (host, response.status_code)
            response = await http.post(url, json=body, headers={"Origin": f"http://evil.example:{port}"})
            assert response.status_code == 403
            for host in (f"127.0.0.2:{port}", f"localhost:{port}"):
                response = await http.post(url, json=body, headers={"Host": host})
                assert response.status_code not in (403, 421), (host, response.status_code)
        async with Client(url) as client:
            assert "exec" in [tool.name for tool in (await client.list_tools()).tools]
    finally:
        stop(proc)


async def test_docker_containers_carry_their_tenant(tmp_path: Path) -> None:
    require_backend("docker")
    async with SandboxManager(settings_for("docker", tmp_path / "sandboxes")) as manager:
        reset = tenants.current.set("alice")
        try:
            sandbox = await manager.create()
        finally:
            tenants.current.reset(reset)
        client = docker.connect(docker.PROBE_TIMEOUT)
        labels = client.api.inspect_container(f"mcp-sandbox-{sandbox.id}")["Config"]["Labels"]
        assert labels[docker.LABEL_TENANT] == "alice"
        # Outside any request the tenant is the single one: alice's sandbox is not found.
        with pytest.raises(Exception, match="SANDBOX_NOT_FOUND"):
            await manager.get(sandbox.id)


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
async def test_log_messages_about_a_sandbox_reach_only_its_tenant(tmp_path: Path) -> None:
    from .test_client_log import Messages, set_level

    path = tokens_file(tmp_path, f"alice {ALICE}\nbob {BOB}\n")
    proc, url = start_at(tmp_path / "root", "127.0.0.1", "--auth-tokens-file", str(path), "--idle-timeout", "1")
    alice_heard, bob_heard = Messages(), Messages()
    try:
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {ALICE}"}) as a_http, httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {BOB}"}
        ) as b_http:
            async with Client(
                streamable_http_client(url, http_client=a_http), mode="legacy", logging_callback=alice_heard
            ) as alice, Client(
                streamable_http_client(url, http_client=b_http), mode="legacy", logging_callback=bob_heard
            ) as bob:
                await set_level(alice, "info")
                await set_level(bob, "info")
                created = await alice.call_tool("create_sandbox", {})
                assert created.structured_content is not None
                sandbox_id = created.structured_content["sandbox_id"]
                await alice_heard.wait_for(f"sandbox {sandbox_id} of tenant alice was idle")
                await anyio.sleep(0.5)
                assert not any(sandbox_id in text for text in bob_heard.texts()), bob_heard.texts()
    finally:
        stop(proc)
