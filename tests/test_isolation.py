"""What a local (bubblewrap) sandbox can see and do on its host, probed from inside through the tools.

Each test does what an attacker in the sandbox would try: read the host's secrets and homes, talk
to its sockets, write its kernel settings, be host root, make namespaces or reach kernel interfaces
that are not namespaced. Mounts are checked on Docker too.
"""

from __future__ import annotations

import os
import platform
import stat
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import pytest

from mcp_sandbox.backends.local import AGENT_HOST_PATHS
from mcp_sandbox.errors import SandboxError
from mcp_sandbox.manager import SandboxManager

from .conftest import Tools, require_backend, settings_for, unavailable
from .helpers import cmdline, pids_with

pytestmark = pytest.mark.anyio

COMMAND = str(Path(sys.executable).parent / "mcp-sandbox")
# The user a sandbox runs as: nobody when the tests run as root (CI), else the tests' own user.
SANDBOX_UID = 65534 if os.geteuid() == 0 else os.getuid()
# System call numbers (x86_64, aarch64) from the kernel's tables.
SYSCALLS = {"keyctl": (250, 219), "io_uring_setup": (425, 425), "bpf": (321, 280), "perf_event_open": (298, 241)}


@pytest.fixture
def backend() -> str:
    require_backend("bwrap")
    return "bwrap"


def host_sockets() -> list[str]:
    """Unix sockets of the host under /run and /var/run (Docker, containerd, D-Bus, ...)."""
    found = []
    for top in ("/run", "/var/run"):
        for root, _dirs, files in os.walk(top):
            for name in files:
                path = os.path.join(root, name)
                try:
                    if stat.S_ISSOCK(os.lstat(path).st_mode):
                        found.append(path)
                except OSError:
                    pass
    return found


def in_agent_paths(path: str) -> bool:
    """The agent's package and interpreter are shown where they are, with the directories above."""
    return any(p == path or p.startswith(path + "/") or path.startswith(p + "/") for p in AGENT_HOST_PATHS)


async def test_host_files_homes_and_secrets_are_out_of_sight(mcp: Tools, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.write_text("host secret")
    r = await mcp.sh(f"cat {canary}; ls /home /srv /mnt /media /opt /var/lib /var/log 2>&1 | grep -v 'No such'")
    assert "host secret" not in r["stdout"] and r["stdout"] == ""
    found = await mcp.sh("find /root /home -maxdepth 5 2>/dev/null")
    assert [p for p in found["stdout"].split() if not in_agent_paths(p)] == []
    listing = await mcp.sh("ls -A /")
    assert set(listing["stdout"].split()) <= {
        "bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "dev", "proc", "run", "tmp", "var",
        "workspace", *[p.split("/")[1] for p in AGENT_HOST_PATHS],
    }
    r = await mcp.sh("cat /etc/shadow /etc/gshadow; ls -A /etc/ssl/private; grep -c . /etc/passwd")
    assert "root:" not in r["stdout"] and int(r["stdout"].split()[-1]) > 0  # passwd stays readable
    assert os.path.exists("/etc/shadow") and "root:" in Path("/etc/shadow").read_text()  # the host does have one


async def test_no_host_socket_is_reachable(mcp: Tools) -> None:
    sockets = host_sockets()
    assert sockets, "this host has no unix socket under /run to try"  # Docker's, at least, on CI
    probe = (
        "import socket, sys\n"
        "for path in sys.argv[1:]:\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        "    try:\n"
        "        s.connect(path); print('CONNECTED', path)\n"
        "    except OSError as e:\n"
        "        print('refused', path, e.errno)\n"
    )
    await mcp("write_file", path="probe.py", content=probe)
    r = await mcp.sh("python3 probe.py " + " ".join(sockets))
    assert "CONNECTED" not in r["stdout"] and r["stdout"].count("refused") == len(sockets)
    # No socket anywhere in the view but the sandbox's own, and none of the host's in /proc/net/unix
    # (abstract sockets belong to the network namespace).
    found = await mcp.sh("find / -path /proc -prune -o -path /usr -prune -o -type s -print 2>/dev/null")
    assert [p for p in found["stdout"].split() if not p.startswith(("/tmp/", "/workspace/"))] == []
    unix = (await mcp.sh("cat /proc/net/unix"))["stdout"]
    assert not any(path in unix for path in sockets)


async def test_kernel_settings_are_read_only(mcp: Tools) -> None:
    knob = Path("/proc/sys/kernel/printk_ratelimit")
    before = knob.read_text()
    r = await mcp.sh(f"echo 6 > {knob}; echo '|/bin/false' > /proc/sys/kernel/core_pattern; cat {knob}")
    assert r["exit_code"] == 0 and "Read-only file system" in r["stderr"]
    assert r["stdout"] == before and knob.read_text() == before
    r = await mcp.sh("echo h > /proc/sysrq-trigger; echo 1 > /proc/irq/default_smp_affinity")
    assert "Read-only file system" in r["stderr"] or "No such file" in r["stderr"]


async def test_sandbox_runs_as_an_unprivileged_host_user(mcp: Tools, tmp_path: Path) -> None:
    r = await mcp.sh("id -u; id -g; cut -c1-10 /proc/self/uid_map")
    uid, gid, inside = r["stdout"].split()
    assert int(uid) == SANDBOX_UID and inside != "0"  # no root in the sandbox at all
    marker = f"{os.getpid()}{os.urandom(3).hex()}"
    await mcp("start_process", command=f"exec -a sleeper-{marker} sleep 300", process_id="sleeper")
    await mcp("write_file", path="made-by-sandbox.txt", content="x")
    sandbox_id = (await mcp("sandbox_info"))["sandbox_id"]
    sleepers = [str(pid) for pid in pids_with(marker)]
    assert sleepers, "the sandbox's process is not visible on the host"
    ours = [str(pid) for pid in pids_with(sandbox_id)]
    # As root, the server's own child is the bubblewrap that builds the view (and the init of its
    # pid namespace, a copy): it runs no sandbox code.
    outer = {cmdline(pid) for pid in ours if status_of(pid)["PPid"].strip() == str(os.getpid())}
    for pid in set(sleepers + ours) - {pid for pid in ours if cmdline(pid) in outer}:
        status = status_of(pid)
        assert {int(u) for u in status["Uid"].split()} == {SANDBOX_UID}, (pid, cmdline(pid)[:200])
        assert {int(g) for g in status["Gid"].split()} == {int(gid)}
        assert status["Groups"].split() in ([], [gid])  # none of the server's groups (docker, ...)
    for pid in sleepers:  # in a user namespace of its own, where nothing maps to host root
        assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
        host_ids = [line.split()[1] for line in Path(f"/proc/{pid}/uid_map").read_text().splitlines()]
        assert host_ids == [str(SANDBOX_UID)]
    made = tmp_path / "sandboxes" / sandbox_id / "workspace" / "made-by-sandbox.txt"
    assert made.stat().st_uid == SANDBOX_UID


def status_of(pid: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())




async def test_sandbox_user_setting_and_cleanup_of_what_it_locked(
    mcp_with: Callable[..., AbstractAsyncContextManager[Tools]], tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        unavailable("--sandbox-user applies to a server running as root")  # CI runs as root
    root = tmp_path / "sandboxes"
    async with mcp_with(sandbox_user="4242:4343") as mcp:
        r = await mcp.sh("id -u; id -g; mkdir -p locked/in && touch locked/in/f && chmod 000 locked locked/in")
        assert r["stdout"].split() == ["4242", "4343"]
        assert [p.stat().st_uid for p in root.glob("*/workspace")] == [4242]
    assert list(root.iterdir()) == []  # the server (root) removed what the sandbox user locked
    with pytest.raises(SandboxError) as refused:
        async with SandboxManager(settings_for("bwrap", root, sandbox_user="root")):
            pass
    assert refused.value.code == "INVALID_ARGUMENT" and "never run as root" in refused.value.message


async def test_seccomp_refuses_namespaces_keyrings_and_io_uring(mcp: Tools) -> None:
    column = {"x86_64": 0, "aarch64": 1}.get(platform.machine())
    if column is None:
        pytest.skip(f"no seccomp filter for {platform.machine()}")
    r = await mcp.sh("unshare -U true; echo unshare=$?; unshare -r true; echo root=$?; setarch -R true; echo setarch=$?")
    assert "unshare=0" not in r["stdout"] and "root=0" not in r["stdout"] and "setarch=0" not in r["stdout"]
    probe = "import ctypes, os, sys\nlibc = ctypes.CDLL(None, use_errno=True)\n"
    for name, numbers in SYSCALLS.items():
        probe += f"print({name!r}, libc.syscall({numbers[column]}, 0, 0, 0, 0), os.strerror(ctypes.get_errno()))\n"
    probe += "pid = os.fork()\nos._exit(0) if pid == 0 else print('fork', os.waitpid(pid, 0)[1])\n"
    await mcp("write_file", path="calls.py", content=probe)
    lines = (await mcp.sh("python3 calls.py"))["stdout"].splitlines()
    assert lines == [f"{name} -1 Operation not permitted" for name in SYSCALLS] + ["fork 0"]


def test_seccomp_filter_builds_for_both_architectures() -> None:
    """aarch64 cannot run here: its program must at least assemble (jumps of classic BPF are short)."""
    from mcp_sandbox.backends import seccomp

    for machine in ("x86_64", "aarch64"):
        program = seccomp.build(machine, "6.1.0")
        assert program is not None and len(program) % 8 == 0
        assert len(seccomp.build(machine, "4.4.0") or b"") > len(program)  # ptrace refused before 4.8
    assert seccomp.build("riscv64", "6.1.0") is None


async def test_python_node_git_venv_and_matplotlib_work(mcp: Tools) -> None:
    r = await mcp.sh(
        "set -e; python3 -m venv venv && venv/bin/pip --version >/dev/null && echo venv ok; "
        "node -e 'console.log(`node ${1 + 1}`)'; "
        "git init -q repo && cd repo && echo x > f && git add f && git -c user.name=t -c user.email=t@t commit -qm one "
        "&& git log --oneline | wc -l; cd ..; "
        "python3 -c \"import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as p; p.plot([1, 2]); p.savefig('f.png')\" "
        "&& test -s f.png && echo png ok",
        timeout=120,
    )
    assert r["stdout"].split("\n")[:4] == ["venv ok", "node 2", "1", "png ok"], r


@pytest.mark.parametrize("backend", ["bwrap", "docker"])
async def test_mounts_read_only_and_read_write(
    backend: str, mcp_with: Callable[..., AbstractAsyncContextManager[Tools]], tmp_path: Path
) -> None:
    require_backend(backend)
    project, output = tmp_path / "project", tmp_path / "output"
    project.mkdir()
    (project / "data.csv").write_text("a,b\n1,2\n")
    output.mkdir()
    output.chmod(0o777)  # the sandbox's user writes there: --sandbox-user here, the image's user on Docker
    async with mcp_with(mounts=[f"{project}:/data", f"{output}:/workspace/out:rw"]) as mcp:
        r = await mcp.sh("cat /data/data.csv; touch /data/new; echo made > /workspace/out/result.txt")
        assert r["stdout"] == "a,b\n1,2\n" and "Read-only file system" in r["stderr"]
        assert (output / "result.txt").read_text() == "made\n" and not (project / "new").exists()
        assert (await mcp("read_file", path="/data/data.csv"))["content"] == "a,b\n1,2\n"


async def test_mount_errors_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere"
    result = await anyio.run_process(
        [COMMAND, "--backend", "local", "--workspace-root", str(tmp_path / "root"), "--mount", f"{missing}:/data"],
        check=False, stdin=subprocess.DEVNULL,
    )
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and f"{missing} does not exist" in lines[0], lines
    bad = await anyio.run_process([COMMAND, "--mount", "relative-only"], check=False)
    assert bad.returncode == 2 and b"--mount" in bad.stderr and b"HOST:SANDBOX" in bad.stderr
    with pytest.raises(SandboxError) as refused:  # no isolation: the host's paths are all there anyway
        async with SandboxManager(settings_for("none", tmp_path / "r", mounts=[f"{tmp_path}:/data"])):
            pass
    assert refused.value.code == "INVALID_ARGUMENT"
    from mcp_sandbox.backends.docker import DockerBackend

    monkeypatch.setenv("DOCKER_HOST", "tcp://192.0.2.1:2375")  # an engine elsewhere: host paths are not there
    with pytest.raises(SandboxError) as remote:
        DockerBackend(settings_for("docker", tmp_path / "r", mounts=[f"{tmp_path}:/data"]))
    assert remote.value.code == "INVALID_ARGUMENT" and "tcp://192.0.2.1:2375" in remote.value.message


async def test_preflight_says_what_to_do_when_user_namespaces_are_off(tmp_path: Path) -> None:
    """A host that forbids user namespaces (here: bubblewrap's --disable-userns around the server)."""
    result = await anyio.run_process(
        [
            "bwrap", "--dev-bind", "/", "/", "--unshare-user", "--uid", "1000", "--gid", "1000", "--disable-userns", "--",
            COMMAND, "--backend", "local", "--isolation", "bwrap", "--workspace-root", str(tmp_path / "root"),
        ],
        check=False, stdin=subprocess.DEVNULL,
    )
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, lines
    assert "cannot create a user namespace" in lines[0] and "sysctl -w user.max_user_namespaces=" in lines[0], lines
