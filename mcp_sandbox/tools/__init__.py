"""The MCP tools, one module per area of TOOLS.md; server.py registers them all."""
