"""Tools: expose_port, unexpose_port (the doors themselves are in ports.py)."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult
from pydantic import Field

from ..errors import SandboxError
from ..manager import SandboxManager
from ..models import PortExposed, PortUnexposed
from ..port_gate import TOKEN_TTL
from .common import DESTRUCTIVE, IDEMPOTENT, SandboxId, duration, result, tool_errors

Port = Annotated[int, Field(description="A TCP port a program in the sandbox listens on (127.0.0.1 or 0.0.0.0).")]


def _request_host(ctx: Context) -> str | None:
    """The Host header of the HTTP request being served (None on stdio)."""
    headers = getattr(ctx.request_context.request, "headers", None)
    host = headers.get("host") if headers is not None else None
    return host if isinstance(host, str) else None


def register(server: MCPServer, manager: SandboxManager) -> None:
    @server.tool(annotations=IDEMPOTENT)
    @tool_errors
    async def expose_port(port: Port, ctx: Context, sandbox_id: SandboxId = None) -> Annotated[CallToolResult, PortExposed]:
        """Make a port of the sandbox reachable from the user's machine: returns a URL whose every
        TCP connection (HTTP, websockets, any protocol) is carried to 127.0.0.1:port in the
        sandbox. Use it for a dev server, a notebook or an API the user should open in a browser.
        Exposing a port again returns the same URL; unexpose_port closes it."""
        sandbox = await manager.get(sandbox_id)
        door = await manager.ports.expose(
            sandbox.id, port, sandbox.open_stream, _request_host(ctx),
            alive=lambda: manager.sandboxes.get(sandbox.id) is sandbox,  # destroy forgets it before closing doors
        )
        model = PortExposed(port=port, url=door.url, host_port=door.host_port)
        notes = []
        if "?" in model.url:
            notes.append(
                f"The URL carries a token for this port only, valid for {duration(TOKEN_TTL)}; give it to the user "
                "as it is (a path goes before the '?')."
            )
        try:  # a probe, so that the model learns now that the server is not up yet
            probe = await sandbox.open_stream(port)
        except SandboxError:
            notes.append(
                f"Nothing listens on port {port} in the sandbox yet: start the server (on 127.0.0.1 or 0.0.0.0); "
                "the URL works as soon as it does."
            )
        else:
            await probe.aclose()
        text = f"Port {port} of sandbox {sandbox.id} is at {model.url}"
        return result(model, " ".join([text, *notes]))

    @server.tool(annotations=DESTRUCTIVE)
    @tool_errors
    async def unexpose_port(port: Port, sandbox_id: SandboxId = None) -> Annotated[CallToolResult, PortUnexposed]:
        """Close an exposed port: its URL stops working and its open connections are cut. The
        program in the sandbox keeps running."""
        sandbox = await manager.get(sandbox_id)
        await manager.ports.unexpose(sandbox.id, port)
        return result(PortUnexposed(port=port), f"Port {port} of sandbox {sandbox.id} is no longer exposed.")
