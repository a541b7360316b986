"""SandboxManager: owns every sandbox of a server, from creation to cleanup.

It is an async context manager: whatever it created is destroyed when it exits, whatever the
reason (stdin closed, a signal, an error), and each sandbox's channel reader runs in its task
group so nothing is left behind.
"""

from __future__ import annotations

import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from . import tenants
from .agent.api import Method, hello_problem
from .agent.names import env_problem
from .agent.protocol import line_limit
from .backends.base import AgentConfig, Backend, SandboxSpec
from .channel import AgentChannel
from .disk import Poller
from .egress.rules import AllowList
from .egress.sandboxes import EgressProxies
from .errors import SandboxError
from .models import Limits
from .ports import ExposedPorts
from .sandbox import Sandbox
from .settings import Settings
from .ui.activity import ActivityLog, note

logger = logging.getLogger(__name__)

AGENT_START_TIMEOUT = 60.0


def make_backend(settings: Settings) -> Backend:
    """The backend the settings ask for; ``auto`` is Docker when an engine answers quickly."""
    from .backends.local import LocalBackend

    if settings.backend != "local":
        from .backends import docker

        if settings.backend == "docker":
            return docker.DockerBackend(settings)
        client = docker.probe()  # it logs why, if there is no engine to use
        if client is not None:
            return docker.DockerBackend(settings, client)
    return LocalBackend(settings)


class SandboxManager:
    def __init__(self, settings: Settings | None = None, backend: Backend | None = None) -> None:
        self.settings = settings or Settings()
        self._backend = backend
        self.sandboxes: dict[str, Sandbox] = {}
        self._default_ids: dict[str, str] = {}  # tenant to its default sandbox
        self._default_lock = anyio.Lock()
        self._task_group: TaskGroup | None = None
        self._disk_poller = Poller()
        self._lifetime: AbstractAsyncContextManager[None] | None = None
        # Started ahead with the default spec (--warm-sandboxes), handed out by create().
        self._spares: list[Sandbox] = []
        self._spares_starting = 0
        self._stopping = False
        self.ports = ExposedPorts(self.settings)  # the sandboxes' exposed ports (expose_port)
        self.egress = EgressProxies(self.settings.allow_hosts, self.settings.inject_headers)
        # What each sandbox ran lately, for the live view (filled by ui.activity.ActivityRecorder).
        self.activity: dict[str, ActivityLog] = {}

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise RuntimeError("SandboxManager is not running; use 'async with SandboxManager(...)'")
        return self._backend

    @property
    def allows_default(self) -> bool:
        return self.settings.transport == "stdio" or self.settings.default_sandbox

    async def __aenter__(self) -> SandboxManager:
        self._lifetime = self._running()
        await self._lifetime.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._lifetime is not None
        return await self._lifetime.__aexit__(exc_type, exc, tb)

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        """The manager's life, as one block: its task group (channel readers, expiry, warm
        sandboxes) is entered and left here, and whatever it created is destroyed on the way
        out, also when starting fails halfway."""
        if self._backend is None:
            self._backend = await anyio.to_thread.run_sync(make_backend, self.settings)
        await self._backend.reap_orphans()
        async with self.ports, anyio.create_task_group() as task_group:
            self._task_group = task_group
            try:
                task_group.start_soon(self._expire_idle)
                task_group.start_soon(self._disk_poller.run)
                self._refill_spares()
                yield
            finally:
                with anyio.CancelScope(shield=True):
                    await self.destroy_all()
                task_group.cancel_scope.cancel()

    async def create(
        self, *, env: dict[str, str] | None = None, network: bool = False, allow_hosts: list[str] | None = None
    ) -> Sandbox:
        """A new sandbox for the tenant of the request being served; ``allow_hosts`` narrows the
        server's egress allow-list for it."""
        tenant = self._tenant()
        problem = env_problem(env)  # they become every session's first export lines
        if problem is not None:
            raise SandboxError("INVALID_ARGUMENT", problem)
        if len(self.sandboxes) >= self.settings.max_sandboxes:
            raise SandboxError(  # no count: other tenants' sandboxes are none of the caller's business
                "LIMIT_REACHED",
                "the server runs the most sandboxes it allows (--max-sandboxes); destroy one you no longer need",
            )
        network = bool(network and self.settings.network)
        allow = self.egress.allow_list(allow_hosts, network)
        if not env and not network:
            while self._spares:
                sandbox = self._spares.pop(0)
                if sandbox.channel.closed:
                    continue  # it died while it waited; its watcher cleans up
                sandbox.created_at = sandbox.last_used_at = time.time()
                sandbox.tenant = tenant  # warm ones are fresh: any tenant may have one
                self.egress.narrow(sandbox.id, allow)
                self.sandboxes[sandbox.id] = sandbox
                self._refill_spares()
                self._log_start("created", sandbox, f" for tenant {tenant} (a warm one)")
                return sandbox
        try:
            return await self._start(env, network, tenant=tenant, allow=allow)
        finally:
            self._refill_spares()

    def _refill_spares(self) -> None:
        """Start spares until --warm-sandboxes are ready or starting (within --max-sandboxes)."""
        if self._task_group is None or self._stopping:
            return
        room = self.settings.max_sandboxes - len(self.sandboxes)
        while len(self._spares) + self._spares_starting < min(self.settings.warm_sandboxes, room):
            self._spares_starting += 1
            self._task_group.start_soon(self._start_spare)

    async def _start_spare(self) -> None:
        try:
            sandbox = await self._start(None, False, tenant=None)
        except Exception as exc:  # no retry loop: the next create() tries again
            logger.warning("could not start a warm sandbox: %s", exc)
            return
        finally:
            self._spares_starting -= 1
        if self._stopping:  # destroy_all ran while it started
            await self._quietly(self._remove(sandbox), sandbox.id)
        else:
            self._spares.append(sandbox)

    async def _start(
        self, env: dict[str, str] | None, network: bool, *, tenant: str | None, allow: AllowList | None = None
    ) -> Sandbox:
        """Start a sandbox for a tenant and wait for its agent; registered at once unless it is a
        spare (tenant None)."""
        spare = tenant is None
        if self._task_group is None:
            raise RuntimeError("SandboxManager is not running; use 'async with SandboxManager(...)'")
        sandbox_id = "sbx_" + secrets.token_hex(8)
        # The proxy's variables come last: a sandbox's own HTTP_PROXY would lead nowhere.
        unisolated = getattr(self.backend, "isolation", "none") == "none"  # the proxy then runs on the host
        env = {**(env or {}), **self.egress.prepare(sandbox_id, allow, network, unisolated)}
        try:
            handle = await self.backend.start(
                SandboxSpec(sandbox_id=sandbox_id, env=env, network=network, tenant=tenant or ""),
                AgentConfig.from_settings(self.settings),
            )
        except BaseException:
            self.egress.discard(sandbox_id)
            raise
        channel = AgentChannel(handle.receive, handle.send, sandbox_id, line_limit(self.settings.max_output))
        sandbox = Sandbox(
            sandbox_id, self.backend.name, handle, channel, network, command_timeout=self.settings.command_timeout
        )
        sandbox.tenant = tenant or ""
        if not spare:
            self.sandboxes[sandbox_id] = sandbox
        self._task_group.start_soon(self._watch, sandbox)
        try:
            problem = hello_problem(await channel.request(Method.HELLO, {}, timeout=AGENT_START_TIMEOUT))
        except SandboxError as exc:
            await self._discard(sandbox)
            raise SandboxError(
                "BACKEND_UNAVAILABLE", f"the sandbox agent did not start ({exc}); check the server log"
            ) from exc
        except BaseException:  # cancelled (the server is stopping): nothing may be left behind
            await self._discard(sandbox)
            raise
        if problem is not None:
            await self._discard(sandbox)
            raise SandboxError("BACKEND_UNAVAILABLE", f"the sandbox agent cannot be used: {problem}; reinstall mcp-sandbox")
        try:
            await self.egress.start(sandbox)
        except BaseException:
            await self._discard(sandbox)
            raise
        self._log_start("started warm" if spare else "created", sandbox, "" if spare else f" for tenant {tenant}")
        return sandbox

    def _log_start(self, what: str, sandbox: Sandbox, how: str = "") -> None:
        # A warning without isolation: a client that asked for log messages learns it too.
        unisolated = sandbox.isolation == "none"
        logger.log(
            logging.WARNING if unisolated else logging.INFO, "%s sandbox %s%s (%s, isolation %s)%s", what,
            sandbox.id, how, sandbox.backend, sandbox.isolation,
            ": unisolated, its commands run on this host as the server's user, with its files and network"
            if unisolated else "",
        )

    async def _watch(self, sandbox: Sandbox) -> None:
        """Read the sandbox's channel, and remove the sandbox when the channel closes, whatever
        closed it. Nothing here may raise: this task group is the server's, and one sandbox must
        not end it."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read, sandbox)
            disk_watch = anyio.CancelScope()
            if sandbox.handle.disk is not None:
                tg.start_soon(self._watch_disk, sandbox, disk_watch)
            tg.start_soon(self._watch_handle, sandbox)
            await sandbox.channel.wait_closed()
            disk_watch.cancel()
            if self.sandboxes.get(sandbox.id) is sandbox:
                logger.warning(
                    "sandbox %s of tenant %s stopped unexpectedly; removing it", sandbox.id, sandbox.tenant,
                    extra=tenants.of(sandbox.tenant),
                )
                await self._quietly(self.destroy(sandbox.id), sandbox.id)
            elif sandbox in self._spares:
                logger.warning("warm sandbox %s stopped unexpectedly; removing it", sandbox.id)
                self._spares.remove(sandbox)
                await self._quietly(self._remove(sandbox), sandbox.id)
            # The reader runs on until the removal ends the sandbox's stream.

    async def _watch_handle(self, sandbox: Sandbox) -> None:
        """The backend's own reading (base.AgentHandle.watch), which ends with the sandbox: after
        the channel has closed, so that an agent's last words reach the log."""
        try:
            await sandbox.handle.watch()
        except Exception:
            logger.exception("sandbox %s: watching its backend failed", sandbox.id)

    async def _watch_disk(self, sandbox: Sandbox, scope: anyio.CancelScope) -> None:
        assert sandbox.handle.disk is not None
        with scope:
            await sandbox.handle.disk.watch(functools.partial(self._over_limit, sandbox), self._disk_poller)

    async def _read(self, sandbox: Sandbox) -> None:
        try:
            await sandbox.channel.run()
        except Exception:
            logger.exception("sandbox %s: reading its channel failed", sandbox.id)
            sandbox.channel.close("the server could not read the sandbox's agent, so the sandbox was stopped")

    async def _over_limit(self, sandbox: Sandbox, reason: str) -> None:
        """Stop everything in a sandbox over a limit; one that does not stop is destroyed."""
        logger.warning("sandbox %s: %s", sandbox.id, reason, extra=tenants.of(sandbox.tenant))
        try:
            with anyio.fail_after(10):
                await sandbox.stop_all(reason)
        except (SandboxError, TimeoutError):
            logger.warning("sandbox %s did not stop; destroying it", sandbox.id, extra=tenants.of(sandbox.tenant))
            await self._discard(sandbox)

    async def _expire_idle(self) -> None:
        """Destroy sandboxes that saw no tool call for --idle-timeout (a running call is use)."""
        idle = self.settings.idle_timeout
        while True:
            await anyio.sleep(min(5.0, idle / 4))
            cutoff = time.time() - idle
            for sandbox in list(self.sandboxes.values()):
                if sandbox.active_calls == 0 and sandbox.last_used_at < cutoff:
                    logger.info(
                        "sandbox %s of tenant %s was idle for %.0f s; destroying it", sandbox.id, sandbox.tenant, idle,
                        extra=tenants.of(sandbox.tenant),
                    )
                    await self._quietly(self.destroy(sandbox.id), sandbox.id)

    async def get(self, sandbox_id: str | None) -> Sandbox:
        """The sandbox a tool call names (or the default one); the call counts as its use."""
        sandbox = await self._find(sandbox_id)
        sandbox.last_used_at = time.time()
        note(sandbox)  # the live view's record learns which sandbox this call runs in
        return sandbox

    @property
    def warm_ids(self) -> list[str]:
        """The ids of the warm sandboxes ready to be handed out (--warm-sandboxes)."""
        return [sandbox.id for sandbox in self._spares]

    @property
    def default_id(self) -> str | None:
        """The requesting tenant's default sandbox's id, if it exists now (without creating it)."""
        default = self._default_ids.get(self._tenant())
        return default if default in self.sandboxes else None

    def ids(self) -> list[str]:
        """The ids of the requesting tenant's sandboxes."""
        tenant = self._tenant()
        return [sandbox.id for sandbox in self.sandboxes.values() if sandbox.tenant == tenant]

    def _tenant(self) -> str:
        tenant = tenants.current.get()
        if tenant is None:
            raise SandboxError("PERMISSION_DENIED", "this request carries no known bearer token")
        return tenant

    async def _find(self, sandbox_id: str | None) -> Sandbox:
        tenant = self._tenant()
        if sandbox_id is not None:
            sandbox = self.sandboxes.get(sandbox_id)
            if sandbox is None or sandbox.tenant != tenant:  # another's reads as no sandbox at all
                raise SandboxError(
                    "SANDBOX_NOT_FOUND",
                    f"no sandbox {sandbox_id!r} (it may have been destroyed or expired); "
                    f"sandboxes: {', '.join(self.ids()) or 'none'}; create one with create_sandbox",
                )
            return sandbox
        if not self.allows_default:
            raise SandboxError(
                "SANDBOX_REQUIRED",
                "this server has no default sandbox; call create_sandbox and pass its sandbox_id",
            )
        async with self._default_lock:
            if self._default_ids.get(tenant) not in self.sandboxes:
                self._default_ids[tenant] = (await self.create()).id
            return self.sandboxes[self._default_ids[tenant]]

    async def destroy(self, sandbox_id: str) -> None:
        """Destroy a sandbox, whoever's it is (a tool finds it with get() first)."""
        sandbox = self.sandboxes.pop(sandbox_id, None)
        if sandbox is None:
            raise SandboxError("SANDBOX_NOT_FOUND", f"no sandbox {sandbox_id!r}; it may already be destroyed")
        if self._default_ids.get(sandbox.tenant) == sandbox_id:
            del self._default_ids[sandbox.tenant]
        await self._remove(sandbox)
        logger.info("destroyed sandbox %s of tenant %s", sandbox_id, sandbox.tenant, extra=tenants.of(sandbox.tenant))
        self._refill_spares()  # room under --max-sandboxes again

    async def _discard(self, sandbox: Sandbox) -> None:
        """Remove a sandbox that did not finish starting."""
        if self.sandboxes.get(sandbox.id) is sandbox:
            await self.destroy(sandbox.id)
        else:  # a spare, or one its watcher already removed (removing again is harmless)
            await self._remove(sandbox)

    async def _remove(self, sandbox: Sandbox) -> None:
        with anyio.CancelScope(shield=True):
            await self.ports.close_sandbox(sandbox.id)
            self.egress.discard(sandbox.id)
            self.activity.pop(sandbox.id, None)  # also when it expired or died
            sandbox.channel.close("the sandbox was destroyed")
            await sandbox.handle.destroy()

    async def destroy_all(self) -> None:
        """Destroy every sandbox and warm spare; no spare starts afterwards (the server is stopping)."""
        self._stopping = True
        spares, self._spares = self._spares, []
        async with anyio.create_task_group() as tg:
            for sandbox_id in list(self.sandboxes):
                tg.start_soon(self._quietly, self.destroy(sandbox_id), sandbox_id)
            for spare in spares:
                tg.start_soon(self._quietly, self._remove(spare), spare.id)

    async def _quietly(self, removal: Awaitable[None], sandbox_id: str) -> None:
        try:
            await removal
        except Exception:  # one failure must not stop the others' cleanup
            logger.exception("failed to destroy sandbox %s", sandbox_id)

    def limits(self) -> dict[str, Any]:
        """The limits in force for this server's sandboxes: the settings it runs with (the Limits
        model's fields, named as in Settings), and what its backend enforces."""
        values = {name: getattr(self.settings, name) for name in Limits.model_fields if name != "enforced"}
        return {**values, "enforced": self.backend.enforced}
