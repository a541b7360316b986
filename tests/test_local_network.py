"""network=true on the local backend with bubblewrap: a namespace of its own with outbound NAT
(slirp4netns), never the host's loopback."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from functools import partial
from typing import Any

import anyio
import pytest

from .conftest import require_backend, unavailable

pytestmark = pytest.mark.anyio


@pytest.fixture
def backend() -> str:
    require_backend("bwrap")
    if not shutil.which("slirp4netns"):
        unavailable("slirp4netns is not installed")
    return "bwrap"


@pytest.fixture
def host_service() -> Iterator[int]:
    """A TCP service on the host's loopback; its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    yield listener.getsockname()[1]
    listener.close()


def slirps() -> set[int]:
    found = set()
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(b"slirp4netns\0"):
                    found.add(int(pid))
        except OSError:
            pass
    return found


def reaches(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
        return True
    except OSError:
        return False


async def test_network_without_the_hosts_loopback(mcp_with: Any, host_service: int) -> None:
    before = slirps()
    async with mcp_with(network=True) as mcp:
        created = await mcp("create_sandbox", network=True)
        assert created["network"] is True
        sid = created["sandbox_id"]
        ours = slirps() - before
        assert len(ours) == 1
        probe = "timeout 3 bash -c 'echo > /dev/tcp/{}/{}' 2>/dev/null && echo reached || echo refused"
        for host in ("127.0.0.1", "10.0.2.2", "10.0.2.3"):  # the loopback, slirp's gateway and DNS
            assert (await mcp.sh(probe.format(host, host_service), sandbox_id=sid))["stdout"] == "refused\n", host
        config = await mcp.sh("cat /proc/net/route /etc/resolv.conf", sandbox_id=sid)
        assert "tap0\t00000000\t0202000A" in config["stdout"]  # default route through 10.0.2.2
        assert "nameserver 10.0.2.3" in config["stdout"]
        # Package indexes are the one outside address this machine may reach: when the host
        # reaches PyPI, so does the sandbox.
        if await anyio.to_thread.run_sync(reaches, "pypi.org", 443):
            result = await mcp.sh(probe.format("pypi.org", 443), sandbox_id=sid)
            assert result["stdout"] == "reached\n"
        # A sandbox without network has none.
        other = (await mcp("create_sandbox"))["sandbox_id"]
        assert "tap0" not in (await mcp.sh("cat /proc/net/dev", sandbox_id=other))["stdout"]
        await mcp("destroy", sandbox_id=sid)
        with anyio.fail_after(5):  # slirp4netns ends with its sandbox
            while slirps() & ours:
                await anyio.sleep(0.05)


async def test_network_sandboxes_start_while_others_do(manager_factory: Any) -> None:
    """slirp4netns brings the sandbox's loopback up too: started before bubblewrap had done so, it
    made bubblewrap's own setup fail ("loopback: Failed RTM_NEWADDR"), a sandbox in a few when
    several started at once (a warm sandbox's replacement beside a create_sandbox network=true)."""
    async with manager_factory(network=True, warm_sandboxes=1, max_sandboxes=8) as manager:
        for _ in range(6):
            await manager.create()  # a warm one: its replacement starts now
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(partial(manager.create, network=True))
            assert len(manager.ids()) == 4
            for sandbox_id in manager.ids():
                await manager.destroy(sandbox_id)
