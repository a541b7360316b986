"""The egress allow-list across a server's sandboxes: which list a new sandbox gets, its proxy's
port and variables, the proxy's start over the sandbox's streams, and what sandbox_info shows."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from ..errors import SandboxError
from ..sandbox import Sandbox
from .broker import CA_BUNDLE, Broker, parse_injection
from .proxy import PROXY_PORT, Egress, proxy_env
from .rules import AllowList

# The kind of the streams the agent opens for connections to the proxy port (sandbox.listen).
STREAM_KIND = "egress"


def free_port() -> int:
    """A port free on the host's loopback now: without isolation the proxy listens on the host."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class EgressProxies:
    def __init__(self, patterns: Sequence[str], injections: Sequence[str] = ()) -> None:
        # None: no --allow-host, so sandboxes without full network have none at all.
        self.server = AllowList.parse(patterns) if patterns else None
        self.broker = Broker([parse_injection(text) for text in injections]) if injections else None
        self._proxies: dict[str, Egress] = {}

    def allow_list(self, allow_hosts: Sequence[str] | None, network: bool) -> AllowList | None:
        """The list of a sandbox that create_sandbox asked allow_hosts for (None: the server's);
        INVALID_ARGUMENT when that cannot be."""
        if allow_hosts is None:
            return None
        if self.server is None:
            raise SandboxError(
                "INVALID_ARGUMENT",
                "this server has no egress allow-list (--allow-host), and allow_hosts can only narrow it; "
                "leave allow_hosts out",
            )
        if network:
            raise SandboxError(
                "INVALID_ARGUMENT", "network=true gives full network access; allow_hosts is for the proxy of a "
                "sandbox without it: pass one of them",
            )
        try:
            return self.server.narrowed(allow_hosts)
        except ValueError as exc:
            raise SandboxError("INVALID_ARGUMENT", str(exc)) from None

    def prepare(self, sandbox_id: str, allow: AllowList | None, network: bool, unisolated: bool) -> dict[str, str]:
        """Plan the proxy of a sandbox about to start; the variables its commands get (none
        without a proxy). Its own network namespace has the fixed port free; without isolation
        the proxy listens on the host, on a port free there."""
        if self.server is None or network:
            return {}
        # Never a broker without isolation: code there runs as the server's user, and could read
        # the values from the server's memory.
        broker = None if unisolated else self.broker
        egress = Egress(
            allow if allow is not None else self.server, free_port() if unisolated else PROXY_PORT, broker=broker
        )
        self._proxies[sandbox_id] = egress
        return {**proxy_env(egress.port), **(broker.env() if broker else {})}

    async def start(self, sandbox: Sandbox) -> None:
        """Start the planned proxy in a sandbox whose agent is running."""
        egress = self._proxies.get(sandbox.id)
        if egress is None:
            return
        sandbox.on_stream(STREAM_KIND, egress.handle)
        try:
            if egress.broker is not None:
                await sandbox.write_file(CA_BUNDLE, egress.broker.authority.bundle())
            await sandbox.listen(STREAM_KIND, egress.port)
        except SandboxError as exc:
            raise SandboxError(
                "BACKEND_UNAVAILABLE", f"the egress proxy could not listen on port {egress.port} in the sandbox: "
                f"{exc.message}",
            ) from exc

    def narrow(self, sandbox_id: str, allow: AllowList | None) -> None:
        """Give a warm sandbox, started with the server's list, the list it is handed out with."""
        egress = self._proxies.get(sandbox_id)
        if egress is not None and allow is not None:
            egress.allow = allow

    def discard(self, sandbox_id: str) -> None:
        self._proxies.pop(sandbox_id, None)

    def info(self, sandbox: Sandbox) -> dict[str, Any]:
        """sandbox_info's network: {mode, allow_hosts, blocked}."""
        egress = self._proxies.get(sandbox.id)
        if egress is not None:
            return egress.info()
        return {"mode": "full" if sandbox.network else "none", "allow_hosts": [], "blocked": []}
