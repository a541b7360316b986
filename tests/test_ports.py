"""expose_port and unexpose_port on every backend: a real server in the sandbox, fetched from the
host through the door (HTTP, big bodies, many connections, a websocket); doors closed by unexpose
and destroy; the token gate of a server with auth, between two tenants."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import struct
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import pytest
from anyio.abc import ByteStream
from mcp.client import Client

from mcp_sandbox.manager import SandboxManager
from mcp_sandbox.server import build_server

from .conftest import Tools, settings_for
from .helpers import eventually
from .test_http import stop
from .test_http_tenants import ALICE, BOB, connect, start_at, tokens_file

pytestmark = pytest.mark.anyio

WS_ECHO = (Path(__file__).parent / "data" / "ws_echo.py").read_text()


def free_ports(n: int) -> list[int]:
    """Ports free on the host now: without isolation the sandbox's loopback is the host's."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def host_port(url: str) -> int:
    match = re.match(r"http://127\.0\.0\.1:(\d+)/", url)
    assert match, url
    return int(match.group(1))


async def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A GET with the standard library's client, as a user's script would do it."""

    def get() -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    return await anyio.to_thread.run_sync(get)


async def websocket(port: int, path: str = "/") -> ByteStream:
    """A websocket client handshake on a door; the open stream."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive()
    expected = base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    assert head.startswith(b"HTTP/1.1 101") and expected in head, head
    return stream


async def ws_echo(stream: ByteStream, payload: bytes) -> bytes:
    """Send one masked binary message and read the unmasked one that comes back."""
    mask = os.urandom(4)
    size = len(payload)
    head = struct.pack(">BB", 0x82, 0x80 | size) if size < 126 else struct.pack(">BBH", 0x82, 0xFE, size) if size < 65536 \
        else struct.pack(">BBQ", 0x82, 0xFF, size)
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (size // 4 + 1))[:size], "big")).to_bytes(size, "big")
    await stream.send(head + mask + masked)
    data = b""

    async def need(n: int) -> bytes:
        nonlocal data
        while len(data) < n:
            data += await stream.receive()
        part, data = data[:n], data[n:]
        return part

    first, second = await need(2)
    assert first == 0x82 and not second & 0x80
    length = second & 0x7F
    if length == 126:
        length = struct.unpack(">H", await need(2))[0]
    elif length == 127:
        length = struct.unpack(">Q", await need(8))[0]
    return await need(length)


async def refused(port: int) -> bool:
    try:
        async with await anyio.connect_tcp("127.0.0.1", port):
            return False
    except OSError:
        return True


async def test_a_server_in_the_sandbox_is_reached_from_the_host(mcp: Tools) -> None:
    HTTP_PORT, WS_PORT = free_ports(2)
    # Exposed before anything listens: the URL is given, with a note; it works once the server is up.
    early = await mcp.raw("expose_port", port=HTTP_PORT)
    assert not early.is_error and f"Nothing listens on port {HTTP_PORT}" in early.content[0].text  # type: ignore[union-attr]
    url = early.structured_content["url"]  # type: ignore[index]
    door = host_port(url)
    assert early.structured_content["host_port"] == door  # type: ignore[index]
    # A request while nothing listens: the door sends it on before the sandbox connected; the
    # refusal then closes the client's connection at once, and the sandbox goes on.
    with anyio.fail_after(10):
        async with await anyio.connect_tcp("127.0.0.1", door) as client:
            await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await client.receive()
    await mcp("write_file", path="ws_echo.py", content=WS_ECHO)
    made = await mcp.sh("mkdir -p site && head -c 5000000 /dev/urandom > site/big.bin && echo small > site/small.txt "
                        "&& sha256sum site/big.bin")
    digest = made["stdout"].split()[0]
    await mcp("start_process", command=f"cd site && exec python3 -u -m http.server {HTTP_PORT} --bind 127.0.0.1",
              process_id="web")
    await mcp("start_process", command=f"exec python3 -u ws_echo.py {WS_PORT}", process_id="ws")
    await mcp("get_process_logs", process_id="web", wait_for="Serving HTTP", timeout=30)
    await mcp("get_process_logs", process_id="ws", wait_for="listening", timeout=30)

    status, _, body = await fetch(url + "big.bin")
    assert status == 200 and len(body) == 5_000_000 and hashlib.sha256(body).hexdigest() == digest

    async def small(results: list[bytes]) -> None:
        results.append((await fetch(url + "small.txt"))[2])

    results: list[bytes] = []
    async with anyio.create_task_group() as tg:  # 20 connections at once
        for _ in range(20):
            tg.start_soon(small, results)
    assert results == [b"small\n"] * 20

    ws = await mcp("expose_port", port=WS_PORT)
    assert (await mcp("expose_port", port=WS_PORT)) == ws  # again: the same door and URL
    info = await mcp("sandbox_info")
    assert info["exposed_ports"] == sorted(
        [{"port": HTTP_PORT, "url": url}, {"port": WS_PORT, "url": ws["url"]}], key=lambda p: p["port"]
    )
    stream = await websocket(ws["host_port"])
    assert await ws_echo(stream, b"hello") == b"hello"
    big = os.urandom(200_000)
    assert await ws_echo(stream, big) == big

    # Unexpose: the URL stops working and the live websocket is cut; the server itself goes on.
    assert await mcp("unexpose_port", port=WS_PORT) == {"port": WS_PORT, "unexposed": True}
    with anyio.fail_after(10):
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await stream.receive()
    await stream.aclose()
    assert await refused(ws["host_port"])
    assert "ws" in [p["process_id"] for p in (await mcp("list_processes"))["processes"]]
    assert [p["port"] for p in (await mcp("sandbox_info"))["exposed_ports"]] == [HTTP_PORT]
    error = await mcp.error("unexpose_port", port=WS_PORT)
    assert "INVALID_ARGUMENT" in error and "not exposed" in error and f"exposed ports: {HTTP_PORT}" in error
    for bad in (0, 70000):
        error = await mcp.error("expose_port", port=bad)
        assert "INVALID_ARGUMENT" in error and "from 1 to 65535" in error

    # Destroy closes every door of the sandbox.
    await mcp("destroy")
    assert await refused(door)


async def test_doors_with_auth_open_with_their_token_only(tmp_path: Path) -> None:
    """On HTTP with tokens: the URL carries a token that becomes a cookie; no token, another door's
    token or another tenant's call opens nothing; other tenants neither see nor close the port."""
    path = tokens_file(tmp_path, f"alice {ALICE}\nbob {BOB}\n")
    proc, mcp_url = start_at(tmp_path / "root", "127.0.0.1", "--auth-tokens-file", str(path))
    try:
        async with connect(mcp_url, ALICE) as alice, connect(mcp_url, BOB) as bob:
            a = (await alice("create_sandbox"))["sandbox_id"]
            b = (await bob("create_sandbox"))["sandbox_id"]
            await alice.sh("mkdir site && echo alice-secret > site/index.html", sandbox_id=a)
            port = free_ports(1)[0]  # isolation none: the sandboxes share the host's loopback
            await alice("start_process", sandbox_id=a, process_id="web",
                        command=f"cd site && exec python3 -u -m http.server {port} --bind 127.0.0.1")
            await alice("get_process_logs", sandbox_id=a, process_id="web", wait_for="Serving HTTP", timeout=30)
            door = await alice("expose_port", sandbox_id=a, port=port)
            url = door["url"]
            assert re.fullmatch(rf"http://127\.0\.0\.1:{door['host_port']}/\?mcp_sandbox_token=\d+\.[\w-]+", url)
            base = url.split("?")[0]

            status, _, body = await fetch(base)
            assert status == 403 and b"expose_port" in body and b"alice-secret" not in body
            status, headers, body = await fetch(url)
            assert status == 200 and body == b"alice-secret\n"
            cookie = headers["Set-Cookie"].split(";")[0]
            assert cookie.startswith(f"mcp_sandbox_port_{door['host_port']}=")
            assert (await fetch(base + "index.html", {"Cookie": cookie}))[2] == b"alice-secret\n"

            # Bob: his own door's token does not open Alice's; her sandbox and ports are not his.
            bob_door = await bob("expose_port", sandbox_id=b, port=port)
            status, _, body = await fetch(base + "?" + bob_door["url"].split("?")[1])
            assert status == 403 and b"alice-secret" not in body
            for tool in ("expose_port", "unexpose_port"):
                assert "SANDBOX_NOT_FOUND" in await bob.error(tool, sandbox_id=a, port=port)
            assert [p["port"] for p in (await bob("sandbox_info", sandbox_id=b))["exposed_ports"]] == [port]
            assert (await alice("sandbox_info", sandbox_id=a))["exposed_ports"] == [{"port": port, "url": url}]
            # Still open for Alice after all that.
            assert (await fetch(url))[0] == 200
    finally:
        stop(proc)


async def test_idle_expiry_and_the_server_stopping_close_the_doors(tmp_path: Path) -> None:
    async with SandboxManager(settings_for("none", tmp_path / "sandboxes", idle_timeout=1)) as manager:
        async with Client(build_server(manager)) as client:
            mcp = Tools(client, "none")
            port = free_ports(1)[0]
            door = (await mcp("expose_port", port=port))["host_port"]
            assert not await refused(door)
            assert await eventually(lambda: not manager.sandboxes)  # idle for a second: destroyed
            assert await refused(door)
            last = (await mcp("expose_port", port=port))["host_port"]  # in a new default sandbox
            assert not await refused(last)
    assert await refused(last)
