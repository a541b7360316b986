"""The doors of exposed ports (ports.py, port_gate.py) on their own: real host listeners and real
loopback TCP connections standing in for the sandbox's streams, so that the pump, the closing and
the token gate are checked without a sandbox (test_ports.py does it through one)."""

from __future__ import annotations

import http.server
import re
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream

from mcp_sandbox import port_gate
from mcp_sandbox.errors import SandboxError
from mcp_sandbox.port_gate import DoorKey
from mcp_sandbox.ports import MAX_CONNECTIONS, MAX_PORTS, ExposedPorts
from mcp_sandbox.settings import Settings

from .helpers import serving

pytestmark = pytest.mark.anyio

AUTH = Settings(transport="http", host="127.0.0.1", auth_token="t" * 32)


async def loopback(port: int, *, wait: bool = True) -> ByteStream:
    """The connector: what sandbox.open_stream does, with the host's loopback as the sandbox
    (connected at once, whatever ``wait`` says)."""
    return await anyio.connect_tcp("127.0.0.1", port)


class Echo(http.server.BaseHTTPRequestHandler):
    """An HTTP server in a thread (the program in the 'sandbox'): answers each request with its
    request line, headers and body; after an Upgrade it echoes raw bytes."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        if self.headers.get("Upgrade"):
            self.send_response(101)
            self.send_header("Upgrade", "echo")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while data := self.connection.recv(65536):
                self.connection.sendall(data)
            self.close_connection = True
            return
        if self.headers.get("Transfer-Encoding") == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        text = f"{self.command} {self.path}\n{self.headers}".encode() + body
        self.send_response(200)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    do_GET = do_POST = _answer


@asynccontextmanager
async def doors(settings: Settings = Settings()) -> AsyncIterator[ExposedPorts]:
    async with ExposedPorts(settings) as ports:
        yield ports


async def exchange(host_port: int, data: bytes, host: str = "127.0.0.1") -> bytes:
    """Send ``data``, half-close, and read everything until the door closes."""
    async with await anyio.connect_tcp(host, host_port) as stream:
        await stream.send(data)
        await stream.send_eof()
        return await read_all(stream)


async def read_all(stream: ByteStream) -> bytes:
    got = b""
    with anyio.fail_after(10):
        try:
            while True:
                got += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return got


def get(path: str, *headers: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: x", *headers]) + "\r\n\r\n").encode()


def token_of(url: str) -> str:
    match = re.search(r"\?mcp_sandbox_token=([\w.-]+)$", url)
    assert match, url
    return match.group(1)


async def test_bytes_go_both_ways_and_half_close_is_kept() -> None:
    """Both directions carry every byte; the client's EOF reaches the program, which then
    answers: a door must not close a connection when one direction ends."""

    async def reverse(stream: ByteStream) -> None:
        async with stream:
            await stream.send((await read_all(stream))[::-1])

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, reverse)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with doors() as ports:
            door = await ports.expose("sbx_a", port, loopback)
            assert door.url == f"http://127.0.0.1:{door.host_port}/"
            data = bytes(range(256)) * 8192  # 2 MiB
            assert await exchange(door.host_port, data) == data[::-1]
        tg.cancel_scope.cancel()


async def test_http_and_many_connections_at_once() -> None:
    with serving(Echo) as port:
        async with doors() as ports:
            door = await ports.expose("sbx_a", port, loopback)
            answers: list[bytes] = []

            async def one(i: int) -> None:
                answers.append(await exchange(door.host_port, get(f"/{i}", "Connection: close")))

            async with anyio.create_task_group() as tg:
                for i in range(50):
                    tg.start_soon(one, i)
            assert all(b"\r\n\r\n" in a for a in answers), answers
            assert sorted(a.split(b"\r\n\r\n", 1)[1].split(b"\n")[0] for a in answers) == sorted(
                f"GET /{i}".encode() for i in range(50)
            )


async def test_connections_past_the_cap_wait_for_a_free_slot() -> None:
    """A sandbox carries at most MAX_CONNECTIONS at once over all its doors; one more waits (in
    the backlog) until another ends, instead of being refused."""

    async def echo(stream: ByteStream) -> None:
        async with stream:
            try:
                while True:
                    await stream.send(await stream.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with doors() as ports:
            first, second = await ports.expose("sbx_a", port, loopback), await ports.expose("sbx_a", 1, loopback)
            held = []
            for i in range(MAX_CONNECTIONS):
                stream = await anyio.connect_tcp("127.0.0.1", first.host_port)
                await stream.send(b"x")
                with anyio.fail_after(10, reason=f"connection {i}"):
                    assert await stream.receive() == b"x"
                held.append(stream)
            async with await anyio.connect_tcp("127.0.0.1", first.host_port) as waiting:
                await waiting.send(b"y")
                with anyio.move_on_after(0.5):
                    await waiting.receive()
                    pytest.fail("a connection past the cap was carried")
                await held.pop().aclose()
                with anyio.fail_after(10):
                    assert await waiting.receive() == b"y"
            for stream in held:
                await stream.aclose()
        tg.cancel_scope.cancel()


async def test_unexpose_and_sandbox_removal_close_listeners_and_live_connections() -> None:
    with serving(Echo) as port:
        async with doors() as ports:
            first = await ports.expose("sbx_a", port, loopback)
            second = await ports.expose("sbx_a", port, loopback)
            assert second is first  # exposing again: the same door, the same URL
            other = await ports.expose("sbx_b", port, loopback)
            live = await anyio.connect_tcp("127.0.0.1", first.host_port)
            await live.send(get("/", "Upgrade: echo", "Connection: Upgrade"))
            assert (await live.receive()).startswith(b"HTTP/1.1 101")
            await ports.unexpose("sbx_a", port)
            assert await read_all(live) == b""  # the live connection was cut
            with pytest.raises(OSError):
                await anyio.connect_tcp("127.0.0.1", first.host_port)
            assert ports.listed("sbx_a") == [] and ports.listed("sbx_b") == [other]
            with pytest.raises(SandboxError, match="not exposed; exposed ports: none"):
                await ports.unexpose("sbx_a", port)
            await ports.close_sandbox("sbx_b")
            with pytest.raises(OSError):
                await anyio.connect_tcp("127.0.0.1", other.host_port)
        # And leaving the block (the server stopping) closes whatever is left.
        async with doors() as ports:
            last = await ports.expose("sbx_c", port, loopback)
        with pytest.raises(OSError):
            await anyio.connect_tcp("127.0.0.1", last.host_port)


async def test_bad_ports_the_cap_and_a_port_nobody_listens_on() -> None:
    async with doors() as ports:
        for bad in (0, -1, 65536):
            with pytest.raises(SandboxError) as info:
                await ports.expose("sbx_a", bad, loopback)
            assert info.value.code == "INVALID_ARGUMENT" and "from 1 to 65535" in info.value.message
        with socket.socket() as s:  # a port free now: nothing listens on it
            s.bind(("127.0.0.1", 0))
            free = s.getsockname()[1]
        door = await ports.expose("sbx_a", free, loopback)
        assert await exchange(door.host_port, b"hello") == b""  # closed at once, no hang
        for port in range(1, MAX_PORTS):
            await ports.expose("sbx_a", port, loopback)
        with pytest.raises(SandboxError) as info:
            await ports.expose("sbx_a", 4242, loopback)
        assert info.value.code == "LIMIT_REACHED"
        await ports.expose("sbx_b", 4242, loopback)  # the cap is per sandbox
        # A sandbox destroyed while the tool ran gets no door (destroy forgets it, then closes doors).
        with pytest.raises(SandboxError) as info:
            await ports.expose("sbx_c", 4242, loopback, alive=lambda: False)
        assert info.value.code == "SANDBOX_NOT_FOUND" and ports.listed("sbx_c") == []


async def test_url_token_admits_sets_a_cookie_and_is_stripped() -> None:
    with serving(Echo) as port:
        async with doors(AUTH) as ports:
            door = await ports.expose("sbx_a", port, loopback)
            token = token_of(door.url)
            own = f"mcp_sandbox_port_{door.host_port}"
            answer = await exchange(
                door.host_port,
                get(f"/page?a=1&mcp_sandbox_token={token}&b=2", "Cookie: app=1; mcp_sandbox_port_1=other-door",
                    "Connection: close"),
            )
            head, body = answer.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 200")
            cookie = re.search(rb"Set-Cookie: (.*)", head)
            assert cookie and cookie.group(1).startswith(f"{own}={token}; Max-Age=".encode())
            assert b"HttpOnly" in cookie.group(1) and b"SameSite=Lax" in cookie.group(1)
            # The program sees neither the token nor any door's cookie; the app's own cookie stays.
            assert body.startswith(b"GET /page?a=1&b=2\n")
            assert b"mcp_sandbox" not in body and b"Cookie: app=1\n" in body

            # The cookie alone admits the page's later connections, without Set-Cookie; each request
            # of a kept-alive connection loses the door cookies too.
            async with await anyio.connect_tcp("127.0.0.1", door.host_port) as stream:
                await stream.send(get("/one", f"Cookie: {own}={token}"))
                first = await stream.receive()
                assert first.startswith(b"HTTP/1.1 200") and b"Set-Cookie" not in first
                await stream.send(get("/two", f"Cookie: x=2; {own}={token}", "Connection: close"))
                second = await read_all(stream)
                assert b"GET /two\n" in second and b"Cookie: x=2\n" in second and b"mcp_sandbox" not in second

            # A chunked upload passes whole; an upgrade turns the connection into raw bytes.
            chunked = (f"POST /up?mcp_sandbox_token={token} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                       "Connection: close\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n").encode()
            assert (await exchange(door.host_port, chunked)).endswith(b"hello world")
            bad_chunk = chunked.replace(b"hello\r\n", b"helloXX")  # the server would read past the chunk
            assert await exchange(door.host_port, bad_chunk) == b""
            async with await anyio.connect_tcp("127.0.0.1", door.host_port) as stream:
                await stream.send(get(f"/?mcp_sandbox_token={token}", "Upgrade: echo", "Connection: Upgrade"))
                assert b"101" in await stream.receive()
                await stream.send(b"GET / HTTP/1.1\r\nCookie: mcp_sandbox_port_1=raw\r\n\r\n")
                assert await stream.receive() == b"GET / HTTP/1.1\r\nCookie: mcp_sandbox_port_1=raw\r\n\r\n"


async def test_tokens_open_only_their_own_door() -> None:
    with serving(Echo) as port, serving(Echo) as port2:
        async with doors(AUTH) as ports:
            door = await ports.expose("sbx_a", port, loopback)
            token = token_of(door.url)
            others = [await ports.expose("sbx_a", port2, loopback), await ports.expose("sbx_b", port, loopback)]
            signer = door._signer
            assert signer is not None
            expired = signer.sign(door.key, int(time.time()) - 1)
            forged = signer.sign(DoorKey("sbx_a", port, "guessed"), int(time.time()) + 60)
            tampered = str(int(token.split(".")[0]) + 1) + "." + token.split(".")[1]
            refused = [
                (door, ""), (door, "?mcp_sandbox_token="), (door, f"?mcp_sandbox_token={expired}"),
                (door, f"?mcp_sandbox_token={forged}"), (door, f"?mcp_sandbox_token={tampered}"),
                *((other, f"?mcp_sandbox_token={token}") for other in others),
            ]
            for target, query in refused:
                answer = await exchange(target.host_port, get("/" + query, "Connection: close"))
                assert answer.startswith(b"HTTP/1.1 403 Forbidden") and b"expose_port" in answer, query
            # A cookie of another door (browsers send every port's cookies) opens nothing either.
            answer = await exchange(
                others[1].host_port, get("/", f"Cookie: mcp_sandbox_port_{door.host_port}={token}", "Connection: close")
            )
            assert answer.startswith(b"HTTP/1.1 403")
            # The cookie serves the door's own pages and navigations to it, not another origin's page
            # (another door's page may fetch from it or open its websockets as the user otherwise).
            jar = f"Cookie: mcp_sandbox_port_{door.host_port}={token}"
            own = f"http://127.0.0.1:{door.host_port}"
            for headers, admitted in (
                ([f"Origin: {own}"], True),
                (["Sec-Fetch-Site: same-origin", "Sec-Fetch-Mode: cors"], True),
                (["Sec-Fetch-Site: cross-site", "Sec-Fetch-Mode: navigate"], True),
                ([f"Origin: http://127.0.0.1:{others[0].host_port}"], False),
                (["Origin: null"], False),
                (["Sec-Fetch-Site: same-site", "Sec-Fetch-Mode: cors"], False),
                (["Sec-Fetch-Site: same-site", "Sec-Fetch-Mode: websocket", "Upgrade: echo", "Connection: Upgrade"],
                 False),
            ):
                request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{door.host_port}\r\n{jar}\r\n" + "".join(
                    h + "\r\n" for h in [*headers, "Connection: close"]) + "\r\n"
                answer = await exchange(door.host_port, request.encode())
                assert answer.startswith(b"HTTP/1.1 200" if admitted else b"HTTP/1.1 403"), (headers, answer[:200])
            # Also later on a kept-alive connection: it is cut before the request enters the sandbox.
            async with await anyio.connect_tcp("127.0.0.1", door.host_port) as stream:
                await stream.send(get("/first", jar))
                assert (await stream.receive()).startswith(b"HTTP/1.1 200")
                await stream.send(get("/second", jar, "Origin: http://elsewhere"))
                assert b"/second" not in await read_all(stream)

            # Unexposed and exposed again: a new door, the old URL is dead.
            await ports.unexpose("sbx_a", port)
            again = await ports.expose("sbx_a", port, loopback)
            assert token_of(again.url) != token
            answer = await exchange(again.host_port, get(f"/?mcp_sandbox_token={token}", "Connection: close"))
            assert answer.startswith(b"HTTP/1.1 403")
            assert (await exchange(again.host_port, get("/" + again.url.split("/")[-1], "Connection: close"))).startswith(
                b"HTTP/1.1 200"
            )


async def test_the_gate_refuses_what_it_cannot_read() -> None:
    with serving(Echo) as port:
        async with doors(AUTH) as ports:
            door = await ports.expose("sbx_a", port, loopback)
            token = token_of(door.url)
            for request, status in (
                (b"\x16\x03\x01 not http\r\n\r\n", b"400"),
                (f"POST /?mcp_sandbox_token={token} HTTP/1.1\r\nContent-Length: 3\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode(), b"400"),
                (get("/", "X: " + "a" * (port_gate.MAX_HEAD + 10)), b"431"),
                # A bare LF: a server that splits lines on it would read a second header the gate did not.
                (f"POST /?mcp_sandbox_token={token} HTTP/1.1\r\nX: a\nTransfer-Encoding: chunked\r\n"
                 "Content-Length: 3\r\n\r\n".encode(), b"400"),
            ):
                assert (await exchange(door.host_port, request)).startswith(b"HTTP/1.1 " + status)
            # Nothing listening behind the door: a clear 502, not a silent close.
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                free = s.getsockname()[1]
            empty = await ports.expose("sbx_a", free, loopback)
            answer = await exchange(empty.host_port, get("/" + empty.url.split("/")[-1]))
            assert answer.startswith(b"HTTP/1.1 502") and f"port {free}".encode() in answer


def test_urls_name_the_host_clients_reach() -> None:
    ports = ExposedPorts(Settings(transport="http", host="0.0.0.0", auth_token="t" * 32))
    assert ports.public_host("example.org:8000") == "example.org"
    assert ports.public_host("[2001:db8::1]:8000") == "[2001:db8::1]"
    assert ports.public_host("evil.org/x?<script>") == socket.gethostname()
    assert ExposedPorts(Settings(transport="http", host="::1")).public_host("x") == "[::1]"
    assert ExposedPorts(Settings(host="0.0.0.0")).bind_host == "127.0.0.1"  # stdio: loopback only


async def test_a_server_on_every_address_takes_ipv4_and_ipv6() -> None:
    async with doors(Settings(transport="http", host="::", auth_token="t" * 32)) as ports:
        door = await ports.expose("sbx_a", 1, loopback, request_host="example.org:8000")
        assert door.url.startswith(f"http://example.org:{door.host_port}/?mcp_sandbox_token=")
        for host in ("127.0.0.1", *(["::1"] if has_ipv6_loopback() else [])):
            answer = await exchange(door.host_port, get("/", "Connection: close"), host)
            assert answer.startswith(b"HTTP/1.1 403"), host



def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False
