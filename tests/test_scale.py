"""Many sandboxes at once (the short form of ``python -m bench.scale``), and what keeps an idle
sandbox small: a session idle for a minute keeps no standby bash, and loses none of its state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import DOCKER_IMAGE, unavailable

ROOT = Path(__file__).parent.parent


def scale_run(backend: str, sandboxes: int, callers: int, execs: int) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--backend", backend, "--sandboxes", str(sandboxes),
         "--callers", str(callers), "--execs", str(execs), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
        env={**os.environ, "MCP_SANDBOX_IMAGE": DOCKER_IMAGE},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def per_sandbox_kb(figures: dict[str, Any]) -> float:
    """How much the server grew per sandbox after its first."""
    return float(figures["server_rss_kb"] - figures["server_rss_one_kb"]) / (figures["created"] - 1)


@pytest.mark.timeout(300)
def test_fifty_local_sandboxes_at_once_each_small_and_all_answering() -> None:
    figures = scale_run("bwrap", 50, 10, 200)
    assert figures["created"] == 50 and figures["exec_ok"] == figures["execs"] == 200, figures["errors"]
    assert len(figures["pss_kb"]) == 50  # every sandbox there at once, each with its processes
    # Generous ceilings (about 10 MB and 75 MB on the machine these were written on; README "Scale").
    assert max(figures["pss_kb"]) < 24 * 1024, figures["pss_kb"]
    assert figures["processes"] <= 6
    assert figures["server_rss_kb"] < 250 * 1024
    assert per_sandbox_kb(figures) < 400, figures  # about 50-70 KB; a buffer of 1 MiB per sandbox shows
    # No thread per sandbox (asyncio's child watcher before 3.12 had one per child process).
    assert figures["server_threads"] < 20, figures["server_threads"]
    assert figures["exec_p99_ms"] < 10_000
    assert 0 < figures["floor_p50_ms"] <= figures["floor_p99_ms"]  # the floor ran, in the same run


@pytest.mark.timeout(300)
def test_ten_docker_sandboxes_at_once() -> None:
    import docker

    try:
        docker.from_env(timeout=5).ping()
    except Exception as exc:
        unavailable(f"no Docker engine: {exc}")
    figures = scale_run("docker", 10, 5, 50)
    assert figures["created"] == 10 and figures["exec_ok"] == figures["execs"] == 50, figures["errors"]
    assert len(figures["pss_kb"]) == 10
    assert max(figures["pss_kb"]) < 48 * 1024, figures["pss_kb"]
    assert figures["server_rss_kb"] < 250 * 1024
    assert per_sandbox_kb(figures) < 400, figures  # about 50-70 KB; a buffer of 1 MiB per sandbox shows


# Run in its own interpreter: the agent's components install a SIGCHLD handler and make their
# process a subreaper, which pytest's own process must not become.
_REST_SCRIPT = r"""
import asyncio, json, os, sys
from mcp_sandbox.agent.children import Children
from mcp_sandbox.agent.protocol import Request
from mcp_sandbox.agent.sessions import Sessions


class Sent:
    def send(self, message):
        pass


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def main(root):
    children = Children("rest")
    children.install(asyncio.get_running_loop())
    config = {"workspace": root, "state_dir": os.path.join(root, ".state"), "env": {"PATH": os.environ["PATH"]},
              "max_output": 10000, "command_timeout": 30, "limits": {"max_sessions": 4, "max_processes": 4}}
    sessions = Sessions(children, config)
    os.mkdir(os.path.join(root, "sub"))
    run = lambda command: sessions.exec(Request(Sent(), 1, {"command": command}))
    await run("cd sub; export KEPT='a b'; f() { echo fn; }; alias al='echo alias'; set -o noglob; umask 027")
    await asyncio.sleep(0.2)  # the next standby starts after the answer
    session = sessions.get("default")
    standby = session.standby.pid
    await sessions.rest(60)  # used just now: kept
    kept = session.standby is not None and alive(standby)
    await sessions.rest(0)
    await asyncio.sleep(0.2)
    dropped = session.standby is None and not alive(standby)
    out = await run("pwd; echo \"$KEPT\"; f; al; echo *; umask")
    await asyncio.sleep(0.2)
    again = session.standby is not None
    await sessions.aclose()
    print(json.dumps({"kept": kept, "dropped": dropped, "stdout": out["stdout"], "again": again}))


asyncio.run(main(sys.argv[1]))
"""


def test_an_idle_session_keeps_no_standby_bash_and_all_of_its_state(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _REST_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["kept"], "a session used within the minute keeps its standby"
    assert report["dropped"], "an idle session's standby bash is gone"
    # cwd, exported variable, function, alias and options (noglob: `*` stays as it is), and umask
    assert report["stdout"] == f"{tmp_path}/sub\na b\nfn\nalias\n*\n0027\n"
    assert report["again"], "once used again, the session has a standby again"



def test_a_small_sandbox_is_measured_whole_and_a_big_one_is_refused_past_its_bound(tmp_path: Path) -> None:
    """The disk budget measures a sandbox of a few files on the event loop (disk.py), so that walk
    stops past its bound, and a bigger sandbox is measured in a thread, whatever its size."""
    from mcp_sandbox.disk import TooMany, usage

    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "a").write_bytes(b"x" * 10000)
    assert usage(tmp_path / "small", most=64) == usage(tmp_path / "small") >= 10000
    big = tmp_path / "big" / "deeper"
    big.mkdir(parents=True)
    for i in range(100):
        (big / str(i)).write_bytes(b"x")
    with pytest.raises(TooMany):
        usage(tmp_path / "big", most=64)
    assert usage(tmp_path / "big") >= 100 * 512
