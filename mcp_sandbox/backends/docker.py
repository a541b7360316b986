"""The Docker backend: one hardened container per sandbox, the agent as its main process.

A sandbox's container is created with its stdin, stdout and stderr attached before it starts, and
the agent package is sent down its stdin as the first thing (no ``put_archive``, which costs a
sizeable part of a start, and a remote engine works too); the agent then runs as the container's
main process (pid 1) and that one attached socket is the whole channel, so an ``exec`` is one round
trip on an open connection, never a ``docker exec``. The container has ``StdinOnce`` set: when the
server's end of the socket closes, even because the server was killed, the engine closes the
agent's stdin, the agent exits with everything it started, and the engine removes the container
(``auto_remove``). Every container is labelled with the server instance that owns it, and a server
removes at start what servers that are gone left behind.

The ``docker`` package is imported only when this backend is used, so servers without Docker
start fast.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import marshal
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketStream

from .. import agent
from ..disk import DiskBudget
from ..errors import SandboxError
from ..mounts import check_mounts
from ..settings import Settings
from ..sizes import parse_size
from .base import AgentConfig, SandboxSpec
from .local import process_start_time

logger = logging.getLogger(__name__)

LABEL_MANAGED = "mcp-sandbox.managed"
LABEL_SERVER = "mcp-sandbox.server"
LABEL_SANDBOX = "mcp-sandbox.sandbox"
LABEL_CREATED = "mcp-sandbox.created"
LABEL_TENANT = "mcp-sandbox.tenant"

PROJECT_IMAGE = "mcp-sandbox:latest"
FALLBACK_IMAGE = "python:3.12-slim"
IMAGES_DIR = Path(__file__).resolve().parent.parent / "images"
WORKSPACE = "/workspace"
AGENT_DIR = "/tmp/.mcp-sandbox/agent"  # where STDIN_BOOTSTRAP unpacks the agent
STATE_DIR = "/tmp/.mcp-sandbox"
DEFAULT_SOCKET = "/var/run/docker.sock"
API_TIMEOUT = 120.0
CONNECT_TIMEOUT = 10.0
# `--backend auto` must not make a server without Docker slow to start.
PROBE_TIMEOUT = 2.0
HELLO_TIMEOUT = 60.0
# Containers of servers on other machines are left alone while they may still be starting.
FOREIGN_GRACE = 600.0

# Docker's default set minus what a sandbox has no use for (NET_RAW, MKNOD, AUDIT_WRITE, SETFCAP,
# SETPCAP, NET_BIND_SERVICE, SYS_CHROOT). What stays lets root in a sandbox (the user of images such
# as python:3.12-slim) manage its own files and processes as on any machine: CHOWN, FOWNER, FSETID
# and DAC_OVERRIDE for files owned by other users (pip, tar, git and apt do this), SETUID and
# SETGID to switch users (apt drops to _apt; su, runuser), KILL to signal processes of other
# users. A non-root image user gets none of them.
CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETUID", "SETGID", "KILL"]


def _docker() -> Any:
    try:
        import docker
    except ImportError as exc:  # a dependency of mcp-sandbox: only a broken install lacks it
        raise SandboxError(
            "BACKEND_UNAVAILABLE",
            f"the docker Python package is missing ({exc}); reinstall mcp-sandbox, or use --backend local",
        ) from exc
    return docker


def engine_address() -> str:
    """Where the engine is looked for, as the user would name it."""
    host = os.environ.get("DOCKER_HOST")
    return f"DOCKER_HOST={host}" if host else "unix://" + DEFAULT_SOCKET


def why(exc: BaseException) -> str:
    """The root cause of a failed connection, briefly: the OS error under the SDK's wrappers."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if current in seen:
            continue
        seen.append(current)
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        todo += [c for c in (current.__cause__, current.__context__, *current.args) if isinstance(c, BaseException)]
    return str(exc)


def no_engine(exc: BaseException) -> str:
    return f"no Docker engine answers at {engine_address()} ({why(exc)})"


def _ping(timeout: float) -> Any:
    client = _docker().from_env(timeout=timeout)
    client.ping()
    client.api.timeout = API_TIMEOUT
    return client


def connect(timeout: float = CONNECT_TIMEOUT) -> Any:
    """A docker client whose engine answered a ping within ``timeout`` seconds."""
    try:
        return _ping(timeout)
    except Exception as exc:  # the SDK raises DockerException, requests and OSError errors alike
        raise SandboxError(
            "BACKEND_UNAVAILABLE",
            f"{no_engine(exc)}; start it (e.g. 'systemctl start docker' or 'dockerd &'), check DOCKER_HOST "
            "and that this user may use the engine (group docker), or use --backend local",
        ) from exc


def probe() -> Any | None:
    """A client if an engine answers quickly, else None (and the log says what was tried, and why
    it failed); no import at all without any engine."""
    if "DOCKER_HOST" not in os.environ and not os.path.exists(DEFAULT_SOCKET):
        logger.info("no Docker engine: DOCKER_HOST is not set and there is no socket at %s; "
                    "using the local backend", DEFAULT_SOCKET)
        return None
    try:
        return _ping(PROBE_TIMEOUT)
    except Exception as exc:
        # An engine seems to be there, yet it did not answer: worth a warning.
        logger.warning("%s; using the local backend", no_engine(exc))
        return None


@cache
def server_instance() -> str:
    """This server process, as ``host:pid:start time``; the pair pid/start time is unique on a host."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start_time(pid) or '?'}"


def owner_alive(owner: str) -> bool | None:
    """Whether the server ``owner`` (a ``server_instance()``) runs; None if it is on another host."""
    host, _, rest = owner.partition(":")
    if host != socket.gethostname():
        return None
    pid, _, start_time = rest.partition(":")
    if not pid.isdigit():
        return False
    if start_time != "?":
        return process_start_time(int(pid)) == start_time
    try:  # no /proc here (macOS): a running pid is all there is to go on
        os.kill(int(pid), 0)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def agent_bundle() -> bytes:
    """The agent package in the format STDIN_BOOTSTRAP unpacks: its files, and for each module
    bytecode from this Python (a sandbox with the same Python version then skips compiling)."""
    source = Path(agent.__file__).resolve().parent
    entries: list[tuple[str, bytes]] = []
    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "tests"))
        for name in sorted(f for f in files if not f.endswith(".pyc")):
            path = Path(root, name)
            relative = f"agent/{path.relative_to(source).as_posix()}"
            data = path.read_bytes()
            entries.append((relative, data))
            if name.endswith(".py") and path.parent == source:
                entries.append((importlib.util.cache_from_source(relative), _unchecked_pyc(data, relative)))
    header = json.dumps([[name, len(data)] for name, data in entries]).encode()
    return b"%010d" % len(header) + header + b"".join(data for _, data in entries)


def _unchecked_pyc(source: bytes, name: str) -> bytes:
    """A hash-based .pyc that is used without checking the source (PEP 552)."""
    code = compile(source, name, "exec", dont_inherit=True)
    flags = 0b01  # hash-based, not checked
    return importlib.util.MAGIC_NUMBER + flags.to_bytes(4, "little") + importlib.util.source_hash(source) + marshal.dumps(code)


class ContainerStream(ByteStream):
    """The attached stdin/stdout of a container without a tty.

    What the container writes arrives multiplexed: frames of an 8-byte header (stream: 1 stdout,
    2 stderr; three zero bytes; big-endian length) and a payload. ``receive`` returns stdout only;
    stderr goes to the server log, its tail kept for error messages. What is sent goes to stdin
    as is.
    """

    def __init__(self, raw: ByteStream, name: str) -> None:
        self._raw = raw
        self._name = name
        self._buffer = bytearray()
        self._stdout = bytearray()
        self._frame_stream = 0
        self._frame_left = 0
        self._stderr_line = bytearray()
        self.stderr_tail = bytearray()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self._stdout:
            try:
                chunk = await self._raw.receive()
            except anyio.EndOfStream:
                self._flush_stderr()
                raise
            self._parse(chunk)
        data = bytes(self._stdout[:max_bytes])
        del self._stdout[:max_bytes]
        return data

    async def receive_line(self) -> bytes:
        """One line of stdout, without its newline; the rest stays for ``receive``."""
        while (end := self._stdout.find(b"\n")) < 0:
            self._parse(await self._raw.receive())
        line = bytes(self._stdout[:end])
        del self._stdout[: end + 1]
        return line

    def _parse(self, chunk: bytes) -> None:
        buffer = self._buffer
        buffer += chunk
        while buffer:
            if self._frame_left == 0:
                if len(buffer) < 8:
                    return
                self._frame_stream = buffer[0]
                self._frame_left = int.from_bytes(buffer[4:8], "big")
                del buffer[:8]
                continue
            n = min(self._frame_left, len(buffer))
            if self._frame_stream == 1:
                self._stdout += buffer[:n]
            else:
                self._stderr(bytes(buffer[:n]))
            del buffer[:n]
            self._frame_left -= n

    def _stderr(self, data: bytes) -> None:
        self.stderr_tail = (self.stderr_tail + data)[-4096:]
        self._stderr_line += data
        *lines, rest = self._stderr_line.split(b"\n")
        self._stderr_line = bytearray(rest[-65536:])
        for line in lines:
            logger.warning("%s: %s", self._name, line.decode("utf-8", "replace"))

    def _flush_stderr(self) -> None:
        if self._stderr_line:
            logger.warning("%s: %s", self._name, self._stderr_line.decode("utf-8", "replace"))
            self._stderr_line.clear()

    async def send(self, item: bytes) -> None:
        await self._raw.send(item)

    async def send_eof(self) -> None:
        await self._raw.send_eof()

    async def aclose(self) -> None:
        await self._raw.aclose()


class BlockingSocketStream(ByteStream):
    """A connection the event loop cannot poll (TLS, ssh): blocking calls in worker threads.

    Engines on a unix socket or plain TCP get a native anyio socket instead.
    """

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._receive_limiter = anyio.CapacityLimiter(1)
        self._send_limiter = anyio.CapacityLimiter(1)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            data: bytes = await anyio.to_thread.run_sync(
                self._sock.recv, max_bytes, abandon_on_cancel=True, limiter=self._receive_limiter
            )
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        try:
            await anyio.to_thread.run_sync(self._sock.sendall, item, limiter=self._send_limiter)
        except OSError as exc:
            raise anyio.BrokenResourceError from exc

    async def send_eof(self) -> None:
        await anyio.to_thread.run_sync(self._sock.shutdown, socket.SHUT_WR, limiter=self._send_limiter)

    async def aclose(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


async def wrap_attach_socket(sock: Any) -> ByteStream:
    """Turn the SDK's attach socket into an anyio stream, natively where the loop can poll it."""
    inner = getattr(sock, "_sock", sock)
    if type(inner) is socket.socket:
        # A duplicate descriptor of its own: the SDK's response object closes the original when
        # it is collected.
        own = socket.socket(fileno=os.dup(inner.fileno()))
        sock.close()
        return await SocketStream.from_socket(own)
    return BlockingSocketStream(inner)


def remove_container(client: Any, container_id: str) -> None:
    """Kill and remove a container at once (no stop timeout); returns when it is gone."""
    docker = _docker()
    try:
        client.api.remove_container(container_id, force=True)
        return
    except docker.errors.NotFound:
        return
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: the engine is already removing it (auto_remove)
            raise
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            client.api.inspect_container(container_id)
        except docker.errors.NotFound:
            return
        time.sleep(0.05)
    raise SandboxError("INTERNAL", f"container {container_id[:12]} was not removed within 30 s")


@dataclass
class DockerAgent:
    stream: ContainerStream
    client: Any
    container_id: str
    isolation: str
    workspace: str = WORKSPACE
    disk: DiskBudget | None = None  # not kept on Docker
    _destroyed: bool = field(default=False, repr=False)

    @property
    def receive(self) -> ContainerStream:
        return self.stream

    @property
    def send(self) -> ContainerStream:
        return self.stream

    async def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        with anyio.CancelScope(shield=True):
            try:
                # Removing first: closing the stream first would start the engine's own removal
                # (auto_remove), which then races this one.
                await anyio.to_thread.run_sync(remove_container, self.client, self.container_id)
            finally:
                await self.stream.aclose()


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

    async def image(self) -> str:
        """The sandbox image, present on the engine (pulled on first use if needed)."""
        async with self._image_lock:
            if self._image is None:
                self._image = await anyio.to_thread.run_sync(self._resolve_image)
            return self._image

    def _resolve_image(self) -> str:
        image = self.settings.image
        if image is None:
            image = PROJECT_IMAGE if self._has_image(PROJECT_IMAGE) else FALLBACK_IMAGE
        if self._has_image(image):
            return image
        try:
            self._pull(image)
        except Exception as exc:  # DockerException, or the connection's own errors
            raise SandboxError(
                "BACKEND_UNAVAILABLE",
                f"the sandbox image {image!r} is not on the Docker engine and could not be pulled ({exc}); "
                f"pull or build it ('docker pull {image}'; 'mcp-sandbox image build' builds "
                f"{PROJECT_IMAGE}), or choose an image that has python3 with --image",
            ) from exc
        return image

    def _has_image(self, image: str) -> bool:
        try:
            self.client.images.get(image)
            return True
        except _docker().errors.ImageNotFound:
            return False

    def _pull(self, image: str) -> None:
        repository, tag = _docker().utils.parse_repository_tag(image)
        logger.info("pulling the sandbox image %s (once; later sandboxes start at once)", image)
        layers: dict[str, tuple[int, int]] = {}
        last_log = time.monotonic()
        for event in self.client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
            if "error" in event:
                raise _docker().errors.APIError(event["error"])
            detail = event.get("progressDetail") or {}
            if event.get("status") == "Downloading" and detail.get("total"):
                layers[event.get("id", "")] = (detail.get("current", 0), detail["total"])
            if time.monotonic() - last_log > 2 and layers:
                last_log = time.monotonic()
                done = sum(c for c, _ in layers.values()) >> 20
                total = sum(t for _, t in layers.values()) >> 20
                logger.info("pulling %s: %d of %d MiB", image, done, total)
        logger.info("pulled %s", image)

    async def start(self, spec: SandboxSpec, config: AgentConfig) -> DockerAgent:
        image = await self.image()
        if self._bundle is None:
            self._bundle = await anyio.to_thread.run_sync(agent_bundle)
        # The image's environment is only known inside the container: the agent puts it below ours.
        agent_config = config.for_agent(spec.sandbox_id, WORKSPACE, spec.env, state_dir=STATE_DIR, inherit_env=True)
        network = spec.network and self.settings.network
        with anyio.CancelScope(shield=True):  # a cancel must not lose track of a created container
            container_id = await anyio.to_thread.run_sync(self._create, spec, image, agent_config, network)
        stream: ContainerStream | None = None
        try:
            sock = await anyio.to_thread.run_sync(self._attach_and_start, container_id, image)
            stream = ContainerStream(await wrap_attach_socket(sock), spec.sandbox_id)
            await stream.send(self._bundle)
            handle = DockerAgent(stream, self.client, container_id, self.isolation)
            await self._hello(handle, image)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(remove_container, self.client, container_id)
                if stream is not None:
                    await stream.aclose()
            raise
        return handle

    def _create(self, spec: SandboxSpec, image: str, agent_config: dict[str, Any], network: bool) -> str:
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
            binds=[str(m) for m in s.mounts],  # HOST:SANDBOX:ro|rw, as Docker writes them
        )
        try:
            container = api.create_container(
                image,
                entrypoint=["python3", "-I", "-S", "-c", agent.STDIN_BOOTSTRAP, AGENT_DIR, json.dumps(agent_config)],
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
        except _docker().errors.DockerException as exc:
            raise SandboxError(
                "BACKEND_UNAVAILABLE",
                f"Docker could not create a container from {image!r} ({exc}); check the engine and the "
                "options --image, --runtime, --memory, --cpus, --pids-limit",
            ) from exc
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
        except _docker().errors.DockerException as exc:
            if "python3" in str(exc):  # the entrypoint itself: "executable file not found"
                raise SandboxError(
                    "BACKEND_UNAVAILABLE",
                    f"the sandbox image {image!r} has no python3, which the sandbox agent needs (Python >= 3.8); "
                    f"use an image with python3 (--image), e.g. {PROJECT_IMAGE} ('mcp-sandbox image build') "
                    f"or {FALLBACK_IMAGE}",
                ) from exc
            raise SandboxError("BACKEND_UNAVAILABLE", f"Docker could not start the sandbox container ({exc})") from exc
        return sock

    async def _hello(self, handle: DockerAgent, image: str) -> None:
        """Wait for the agent's first answer, to report an image it cannot run in clearly.

        Request id 0 is never used by the channel, which starts at 1.
        """
        try:
            with anyio.fail_after(HELLO_TIMEOUT):
                await handle.stream.send(b'{"id":0,"method":"hello","params":{}}\n')
                answer = json.loads(await handle.stream.receive_line())
            if "result" in answer:
                return
            problem = f"it answered {answer!r}"
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError, ValueError) as exc:
            problem = f"it stopped ({type(exc).__name__})"
        except TimeoutError:
            problem = f"it did not answer within {HELLO_TIMEOUT:.0f} s"
        stderr = handle.stream.stderr_tail.decode("utf-8", "replace").strip()
        raise SandboxError(
            "BACKEND_UNAVAILABLE",
            f"the sandbox agent did not start in image {image!r}: {problem}"
            + (f"; its output: {stderr[-1000:]}" if stderr else "")
            + "; the image needs python3 >= 3.8",
        )

    async def reap_orphans(self) -> None:
        await anyio.to_thread.run_sync(self._reap)

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


def build_image(tag: str = PROJECT_IMAGE) -> int:
    """``mcp-sandbox image build``: build the project's sandbox image; returns an exit status."""
    if not (IMAGES_DIR / "Dockerfile").is_file():
        logger.error("no Dockerfile in %s; reinstall mcp-sandbox", IMAGES_DIR)
        return 1
    cli = shutil.which("docker")
    if cli is not None:
        return subprocess.run([cli, "build", "-t", tag, str(IMAGES_DIR)]).returncode
    client = connect()
    try:
        for event in client.api.build(path=str(IMAGES_DIR), tag=tag, rm=True, decode=True):
            if "error" in event:
                logger.error("%s", event["error"].strip())
                return 1
            if "stream" in event:
                sys.stderr.write(event["stream"])
    except _docker().errors.DockerException as exc:
        logger.error("docker build failed: %s", exc)
        return 1
    logger.info("built %s", tag)
    return 0
