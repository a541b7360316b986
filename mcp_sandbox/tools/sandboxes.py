"""Tools: create_sandbox, sandbox_info, destroy."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult
from pydantic import Field

from ..errors import SandboxError
from ..manager import SandboxManager
from ..models import Destroyed, ExposedPort, Limits, NetworkInfo, SandboxCreated, SandboxInfo
from .common import CREATES, DESTRUCTIVE, READ_ONLY, Env, SandboxId, result, tool_errors, with_settings


def timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def register(server: MCPServer, manager: SandboxManager) -> None:
    @server.tool(annotations=CREATES)
    @with_settings(manager.settings)
    @tool_errors
    async def create_sandbox(
        env: Annotated[Env, Field(description="Environment variables for every command in the sandbox.")] = None,
        network: Annotated[
            bool, Field(description="Give the sandbox network access (only if the server was started with --network).")
        ] = False,
        allow_hosts: Annotated[
            list[str] | None,
            Field(
                description="Narrow the server's egress allow-list (--allow-host) for this sandbox: the hosts "
                "its proxy lets through (example.org, *.example.com, an IP address, each optionally :port), "
                "each within the server's list; [] allows none."
            ),
        ] = None,
    ) -> Annotated[CallToolResult, SandboxCreated]:
        """Create a new, empty sandbox and return its sandbox_id.

        Use it to keep separate pieces of work apart, or when the server has no default sandbox
        (HTTP). Pass the returned sandbox_id to every other tool. A sandbox is destroyed after
        {idle_timeout} without a tool call, and all of them when the server stops.
        """
        sandbox = await manager.create(env=env, network=network, allow_hosts=allow_hosts)
        model = SandboxCreated(
            sandbox_id=sandbox.id, backend=sandbox.backend, isolation=sandbox.isolation,
            workspace=sandbox.workspace, network=sandbox.network,
        )
        net = NetworkInfo.model_validate(manager.egress.info(sandbox))
        reach = {"full": "network on", "none": "network off"}.get(
            net.mode, f"network only to {', '.join(net.allow_hosts) or 'no host'}, through the proxy in HTTP_PROXY"
        )
        return result(
            model,
            f"Created sandbox {sandbox.id} ({sandbox.backend}, isolation {sandbox.isolation}); "
            f"workspace {sandbox.workspace}; {reach}.",
        )

    @server.tool(annotations=READ_ONLY)
    @tool_errors
    async def sandbox_info(sandbox_id: SandboxId = None) -> Annotated[CallToolResult, SandboxInfo]:
        """Describe a sandbox: backend, isolation, workspace path, its network (and the requests
        its egress proxy denied), its sessions, processes, code contexts and exposed ports, when
        it expires, and the limits in force."""
        sandbox = await manager.get(sandbox_id)
        sessions = await sandbox.list_sessions()
        processes = await sandbox.list_processes()
        contexts = await sandbox.list_code_contexts()
        settings = manager.settings
        model = SandboxInfo(
            sandbox_id=sandbox.id, backend=sandbox.backend, isolation=sandbox.isolation,
            workspace=sandbox.workspace, network=NetworkInfo.model_validate(manager.egress.info(sandbox)),
            created_at=timestamp(sandbox.created_at),
            idle_expires_at=timestamp(sandbox.last_used_at) + timedelta(seconds=settings.idle_timeout),
            sessions=[s.session_id for s in sessions.sessions],
            processes=[p.process_id for p in processes.processes],
            code_contexts=[c.context_id for c in contexts.contexts],
            limits=Limits(**manager.limits()),
            exposed_ports=[ExposedPort(port=d.port, url=d.url) for d in manager.ports.listed(sandbox.id)],
        )
        return result(model, model.model_dump_json(indent=2))

    @server.tool(annotations=DESTRUCTIVE)
    @tool_errors
    async def destroy(sandbox_id: SandboxId = None) -> Annotated[CallToolResult, Destroyed]:
        """Destroy a sandbox: kill every command, process and interpreter in it and delete its
        files. Irreversible. Without sandbox_id it destroys the default sandbox; the next call
        without sandbox_id then gets a fresh one."""
        if sandbox_id is None and manager.allows_default and manager.default_id is None:
            # Nothing to destroy: do not create the default sandbox only to remove it.
            raise SandboxError(
                "SANDBOX_NOT_FOUND", "the default sandbox does not exist yet; there is nothing to destroy"
            )
        target = (await manager.get(sandbox_id)).id  # the caller's own, or SANDBOX_NOT_FOUND
        await manager.destroy(target)
        return result(Destroyed(sandbox_id=target), f"Destroyed sandbox {target}.")
