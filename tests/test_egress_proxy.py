"""The egress proxy's logic on its own: the allow-list patterns, HTTP heads, and the proxy serving
real loopback TCP connections (the same ByteStream a sandbox's stream is) to real upstream servers,
with credential brokering (--inject-header) too."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteStream
from anyio.streams.tls import TLSStream
from pydantic import ValidationError

from mcp_sandbox.cli import load_settings
from mcp_sandbox.egress.broker import Authority, Broker, parse_injection
from mcp_sandbox.egress.messages import BadMessage, parse_head, request_framing, request_target
from mcp_sandbox.egress.proxy import Egress
from mcp_sandbox.egress.rules import AllowList, parse_address, parse_pattern, refusal
from mcp_sandbox.settings import Settings

from .egress_servers import echo_server, http_server


def test_patterns_match_what_they_name() -> None:
    exact, wild, port = parse_pattern("Example.ORG."), parse_pattern("*.example.com"), parse_pattern("a.io:8443")
    assert exact.matches("example.org", 443) and exact.matches("example.org", 80)
    assert not exact.matches("www.example.org", 443)
    assert wild.matches("a.example.com", 443) and wild.matches("a.b.example.com", 80)
    assert not wild.matches("example.com", 443) and not wild.matches("badexample.com", 443)
    assert port.matches("a.io", 8443) and not port.matches("a.io", 443)
    v6 = parse_pattern("[::1]:8080")
    assert v6.host == "::1" and v6.port == 8080 and v6.address == parse_address("::1")
    assert parse_pattern("::1").port is None
    assert parse_pattern("10.0.0.5:80").matches("10.0.0.5", 80)


@pytest.mark.parametrize("text", ["", "*", "*.10.0.0.1", "exa mple.org", "a.org:0", "a.org:99999", "a.org:x",
                                  "[::1", "[1.2.3.4]", "-a.org", "ä.org"])
def test_bad_patterns_say_what_a_pattern_is(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_pattern(text)
    assert repr(text.strip()) in str(caught.value) or "port" in str(caught.value) or "'['" in str(caught.value)


def test_a_sandbox_list_can_only_narrow_the_servers() -> None:
    server = AllowList.parse(["*.example.com", "pkg.org:443", "10.1.2.3"])
    assert server.narrowed(["a.example.com", "*.b.example.com", "pkg.org:443", "10.1.2.3:80"]).texts == [
        "a.example.com", "*.b.example.com", "pkg.org:443", "10.1.2.3:80"
    ]
    for wider in ["example.com", "pkg.org", "pkg.org:80", "other.org", "10.1.2.4", "*.com"]:
        with pytest.raises(ValueError, match="not within the server's allow-list"):
            server.narrowed([wider])


def test_internal_addresses_are_refused() -> None:
    for text, kind in [("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.2.3.4", "private"),
                       ("192.168.1.1", "private"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
                       ("224.0.0.1", "multicast"), ("0.0.0.0", "unspecified"), ("::ffff:127.0.0.1", "loopback"),
                       ("100.64.0.1", "private"), ("64:ff9b::a00:1", "private"),
                       ("255.255.255.255", "reserved")]:
        address = parse_address(text)
        assert address is not None and kind in (refusal(address) or ""), text
    public = parse_address("93.184.215.14")
    assert public is not None and refusal(public) is None


def test_heads_and_framing() -> None:
    head = parse_head(b"GET http://Example.org:8080/a?b HTTP/1.1\r\nHost: example.org\r\nProxy-Connection: x", request=True)
    target = request_target(head)
    assert (target.host, target.port, target.path) == ("example.org", 8080, "/a?b")
    assert request_target(parse_head(b"CONNECT [::1]:443 HTTP/1.1", request=True)).host == "::1"
    assert request_framing(parse_head(b"POST http://a/ HTTP/1.1\r\nContent-Length: 5", request=True)) == ("length", 5)
    for raw, why in [
        (b"GET /relative HTTP/1.1", "absolute"), (b"GET https://a/ HTTP/1.1", "CONNECT"),
        (b"CONNECT a.org HTTP/1.1", "host:port"), (b"GET http://a b/ HTTP/1.1", "request line"),
        (b"GET http://a/ HTTP/1.1\r\n folded", "Name: value"), (b"GET http://u:p@a/ HTTP/1.1", "credentials"),
    ]:
        with pytest.raises(BadMessage, match=why):
            request_target(parse_head(raw, request=True))
    for raw in [b"POST http://a/ HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked",
                b"POST http://a/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6",
                b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: gzip"]:
        with pytest.raises(BadMessage):
            request_framing(parse_head(raw, request=True))


# -- the proxy over real loopback connections ---------------------------------------------------


@pytest.fixture
def upstream() -> Iterator[int]:
    with http_server() as port:
        yield port


@pytest.fixture
def other() -> Iterator[int]:
    with http_server() as port:
        yield port


@asynccontextmanager
async def proxy(egress: Egress) -> AsyncIterator[int]:
    """The proxy serving loopback TCP connections; its port."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, egress.handle)
        yield listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.cancel_scope.cancel()


async def response(stream: BufferedByteStream) -> tuple[str, dict[str, str], bytes]:
    """The next response: status line, headers (lower-case names) and Content-Length body."""
    with anyio.fail_after(10):
        head = (await stream.receive_until(b"\r\n\r\n", 65536)).decode()
        status, *lines = head.split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        body = await stream.receive_exactly(int(headers.get("content-length", 0)))
    return status, headers, body


async def connect(port: int) -> BufferedByteStream:
    return BufferedByteStream(await anyio.connect_tcp("127.0.0.1", port))



@pytest.mark.anyio
async def test_plain_http_checks_every_request_on_a_connection(upstream: int, other: int) -> None:
    egress = Egress(AllowList.parse([f"127.0.0.1:{upstream}"]))
    async with proxy(egress) as port, await connect(port) as client:
        await client.send(f"GET http://127.0.0.1:{upstream}/one HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        status, _, body = await response(client)
        assert status.startswith("HTTP/1.1 200") and body == b"GET /one host=127.0.0.1 body="
        body_text = "hello"
        await client.send(
            f"POST http://127.0.0.1:{upstream}/two HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n{body_text}".encode()
        )
        assert (await response(client))[2] == b"POST /two host=h body=hello"
        # The same connection, now to a port not in the list: denied, and the connection ends.
        await client.send(f"GET http://127.0.0.1:{other}/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        status, headers, body = await response(client)
        assert status.startswith("HTTP/1.1 403 Forbidden: ")
        assert f"127.0.0.1:{other} is not in this sandbox's egress allow-list" in headers["x-mcp-sandbox-denied"]
        assert body.decode().count("\n") == 1 and f"allowed: 127.0.0.1:{upstream}" in body.decode()
        with pytest.raises(anyio.EndOfStream):
            await client.receive()
    assert [(b["host"], b["port"]) for b in egress.info()["blocked"]] == [("127.0.0.1", other)]


@pytest.mark.anyio
async def test_chunked_bodies_and_expect_continue(upstream: int) -> None:
    egress = Egress(AllowList.parse([f"127.0.0.1:{upstream}"]))
    async with proxy(egress) as port, await connect(port) as client:
        await client.send(
            f"PUT http://127.0.0.1:{upstream}/c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            "3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n".encode()
        )
        assert (await response(client))[2] == b"PUT /c host=h body=abcde"
        await client.send(
            f"POST http://127.0.0.1:{upstream}/e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
            "Content-Length: 2\r\n\r\n".encode()
        )
        assert (await response(client))[0].startswith("HTTP/1.1 100")
        await client.send(b"ok")
        assert (await response(client))[2] == b"POST /e host=h body=ok"


@pytest.mark.anyio
async def test_an_upgraded_connection_carries_bytes_both_ways(upstream: int) -> None:
    egress = Egress(AllowList.parse([f"127.0.0.1:{upstream}"]))
    async with proxy(egress) as port, await connect(port) as client:
        await client.send(
            f"GET http://127.0.0.1:{upstream}/ws HTTP/1.1\r\nHost: h\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
            .encode()
        )
        assert (await response(client))[0] == "HTTP/1.1 101 Switching Protocols"
        await client.send(b"frame")
        with anyio.fail_after(10):
            assert await client.receive_exactly(5) == b"frame"


@pytest.mark.anyio
async def test_connect_tunnels_to_an_allowed_port_only() -> None:
    with echo_server() as server:
        echo = server.port
        egress = Egress(AllowList.parse([f"127.0.0.1:{echo}"]))
        async with proxy(egress) as port:
            async with await connect(port) as client:
                await client.send(f"CONNECT 127.0.0.1:{echo} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                assert (await response(client))[0] == "HTTP/1.1 200 Connection established"
                payload = bytes(range(256)) * 4096  # 1 MiB both ways
                async with anyio.create_task_group() as tg:
                    tg.start_soon(client.send, payload)
                    with anyio.fail_after(10):
                        assert await client.receive_exactly(len(payload)) == payload
            async with await connect(port) as client:
                await client.send(f"CONNECT 127.0.0.1:{echo + 1 if echo < 65535 else 1} HTTP/1.1\r\n\r\n".encode())
                status, headers, body = await response(client)
                assert status.startswith("HTTP/1.1 403") and "not in this sandbox's egress allow-list" in status


async def socks_connect(proxy_port: int, address: bytes, port: int, methods: bytes = b"\x00") -> tuple[BufferedByteStream, bytes]:
    """A SOCKS5 CONNECT (``address`` as sent: type and bytes); the stream and the reply."""
    client = await connect(proxy_port)
    await client.send(b"\x05" + bytes([len(methods)]) + methods)
    with anyio.fail_after(10):
        chosen = await client.receive_exactly(2)
        if chosen != b"\x05\x00":
            return client, chosen
        await client.send(b"\x05\x01\x00" + address + port.to_bytes(2, "big"))
        return client, await client.receive_exactly(10)


@pytest.mark.anyio
async def test_socks5_connect_is_checked_like_http() -> None:
    with echo_server() as server:
        egress = Egress(AllowList.parse([f"127.0.0.1:{server.port}"]))
        async with proxy(egress) as port:
            client, answer = await socks_connect(port, b"\x01" + bytes([127, 0, 0, 1]), server.port)
            async with client:
                assert answer[:2] == b"\x05\x00"
                await client.send(b"through socks")
                with anyio.fail_after(10):
                    assert await client.receive_exactly(13) == b"through socks"
            for address in (b"\x01" + bytes([127, 0, 0, 1]), b"\x03\x09localhost"):  # another port; a name
                client, answer = await socks_connect(port, address, server.port + 1 if address[0] == 1 else server.port)
                async with client:
                    assert answer[:2] == b"\x05\x02"  # not allowed by the rules
            client, answer = await socks_connect(port, b"", 0, methods=b"\x02")  # user/password only
            async with client:
                assert answer == b"\x05\xff"
    assert [(b["host"], b["port"]) for b in egress.info()["blocked"]] == [
        ("localhost", server.port), ("127.0.0.1", server.port + 1)
    ]


@pytest.mark.anyio
async def test_the_50_latest_denials_are_kept_newest_first() -> None:
    egress = Egress(AllowList.parse(["127.0.0.1:1"]))
    async with proxy(egress) as port:
        for n in range(1, 61):
            async with await connect(port) as client:
                await client.send(f"CONNECT 127.0.0.1:{n + 1} HTTP/1.1\r\n\r\n".encode())
                assert (await response(client))[0].startswith("HTTP/1.1 403")
    assert [b["port"] for b in egress.info()["blocked"]] == list(range(61, 11, -1))


@pytest.mark.anyio
async def test_names_that_resolve_inside_are_refused_unless_the_address_is_named(upstream: int) -> None:
    by_name = Egress(AllowList.parse([f"localhost:{upstream}"]))
    async with proxy(by_name) as port, await connect(port) as client:
        await client.send(f"GET http://localhost:{upstream}/ HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        status, _, body = await response(client)
        assert status.startswith("HTTP/1.1 403") and "a loopback address" in body.decode()
        assert "names that address literally" in body.decode()
    assert by_name.info()["blocked"][0]["host"] == "localhost"
    both = Egress(AllowList.parse([f"localhost:{upstream}", f"127.0.0.1:{upstream}"]))
    async with proxy(both) as port, await connect(port) as client:
        await client.send(f"GET http://localhost:{upstream}/ok HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        assert (await response(client))[2] == b"GET /ok host=localhost body="


@pytest.mark.anyio
async def test_a_hostile_client_ends_only_its_own_connection(upstream: int) -> None:
    egress = Egress(AllowList.parse([f"127.0.0.1:{upstream}"]), head_timeout=1, max_connections=3)
    async with proxy(egress) as port:
        async with await connect(port) as huge:
            await huge.send(b"GET http://127.0.0.1/ HTTP/1.1\r\nX: " + b"a" * 40000)
            assert (await response(huge))[0].startswith("HTTP/1.1 431")
        async with await connect(port) as garbage:
            await garbage.send(b"\x16\x03\x01 not http\r\n\r\n")
            assert (await response(garbage))[0].startswith("HTTP/1.1 400")
        slow = [await connect(port) for _ in range(3)]
        await slow[0].send(b"GET http://127.0.0.1/ HTTP/1.1\r\n")  # and nothing more
        async with await connect(port) as over:  # a fourth at once: refused, the others stand
            await anyio.sleep(0.2)
            assert (await response(over))[0].startswith("HTTP/1.1 503")
        with anyio.fail_after(10):  # the head timeout ends the slow ones
            for stream in slow:
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await stream.receive()
                await stream.aclose()
        async with await connect(port) as client:  # the proxy serves on
            await client.send(f"GET http://127.0.0.1:{upstream}/ HTTP/1.1\r\nHost: h\r\n\r\n".encode())
            assert (await response(client))[0].startswith("HTTP/1.1 200")


def test_allow_host_option_and_variable(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert load_settings(["--allow-host", "a.org", "--allow-host", "*.b.org:443"]).allow_hosts == ["a.org", "*.b.org:443"]
    monkeypatch.setenv("MCP_SANDBOX_ALLOW_HOSTS", "a.org, 10.0.0.5:80")
    assert load_settings([]).allow_hosts == ["a.org", "10.0.0.5:80"]
    with pytest.raises(SystemExit):
        load_settings(["--allow-host", "a.org:http"])
    assert "--allow-host" in capsys.readouterr().err


# -- credential brokering -------------------------------------------------------------------------


def test_injections_parse_and_never_show_their_value() -> None:
    environ = {"TOKEN": "Bearer s3cret"}
    injection = parse_injection("*.api.example:443:Authorization=env:TOKEN", environ)
    assert (injection.pattern.text, injection.header, injection.value) == ("*.api.example:443", "Authorization", "Bearer s3cret")
    assert parse_injection("api.example:X-Key=k3y", environ).value == "k3y"
    for text in ["api.example=k3y", "api.example:Bad Header=k3y", "api.example:X-Key=env:MISSING", "api.example:X-Key="]:
        with pytest.raises(ValueError) as caught:
            parse_injection(text, environ)
        assert "k3y" not in str(caught.value)
    with pytest.raises(ValidationError, match="--inject-header needs --allow-host"):
        Settings(inject_headers=["api.example:X-Key=k3y"])


@pytest.fixture
def upstream_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Authority:
    """A CA for the test's HTTPS upstreams, which the server process trusts (SSL_CERT_FILE, read
    by OpenSSL when a default context is made)."""
    ca = Authority()
    (tmp_path / "upstream-ca.pem").write_bytes(ca.pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "upstream-ca.pem"))
    return ca


async def tunnel(proxy_port: int, port: int, trusted: bytes, *, close_notify: bool = False) -> TLSStream:
    """A CONNECT tunnel to 127.0.0.1:port, with TLS inside trusting only ``trusted``; with
    ``close_notify``, TLS ends as the standard says, both ways."""
    stream = await connect(proxy_port)
    await stream.send(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
    assert (await response(stream))[0] == "HTTP/1.1 200 Connection established"
    context = ssl.create_default_context(cadata=trusted.decode())
    # Python's HTTPS server closes without close_notify: not required by default.
    return await TLSStream.wrap(stream, hostname="127.0.0.1", ssl_context=context, standard_compatible=close_notify)


@pytest.mark.anyio
async def test_injected_headers_reach_matching_hosts_only(
    upstream_ca: Authority, caplog: pytest.LogCaptureFixture
) -> None:
    with http_server(upstream_ca.context_for("127.0.0.1")) as brokered, \
            http_server(upstream_ca.context_for("127.0.0.1")) as plain:
        broker = Broker([parse_injection(f"127.0.0.1:{brokered}:Authorization=Bearer s3cret")])
        egress = Egress(AllowList.parse(["127.0.0.1"]), broker=broker)
        async with proxy(egress) as port:
            # The sandbox's client trusts the server's CA, and its own Authorization is replaced.
            async with BufferedByteStream(await tunnel(port, brokered, broker.authority.pem)) as secure:
                for path in ("/one", "/two"):
                    await secure.send(f"GET {path} HTTP/1.1\r\nHost: h\r\nAuthorization: mine\r\n\r\n".encode())
                    assert (await response(secure))[2] == f"GET {path} host=h body= auth=Bearer s3cret".encode()
            # A websocket-like upgrade inside the brokered TLS: bytes both ways, then a clean end.
            upgraded = await tunnel(port, brokered, broker.authority.pem, close_notify=True)
            async with BufferedByteStream(upgraded) as secure:
                await secure.send(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
                assert (await response(secure))[0] == "HTTP/1.1 101 Switching Protocols"
                await secure.send(b"frame")
                with anyio.fail_after(10):
                    assert await secure.receive_exactly(5) == b"frame"
            # Another port: an end-to-end tunnel, with the upstream's own certificate.
            async with BufferedByteStream(await tunnel(port, plain, upstream_ca.pem)) as secure:
                await secure.send(b"GET /p HTTP/1.1\r\nHost: h\r\nAuthorization: mine\r\n\r\n")
                assert (await response(secure))[2] == b"GET /p host=h body= auth=mine"
    assert "a connection failed" not in caplog.text
