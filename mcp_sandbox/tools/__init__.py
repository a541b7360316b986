"""The MCP tools, one module per area of the README's "Tools" and "Code contexts" sections;
server.py registers them all."""
