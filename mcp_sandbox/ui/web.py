"""The live view over HTTP: the page at /ui and the small JSON API it calls, /ui/api/*.

A browser cannot send a bearer header when it loads a page, so the page itself (static, no data)
loads without one, and carries the token in the URL's fragment (``/ui#token=...``), which never
reaches a server or a log. The page trades it once at ``/ui/api/login`` for a session cookie
(HttpOnly, SameSite=Strict, path /ui) and drops it from the address bar; on ``--ui-port`` the
token is one-time, and the next URL is printed when it is spent. Every other API call
needs that cookie or an ``Authorization: Bearer`` header, and names the tenant the token stands
for: the view sees only that tenant's sandboxes. Host and Origin are checked as for /mcp; API
calls must be JSON POSTs with an ``X-MCP-Sandbox-UI`` header, which no cross-site form can send.

The API calls the server's own MCP tools (an allow-list: what the page reads, and its terminal),
so the page gets the same results whether it runs here or inside an MCP Apps host.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskStatus
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp_types import CallToolResult, TextContent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .. import tenants
from ..errors import SandboxError
from ..manager import SandboxManager
from ..tenants import Tokens
from .page import html

logger = logging.getLogger(__name__)

COOKIE = "mcp_sandbox_ui"
SESSION_LIFETIME = 12 * 3600.0
MAX_SESSIONS = 256
BODY_MAX = 1 << 20  # an API call's JSON (key strokes, a path): small

# What the page may call: reading the sandbox, and its terminal. Not exec or destroy.
PAGE_TOOLS = frozenset({
    "sandbox_info", "list_processes", "get_process_logs", "list_files", "read_file",
    "start_process", "send_process_input", "get_process_screen", "resize_terminal",
})

# No script from elsewhere, no frames, no requests but to this server; images inline only.
PAGE_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}


class ViewSessions:
    """Who a request to the view acts for: its bearer token's tenant, or its cookie's session.

    With ``renew`` the token is one-time (``--ui-port``): a login spends it, ``renew()`` makes
    the next one, and only cookies name a tenant."""

    def __init__(self, tokens: Tokens | None, renew: Callable[[], Tokens] | None = None) -> None:
        self.tokens = tokens
        self.renew = renew
        self._sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()  # cookie to (tenant, expiry)

    def login(self, token: str) -> str | None:
        """A new session's cookie value for a known token, or None."""
        tenant = tenants.SINGLE if self.tokens is None else self.tokens.tenant(f"Bearer {token}".encode())
        if tenant is None:
            return None
        if self.renew is not None:
            self.tokens = self.renew()
        session = secrets.token_urlsafe(32)
        self._sessions[session] = (tenant, time.monotonic() + SESSION_LIFETIME)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def tenant(self, request: Request) -> str | None:
        if self.tokens is None:
            return tenants.SINGLE  # a server without tokens has one tenant, open to this machine
        header = request.headers.get("authorization")
        if header is not None and self.renew is None:
            return self.tokens.tenant(header.encode("latin-1", "replace"))
        found = self._sessions.get(request.cookies.get(COOKIE, ""))
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def view_app(
    server: MCPServer, manager: SandboxManager, tokens: Tokens | None,
    security: TransportSecuritySettings | None, renew: Callable[[], Tokens] | None = None,
) -> Starlette:
    """The /ui routes, as a Starlette app (mounted beside /mcp, or served alone on --ui-port, with
    one-time tokens that ``renew`` replaces)."""
    sessions = ViewSessions(tokens, renew)
    checks = TransportSecurityMiddleware(security)

    async def page(request: Request) -> Response:
        refused = await checks.validate_request(request)
        return refused or HTMLResponse(html(), headers=PAGE_HEADERS)

    async def api(request: Request) -> Response:
        refused = await checks.validate_request(request, is_post=True)
        if refused is not None:
            return refused
        if request.headers.get("x-mcp-sandbox-ui") != "1":
            return _error(403, "API calls need the header X-MCP-Sandbox-UI: 1")
        body = bytearray()
        async for chunk in request.stream():  # read no more than the limit, whatever is sent
            body += chunk
            if len(body) > BODY_MAX:
                return _error(413, "request too large")
        try:
            args = json.loads(bytes(body) or b"{}")
        except ValueError:
            return _error(400, "the body is not JSON")
        if not isinstance(args, dict):
            return _error(400, "the body must be a JSON object")
        action = request.path_params["action"]
        if action == "login":
            session = sessions.login(str(args.get("token", "")))
            if session is None:
                return _error(401, "wrong token")
            response = Response(status_code=204)
            response.set_cookie(
                COOKIE, session, max_age=int(SESSION_LIFETIME), path="/ui", httponly=True, samesite="strict"
            )
            return response
        tenant = sessions.tenant(request)
        if tenant is None:
            return _error(401, "missing or wrong token: open the URL with #token=... the server gave")
        reset = tenants.current.set(tenant)
        try:
            return await _act(server, manager, action, args)
        finally:
            tenants.current.reset(reset)

    return Starlette(routes=[
        Route("/ui", page, methods=["GET"]),
        Route("/ui/", page, methods=["GET"]),
        Route("/ui/api/{action:path}", api, methods=["POST"]),
    ])


async def _act(server: MCPServer, manager: SandboxManager, action: str, args: dict[str, Any]) -> Response:
    if action == "sandboxes":
        return JSONResponse({"sandboxes": manager.ids(), "default": manager.default_id})
    if action == "tools/call":
        name, arguments = args.get("name"), args.get("arguments") or {}
        if name not in PAGE_TOOLS or not isinstance(arguments, dict):
            return _error(403, f"the view may not call {name!r}")
        if name == "start_process" and arguments.get("tty") is not True:
            return _error(403, "the view starts only terminals (start_process with tty true)")
        try:
            result = await server.call_tool(str(name), arguments)
        except ToolError as exc:  # as an MCP client would get it
            result = CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)
        return JSONResponse(result.model_dump(mode="json", by_alias=True, exclude_none=True))
    if action == "resources/read":
        uri = str(args.get("uri", ""))
        if not (uri.startswith("sandbox://") and uri.endswith("/activity")):
            return _error(403, "the view reads only sandbox://<id>/activity")
        try:
            contents = await server.read_resource(uri)
        except ResourceError as exc:
            return _error(404, str(exc))
        return JSONResponse({"contents": [
            {"uri": uri, "mimeType": c.mime_type, "text": c.content} for c in contents  # type: ignore[union-attr]
        ]})
    return _error(404, f"no API call {action!r}")


def loopback_socket(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1 (port 0: any free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise SandboxError(
            "INVALID_ARGUMENT", f"--ui-port {port}: cannot listen on 127.0.0.1:{port} ({exc.strerror}); "
            "choose a free port, or 0 for any"
        ) from None
    sock.listen(64)
    sock.setblocking(False)
    return sock


async def serve_view(
    server: MCPServer, manager: SandboxManager, port: int, *,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """``--ui-port`` (stdio): serve the view alone on 127.0.0.1:PORT until cancelled (then it
    stops gracefully). Its URL holds a one-time token: opening it logs a browser in (a cookie)
    and makes the next URL. Each goes to stderr, not to the log an MCP client may receive; the
    first also to the caller, with ``task_status`` (``tg.start``)."""
    import uvicorn

    from ..http import rebinding_protection

    sock = loopback_socket(port)
    port = sock.getsockname()[1]

    def token_url(what: str) -> tuple[Tokens, str]:
        token = secrets.token_urlsafe(24)
        url = f"http://127.0.0.1:{port}/ui#token={token}"
        print(f"mcp-sandbox live view: {url} ({what})", file=sys.stderr, flush=True)
        return Tokens({token: tenants.SINGLE}), url

    first, url = token_url("works once; opening it prints the next")
    security = rebinding_protection("127.0.0.1", port)
    app = view_app(server, manager, first, security, lambda: token_url("the next one-time URL")[0])
    view = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    view.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]  # the server's signals stop it
    stopped = anyio.Event()

    async def run() -> None:
        try:
            with anyio.CancelScope(shield=True):  # stopped by should_exit, so that it closes its connections
                await view.serve(sockets=[sock])
        finally:
            sock.close()
            stopped.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        task_status.started(url)
        try:
            await stopped.wait()
        finally:
            view.should_exit = True
