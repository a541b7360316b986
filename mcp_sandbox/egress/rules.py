"""The egress allow-list: host patterns, what they match, and which addresses stay out.

Patterns: ``example.org`` (that name), ``*.example.com`` (any name below it, not the name itself),
either with ``:port`` (only that port; without it any port), and literal addresses (``10.0.0.5``,
``10.0.0.5:8080``, ``[::1]:8080``, ``::1``). A name is never matched by resolving it: a pattern
names what a client asks for, and the address it resolves to is checked on its own (refusal()).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


def parse_address(text: str) -> IPAddress | None:
    """The IP address a host string is (IPv4-mapped IPv6 read as IPv4), or None for a name."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def normalize_host(text: str) -> str | None:
    """A host as clients write it, in one canonical form (lower case, no trailing dot, an
    address in its compressed form), or None when it is neither a DNS name nor an address."""
    host = text.strip().lower()
    if host.startswith("[") and host.endswith("]"):  # only an IPv6 address goes in brackets
        address = parse_address(host[1:-1]) if ":" in host else None
        return None if address is None else str(address)
    address = parse_address(host)
    if address is not None:
        return str(address)
    host = host[:-1] if host.endswith(".") else host
    if not host or len(host) > 253 or not all(_LABEL.match(label) for label in host.split(".")):
        return None
    return host


def split_host_port(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address; raises ValueError."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r} opens '[' without closing it")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r} has text after ']' that is not ':port'")
        return host, parse_port(rest[1:], text) if rest else None
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, parse_port(port, text)
    return text, None  # a name, or a bare IPv6 address (which has several colons)


def parse_port(text: str, whole: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{whole!r} has port {text!r}; a port is a number from 1 to 65535")
    return int(text)


@dataclass(frozen=True)
class HostPattern:
    text: str  # as the user wrote it
    host: str  # canonical; for a wildcard, the domain below which it matches
    wildcard: bool
    port: int | None  # None: any port

    @property
    def address(self) -> IPAddress | None:
        return None if self.wildcard else parse_address(self.host)

    def matches(self, host: str, port: int) -> bool:
        """Whether a canonical host and port (see normalize_host) are allowed by this pattern."""
        if self.port is not None and port != self.port:
            return False
        if self.wildcard:
            return host.endswith("." + self.host) and parse_address(host) is None
        return host == self.host

    def within(self, other: HostPattern) -> bool:
        """Whether everything this pattern allows, ``other`` allows too."""
        if other.port is not None and self.port != other.port:
            return False
        if not other.wildcard:
            return not self.wildcard and self.host == other.host
        return self.host.endswith("." + other.host) or (self.wildcard and self.host == other.host)


def parse_pattern(text: str) -> HostPattern:
    """One allow-list pattern; ValueError says what is wrong with it."""
    raw, port = split_host_port(text)
    wildcard = raw.startswith("*.")
    host = normalize_host(raw[2:] if wildcard else raw)
    if host is None:
        raise ValueError(
            f"{text!r} is not a host pattern; use a name (example.org), *.domain (*.example.com), "
            "an IP address, each optionally with :port"
        )
    if wildcard and parse_address(host) is not None:
        raise ValueError(f"{text!r}: a wildcard goes with a domain name, not an address")
    return HostPattern(text.strip(), host, wildcard, port)


# Destinations inside some network rather than on the internet. Not Python's is_private or
# is_global: they also cover documentation ranges, which some networks route to real hosts.
_REFUSED = [
    (kind, ipaddress.ip_network(net))
    for kind, nets in {
        "a loopback": ["127.0.0.0/8", "::1/128"],
        "a private": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "fec0::/10"],
        "a link-local": ["169.254.0.0/16", "fe80::/10"],
        "a multicast": ["224.0.0.0/4", "ff00::/8"],
        "an unspecified": ["0.0.0.0/8", "::/128"],
        "a reserved": ["240.0.0.0/4"],
    }.items()
    for net in nets
]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def refusal(address: IPAddress) -> str | None:
    """Why a destination address is refused unless a pattern names it literally, or None."""
    if address in _NAT64:  # an IPv4 address reached through NAT64 is judged as itself
        address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    for kind, network in _REFUSED:
        if address in network:
            return f"{kind} address"
    return None


class AllowList:
    def __init__(self, patterns: Iterable[HostPattern]) -> None:
        self.patterns: tuple[HostPattern, ...] = tuple(patterns)

    @classmethod
    def parse(cls, texts: Iterable[str]) -> AllowList:
        return cls(parse_pattern(text) for text in texts)

    def __str__(self) -> str:
        return ", ".join(p.text for p in self.patterns) or "nothing"

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.patterns]

    def allows(self, host: str, port: int) -> bool:
        return any(p.matches(host, port) for p in self.patterns)

    def names(self, address: IPAddress, port: int) -> bool:
        """Whether a pattern names this address literally (for this port)."""
        return any(p.address == address and p.port in (None, port) for p in self.patterns)

    def narrowed(self, texts: Sequence[str]) -> AllowList:
        """A sandbox's own list: every pattern must lie within this (the server's) list; ValueError
        names the first that does not."""
        narrower = AllowList.parse(texts)
        for pattern in narrower.patterns:
            if not any(pattern.within(p) for p in self.patterns):
                raise ValueError(
                    f"{pattern.text!r} is not within the server's allow-list ({self}); allow_hosts can only narrow it"
                )
        return narrower
