"""Streamable HTTP transport: the SDK's app at /mcp behind an optional bearer-token check."""

from __future__ import annotations

import hmac
import ipaddress
import logging

from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import SandboxError
from .settings import Settings

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BearerAuth:
    """Answer 401 to any request without ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")],
                    }
                )
                await send({"type": "http.response.body", "body": b"missing or wrong bearer token\n"})
                return
        await self.app(scope, receive, send)


def check_exposure(settings: Settings) -> None:
    """Refuse to serve HTTP beyond this machine without a token."""
    if settings.transport == "http" and not settings.auth_token and not is_loopback(settings.host):
        raise SandboxError(
            "INVALID_ARGUMENT",
            f"refusing to listen on {settings.host} without --auth-token: anyone who can reach it could run "
            "commands; set a token (or MCP_SANDBOX_AUTH_TOKEN), or listen on 127.0.0.1",
        )


def build_app(server: MCPServer, settings: Settings) -> ASGIApp:
    check_exposure(settings)
    # The SDK turns on Host/Origin checks (DNS-rebinding protection) for loopback hosts itself.
    app: ASGIApp = server.streamable_http_app(streamable_http_path="/mcp", host=settings.host)
    if settings.auth_token:
        app = BearerAuth(app, settings.auth_token)
    return app


async def serve_http(server: MCPServer, settings: Settings) -> None:
    import uvicorn

    app = build_app(server, settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    logger.info("serving MCP over HTTP at http://%s:%d/mcp", settings.host, settings.port)
    await uvicorn.Server(config).serve()
