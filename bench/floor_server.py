"""The floor for a tool call: an MCP server over stdio whose one tool does nothing."""

from mcp.server import MCPServer

server = MCPServer("floor")


@server.tool()
def noop() -> str:
    """Return at once."""
    return "ok"


if __name__ == "__main__":
    server.run()
