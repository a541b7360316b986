"""The live view in the MCP server: the ``ui://`` resource (through the SDK's Apps extension),
the activity resource the page reads, and the middleware that records activity."""

from __future__ import annotations

import json

from mcp.server.apps import Apps
from mcp.server.mcpserver import MCPServer

from ..manager import SandboxManager
from ..tools.common import resource_errors, resource_sandbox
from .activity import ActivityRecorder
from .page import VIEW_URI, html


def apps() -> Apps:
    """The Apps extension with the view's resource, for ``MCPServer(extensions=[...])``."""
    extension = Apps()
    extension.add_html_resource(
        VIEW_URI, html(), name="live_view", title="Sandbox live view",
        description="Watch a sandbox live: recent commands and their output, processes and their logs, "
        "files (images shown), and a terminal on a tty process.",
        prefers_border=True,
    )
    return extension


def register(server: MCPServer, manager: SandboxManager) -> None:
    server.middleware.append(ActivityRecorder(manager.activity))

    @server.resource(
        "sandbox://{sandbox_id}/activity",
        name="sandbox_activity",
        title="Recent activity of a sandbox",
        description="JSON: the last commands, code and processes run in the sandbox through exec, run_code "
        "and start_process, with their output (cut); what the live view shows. sandbox_id 'default' names "
        "the default sandbox.",
        mime_type="application/json",
    )
    @resource_errors
    async def activity(sandbox_id: str) -> str:
        sandbox = await resource_sandbox(manager, sandbox_id)
        log = manager.activity.get(sandbox.id)
        return json.dumps({
            "sandbox_id": sandbox.id, "seq": log.seq if log else 0, "entries": list(log.entries) if log else [],
        })
