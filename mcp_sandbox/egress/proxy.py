"""One sandbox's egress proxy, run by the server: a program in the sandbox connects to the proxy
port inside it, the agent carries that connection to the host as a stream, and here each request
is checked against the sandbox's allow-list before the server itself connects upstream.

Deny is the default: a host not in the list, or a name that resolves to a loopback, private,
link-local, multicast or unspecified address (unless a pattern names that address literally),
gets HTTP 403 with the reason, and the denial is kept for sandbox_info. The server connects to
the very address it checked, so a name cannot be re-resolved elsewhere in between."""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from contextlib import suppress
from typing import Any

import anyio
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteStream
from anyio.streams.tls import TLSStream

from . import socks
from .broker import Broker, Injection
from .messages import (
    CHUNK, IDLE_TIMEOUT, BadMessage, Framing, Head, Target, copy_body, forwarded, keeps_alive, read_head,
    request_framing, request_target, response_framing, within,
)
from .rules import AllowList, IPAddress, parse_address, refusal

logger = logging.getLogger(__name__)

# The port the proxy listens on inside a sandbox that has a network namespace of its own.
PROXY_PORT = 3128
NO_PROXY = "localhost,127.0.0.1"
BLOCKED_KEPT = 50
# Connections one sandbox may have through its proxy at once; more get 503.
MAX_CONNECTIONS = 64
FIRST_HEAD_TIMEOUT = 30.0  # from connecting to a complete request head
RESOLVE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
RESPONSE_TIMEOUT = 300.0  # an upstream server may think a while before it answers
TUNNEL_IDLE = 600.0
BODY_GRACE = 2.0  # for the rest of a request body once its response is complete  # a CONNECT tunnel with no byte either way for this long is closed
_CLOSED = (
    anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, anyio.ClosedResourceError,
    TimeoutError, OSError, BadMessage,
)
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
_PHRASES = {400: "Bad Request", 403: "Forbidden", 431: "Request Header Fields Too Large", 502: "Bad Gateway",
            503: "Service Unavailable"}


def proxy_env(port: int) -> dict[str, str]:
    """The variables that point pip, npm, git, curl and the rest at the proxy."""
    url = f"http://127.0.0.1:{port}"
    return {
        "HTTP_PROXY": url, "HTTPS_PROXY": url, "http_proxy": url, "https_proxy": url,
        "NO_PROXY": NO_PROXY, "no_proxy": NO_PROXY,
    }


class Denied(Exception):
    def __init__(self, host: str, port: int, why: str, advice: str) -> None:
        super().__init__(why)
        self.host, self.port, self.why, self.advice = host, port, why, advice


class Unreachable(Exception):
    pass


class Egress:
    """The allow-list of one sandbox, its proxy port, and the denials it made."""

    def __init__(
        self, allow: AllowList, port: int = PROXY_PORT, *, broker: Broker | None = None,
        max_connections: int = MAX_CONNECTIONS, head_timeout: float = FIRST_HEAD_TIMEOUT,
    ) -> None:
        self.allow = allow
        self.port = port
        self.broker = broker
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.blocked: deque[dict[str, Any]] = deque(maxlen=BLOCKED_KEPT)  # most recent first
        self._open = 0

    def info(self) -> dict[str, Any]:
        return {"mode": "proxy", "allow_hosts": self.allow.texts, "blocked": list(self.blocked)}

    async def handle(self, stream: ByteStream) -> None:
        """Serve one connection from the sandbox until it or its upstream ends; nothing it sends
        can end more than this connection."""
        try:
            if self._open >= self.max_connections:
                await answer(stream, 503, f"this sandbox has {self.max_connections} proxy connections open already")
                return
            self._open += 1
            try:
                await self._serve(BufferedByteStream(stream))
            finally:
                self._open -= 1
        except _CLOSED:
            pass
        except Exception:  # a bug here must not reach the sandbox's task group
            logger.exception("egress proxy: a connection failed")
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _serve(self, client: BufferedByteStream) -> None:
        with anyio.fail_after(self.head_timeout):
            first = await client.receive(1)
        if first == socks.VERSION:
            await self._serve_socks(client)
            return
        client.feed_data(first)  # the buffer was empty: the head reads whole again
        timeout = self.head_timeout
        while True:
            try:
                head = await read_head(client, request=True, timeout=timeout)
                target = request_target(head)
                framing: Framing = ("none", 0) if head.first == "CONNECT" else request_framing(head)
            except BadMessage as exc:
                await answer(client, exc.status, exc.reason)
                return
            except anyio.EndOfStream:
                return  # closed between requests
            upstream = await self._open_upstream(client, target)
            if upstream is None:
                return
            async with upstream:
                if head.first == "CONNECT":
                    injected = self.broker.for_target(target.host, target.port) if self.broker else []
                    if self.broker is not None and injected:
                        await broker_tunnel(self.broker, client, upstream, target, injected)
                        return
                    await within(client.send(ESTABLISHED))
                    await splice(client, upstream)
                    return
                if not await exchange(client, upstream, head, target, framing):
                    return
            timeout = IDLE_TIMEOUT

    async def _serve_socks(self, client: BufferedByteStream) -> None:
        try:
            host, port = await socks.read_request(client, self.head_timeout)
        except socks.SocksError as exc:
            if exc.code >= 0:
                await within(client.send(socks.reply(exc.code)))
            return
        try:
            upstream = BufferedByteStream(await self.connect(host, port))
        except Denied:
            await within(client.send(socks.reply(socks.NOT_ALLOWED)))
            return
        except Unreachable:
            await within(client.send(socks.reply(socks.HOST_UNREACHABLE)))
            return
        async with upstream:
            await within(client.send(socks.reply(socks.SUCCEEDED)))
            await splice(client, upstream)

    async def _open_upstream(self, client: ByteStream, target: Target) -> BufferedByteStream | None:
        """The upstream connection for a request, or None after answering why there is none."""
        try:
            return BufferedByteStream(await self.connect(target.host, target.port))
        except Denied as exc:
            await answer(client, 403, f"{exc.why}; {exc.advice}", phrase=f"Forbidden: {exc.why}")
        except Unreachable as exc:
            await answer(client, 502, str(exc))
        return None

    async def connect(self, host: str, port: int) -> ByteStream:
        """A connection to an allowed host; Denied (kept in ``blocked``) or Unreachable say why
        there is none."""
        try:
            return await self._connect(host, port)
        except Denied as exc:
            self.blocked.appendleft({"host": exc.host, "port": exc.port, "at": time.time()})
            logger.debug("egress proxy denied %s:%s: %s", exc.host, exc.port, exc.why)
            raise

    async def _connect(self, host: str, port: int) -> ByteStream:
        if not self.allow.allows(host, port):
            raise Denied(
                host, port, f"{host}:{port} is not in this sandbox's egress allow-list",
                f"allowed: {self.allow}; the user can allow more with --allow-host",
            )
        addresses = await resolve(host, port)
        usable = [a for a in addresses if refusal(a) is None or self.allow.names(a, port)]
        if not usable:
            raise Denied(
                host, port, f"{host} resolves to {addresses[0]}, {refusal(addresses[0])}",
                "only a pattern that names that address literally allows it",
            )
        problem: Exception | None = None
        for address in usable:  # the checked address itself, never the name again
            try:
                with anyio.fail_after(CONNECT_TIMEOUT):
                    return await anyio.connect_tcp(str(address), port)
            except (OSError, TimeoutError) as exc:
                problem = exc
        raise Unreachable(f"could not connect to {host}:{port}: {problem or 'no address'}")


async def resolve(host: str, port: int) -> list[IPAddress]:
    literal = parse_address(host)
    if literal is not None:
        return [literal]
    try:
        with anyio.fail_after(RESOLVE_TIMEOUT):
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise Unreachable(f"could not resolve {host}: {exc}") from None
    found: list[IPAddress] = []
    for info in infos:
        address = parse_address(str(info[4][0]).split("%")[0])
        if address is not None and address not in found:
            found.append(address)
    if not found:
        raise Unreachable(f"could not resolve {host}")
    return found


async def exchange(client: BufferedByteStream, upstream: BufferedByteStream, head: Head, target: Target,
                   framing: Framing) -> bool:
    """Forward one plain HTTP request and its response; whether the client connection may carry
    another request. The body goes up while the response comes down (Expect: 100-continue)."""
    await within(upstream.send(forwarded(head, target)))
    body_sent = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def send_body() -> None:
            try:
                await copy_body(client, upstream, framing)
                body_sent.set()
            except _CLOSED:
                tg.cancel_scope.cancel()

        tg.start_soon(send_body)
        response = await relay_response(client, upstream, head, target)
        if response is not None:
            with anyio.move_on_after(BODY_GRACE):  # its last send may not have returned yet
                await body_sent.wait()
        # Answered before the body was all sent: what the client sends next is not a request.
        complete = response is not None and (body_sent.is_set() or response.second == "101")
        if not complete:
            tg.cancel_scope.cancel()
    if response is None or not complete:
        return False
    if response.second == "101":  # switched protocols (a websocket): bytes both ways from now on
        await splice(client, upstream)
        return False
    return keeps_alive(head, response) and response_framing(response, head.first)[0] != "close"


async def relay_response(client: ByteStream, upstream: BufferedByteStream, head: Head, target: Target) -> Head | None:
    """Copy the response to a request (after any interim 1xx ones) to the client; None when the
    upstream failed, after a 502 if nothing was sent yet."""
    answered = False
    try:
        while True:
            response = await read_head(upstream, request=False, timeout=RESPONSE_TIMEOUT)
            await within(client.send(response.encode()))
            answered = True
            if not response.second.startswith("1") or response.second == "101":
                break
        if response.second != "101":
            await copy_body(upstream, client, response_framing(response, head.first))
        return response
    except _CLOSED as exc:
        if not answered:
            await answer(client, 502, f"{target.host}:{target.port} sent no valid response ({exc or 'it closed'})")
        return None


async def broker_tunnel(
    broker: Broker, client: BufferedByteStream, upstream: BufferedByteStream, target: Target, injected: list[Injection]
) -> None:
    """A CONNECT tunnel to a host that gets headers injected: TLS from the sandbox ends here (with
    a certificate from the server's CA), each request inside gets the headers, and goes on over
    the proxy's own verified TLS connection upstream."""
    try:
        with anyio.fail_after(IDLE_TIMEOUT):
            secure_upstream = await TLSStream.wrap(upstream, hostname=target.host, ssl_context=broker.upstream)
    except _CLOSED as exc:
        await answer(client, 502, f"TLS with {target.host}:{target.port} failed: {exc}")
        return
    await within(client.send(ESTABLISHED))
    with anyio.fail_after(IDLE_TIMEOUT):
        secure_client = await TLSStream.wrap(
            client, server_side=True, ssl_context=broker.authority.context_for(target.host)
        )
    inner, outer = BufferedByteStream(secure_client), BufferedByteStream(secure_upstream)
    try:
        await broker_requests(inner, outer, target, injected)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2), suppress(*_CLOSED):
            await inner.aclose()  # TLS ends with close_notify both ways
        with anyio.CancelScope(shield=True), anyio.move_on_after(2), suppress(*_CLOSED):
            await outer.aclose()


async def broker_requests(
    inner: BufferedByteStream, outer: BufferedByteStream, target: Target, injected: list[Injection]
) -> None:
    """The requests in a brokered tunnel, each with the injected headers (replacing any of the
    same name the sandbox sent)."""
    names = {i.header.lower() for i in injected}
    while True:
        try:
            head = await read_head(inner, request=True, timeout=IDLE_TIMEOUT)
            if not head.second.startswith("/"):
                raise BadMessage(400, "a request inside a tunnel names a path, not a URL")
            framing = request_framing(head)
        except BadMessage as exc:
            await answer(inner, exc.status, exc.reason)
            return
        except anyio.EndOfStream:
            return
        head.headers = [h for h in head.headers if h[0].lower() not in names] + [(i.header, i.value) for i in injected]
        if not await exchange(inner, outer, head, Target(target.host, target.port, head.second), framing):
            return


async def splice(a: ByteStream, b: ByteStream, idle: float = TUNNEL_IDLE) -> None:
    """Copy bytes both ways until both directions have ended, either side breaks, or nothing
    moved for ``idle`` seconds."""
    last = time.monotonic()
    ended = 0
    async with anyio.create_task_group() as tg:

        async def pump(source: ByteStream, sink: ByteStream) -> None:
            nonlocal last, ended
            try:
                while True:
                    data = await source.receive(CHUNK)
                    last = time.monotonic()
                    await sink.send(data)
            except anyio.EndOfStream:
                try:
                    await sink.send_eof()
                except NotImplementedError:  # TLS cannot close one direction: end both
                    tg.cancel_scope.cancel()
                except _CLOSED:
                    pass
            except _CLOSED:
                tg.cancel_scope.cancel()
            ended += 1
            if ended == 2:
                tg.cancel_scope.cancel()

        tg.start_soon(pump, a, b)
        tg.start_soon(pump, b, a)
        while time.monotonic() - last < idle:
            await anyio.sleep(last + idle - time.monotonic())
        tg.cancel_scope.cancel()


async def answer(stream: ByteStream, status: int, reason: str, *, phrase: str | None = None) -> None:
    """The proxy's own answer, then the connection closes; the reason is one line of the body
    and, for a denial, also the status line and a header (CONNECT clients show only those)."""
    reason = " ".join(reason.split())
    body = f"mcp-sandbox egress proxy: {reason}\n".encode()
    lines = [
        f"HTTP/1.1 {status} {phrase or _PHRASES[status]}", "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}", "Connection: close",
    ]
    if status == 403:
        lines.append(f"X-Mcp-Sandbox-Denied: {reason}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body
    with anyio.move_on_after(5), suppress(*_CLOSED):
        await stream.send(data)
