"""The Docker backend: hardening, limits, labels, cleanup and images.

The behavioural suite runs on Docker too (conftest.BACKENDS); these tests check what only Docker
promises. They never send traffic outside this machine.
"""

from __future__ import annotations

import importlib.util
import io
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from mcp_sandbox.agent.bundle import write_bundle
from mcp_sandbox.backends import docker as docker_backend
from mcp_sandbox.backends import docker_stream
from mcp_sandbox.backends.local import LocalBackend
from mcp_sandbox.backends.ownership import owner_alive, process_start_time, server_instance
from mcp_sandbox.errors import SandboxError
from mcp_sandbox.manager import make_backend

from .conftest import DOCKER_IMAGE, Tools, require_backend, settings_for
from .agent_fds import agent_pid, channel_ends
from .test_hostile_agent import OPEN_EVERY_FD

pytestmark = pytest.mark.anyio

COMMAND = str(Path(sys.executable).parent / "mcp-sandbox")
ALLOWED_CAPS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6, "SETUID": 7}


@pytest.fixture
def backend() -> str:
    """Every test here runs on Docker only (overrides conftest's parametrised fixture)."""
    require_backend("docker")
    return "docker"


@pytest.fixture
def client(backend: str) -> Any:
    return docker_backend.connect()


ROOT_IMAGE = "mcp-sandbox-test-root"
# Names the test run that built an image (ownership.server_instance: host, pid, start time), so a
# later run can remove what a run that never reached its teardown (killed, interrupted) left.
LABEL_TEST_RUN = "mcp-sandbox.test-run"


@pytest.fixture(scope="session")
def root_image() -> Iterator[str]:
    """The test image running as root, as python:3.12-slim and most images do (built offline)."""
    require_backend("docker")
    client = docker_backend.connect()
    remove_stale_test_images(client)
    tag = f"{ROOT_IMAGE}:{os.getpid()}"  # test runs on one engine must not share it
    client.images.build(fileobj=io.BytesIO(f"FROM {DOCKER_IMAGE}\nUSER root\n".encode()), tag=tag, rm=True,
                        labels={LABEL_TEST_RUN: server_instance()})
    try:
        yield tag
    finally:
        remove_image(client, tag)


def remove_image(client: Any, tag: str) -> None:
    """Remove a test image; only its absence is not an error (a failure must show, not leave it)."""
    try:
        client.images.remove(tag, force=True)
    except docker_backend.sdk().errors.ImageNotFound:
        pass


def remove_stale_test_images(client: Any) -> None:
    """Remove root images of test runs that are gone: labelled ones by their run, older unlabelled
    ones by the pid in their tag."""
    for image in client.images.list(name=ROOT_IMAGE):
        run = image.labels.get(LABEL_TEST_RUN)
        for tag in image.tags:
            pid = tag.rpartition(":")[2]
            gone = owner_alive(run) is False if run else pid.isdigit() and not os.path.exists(f"/proc/{pid}")
            if gone:
                remove_image(client, tag)


def test_root_images_of_test_runs_that_are_gone_are_removed(client: Any) -> None:
    # A run that never reached its teardown left mcp-sandbox-test-root:<pid> behind on CI.
    dead = f"{socket.gethostname()}:{os.getpid()}:0"  # this pid, another start time: gone
    stale = f"{ROOT_IMAGE}:stale-{os.getpid()}"
    client.images.build(fileobj=io.BytesIO(f"FROM {DOCKER_IMAGE}\nUSER root\n".encode()), tag=stale, rm=True,
                        labels={LABEL_TEST_RUN: dead})
    try:
        remove_stale_test_images(client)
        assert stale not in {tag for image in client.images.list(name=ROOT_IMAGE) for tag in image.tags}
    finally:
        remove_image(client, stale)


def containers(client: Any, **labels: str) -> list[dict[str, Any]]:
    filters = [f"{key}={value}" for key, value in labels.items()]
    found: list[dict[str, Any]] = client.api.containers(all=True, filters={"label": filters})
    return found


def of_sandbox(client: Any, sandbox_id: str) -> list[dict[str, Any]]:
    return containers(client, **{docker_backend.LABEL_SANDBOX: sandbox_id})


def status_fields(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def wait_until(condition: Any, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


CGROUP = {
    "pids": "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max",
    "memory": "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
    "cpu": "cat /sys/fs/cgroup/cpu.max 2>/dev/null || "
    "echo $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)",
}

SPAWN_UNTIL_REFUSED = """python3 -c '
import subprocess
children = []
try:
    for _ in range(200):
        children.append(subprocess.Popen(["sleep", "30"]))
except OSError as exc:
    print("stopped", len(children), exc.errno)
for child in children:
    child.kill()
'"""


async def test_sandbox_is_a_container_with_workspace_and_image_environment(mcp: Tools) -> None:
    created = await mcp("create_sandbox", env={"MPLBACKEND": "svg", "EXTRA": "1"})
    assert (created["backend"], created["isolation"], created["workspace"]) == ("docker", "docker", "/workspace")
    assert created["network"] is False
    sid = created["sandbox_id"]
    # The image's environment is the lowest layer; the sandbox's env goes on top.
    r = await mcp.sh("pwd; echo $MPLBACKEND $EXTRA; echo $HOME; id -un; cat /etc/hostname", sandbox_id=sid)
    assert r["stdout"] == "/workspace\nsvg 1\n/home/sandbox\nsandbox\nsandbox\n"
    r = await mcp.sh("echo $MPLBACKEND; echo data > f.txt && cat /workspace/f.txt")
    assert r["stdout"] == "Agg\ndata\n"
    info = await mcp("sandbox_info", sandbox_id=sid)
    assert info["workspace"] == "/workspace" and info["isolation"] == "docker"


async def test_no_network_interface_but_loopback(mcp: Tools) -> None:
    assert (await mcp.sh("ls /sys/class/net"))["stdout"] == "lo\n"
    # Asking is not enough: this server was not started with --network.
    created = await mcp("create_sandbox", network=True)
    assert created["network"] is False
    r = await mcp.sh("ls /sys/class/net", sandbox_id=created["sandbox_id"])
    assert r["stdout"] == "lo\n"


async def test_network_only_when_the_server_allows_and_the_sandbox_asks(manager_factory: Any) -> None:
    async with manager_factory(network=True) as manager:
        online = await manager.create(network=True)
        offline = await manager.create()
        assert online.network and not offline.network
        interfaces = (await online.exec("ls /sys/class/net")).stdout.split()
        assert "lo" in interfaces and len(interfaces) > 1
        assert (await offline.exec("ls /sys/class/net")).stdout == "lo\n"


async def test_capabilities_dropped_and_no_new_privileges(mcp: Tools) -> None:
    status = status_fields((await mcp.sh("cat /proc/self/status"))["stdout"])
    allowed = sum(1 << bit for bit in ALLOWED_CAPS.values())
    assert set(ALLOWED_CAPS) == set(docker_backend.CAPABILITIES)
    assert int(status["CapBnd"], 16) == allowed
    assert int(status["CapEff"], 16) & ~allowed == 0
    assert status["NoNewPrivs"] == "1"
    # setuid binaries cannot raise privileges either.
    r = await mcp.sh("su -c id root </dev/null 2>&1 || true")
    assert "uid=0" not in r["stdout"]


async def test_root_in_a_sandbox_owns_files_but_holds_nothing_more(manager_factory: Any, root_image: str) -> None:
    async with manager_factory(image=root_image) as manager:
        sandbox = await manager.create()
        r = await sandbox.exec("id -u; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status")
        uid, cap_eff, no_new_privs = r.stdout.splitlines()
        assert uid == "0"
        assert int(cap_eff.split()[1], 16) == sum(1 << bit for bit in ALLOWED_CAPS.values())
        assert no_new_privs.split()[1] == "1"
        r = await sandbox.exec("touch f && chown 1000:1000 f && chmod 600 f && stat -c '%u %a' f && cat f && echo ok")
        assert r.stdout == "1000 600\nok\n", r.stderr
        # Dropped: device nodes, raw sockets, changing the hostname or mounting.
        r = await sandbox.exec("mknod /tmp/null c 1 3")
        assert r.exit_code != 0 and "not permitted" in r.stderr
        r = await sandbox.exec("python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)'")
        assert r.exit_code != 0 and "PermissionError" in r.stderr
        r = await sandbox.exec("hostname other")
        assert r.exit_code != 0
        # Not even root in the sandbox (DAC_OVERRIDE, no SYS_PTRACE) opens the agent's channel.
        channel = set(channel_ends(agent_pid(sandbox)).values())
        report = json.loads((await sandbox.exec("python3 - 1", stdin=OPEN_EVERY_FD)).stdout)
        opened = {inode for _, _, inode, _ in report if inode is not None}
        assert opened and not opened & channel


async def test_default_limits(mcp: Tools, client: Any) -> None:
    created = await mcp("create_sandbox")
    sid = created["sandbox_id"]
    assert (await mcp.sh(CGROUP["pids"], sandbox_id=sid))["stdout"] == "512\n"
    assert (await mcp.sh(CGROUP["memory"], sandbox_id=sid))["stdout"] == f"{2 << 30}\n"
    quota, period = (await mcp.sh(CGROUP["cpu"], sandbox_id=sid))["stdout"].split()
    assert int(quota) == int(period)
    host_config = client.api.inspect_container(of_sandbox(client, sid)[0]["Id"])["HostConfig"]
    assert host_config["NetworkMode"] == "none"
    assert not host_config["Init"]  # the agent is pid 1: docker-init would hold its channel
    assert host_config["AutoRemove"] is True
    assert host_config["SecurityOpt"] == ["no-new-privileges"]
    assert host_config["CapDrop"] == ["ALL"]
    assert (host_config["PidsLimit"], host_config["Memory"], host_config["NanoCpus"]) == (512, 2 << 30, 10**9)


async def test_limits_follow_the_options(manager_factory: Any) -> None:
    async with manager_factory(pids_limit=64, memory="256m", cpus=0.5) as manager:
        # The engine enforces these; nothing bounds a container's writable layer.
        assert manager.limits()["enforced"] == {"memory": True, "cpus": True, "pids": True, "disk": False}
        sandbox = await manager.create()
        assert (await sandbox.exec(CGROUP["pids"])).stdout == "64\n"
        assert (await sandbox.exec(CGROUP["memory"])).stdout == f"{256 << 20}\n"
        quota, period = (await sandbox.exec(CGROUP["cpu"])).stdout.split()
        assert int(quota) * 2 == int(period)
        # The pids limit holds: process 64 cannot start (EAGAIN), and the sandbox survives.
        r = await sandbox.exec(SPAWN_UNTIL_REFUSED, timeout=60)
        stopped, count, errno = r.stdout.split()
        assert stopped == "stopped" and int(count) < 64 and errno == "11"
        assert (await sandbox.exec("echo alive")).stdout == "alive\n"


async def test_containers_are_labelled(mcp: Tools, client: Any) -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    sid = (await mcp("create_sandbox"))["sandbox_id"]
    [container] = of_sandbox(client, sid)
    labels = container["Labels"]
    assert labels[docker_backend.LABEL_MANAGED] == "true"
    assert labels[docker_backend.LABEL_SANDBOX] == sid
    pid = os.getpid()
    assert labels[docker_backend.LABEL_SERVER] == f"{socket.gethostname()}:{pid}:{process_start_time(pid)}"
    created = datetime.fromisoformat(labels[docker_backend.LABEL_CREATED])
    assert before <= created <= datetime.now(timezone.utc)
    assert container["Names"] == [f"/mcp-sandbox-{sid}"]


async def test_destroy_removes_the_container_at_once(mcp: Tools, client: Any) -> None:
    sid = (await mcp("create_sandbox"))["sandbox_id"]
    await mcp.sh("sleep 1000 &", sandbox_id=sid)
    assert len(of_sandbox(client, sid)) == 1
    started = time.monotonic()
    await mcp("destroy", sandbox_id=sid)
    assert time.monotonic() - started < 5  # no 10-second stop timeout
    assert of_sandbox(client, sid) == []


async def test_manager_exit_removes_every_container(manager_factory: Any, client: Any) -> None:
    async with manager_factory() as manager:
        ids = [(await manager.create()).id for _ in range(3)]
        for sid in ids:
            await manager.sandboxes[sid].exec("sleep 1000 &")
        assert all(len(of_sandbox(client, sid)) == 1 for sid in ids)
    assert all(of_sandbox(client, sid) == [] for sid in ids)


def server_params(tmp_path: Path) -> StdioServerParameters:
    # --workspace-root is unused by Docker; here it marks the server process to find its pid.
    return StdioServerParameters(
        command=COMMAND,
        args=["--backend", "docker", "--image", DOCKER_IMAGE, "--workspace-root", str(tmp_path)],
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")},
    )


def server_pid(tmp_path: Path) -> int:
    marker = f"--workspace-root\0{tmp_path}\0".encode()
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if marker in f.read() + b"\0":
                    found.append(int(name))
        except (OSError, ValueError):
            continue
    assert len(found) == 1, found
    return found[0]


async def test_stdio_server_close_and_sigterm_leave_no_container(tmp_path: Path, client: Any) -> None:
    async with Client(server_params(tmp_path)) as session:
        sid = (await Tools(session, "docker")("create_sandbox"))["sandbox_id"]
        assert len(of_sandbox(client, sid)) == 1
    assert wait_until(lambda: of_sandbox(client, sid) == [])
    with anyio.CancelScope() as scope:
        async with Client(server_params(tmp_path)) as session:
            sid = (await Tools(session, "docker")("create_sandbox"))["sandbox_id"]
            os.kill(server_pid(tmp_path), signal.SIGTERM)
            assert wait_until(lambda: of_sandbox(client, sid) == [])
            scope.cancel()


async def test_sigkill_of_the_server_leaves_no_container(tmp_path: Path, client: Any) -> None:
    with anyio.CancelScope() as scope:
        async with Client(server_params(tmp_path)) as session:
            mcp = Tools(session, "docker")
            sid = (await mcp("create_sandbox"))["sandbox_id"]
            await mcp.sh("sleep 1000 &", sandbox_id=sid)
            assert len(of_sandbox(client, sid)) == 1
            os.kill(server_pid(tmp_path), signal.SIGKILL)
            # The engine closes the agent's stdin; the agent exits; the engine removes the container.
            assert wait_until(lambda: of_sandbox(client, sid) == [])
            scope.cancel()


async def test_server_start_reaps_containers_of_servers_that_are_gone(manager_factory: Any, client: Any) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    owners = {
        "dead": f"{host}:{dead.pid}:{process_start_time(os.getpid())}",
        # pid 1 runs, but it is not the process that started then.
        "reused_pid": f"{host}:1:{int(process_start_time(1) or 0) + 1}",
        "alive": f"{host}:1:{process_start_time(1)}",
    }
    made = {}
    try:
        for name, owner in owners.items():
            made[name] = client.api.create_container(
                DOCKER_IMAGE, command=["sleep", "1000"],
                labels={docker_backend.LABEL_MANAGED: "true", docker_backend.LABEL_SERVER: owner,
                        docker_backend.LABEL_SANDBOX: f"sbx_reap_{name}"},
            )["Id"]
        client.api.start(made["dead"])  # one that still runs, one that never started
        async with manager_factory():
            pass
        remaining = {c["Id"] for c in containers(client, **{docker_backend.LABEL_MANAGED: "true"})}
        assert made["dead"] not in remaining and made["reused_pid"] not in remaining
        assert made["alive"] in remaining
    finally:
        for container_id in made.values():
            docker_backend.remove_container(client, container_id)


async def test_image_without_python3_is_a_clear_error(manager_factory: Any, client: Any) -> None:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    image = f"mcp-sandbox-test-nopython:{os.getpid()}"
    client.api.import_image_from_data(data.getvalue(), repository=image.split(":")[0], tag=str(os.getpid()))
    try:
        async with manager_factory(image=image) as manager:
            started = time.monotonic()
            with pytest.raises(SandboxError) as caught:
                await manager.create()
            assert time.monotonic() - started < 30
            assert caught.value.code == "BACKEND_UNAVAILABLE"
            assert image in caught.value.message and "python3" in caught.value.message
            assert manager.sandboxes == {}
        assert containers(client, **{docker_backend.LABEL_SERVER: docker_backend.server_instance()}) == []
    finally:
        remove_image(client, image)


async def test_missing_image_that_cannot_be_pulled(manager_factory: Any) -> None:
    # A registry on a closed local port: the pull fails without leaving this machine.
    image = "127.0.0.1:9/mcp-sandbox-missing:never"
    async with manager_factory(image=image) as manager:
        with pytest.raises(SandboxError) as caught:
            await manager.create()
    assert caught.value.code == "BACKEND_UNAVAILABLE"
    assert image in caught.value.message and "--image" in caught.value.message


async def test_runsc_runtime(manager_factory: Any, client: Any) -> None:
    if "runsc" not in (client.info().get("Runtimes") or {}):
        pytest.skip("Docker does not list the runsc (gVisor) runtime; .ci/docker-setup.sh registers it when available")
    async with manager_factory(runtime="runsc") as manager:
        sandbox = await manager.create()
        assert sandbox.isolation == "gvisor"
        r = await sandbox.exec("dmesg | head -n 3; pwd")
        assert "gVisor" in r.stdout and r.stdout.endswith("/workspace\n")
        [container] = of_sandbox(client, sandbox.id)
        assert client.api.inspect_container(container["Id"])["HostConfig"]["Runtime"] == "runsc"


async def test_auto_backend_is_docker_when_an_engine_answers(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    auto = settings_for("auto", tmp_path)
    assert isinstance(make_backend(auto), docker_backend.DockerBackend)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    started = time.monotonic()
    assert isinstance(make_backend(auto), LocalBackend)
    assert time.monotonic() - started < 5
    with pytest.raises(SandboxError) as caught:
        make_backend(settings_for("docker", tmp_path))
    assert caught.value.code == "BACKEND_UNAVAILABLE" and "no Docker engine" in caught.value.message


async def test_image_build_command(tmp_path: Path) -> None:
    result = await anyio.run_process([COMMAND, "image", "build", "--help"])
    assert b"--tag" in result.stdout and b"mcp-sandbox:latest" in result.stdout
    bad = await anyio.run_process([COMMAND, "image", "nope"], check=False)
    assert bad.returncode == 2


async def test_attach_stream_demultiplexes_stdout_and_keeps_stderr(caplog: pytest.LogCaptureFixture) -> None:
    """The framing the engine uses, over a real socket pair, cut at awkward places."""
    ours, engine = socket.socketpair()
    stream = docker_stream.ContainerStream(docker_stream.BlockingSocketStream(ours), "sbx_test")

    def frame(kind: int, payload: bytes) -> bytes:
        return bytes([kind, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload

    wire = frame(1, b'{"a":') + frame(2, b"warn") + frame(2, b"ing\n") + frame(1, b"1}\nrest") + frame(1, b"\n")
    for i in range(0, len(wire), 3):
        engine.sendall(wire[i : i + 3])
    engine.shutdown(socket.SHUT_WR)
    received = b""
    with pytest.raises(anyio.EndOfStream):
        while True:
            received += await stream.receive()
    assert received == b'{"a":1}\nrest\n'
    assert bytes(stream.stderr_tail) == b"warning\n"
    assert "sbx_test: warning" in caplog.text
    await stream.send(b"to stdin")
    assert engine.recv(100) == b"to stdin"
    await stream.aclose()
    engine.close()


async def test_attach_stream_read_into_buffers_takes_the_framing_out_in_place() -> None:
    """receive_into (the channel's way) reads what the socket has at once and takes the engine's
    headers and stderr out of the caller's buffer: the same stdout whatever the reads' sizes."""
    ours, engine = socket.socketpair()
    stream = docker_stream.ContainerStream(docker_stream.PolledSocketStream(ours), "sbx_test")
    payload = os.urandom(300_000)
    wire = bytearray()
    for i in range(0, len(payload), 32768):  # as the engine cuts it, with stderr between
        wire += bytes([1, 0, 0, 0]) + len(payload[i : i + 32768]).to_bytes(4, "big") + payload[i : i + 32768]
        wire += bytes([2, 0, 0, 0, 0, 0, 0, 3]) + b"e\n!"
    received = bytearray()

    async def feed() -> None:
        for i in range(0, len(wire), 70001):  # cuts in headers and payloads alike
            await anyio.to_thread.run_sync(engine.sendall, wire[i : i + 70001])
        engine.shutdown(socket.SHUT_WR)

    async with anyio.create_task_group() as tg:
        tg.start_soon(feed)
        with pytest.raises(anyio.EndOfStream):
            for size in itertools.cycle((5, 1 << 20, 40000)):
                buffer = memoryview(bytearray(size))
                received += buffer[: await stream.receive_into(buffer)]
    assert received == payload
    assert bytes(stream.stderr_tail).startswith(b"e\n!e\n!")
    await stream.aclose()
    engine.close()


def test_agent_bundle_holds_the_agent_only() -> None:
    bundle = write_bundle()
    size = int(bundle[:10])
    entries = json.loads(bundle[10 : 10 + size])
    names = [name for name, _ in entries]
    assert 10 + size + sum(length for _, length in entries) == len(bundle)
    assert "agent/main.py" in names and "agent/__init__.py" in names and "agent/workers/node_worker.js" in names
    assert importlib.util.cache_from_source("agent/main.py") in names
    assert not [n for n in names if "/tests" in n or (n.endswith(".pyc") and "cpython" not in n)]
