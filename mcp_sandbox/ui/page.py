"""The live view's page: one self-contained HTML document (its scripts and styles inline), as an
MCP Apps host needs it (the host's iframe loads nothing else); /ui serves the same document."""

from __future__ import annotations

import functools
from importlib import resources

VIEW_URI = "ui://mcp-sandbox/view.html"

# ``_meta`` of the tools whose calls the view shows (MCP Apps: the host renders the view beside them).
TOOL_META = {"ui": {"resourceUri": VIEW_URI}}


def _static(name: str) -> str:
    return resources.files(__package__).joinpath(f"static/{name}").read_text(encoding="utf-8")


@functools.cache
def html() -> str:
    page = _static("view.html")
    for mark, name in (
        ("/*XTERM_CSS*/", "xterm.css"), ("/*VIEW_CSS*/", "view.css"),
        ("/*XTERM_JS*/", "xterm.js"), ("/*VIEW_JS*/", "view.js"),
    ):
        # Nothing in a script may end its <script> element early.
        page = page.replace(mark, _static(name).replace("</script", "<\\/script").replace("</style", "<\\/style"))
    return page
