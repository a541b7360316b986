"""Credential brokering: ``--inject-header HOST_PATTERN:Header-Name=VALUE`` (or ``=env:NAME``) adds
a header to the HTTPS requests a sandbox makes to matching allowed hosts, so that a token reaches
the API without entering the sandbox or the model's context.

For those hosts only, the proxy terminates TLS: the sandbox's client gets a certificate for the
host signed by this server's own CA (made at start, in memory; its key never leaves the server),
which the sandbox trusts through SSL_CERT_FILE and the like; the proxy makes its own verified TLS
connection upstream."""

from __future__ import annotations

import datetime
import os
import re
import secrets
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .rules import HostPattern, parse_address, parse_pattern

_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Where a sandbox finds the bundle of the CAs it trusts (its system's and the server's), and the
# variables that point clients at it.
CA_BUNDLE = "/tmp/.mcp-sandbox/egress-ca.pem"
CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO",
                "PIP_CERT")


CONTEXTS_KEPT = 256


@dataclass(frozen=True)
class Injection:
    pattern: HostPattern
    header: str
    value: str


def parse_injection(text: str, environ: Mapping[str, str] = os.environ) -> Injection:
    """``HOST_PATTERN:Header-Name=VALUE`` or ``...=env:NAME`` (read from the server's environment
    now); ValueError says what is wrong, never with the value."""
    left, equals, value = text.partition("=")
    where, colon, header = left.rpartition(":")
    if not equals or not colon or not _HEADER.match(header.strip()):
        raise ValueError(
            f"{left!r} is not HOST_PATTERN:Header-Name=VALUE (or =env:NAME), e.g. api.example.com:Authorization=env:TOKEN"
        )
    if value.startswith("env:"):
        name = value[4:]
        if name not in environ:
            raise ValueError(f"{left}: the variable {name!r} is not set in the server's environment")
        value = environ[name]
    if not value or any(c in value for c in "\r\n\0"):
        raise ValueError(f"{left}: the header value is empty or holds a line break")
    return Injection(parse_pattern(where), header.strip(), value)


class Authority:
    """This server's CA for the brokered hosts, and a server-side TLS context per host."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"mcp-sandbox egress CA {secrets.token_hex(4)}")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self._certificate = (
            x509.CertificateBuilder().subject_name(self._name).issuer_name(self._name)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(self._key, hashes.SHA256())
        )
        self.pem = self._certificate.public_bytes(serialization.Encoding.PEM)
        self._contexts: dict[str, ssl.SSLContext] = {}

    def context_for(self, host: str) -> ssl.SSLContext:
        """A TLS server context with a certificate for ``host`` (a name or an address)."""
        context = self._contexts.pop(host, None) or self._make_context(host)
        self._contexts[host] = context  # the most recently used last
        if len(self._contexts) > CONTEXTS_KEPT:  # a wildcard pattern matches names without end
            del self._contexts[next(iter(self._contexts))]
        return context

    def _make_context(self, host: str) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        address = parse_address(host)
        name: x509.GeneralName = x509.IPAddress(address) if address is not None else x509.DNSName(host)
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self._name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([name]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.set_alpn_protocols(["http/1.1"])  # the proxy reads HTTP/1.x only
        # load_cert_chain reads files only: a private file that lives for this call.
        with tempfile.NamedTemporaryFile("wb", suffix=".pem") as chain:
            chain.write(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ))
            chain.write(certificate.public_bytes(serialization.Encoding.PEM))
            chain.flush()
            context.load_cert_chain(chain.name)
        return context

    def bundle(self) -> bytes:
        """What a sandbox trusts: the CAs this host trusts, and this server's."""
        system = ssl.get_default_verify_paths().cafile
        try:
            with open(system or "", "rb") as f:
                trusted = f.read()
        except OSError:
            trusted = b""
        return trusted.rstrip(b"\n") + b"\n" + self.pem


class Broker:
    """The injections of a server, its CA, and how it verifies the upstream servers."""

    def __init__(self, injections: Sequence[Injection]) -> None:
        self.injections = tuple(injections)
        self.authority = Authority()
        self.upstream = ssl.create_default_context()  # the host's trust store, as for any client
        self.upstream.set_alpn_protocols(["http/1.1"])

    def for_target(self, host: str, port: int) -> list[Injection]:
        return [i for i in self.injections if i.pattern.matches(host, port)]

    def env(self) -> dict[str, str]:
        return {name: CA_BUNDLE for name in CA_VARIABLES}
