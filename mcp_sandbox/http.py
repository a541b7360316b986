"""Streamable HTTP transport: the SDK's app at /mcp behind an optional bearer-token check, each
token a tenant (tenants.py), with Host/Origin checks on every loopback address; the live view at
/ui (ui/web.py), behind the same tokens and checks."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import anyio
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from . import tenants
from .errors import SandboxError
from .manager import SandboxManager
from .settings import Settings
from .tenants import Tokens, load_tokens

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def rebinding_protection(host: str, port: int) -> TransportSecuritySettings | None:
    """Host and Origin checks against DNS rebinding, for any loopback address (all of 127.0.0.0/8
    and ::1): a browser may send a request there for a page of any site whose name resolves to it.
    Allowed: the address listened on, and localhost, with the port. None off loopback (the SDK's
    default: no checks), where the bearer token guards the server."""
    if not is_loopback(host):
        return None
    names = {"localhost", f"[{host.strip('[]')}]" if ":" in host else host}
    if host == "localhost":
        names |= {"127.0.0.1", "[::1]"}
    ports = ["*"] if port == 0 else [str(port)]  # port 0: chosen at start, not known here
    hosts = [f"{name}:{p}" for name in sorted(names) for p in ports]
    if port == 80:  # the default port may be left out
        hosts += sorted(names)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=[f"http://{h}" for h in hosts],
    )


class TenantMiddleware:
    """Serve each MCP message as the tenant its bearer token names (an MCP middleware: it wraps
    the tool or resource handler, in its task)."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        headers = getattr(ctx.request, "headers", None)
        given = headers.get("authorization") if headers is not None else None
        # No header (no HTTP request behind the message) means no tenant: the manager refuses.
        tenant = self.tokens.tenant(given.encode("latin-1")) if isinstance(given, str) else None
        reset = tenants.current.set(tenant)
        try:
            return await call_next(ctx)
        finally:
            tenants.current.reset(reset)


class BearerAuth:
    """Answer 401 to any request without ``Authorization: Bearer <token>`` of a known token."""

    def __init__(self, app: ASGIApp, tokens: Tokens) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if self.tokens.tenant(given) is None:
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
    if (
        settings.transport == "http" and not settings.auth_token and not settings.auth_tokens_file
        and not is_loopback(settings.host)
    ):
        raise SandboxError(
            "INVALID_ARGUMENT",
            f"refusing to listen on {settings.host} without --auth-token or --auth-tokens-file: anyone who "
            "can reach it could run commands; set a token (or MCP_SANDBOX_AUTH_TOKEN), or listen on 127.0.0.1",
        )


class ViewRouter:
    """/ui and below to the live view (ui/web.py: it checks tokens itself, since a browser
    loading a page sends no bearer header); everything else to ``app``."""

    def __init__(self, app: ASGIApp, view: ASGIApp) -> None:
        self.app = app
        self.view = view

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        target = self.view if path == "/ui" or path.startswith("/ui/") else self.app
        await target(scope, receive, send)


def build_app(
    server: MCPServer, settings: Settings, tokens: Tokens | None = None, manager: SandboxManager | None = None
) -> ASGIApp:
    """The MCP app at /mcp, and with ``manager`` the live view at /ui."""
    check_exposure(settings)
    tokens = tokens or load_tokens(settings)
    security = rebinding_protection(settings.host, settings.port)
    app: ASGIApp = server.streamable_http_app(streamable_http_path="/mcp", host=settings.host, transport_security=security)
    if tokens is not None:
        server.middleware.append(TenantMiddleware(tokens))
        app = BearerAuth(app, tokens)
    if manager is not None:
        from .ui.web import view_app

        app = ViewRouter(app, view_app(server, manager, tokens, security))
    return app


async def serve_http(
    server: MCPServer, settings: Settings, tokens: Tokens | None = None, stop: anyio.Event | None = None,
    manager: SandboxManager | None = None,
) -> None:
    """Serve until uvicorn stops (it stops on SIGINT and SIGTERM itself), or ``stop`` is set."""
    import uvicorn

    app = build_app(server, settings, tokens, manager)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    logger.info("serving MCP over HTTP at http://%s:%d/mcp", settings.host, settings.port)
    if manager is not None:
        logger.info("live view at http://%s:%d/ui%s", settings.host, settings.port, "#token=<token>" if tokens else "")
    http = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:

        async def stop_when_asked() -> None:
            if stop is not None:
                await stop.wait()
                http.should_exit = True  # a graceful stop: open requests end first

        tg.start_soon(stop_when_asked)
        await http.serve()
        tg.cancel_scope.cancel()
