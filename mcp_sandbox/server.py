"""The MCP server: builds an MCPServer whose tools act on a SandboxManager."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, InputRequiredResult
from pydantic import ValidationError

from . import __version__, prompts
from .client_log import ClientLog
from .manager import SandboxManager
from .tools import code, files, ports, processes, sandboxes, sessions, terminals
from .ui import view

INSTRUCTIONS = """\
mcp-sandbox gives you a real Linux sandbox: a bash shell whose state persists, files, and more.
- exec runs a bash command; cd/export/functions persist in its session. Non-zero exit codes are
  results, not errors. Long output is cut, with the full text saved to a file in the sandbox.
- Use create_session for parallel, independent shells (each has its own cwd and env).
- For servers and other long-running commands use start_process, then get_process_logs
  (wait_for a line such as 'listening') and kill_process.
- For interactive programs (REPLs, editors, pagers, prompts) use start_process tty=true, type with
  send_process_input (data, keys like Enter, Up, C-c) and look with get_process_screen.
- read_file/write_file/list_files handle files (images come back as images).
- run_code runs Python or JavaScript in a persistent interpreter, like a notebook cell: variables
  persist, the last expression and matplotlib figures come back as results (plots as images).
- expose_port gives a URL for a port a server in the sandbox listens on, for the user's browser.
- Paths are relative to the session's cwd; the workspace directory is the place for your files.
- Errors read 'CODE: what was wrong; what to do'.
"""


class SandboxServer(MCPServer):
    """An MCPServer whose argument errors are coded like every other error the model reads."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if not isinstance(exc.__cause__, ValidationError):
                raise
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'arguments'}: {error['msg']}"
                for error in exc.__cause__.errors(include_url=False)[:5]
            )
            # From the ValidationError, so the server's log still names only the fields.
            raise ToolError(
                f"INVALID_ARGUMENT: {problems}; see the {name} tool's input schema"
            ) from exc.__cause__


def build_server(manager: SandboxManager) -> MCPServer:
    client_log = ClientLog()
    server = SandboxServer(
        "mcp-sandbox",
        title="mcp-sandbox",
        instructions=INSTRUCTIONS,
        version=__version__,
        log_level=manager.settings.log_level,
        lifespan=client_log.lifespan,
        extensions=[view.apps()],  # MCP Apps: the live view (ui/)
    )
    client_log.install(server)
    for module in (sandboxes, sessions, processes, terminals, files, code, ports):
        module.register(server, manager)
    prompts.register(server)
    view.register(server, manager)
    return server
