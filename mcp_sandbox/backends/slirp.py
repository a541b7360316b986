"""Outbound network for a bubblewrap sandbox, off the host: slirp4netns.

A sandbox created with ``network=true`` keeps its own network namespace, and slirp4netns connects
it to the outside through a NAT in user space: the sandbox sees ``tap0`` (10.0.2.100/24), a
default route through 10.0.2.2 and a DNS forwarder at 10.0.2.3 (its ``/etc/resolv.conf``). With
``--disable-host-loopback`` the gateway does not lead to the host's 127.0.0.1, so services that
listen on the host's loopback stay out of reach. slirp4netns ends when its exit pipe closes: at
``destroy``, or with the server, whose end of the pipe closes when it dies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import Process

from ..errors import SandboxError

START_TIMEOUT = 10.0
# How long slirp4netns waits for bubblewrap to bring the sandbox's loopback up (see _loopback_up).
LOOPBACK_TIMEOUT = 5.0
RESOLV_CONF = "nameserver 10.0.2.3\n"


def available() -> bool:
    return shutil.which("slirp4netns") is not None


def resolver_bind(directory: Path) -> list[str]:
    """bubblewrap's arguments that make slirp4netns's forwarder the sandbox's resolver."""
    resolv = directory / "resolv.conf"
    resolv.write_text(RESOLV_CONF)
    # Where the host's /etc/resolv.conf leads (often /run/systemd/resolve/...): the sandbox's
    # /etc/resolv.conf leads there too.
    return ["--ro-bind", str(resolv), os.path.realpath("/etc/resolv.conf")]


async def _read_until(fd: int, done: Callable[[bytes], bool]) -> bytes:
    """Read a pipe until ``done(data)`` or its end."""
    os.set_blocking(fd, False)
    data = b""
    while not done(data):
        await anyio.wait_readable(fd)
        try:
            part = os.read(fd, 4096)
        except BlockingIOError:
            continue
        if not part:
            break
        data += part
    return data


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
        return True
    except ValueError:
        return False


async def _loopback_up(pid: int) -> None:
    """Wait until bubblewrap has set up the loopback of the namespace ``pid`` is in. slirp4netns
    brings ``lo`` up as well, which gives it 127.0.0.1 at once: if it does so first, bubblewrap's
    own request to add that address fails and the sandbox does not start. The address shows in the
    namespace's routing table once bubblewrap is done; a process gone or unreadable ends the wait
    (bubblewrap reports its own failure)."""
    with anyio.move_on_after(LOOPBACK_TIMEOUT):
        while True:
            try:
                with open(f"/proc/{pid}/net/fib_trie", "rb") as f:
                    if b"127.0.0.1" in f.read():
                        return
            except OSError:
                return
            await anyio.sleep(0.002)


@dataclass
class Slirp:
    process: Process
    exit_fd: int  # its exit pipe's write end: slirp4netns ends when it closes

    async def close(self) -> None:
        if self.exit_fd >= 0:
            os.close(self.exit_fd)
            self.exit_fd = -1
        with anyio.move_on_after(2):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await self.process.aclose()


async def attach(info_fd: int, log: Path) -> Slirp:
    """Connect the network namespace of the sandbox whose bubblewrap reports on ``info_fd``."""
    info = b""
    try:
        with anyio.move_on_after(START_TIMEOUT):
            info = await _read_until(info_fd, _is_json)
    finally:
        os.close(info_fd)
    try:
        pid = int(json.loads(info)["child-pid"])
    except (ValueError, KeyError, TypeError):
        raise SandboxError("BACKEND_UNAVAILABLE", "bubblewrap did not start (see the server log)") from None
    await _loopback_up(pid)
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    try:
        with open(log, "wb") as stderr:
            process = await anyio.open_process(
                ["slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback",
                 "--ready-fd", str(ready_w), "--exit-fd", str(exit_r), str(pid), "tap0"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, pass_fds=(ready_w, exit_r),
            )
    except OSError as exc:
        for fd in (ready_r, exit_w):
            os.close(fd)
        raise SandboxError("BACKEND_UNAVAILABLE", f"could not start slirp4netns: {exc}") from exc
    finally:
        os.close(ready_w)
        os.close(exit_r)
    slirp = Slirp(process, exit_w)
    ready = b""
    try:
        with anyio.move_on_after(START_TIMEOUT):
            ready = await _read_until(ready_r, lambda data: data == b"1")
    except BaseException:
        await slirp.close()
        raise
    finally:
        os.close(ready_r)
    if ready != b"1":
        await slirp.close()
        problem = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no reason given"]
        raise SandboxError("BACKEND_UNAVAILABLE", f"slirp4netns could not connect the sandbox: {problem[0]}")
    return slirp
