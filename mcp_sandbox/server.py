"""The MCP server: builds an MCPServer whose tools act on a SandboxManager."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

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


def build_server(manager: SandboxManager) -> MCPServer:
    client_log = ClientLog()
    server = MCPServer(
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
