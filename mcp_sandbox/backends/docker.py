"""The Docker backend: one hardened container per sandbox, the agent as its main process.

A sandbox's container is created with its stdin, stdout and stderr attached before it starts, and
the agent package is sent down its stdin as the first thing (no ``put_archive``, which costs a
sizeable part of a start, and a remote engine works too); the agent then runs as the container's
main process (pid 1) and one connection is the whole channel, so an ``exec`` is one round trip on
an open connection, never a ``docker exec``: a unix socket past the engine where the engine is
local (docker_channel.py), else that attached socket. The container has ``StdinOnce`` set: when
the server's end of the channel closes, even because the server was killed, the agent reads its
end (on the socket, or the engine closes its stdin), exits with everything it started, and the
engine removes the container (``auto_remove``). Every container is labelled with the server
instance that owns it, and a server removes at start what servers that are gone left behind.

The parts: ``docker_engine`` (finding and connecting to the engine), ``docker_images``,
``docker_stream`` (the attached socket's framing), ``docker_channel`` (the socket past the
engine), ``ownership`` (which server owns a container),
and ``agent.bundle`` (what is sent down stdin first); this module creates, starts and removes the
containers.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import anyio
from anyio.abc import ByteStream

from ..agent.bundle import STDIN_BOOTSTRAP, write_bundle
from ..disk import DiskBudget
from ..errors import SandboxError
from ..mounts import check_mounts
from ..settings import Settings
from ..sizes import parse_size
from .base import AgentConfig, SandboxSpec
from .docker_engine import PROBE_TIMEOUT, connect, engine_address, engine_gone, probe, remove_container, sdk
from .docker_images import FALLBACK_IMAGE, IMAGES_DIR, PROJECT_IMAGE, build_image, resolve_image
from .docker_channel import AGENT_CONFIG as CHANNEL_CONFIG
from .docker_channel import ChannelSocket
from .docker_channel import reap as reap_channel_dirs
from .docker_stream import ContainerStream, wrap_attach_socket
from .ownership import owner_alive, server_instance

# What the rest of the server and the tests reach through ``backends.docker``.
__all__ = [
    "CAPABILITIES", "IMAGES_DIR", "LABEL_CREATED", "LABEL_MANAGED", "LABEL_SANDBOX", "LABEL_SERVER", "LABEL_TENANT",
    "PROBE_TIMEOUT", "PROJECT_IMAGE", "DockerAgent", "DockerBackend", "build_image", "connect", "probe",
    "remove_container", "server_instance",
]

logger = logging.getLogger(__name__)

LABEL_MANAGED = "mcp-sandbox.managed"
LABEL_SERVER = "mcp-sandbox.server"
LABEL_SANDBOX = "mcp-sandbox.sandbox"
LABEL_CREATED = "mcp-sandbox.created"
LABEL_TENANT = "mcp-sandbox.tenant"

WORKSPACE = "/workspace"
AGENT_DIR = "/tmp/.mcp-sandbox/agent"  # where STDIN_BOOTSTRAP unpacks the agent
STATE_DIR = "/tmp/.mcp-sandbox"
STOPPED_OUTPUT_TIMEOUT = 5.0
# Containers of servers on other machines are left alone while they may still be starting.
FOREIGN_GRACE = 600.0

# Docker's default set minus what a sandbox has no use for (NET_RAW, MKNOD, AUDIT_WRITE, SETFCAP,
# SETPCAP, NET_BIND_SERVICE, SYS_CHROOT). What stays lets root in a sandbox (the user of images such
# as python:3.12-slim) manage its own files and processes as on any machine: CHOWN, FOWNER, FSETID
# and DAC_OVERRIDE for files owned by other users (pip, tar, git and apt do this), SETUID and
# SETGID to switch users (apt drops to _apt; su, runuser), KILL to signal processes of other
# users. A non-root image user gets none of them.
CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETUID", "SETGID", "KILL"]



@dataclass
class DockerAgent:
    stream: ContainerStream  # the attached stdin, stdout and stderr
    client: Any
    container_id: str
    isolation: str
    workspace: str = WORKSPACE
    disk: DiskBudget | None = None  # not kept on Docker
    channel: ByteStream | None = None  # the channel's socket past the engine (docker_channel.py)
    _destroyed: bool = field(default=False, repr=False)

    @property
    def receive(self) -> ByteStream:
        return self.channel or self.stream

    @property
    def send(self) -> ByteStream:
        return self.channel or self.stream

    async def watch(self) -> None:
        """With the channel on its socket, the attached stream holds only the agent's stderr,
        which ContainerStream logs: read until it ends."""
        if self.channel is None:
            return
        view = memoryview(bytearray(4096))  # small: every sandbox waits on it all its life
        try:
            while True:
                await self.stream.receive_into(view)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass

    async def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        self.stream.silent_end = ""  # the end that follows is ours, not the agent failing to start
        with anyio.CancelScope(shield=True):
            try:
                # Removing first: closing the stream first would start the engine's own removal
                # (auto_remove), which then races this one.
                await anyio.to_thread.run_sync(remove_container, self.client, self.container_id)
            finally:
                await self.stream.aclose()
                if self.channel is not None:
                    await self.channel.aclose()


class DockerBackend:
    name = "docker"
    # The engine enforces memory, CPU and processes; nothing bounds the container's writable layer.
    enforced = {"memory": True, "cpus": True, "pids": True, "disk": False}

    def __init__(self, settings: Settings, client: Any | None = None) -> None:
        self.settings = settings
        if settings.mounts:
            check_mounts(settings.mounts)
            if not engine_address().startswith("unix://"):
                raise SandboxError(
                    "INVALID_ARGUMENT",
                    f"--mount binds directories of this machine, but the Docker engine at {engine_address()} "
                    "may run elsewhere, where they are not; use a local engine (a unix socket) or copy files "
                    "in with write_file",
                )
        self.client = client if client is not None else connect()
        self.isolation = "gvisor" if settings.runtime == "runsc" else "docker"
        self._image: str | None = None
        self._image_lock = anyio.Lock()
        self._bundle: bytes | None = None
        # The channel goes past the engine where the engine can bind this machine's sockets:
        # a local engine; not gVisor, which refuses to connect to the host's.
        self._past_engine = (
            settings.docker_channel == "auto" and engine_address().startswith("unix://") and settings.runtime != "runsc"
        )

    async def image(self) -> str:
        """The sandbox image, present on the engine (pulled on first use if needed)."""
        async with self._image_lock:
            if self._image is None:
                try:
                    self._image = await anyio.to_thread.run_sync(resolve_image, self.client, self.settings.image)
                except OSError as exc:
                    raise engine_gone(exc) from exc
            return self._image

    async def start(self, spec: SandboxSpec, config: AgentConfig) -> DockerAgent:
        image = await self.image()
        if self._bundle is None:
            self._bundle = await anyio.to_thread.run_sync(write_bundle)
        # The image's environment is only known inside the container: the agent puts it below ours.
        agent_config = config.for_agent(spec.sandbox_id, WORKSPACE, spec.env, state_dir=STATE_DIR, inherit_env=True)
        listener = self._channel_socket()
        try:
            return await self._launch(spec, image, agent_config, listener)
        except SandboxError as exc:
            if listener is None or str(listener.directory.parent) not in exc.message:
                raise
            # The engine could not mount our directory (it runs in a VM that does not share it):
            # the attached stream it is, for this sandbox and the next ones.
            self._channel_refused(exc.message)
            return await self._launch(spec, image, agent_config, None)

    async def _launch(
        self, spec: SandboxSpec, image: str, agent_config: dict[str, Any], listener: ChannelSocket | None
    ) -> DockerAgent:
        """Create and start the container, send the agent, and take its channel: with ``listener``
        the socket's directory is mounted and the agent told to connect. Whatever fails, nothing
        is left: the container is removed and the listener closed."""
        assert self._bundle is not None
        network = spec.network and self.settings.network
        if listener is not None:
            agent_config = {**agent_config, **CHANNEL_CONFIG}
        binds = [listener.bind] if listener is not None else []
        stream: ContainerStream | None = None
        channel: ByteStream | None = None
        container_id = ""  # until created
        try:
            with anyio.CancelScope(shield=True):  # a cancel must not lose track of a created container
                container_id = await anyio.to_thread.run_sync(self._create, spec, image, agent_config, network, binds)
            sock = await anyio.to_thread.run_sync(self._attach_and_start, container_id, image)
            # The manager's hello is the agent's first request; an agent that cannot run in this
            # image ends before answering it, and the stream then says why in the server log.
            stream = ContainerStream(
                await wrap_attach_socket(sock), spec.sandbox_id,
                silent_end=f"the sandbox agent stopped before its first answer in image {image!r}, "
                "which needs python3 >= 3.8",
            )
            await self._send_bundle(stream, self._bundle, image)
            if listener is not None:
                channel = await listener.take(stream, image)
        except BaseException:
            with anyio.CancelScope(shield=True):
                if listener is not None:
                    listener.close()
                if container_id:
                    await anyio.to_thread.run_sync(remove_container, self.client, container_id)
                if stream is not None:
                    await stream.aclose()
            raise
        return DockerAgent(stream, self.client, container_id, self.isolation, channel=channel)

    def _channel_socket(self) -> ChannelSocket | None:
        """A sandbox's socket past the engine, where the engine is local and one can be made."""
        if not self._past_engine:
            return None
        try:
            return ChannelSocket()
        except OSError as exc:  # e.g. a temporary directory too deep for a socket's path
            self._channel_refused(f"no socket could be made for it ({exc})")
            return None

    def _channel_refused(self, why: str) -> None:
        self._past_engine = False
        logger.warning("the agents' channel goes through the Docker engine from now on: %s", why)

    async def _send_bundle(self, stream: ContainerStream, bundle: bytes, image: str) -> None:
        """Send the agent down the container's stdin; a container that is gone already could not
        even start python3 on the bundle, and what it wrote says why."""
        try:
            await stream.send(bundle)
            return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            problem = f"it stopped ({type(exc).__name__})"
        with anyio.move_on_after(STOPPED_OUTPUT_TIMEOUT):  # what the engine still holds of its output
            try:
                while True:
                    await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
        stderr = stream.stderr_tail.decode("utf-8", "replace").strip()
        raise SandboxError(
            "BACKEND_UNAVAILABLE",
            f"the sandbox agent did not start in image {image!r}: {problem}"
            + (f"; its output: {stderr[-1000:]}" if stderr else "")
            + "; the image needs python3 >= 3.8",
        )

    def _create(
        self, spec: SandboxSpec, image: str, agent_config: dict[str, Any], network: bool, binds: list[str]
    ) -> str:
        s = self.settings
        api = self.client.api
        host_config = api.create_host_config(
            # No docker-init: it would hold the channel's pipes where any process in the sandbox
            # could open them (/proc/1/fd). The agent is pid 1 and reaps orphans itself.
            init=False,
            auto_remove=True,
            network_mode=None if network else "none",
            cap_drop=["ALL"],
            cap_add=CAPABILITIES,
            security_opt=["no-new-privileges"],
            pids_limit=s.pids_limit,
            mem_limit=parse_size(s.memory),
            memswap_limit=parse_size(s.memory),  # no swap on top of the memory limit
            nano_cpus=int(s.cpus * 1e9),
            runtime=s.runtime,
            binds=[str(m) for m in s.mounts] + binds,  # HOST:SANDBOX:ro|rw, as Docker writes them
            # The agent's stdout is the channel: with a log driver the engine would also write
            # every byte of it (files read, command output) to a log on its disk, and at a fraction
            # of the speed. Attaching works without one.
            log_config={"type": "none", "config": {}},
        )
        try:
            container = api.create_container(
                image,
                entrypoint=["python3", "-I", "-S", "-c", STDIN_BOOTSTRAP, AGENT_DIR, json.dumps(agent_config)],
                stdin_open=True,  # with attach, the SDK also sets StdinOnce: EOF ends the agent
                tty=False,
                working_dir=WORKSPACE,
                hostname="sandbox",
                name=f"mcp-sandbox-{spec.sandbox_id}",
                labels={
                    LABEL_MANAGED: "true",
                    LABEL_SERVER: server_instance(),
                    LABEL_SANDBOX: spec.sandbox_id,
                    LABEL_CREATED: datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    # Empty for a warm spare: labels are fixed at creation (the log says whose it became).
                    LABEL_TENANT: spec.tenant,
                },
                host_config=host_config,
            )
        except sdk().errors.DockerException as exc:  # (its APIError is an OSError too: first)
            raise SandboxError(
                "BACKEND_UNAVAILABLE",
                f"Docker could not create a container from {image!r} ({exc}); check the engine and the "
                "options --image, --runtime, --memory, --cpus, --pids-limit",
            ) from exc
        except OSError as exc:
            raise engine_gone(exc) from exc
        return str(container["Id"])

    def _attach_and_start(self, container_id: str, image: str) -> Any:
        api = self.client.api
        try:
            # Attached before the start, so nothing the agent writes is lost.
            sock = api.attach_socket(container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            try:
                api.start(container_id)
            except BaseException:
                sock.close()
                raise
        except sdk().errors.DockerException as exc:  # (its APIError is an OSError too: first)
            if "python3" in str(exc):  # the entrypoint itself: "executable file not found"
                raise SandboxError(
                    "BACKEND_UNAVAILABLE",
                    f"the sandbox image {image!r} has no python3, which the sandbox agent needs (Python >= 3.8); "
                    f"use an image with python3 (--image), e.g. {PROJECT_IMAGE} ('mcp-sandbox image build') "
                    f"or {FALLBACK_IMAGE}",
                ) from exc
            raise SandboxError("BACKEND_UNAVAILABLE", f"Docker could not start the sandbox container ({exc})") from exc
        except OSError as exc:
            raise engine_gone(exc) from exc
        return sock

    async def reap_orphans(self) -> None:
        await anyio.to_thread.run_sync(self._reap)
        await anyio.to_thread.run_sync(reap_channel_dirs)

    def _reap(self) -> None:
        """Remove containers whose server is gone (killed before it could clean up)."""
        me = server_instance()
        for container in self.client.api.containers(all=True, filters={"label": f"{LABEL_MANAGED}=true"}):
            labels = container.get("Labels") or {}
            owner = labels.get(LABEL_SERVER, "")
            if owner == me:
                continue
            alive = owner_alive(owner)
            if alive is None:
                # Another host's server: only it knows whether it runs. Its running containers end
                # with it; what never started is removed once it is clearly abandoned.
                if container.get("State") == "running" or time.time() - container.get("Created", 0) < FOREIGN_GRACE:
                    continue
            elif alive:
                continue
            logger.info(
                "removing container %s of sandbox %s, left by server %s that is gone",
                container["Id"][:12], labels.get(LABEL_SANDBOX, "?"), owner or "?",
            )
            try:
                remove_container(self.client, container["Id"])
            except Exception:  # one stuck container must not stop the server from starting
                logger.exception("could not remove container %s", container["Id"][:12])
