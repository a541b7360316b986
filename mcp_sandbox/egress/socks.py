"""SOCKS5 on the proxy's port (RFC 1928): CONNECT only, without authentication; the name goes
to the server, which checks and resolves it as for HTTP. A connection whose first byte is 5 speaks
it (an HTTP request line never starts with that byte)."""

from __future__ import annotations

import ipaddress

import anyio
from anyio.streams.buffered import BufferedByteStream

from .rules import normalize_host

VERSION = b"\x05"
NO_AUTHENTICATION = 0
# Reply codes.
SUCCEEDED, NOT_ALLOWED, HOST_UNREACHABLE, COMMAND_NOT_SUPPORTED, ADDRESS_NOT_SUPPORTED = 0, 2, 4, 7, 8


class SocksError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def reply(code: int) -> bytes:
    return bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])  # no bound address to tell


async def read_request(client: BufferedByteStream, timeout: float) -> tuple[str, int]:
    """The host (canonical) and port a SOCKS5 client asks to CONNECT to, after the greeting (its
    version byte already read); SocksError with the reply it gets otherwise (already answered when
    no method fits)."""
    with anyio.fail_after(timeout):
        count = (await client.receive_exactly(1))[0]
        if NO_AUTHENTICATION not in await client.receive_exactly(count):
            await client.send(b"\x05\xff")
            raise SocksError(-1)
        await client.send(bytes([5, NO_AUTHENTICATION]))
        _, command, _, kind = await client.receive_exactly(4)
        if kind == 1:
            host = str(ipaddress.IPv4Address(await client.receive_exactly(4)))
        elif kind == 4:
            host = str(ipaddress.IPv6Address(await client.receive_exactly(16)))
        elif kind == 3:
            host = (await client.receive_exactly((await client.receive_exactly(1))[0])).decode("latin-1")
        else:
            raise SocksError(ADDRESS_NOT_SUPPORTED)
        port = int.from_bytes(await client.receive_exactly(2), "big")
    if command != 1:
        raise SocksError(COMMAND_NOT_SUPPORTED)
    canonical = normalize_host(host)
    if canonical is None or port == 0:
        raise SocksError(HOST_UNREACHABLE)
    return canonical, port
