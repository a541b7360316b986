"""The gate of an exposed port on a server with auth: signed, expiring URL tokens, the cookie made
from them, and the HTTP/1.x request framing that lets the gate strip both before a request enters
the sandbox.

A token is ``<expires>.<mac>``: an HMAC-SHA256, with a secret made when the server starts, of the
door it opens (sandbox id, sandbox port, and a nonce drawn when the port was exposed) and its
expiry. It opens that door only: not another sandbox's, not another port's, and not the same port
after unexpose_port. The first request of a connection must carry a valid token, in the query
(``?mcp_sandbox_token=``) or in the door's cookie (``mcp_sandbox_port_<host port>``); a query token
becomes that cookie, set on the first response, so that the page's later requests and websockets
pass too. Browsers send a host's cookies to all of its ports, so every cookie of this kind (another
door's, maybe another tenant's) is removed from every request before it reaches the sandbox.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from anyio import EndOfStream
from anyio.abc import ByteReceiveStream, ByteStream

from .agent.api import STREAM_CHUNK

CHUNK = STREAM_CHUNK  # what one read takes: a stream's data message at most, not split again
TOKEN_PARAM = b"mcp_sandbox_token"
COOKIE_PREFIX = b"mcp_sandbox_port_"
TOKEN_TTL = 24 * 3600  # seconds a URL (and the cookie made from it) opens its door
MAX_HEAD = 32 * 1024  # bytes of a request line and headers; browsers send a few KB
HEAD_TIMEOUT = 30.0  # seconds a new connection may take to send its first request's head
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_STRAY = re.compile(rb"\r(?!\n)|(?<!\r)\n|\x00")  # a CR or LF alone, or NUL: servers split lines differently
_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) (HTTP/1\.[01])")


class GateError(Exception):
    """A request the gate cannot pass on: the HTTP status to answer, and why."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class DoorKey:
    """What a token opens: one exposure of one sandbox port."""

    sandbox_id: str
    port: int
    nonce: str


class Signer:
    """Makes and checks the tokens of one server (its secret lives and dies with the server)."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)

    def _mac(self, key: DoorKey, expires: int) -> str:
        message = f"{key.sandbox_id}\n{key.port}\n{key.nonce}\n{expires}".encode()
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, key: DoorKey, expires: int) -> str:
        return f"{expires}.{self._mac(key, expires)}"

    def valid(self, key: DoorKey, token: bytes | None) -> bool:
        if not token:
            return False
        expires, _, mac = token.partition(b".")
        if not _DIGITS.fullmatch(expires) or int(expires) <= time.time():
            return False
        return hmac.compare_digest(mac, self._mac(key, int(expires)).encode())


def cookie_name(host_port: int) -> bytes:
    return COOKIE_PREFIX + str(host_port).encode()


def set_cookie_line(host_port: int, token: bytes) -> bytes:
    """The header that turns a query token into the door's cookie, for as long as the token lives.
    HttpOnly: the sandbox's pages cannot read it; Lax: a link from elsewhere that redirects within
    the app keeps it (Strict would drop it after the first redirect)."""
    expires = int(token.partition(b".")[0])
    age = max(0, expires - int(time.time()))
    return b"Set-Cookie: %s=%s; Max-Age=%d; Path=/; HttpOnly; SameSite=Lax\r\n" % (cookie_name(host_port), token, age)


@dataclass
class Head:
    """A request head, rewritten for the sandbox, and what the gate learned from it."""

    data: bytes  # the head to send on: without our token parameter and cookies
    query_token: bytes | None
    cookie_token: bytes | None
    body: int | None  # bytes of body that follow (Content-Length); None: chunked
    raw_after: bool  # an upgrade (websocket) or CONNECT: bytes after this request are not HTTP
    foreign: bool  # a browser says a page of another origin sent it, and it is no navigation

    def check_origin(self) -> None:
        """Refuse what a page of another origin sent without the token. Browsers send a host's
        cookies to all its ports, and count them as one site: without this, a page served by
        another door (another sandbox's, maybe another tenant's) could fetch from this one, or
        open its websockets, as the user."""
        if self.foreign:
            raise GateError(
                "403 Forbidden",
                "a page of another origin may not use this port's cookie; open the port's own link instead",
            )


def _strip_token(target: bytes) -> tuple[bytes, bytes | None]:
    path, mark, query = target.partition(b"?")
    if not mark:
        return target, None
    kept, token = [], None
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        if name == TOKEN_PARAM:
            token = value
        else:
            kept.append(pair)
    return (path + b"?" + b"&".join(kept) if kept else path), token


def _strip_cookies(value: bytes, own: bytes) -> tuple[bytes, bytes | None]:
    kept, token = [], None
    for pair in value.split(b";"):
        name, _, cookie = pair.strip().partition(b"=")
        if name == own:
            token = cookie
        elif not name.startswith(COOKIE_PREFIX):
            kept.append(pair.strip())
    return b"; ".join(kept), token


def parse_head(raw: bytes, host_port: int) -> Head:
    """Read a request head (ending in an empty line) and rewrite it for the sandbox. Ambiguous
    framing is refused rather than guessed: a request the gate and the server split differently
    could carry cookies past it."""
    if _STRAY.search(raw[:-4]):
        raise GateError("400 Bad Request", "a request head may end its lines with CRLF only, and hold no NUL")
    lines = raw[:-4].split(b"\r\n")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        raise GateError("400 Bad Request", "this port speaks HTTP/1.x; the request line was not understood")
    method, target, version = match.groups()
    target, query_token = _strip_token(target)
    out = [b"%s %s %s" % (method, target, version)]
    cookie_token = None
    lengths, chunked, upgrade, connection_upgrade = set(), False, False, False
    seen: dict[bytes, bytes] = {}  # the headers the origin check reads
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or line[:1] in b" \t":
            raise GateError("400 Bad Request", "a header line was not 'Name: value'")
        lower, value = name.lower(), value.strip()
        if lower == b"cookie":
            value, token = _strip_cookies(value, cookie_name(host_port))
            cookie_token = token or cookie_token
            if not value:
                continue
            line = b"Cookie: " + value
        elif lower == b"content-length":
            if not _DIGITS.fullmatch(value):
                raise GateError("400 Bad Request", "Content-Length is not a number")
            lengths.add(int(value))
        elif lower == b"transfer-encoding":
            if value.lower().rsplit(b",", 1)[-1].strip() != b"chunked":
                raise GateError("400 Bad Request", "a Transfer-Encoding must end in chunked")
            chunked = True
        elif lower == b"upgrade":
            upgrade = True
        elif lower == b"connection":
            connection_upgrade = b"upgrade" in [t.strip() for t in value.lower().split(b",")]
        if lower in (b"host", b"origin", b"sec-fetch-site", b"sec-fetch-mode"):
            seen[lower] = value
        out.append(line)
    if len(lengths) > 1 or (lengths and chunked):
        raise GateError("400 Bad Request", "the request's length is given twice")
    return Head(
        data=b"\r\n".join(out) + b"\r\n\r\n",
        query_token=query_token,
        cookie_token=cookie_token,
        body=None if chunked else (lengths.pop() if lengths else 0),
        raw_after=(upgrade and connection_upgrade) or method == b"CONNECT",
        foreign=_foreign(seen),
    )


def _foreign(headers: dict[bytes, bytes]) -> bool:
    """Whether a browser marked the request as sent by a page of another origin (its fetch
    metadata, or an Origin other than the host it asked), other than a navigation to a page."""
    site, mode = headers.get(b"sec-fetch-site"), headers.get(b"sec-fetch-mode")
    if site in (b"same-site", b"cross-site") and mode != b"navigate":
        return True
    origin = headers.get(b"origin")
    return origin is not None and origin != b"http://" + headers.get(b"host", b"")


class Buffered:
    """A byte stream read through a buffer: heads up to a separator, bodies as they come."""

    def __init__(self, stream: ByteReceiveStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def until(self, separator: bytes, limit: int) -> bytes:
        """The bytes up to and with ``separator``; EndOfStream at the end, GateError past limit."""
        start = 0
        while (end := self.buffer.find(separator, start)) < 0 and len(self.buffer) <= limit:
            start = max(0, len(self.buffer) - len(separator) + 1)
            self.buffer += await self.stream.receive(CHUNK)
        end += len(separator)
        if end <= 0 or end > limit:
            raise GateError("431 Request Header Fields Too Large", f"a request head is over {limit} bytes")
        data = bytes(self.buffer[:end])
        del self.buffer[:end]
        return data

    async def some(self, most: int) -> bytes:
        if not self.buffer:
            return await self.stream.receive(min(most, CHUNK))
        data = bytes(self.buffer[:most])
        del self.buffer[:most]
        return data


async def _exactly(reader: Buffered, dst: ByteStream, size: int) -> None:
    while size > 0:
        data = await reader.some(size)
        size -= len(data)
        await dst.send(data)


async def _chunks(reader: Buffered, dst: ByteStream) -> None:
    while True:
        line = await _line(reader, 4096)
        size = line[:-2].split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size):
            raise GateError("400 Bad Request", "a chunk size was not a hexadecimal number")
        await dst.send(line)
        if int(size, 16) == 0:
            while (trailer := await _line(reader, MAX_HEAD)) != b"\r\n":
                await dst.send(trailer)
            await dst.send(trailer)
            return
        await _exactly(reader, dst, int(size, 16))
        if await reader.until(b"\r\n", 2) != b"\r\n":
            raise GateError("400 Bad Request", "a chunk did not end with CRLF")
        await dst.send(b"\r\n")


async def _line(reader: Buffered, limit: int) -> bytes:
    line = await reader.until(b"\r\n", limit)
    if _STRAY.search(line[:-2]):
        raise GateError("400 Bad Request", "a chunk line may end with CRLF only, and hold no NUL")
    return line


async def forward_requests(reader: Buffered, dst: ByteStream, first: Head, host_port: int) -> None:
    """Send the first request's head, then its body and every later request, each head rewritten,
    until the client's EOF (passed on) or an upgrade (after which bytes go on untouched)."""
    head = first
    try:
        while True:
            await dst.send(head.data)
            if head.body is None:
                await _chunks(reader, dst)
            else:
                await _exactly(reader, dst, head.body)
            if head.raw_after:
                if reader.buffer:
                    await dst.send(bytes(reader.buffer))
                    reader.buffer.clear()
                while True:
                    await dst.send(await reader.stream.receive(CHUNK))
            head = parse_head(await reader.until(b"\r\n\r\n", MAX_HEAD), host_port)
            head.check_origin()  # a browser may reuse the connection for another page's request
    except EndOfStream:
        if reader.buffer:  # a cut request: the server gets what came and the EOF
            await dst.send(bytes(reader.buffer))
        await dst.send_eof()


async def copy_with_cookie(src: ByteStream, dst: ByteStream, cookie: bytes) -> None:
    """Copy the sandbox's answers to the client, the cookie added after the first status line."""
    pending = b""  # the first answer's start, until its status line is whole
    try:
        while b"\r\n" not in pending and len(pending) < MAX_HEAD:
            pending += await src.receive(CHUNK)
        if pending.startswith(b"HTTP/1.") and b"\r\n" in pending:
            line_end = pending.index(b"\r\n") + 2
            pending = pending[:line_end] + cookie + pending[line_end:]
        data, pending = pending, b""
        await dst.send(data)
        while True:
            await dst.send(await src.receive(CHUNK))
    except EndOfStream:
        if pending:
            await dst.send(pending)
        await dst.send_eof()


def answer(status: str, text: str) -> bytes:
    """A whole HTTP response that ends the connection: the gate's refusals."""
    body = (text + "\n").encode()
    return (
        b"HTTP/1.1 %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
        b"Connection: close\r\nCache-Control: no-store\r\n\r\n%s" % (status.encode(), len(body), body)
    )
