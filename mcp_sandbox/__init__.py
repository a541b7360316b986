"""mcp-sandbox: sandboxes for LLMs over MCP (shell sessions, processes, files, code contexts)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Sandbox", "SandboxError", "SandboxManager", "Settings", "__version__"]

if TYPE_CHECKING:
    from .errors import SandboxError
    from .manager import SandboxManager
    from .sandbox import Sandbox
    from .settings import Settings


def __getattr__(name: str) -> Any:
    # Lazy, so that importing the package (e.g. for the agent's files) stays cheap.
    if name == "SandboxError":
        from .errors import SandboxError

        return SandboxError
    if name == "SandboxManager":
        from .manager import SandboxManager

        return SandboxManager
    if name == "Sandbox":
        from .sandbox import Sandbox

        return Sandbox
    if name == "Settings":
        from .settings import Settings

        return Settings
    raise AttributeError(name)
