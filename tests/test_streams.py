"""Byte streams between the host and TCP connections in the sandbox (streams.py), on every backend:
real servers in the sandbox, reached through open_stream, and real clients in the sandbox, reaching
host handlers through listen."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream

from mcp_sandbox.errors import SandboxError
from mcp_sandbox.sandbox import Sandbox

from .helpers import eventually, memory_kib, reset_peak_rss

pytestmark = pytest.mark.anyio

MB = 1_000_000

# A TCP server in the sandbox on a free loopback port: "echo" sends back what it gets, "source N"
# sends N bytes and ends; it prints the port it listens on.
SERVER = r"""
import socket, sys, threading
mode = sys.argv[1]
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(64)
print("listening", s.getsockname()[1], flush=True)
def serve(c):
    with c:
        if mode == "echo":
            while True:
                d = c.recv(1 << 16)
                if not d:
                    break
                c.sendall(d)
        else:
            left, block = int(sys.argv[2]), b"x" * (1 << 16)
            while left > 0:
                left -= c.send(block[:left])
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


@asynccontextmanager
async def sandbox_of(manager_factory: Any) -> AsyncIterator[tuple[Any, Sandbox]]:
    async with manager_factory() as manager:
        yield manager, await manager.create()


async def server(sandbox: Sandbox, *args: str) -> int:
    """Start SERVER in the sandbox; the port it listens on."""
    await sandbox.write_file("server.py", SERVER)
    started = await sandbox.start_process("python3 server.py " + " ".join(args))
    logs = await sandbox.get_process_logs(started.process_id, wait_for="listening", timeout=20)
    return int(logs.stdout.split()[1])


async def read_all(stream: ByteStream) -> bytes:
    received = bytearray()
    while True:
        try:
            received += await stream.receive()
        except anyio.EndOfStream:
            return bytes(received)


async def echo_through(stream: ByteStream, data: bytes) -> bytes:
    """Send ``data`` (then EOF) while reading what comes back, until its end."""
    back = b""

    async def read() -> None:
        nonlocal back
        back = await read_all(stream)

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        for i in range(0, len(data), 300_000):  # in pieces of a size no frame has
            await stream.send(data[i : i + 300_000])
        await stream.send_eof()
    return back


async def test_echo_of_5_mb_both_ways(manager_factory: Any) -> None:
    async with sandbox_of(manager_factory) as (_, sandbox):
        port = await server(sandbox, "echo")
        data = os.urandom(5 * MB)
        stream = await sandbox.open_stream(port)
        with anyio.fail_after(60):
            back = await echo_through(stream, data)
        assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest() and len(back) == len(data)
        await stream.aclose()
        with pytest.raises(SandboxError) as refused:  # nothing listens there
            await sandbox.open_stream(1)
        assert refused.value.code == "INVALID_ARGUMENT" and "port 1" in refused.value.message
        assert (await sandbox.exec("echo fine")).stdout == "fine\n"


async def test_bytes_sent_before_the_sandbox_connected_arrive_whole(manager_factory: Any) -> None:
    """open_stream(wait=False), as the doors open theirs: what is sent at once goes right behind
    the request to connect and waits in the agent until the connection is made, within the window
    (3 MB is three windows: the rest waits here for credit). Nothing listening breaks the stream
    with the reason, and nothing else."""
    async with sandbox_of(manager_factory) as (_, sandbox):
        port = await server(sandbox, "echo")
        data = os.urandom(3 * MB)
        with anyio.fail_after(60):
            back = await echo_through(await sandbox.open_stream(port, wait=False), data)
        assert back == data
        refused = await sandbox.open_stream(1, wait=False)
        with contextlib.suppress(anyio.BrokenResourceError):  # if the refusal came first
            await refused.send(b"GET / HTTP/1.1\r\n\r\n")
        with anyio.fail_after(10), pytest.raises(anyio.BrokenResourceError) as broken:
            await refused.receive()
        assert "nothing accepts connections on port 1" in str(broken.value)
        await refused.aclose()
        assert (await sandbox.exec("echo fine")).stdout == "fine\n"


async def test_twenty_streams_at_once_one_closed_midway_and_a_call_beside(manager_factory: Any) -> None:
    async with sandbox_of(manager_factory) as (_, sandbox):
        port = await server(sandbox, "echo")
        results: dict[int, bytes] = {}
        payloads = {i: os.urandom(200_000 + i) for i in range(20)}

        async def one(i: int) -> None:
            stream = await sandbox.open_stream(port)
            results[i] = await echo_through(stream, payloads[i])
            await stream.aclose()

        async def aborted() -> None:
            stream = await sandbox.open_stream(port)
            await stream.send(b"a" * 100_000)
            await stream.aclose()  # abort, unread: the others go on
            with pytest.raises(anyio.ClosedResourceError):
                await stream.receive()

        async def meanwhile() -> None:  # busy streams do not hold up tool calls
            await anyio.sleep(0.2)
            started = time.monotonic()
            assert (await sandbox.exec("echo meanwhile")).stdout == "meanwhile\n"
            assert time.monotonic() - started < 10

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(aborted)
                tg.start_soon(meanwhile)
                for i in payloads:
                    tg.start_soon(one, i)
        assert results == payloads


async def test_a_slow_reader_holds_a_window_and_blocks_nothing(manager_factory: Any) -> None:
    async with sandbox_of(manager_factory) as (_, sandbox):
        size = 50 * MB
        port = await server(sandbox, "source", str(size))
        before = memory_kib("VmRSS")
        assert reset_peak_rss()
        stream = await sandbox.open_stream(port)
        await anyio.sleep(2)  # the sandbox's server sends as fast as it can; nobody reads here
        started = time.monotonic()
        assert (await sandbox.exec("echo meanwhile")).stdout == "meanwhile\n"
        assert time.monotonic() - started < 5
        growth_mb = (memory_kib("VmHWM") - before) / 1024
        assert growth_mb < 20, f"the server grew by {growth_mb:.0f} MB for an unread stream"
        with anyio.fail_after(60):
            assert len(await read_all(stream)) == size
        await stream.aclose()


CLIENT = r"""
import socket, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
c.sendall(sys.argv[2].encode())
c.shutdown(socket.SHUT_WR)
answer = b""
while True:
    d = c.recv(65536)
    if not d:
        break
    answer += d
print(answer.decode())
"""


async def test_listen_hands_connections_to_the_host(manager_factory: Any) -> None:
    async with sandbox_of(manager_factory) as (_, sandbox):
        handled: list[bytes] = []

        async def shout(stream: ByteStream) -> None:
            data = await read_all(stream)
            handled.append(data)
            await stream.send(data.upper() + b"!")  # closed by the sandbox after return

        with pytest.raises(SandboxError):  # a kind without a handler
            await sandbox.listen("nobody", 0)
        sandbox.on_stream("shout", shout)
        port = await sandbox.listen("shout", 0)
        assert 0 < port < 65536
        await sandbox.write_file("client.py", CLIENT)
        for word in ("hello", "again"):
            result = await sandbox.exec(f"python3 client.py {port} {word}")
            assert result.stdout == word.upper() + "!\n", result
        assert handled == [b"hello", b"again"]
        taken = await sandbox.exec(f"python3 -c 'import socket; socket.socket().bind((\"127.0.0.1\", {port}))'")
        assert taken.exit_code != 0  # the agent holds the port


async def test_streams_end_when_their_sandbox_is_destroyed(manager_factory: Any) -> None:
    async with sandbox_of(manager_factory) as (manager, sandbox):
        port = await server(sandbox, "echo")
        stream = await sandbox.open_stream(port)
        await stream.send(b"ping")
        assert await stream.receive() == b"ping"
        waiting: list[str] = []

        async def wait_forever(incoming: ByteStream) -> None:
            waiting.append("started")
            try:
                await anyio.sleep_forever()  # cancelled when the sandbox goes
            finally:
                waiting.append("ended")

        sandbox.on_stream("wait", wait_forever)
        listening = await sandbox.listen("wait", 0)
        await sandbox.write_file("client.py", CLIENT)
        await sandbox.start_process(f"python3 client.py {listening} hi")
        assert await eventually(lambda: waiting == ["started"])
        await manager.destroy(sandbox.id)
        with pytest.raises(anyio.BrokenResourceError):
            await stream.receive()
        with pytest.raises(anyio.BrokenResourceError):
            await stream.send(b"more")
        assert await eventually(lambda: waiting == ["started", "ended"])
        with pytest.raises(SandboxError) as gone:
            await sandbox.open_stream(port)
        assert gone.value.code == "BACKEND_UNAVAILABLE"


async def test_calls_cancelled_mid_transfer_leave_the_channel_whole(manager_factory: Any) -> None:
    """A frame is never cut in the middle: big writes cancelled at any moment, and the channel
    still carries everything else correctly."""
    async with sandbox_of(manager_factory) as (_, sandbox):
        port = await server(sandbox, "echo")
        data = os.urandom(20 * MB)
        with anyio.fail_after(60):  # a garbled channel would hang
            for delay in (0.01, 0.05, 0.2):
                with anyio.move_on_after(delay):
                    await sandbox.write_file("cancelled.bin", data)
                stream = await sandbox.open_stream(port)
                with anyio.move_on_after(delay):
                    await stream.send(data)
                await stream.aclose()
                assert (await sandbox.exec("echo whole")).stdout == "whole\n"
            small = os.urandom(3 * MB)
            await sandbox.write_file("after.bin", small)
            assert await sandbox.read_file_bytes("after.bin") == small
