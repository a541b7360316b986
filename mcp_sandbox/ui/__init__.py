"""The live view: one page that shows a sandbox as the model uses it (activity, processes, files,
a terminal), served as an MCP Apps ``ui://`` resource and by the server's own HTTP address.

activity.py records what ran; page.py assembles the page from static/; view.py registers it
with the MCP server; web.py serves it over HTTP (``/ui``, and ``--ui-port`` for stdio).
"""
