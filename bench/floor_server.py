"""The floor for a tool call: an MCP server over stdio whose tools do nothing (``noop``) or no
more than run ``bash -c`` (``bash``, the floor of exec under load)."""

import asyncio

from mcp.server import MCPServer
from pydantic import BaseModel

server = MCPServer("floor")


class Ran(BaseModel):
    stdout: str
    exit_code: int


@server.tool()
def noop() -> str:
    """Return at once."""
    return "ok"


@server.tool()
async def bash(command: str) -> Ran:
    """Run ``bash -c command`` and return what it printed."""
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await process.communicate()
    return Ran(stdout=stdout.decode(), exit_code=process.returncode or 0)


if __name__ == "__main__":
    server.run()
