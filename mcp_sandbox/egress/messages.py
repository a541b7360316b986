"""HTTP/1.x as far as a forwarding proxy needs it: request and response heads, where a message's
body ends, and copying a body from one stream to another within bounds.

What a sandbox sends is bounded here (head size, chunk-line size, time without a byte), so a
hostile client ends only its own connection."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from collections.abc import Awaitable, Collection
from typing import Literal, TypeVar

import anyio
from anyio.abc import ByteSendStream
from anyio.streams.buffered import BufferedByteReceiveStream

from .rules import normalize_host, split_host_port

T = TypeVar("T")

MAX_HEAD = 32 * 1024  # request line and headers
MAX_CHUNK_LINE = 1024
CHUNK = 65536
# A client that sends nothing for this long while a request or its body is due is cut off.
IDLE_TIMEOUT = 60.0

_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_VERSION = re.compile(rb"^HTTP/1\.[01]$")
# Headers for the proxy, not the origin server.
_PROXY_HEADERS = {"proxy-connection", "proxy-authorization", "proxy-authenticate"}


class BadMessage(Exception):
    """A message the proxy cannot forward; ``status`` is the answer a client gets."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Head:
    """A request or response head: the start line's three parts and the header fields."""

    first: str
    second: str
    third: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name]

    def tokens(self, name: str) -> set[str]:
        """The comma-separated tokens of every field of this name, in lower case."""
        return {t.strip().lower() for value in self.get(name) for t in value.split(",") if t.strip()}

    def encode(self, drop: Collection[str] = ()) -> bytes:
        lines = [f"{self.first} {self.second} {self.third}"]
        lines += [f"{key}: {value}" for key, value in self.headers if key.lower() not in drop]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_head(raw: bytes, *, request: bool) -> Head:
    """A head without its final empty line; BadMessage(400) when it is not HTTP/1.x."""
    lines = raw.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) != 3 or not (_VERSION.match(parts[2]) if request else _VERSION.match(parts[0])):
        raise BadMessage(400, "the request line is not 'METHOD TARGET HTTP/1.x'" if request else "bad response")
    if request and not _TOKEN.match(parts[0]):
        raise BadMessage(400, "the request method is not a token")
    head = Head(parts[0].decode("latin-1"), parts[1].decode("latin-1"), parts[2].decode("latin-1"))
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):  # also a folded line, which starts with a space
            raise BadMessage(400, "a header line is not 'Name: value'")
        head.headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return head


@dataclass
class Target:
    host: str  # canonical (rules.normalize_host)
    port: int
    path: str  # origin-form, for a plain HTTP request


def request_target(head: Head) -> Target:
    """Where a proxy request goes: ``CONNECT host:port`` or ``GET http://host[:port]/path``."""
    if head.first == "CONNECT":
        raw, port = split_authority(head.second)
        if port is None:
            raise BadMessage(400, "CONNECT needs host:port")
        return Target(raw, port, "")
    scheme, sep, rest = head.second.partition("://")
    if not sep:
        raise BadMessage(400, "this is a proxy: the request target must be an absolute http:// URL")
    if scheme.lower() != "http":
        raise BadMessage(400, f"a plain request for a {scheme}:// URL; use CONNECT for https")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    if "@" in authority:
        raise BadMessage(400, "credentials in the URL are not forwarded")
    host, port = split_authority(authority)
    return Target(host, port or 80, path if path.startswith("/") else "/" + path)


def split_authority(text: str) -> tuple[str, int | None]:
    try:
        raw, port = split_host_port(text)
    except ValueError as exc:
        raise BadMessage(400, str(exc)) from None
    host = normalize_host(raw)
    if host is None:
        raise BadMessage(400, f"{raw!r} is not a host name or address")
    return host, port


Framing = tuple[Literal["none", "length", "chunked", "close"], int]


def request_framing(head: Head) -> Framing:
    """Where a request's body ends; a request whose framing is ambiguous is refused (smuggling)."""
    encodings = head.tokens("transfer-encoding")
    lengths = {v.strip() for v in head.get("content-length")}
    if encodings:
        if lengths:
            raise BadMessage(400, "both Transfer-Encoding and Content-Length")
        if encodings != {"chunked"}:
            raise BadMessage(400, "only the chunked transfer-encoding is supported")
        return "chunked", 0
    if lengths:
        return "length", content_length(lengths)
    return "none", 0


def response_framing(head: Head, method: str) -> Framing:
    status = int(head.second) if head.second.isdigit() else 0
    if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
        return "none", 0
    encodings = head.tokens("transfer-encoding")
    if encodings:
        return ("chunked", 0) if "chunked" in encodings else ("close", 0)
    lengths = {v.strip() for v in head.get("content-length")}
    return ("length", content_length(lengths)) if lengths else ("close", 0)


def content_length(values: set[str]) -> int:
    if len(values) != 1 or not next(iter(values)).isdigit():
        raise BadMessage(400, "a bad Content-Length")
    return int(next(iter(values)))


def keeps_alive(request: Head, response: Head) -> bool:
    if "close" in request.tokens("connection") or "close" in response.tokens("connection"):
        return False
    return request.third == "HTTP/1.1" or "keep-alive" in request.tokens("connection")


def forwarded(head: Head, target: Target) -> bytes:
    """A proxy request as the origin server gets it: origin-form target, no proxy headers."""
    return Head(head.first, target.path, head.third, head.headers).encode(drop=_PROXY_HEADERS)


async def read_head(source: BufferedByteReceiveStream, *, request: bool, timeout: float) -> Head:
    """The next head on a stream; anyio.EndOfStream when it closes cleanly before one begins."""
    with anyio.fail_after(timeout):
        try:
            raw = await source.receive_until(b"\r\n\r\n", MAX_HEAD)
        except anyio.IncompleteRead:
            raise anyio.EndOfStream from None
        except anyio.DelimiterNotFound:
            raise BadMessage(431, f"the head is over {MAX_HEAD} bytes") from None
    return parse_head(raw, request=request)


async def copy_body(source: BufferedByteReceiveStream, sink: ByteSendStream, framing: Framing) -> None:
    """Copy one message body as framed; a closed source before its end raises IncompleteRead."""
    kind, length = framing
    if kind == "length":
        await copy_exactly(source, sink, length)
    elif kind == "chunked":
        while True:
            line = await read_line(source, MAX_CHUNK_LINE)
            size = line.split(b";", 1)[0].strip()
            if not size or len(size) > 16 or any(c not in b"0123456789abcdefABCDEF" for c in size):
                raise BadMessage(400, "a bad chunk size line")
            await within(sink.send(size + b"\r\n"))  # extensions dropped: nothing ambiguous passes on
            if int(size, 16) == 0:
                break
            await copy_exactly(source, sink, int(size, 16))
            if await within(source.receive_exactly(2)) != b"\r\n":
                raise BadMessage(400, "a chunk does not end with CRLF")
            await within(sink.send(b"\r\n"))
        trailers = 0
        while True:  # trailer fields, up to an empty line
            line = await read_line(source, MAX_HEAD)
            trailers += len(line) + 2
            if trailers > MAX_HEAD:
                raise BadMessage(431, "the trailers are too large")
            await within(sink.send(line + b"\r\n"))
            if not line:
                break
    elif kind == "close":
        try:
            while True:
                await within(sink.send(await within(source.receive(CHUNK))))
        except anyio.EndOfStream:
            pass


async def copy_exactly(source: BufferedByteReceiveStream, sink: ByteSendStream, length: int) -> None:
    while length > 0:
        try:
            data = await within(source.receive(min(CHUNK, length)))
        except anyio.EndOfStream:
            raise anyio.IncompleteRead from None
        length -= len(data)
        await within(sink.send(data))


async def within(step: Awaitable[T]) -> T:
    """A read of a body: the peer gets IDLE_TIMEOUT for each."""
    with anyio.fail_after(IDLE_TIMEOUT):
        return await step


async def read_line(source: BufferedByteReceiveStream, limit: int) -> bytes:
    try:
        return await within(source.receive_until(b"\r\n", limit))
    except anyio.DelimiterNotFound:
        raise BadMessage(400, f"a chunk or trailer line over {limit} bytes") from None
