"""The Docker engine: finding it, connecting to it, and its one operation every part needs.

The ``docker`` package is imported only when an engine is used, so servers without Docker start
fast.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ..errors import SandboxError

logger = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/run/docker.sock"
API_TIMEOUT = 120.0
CONNECT_TIMEOUT = 10.0
# `--backend auto` must not make a server without Docker slow to start.
PROBE_TIMEOUT = 2.0


def sdk() -> Any:
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


def engine_gone(exc: OSError) -> SandboxError:
    """A call that reached no engine (stopped, or restarting): the connection's error, coded.
    The SDK raises these from requests (an OSError), not as DockerException."""
    return SandboxError(
        "BACKEND_UNAVAILABLE", f"{no_engine(exc)}; start the engine (or wait for its restart), then try again"
    )


def _ping(timeout: float) -> Any:
    client = sdk().from_env(timeout=timeout)
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


def remove_container(client: Any, container_id: str) -> None:
    """Kill and remove a container at once (no stop timeout); returns when it is gone."""
    docker = sdk()
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
