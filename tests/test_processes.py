"""Background processes: every rule under "Background processes" in the README, on every backend."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp_types import TextResourceContents

from mcp_sandbox.manager import SandboxManager
from mcp_sandbox.server import build_server

from .conftest import Tools, settings_for
from .helpers import eventually, pids_with, workspace

pytestmark = pytest.mark.anyio


async def wait_status(mcp: Tools, process_id: str, timeout: float = 20) -> dict[str, Any]:
    """The process once it has ended (waiting through get_process_logs)."""
    r = await mcp("get_process_logs", process_id=process_id, wait_for_exit=True, timeout=timeout)
    assert r["status"] != "running", f"{process_id} still running after {timeout} s"
    return r


async def alive(mcp: Tools, pid: int) -> bool:
    r = await mcp.sh(f"kill -0 {pid} 2>/dev/null")
    return r["exit_code"] == 0


async def test_start_uses_session_state_and_never_changes_it(mcp: Tools) -> None:
    ws = await workspace(mcp)
    await mcp.sh(f"mkdir -p {ws}/base/sub && cd {ws}/base && export FOO=bar && greet() {{ echo \"hi $1\"; }}")
    r = await mcp("start_process", command="echo $FOO; pwd; greet you; cd /; export FOO=changed")
    assert r["status"] == "running"
    assert isinstance(r["pid"], int)
    assert r["session_id"] == "default"
    assert r["command"].startswith("echo $FOO")
    assert r["started_at"]
    logs = await wait_status(mcp, r["process_id"])
    assert logs["stdout"] == f"bar\n{ws}/base\nhi you\n"
    assert logs["status"] == "completed"
    after = await mcp.sh("pwd; echo $FOO")
    assert after["stdout"] == f"{ws}/base\nbar\n"

    # Per-process cwd (relative to the session's) and env, and another session's state.
    r = await mcp("start_process", command="pwd; echo $X $FOO", cwd="sub", env={"X": "1"})
    assert (await wait_status(mcp, r["process_id"]))["stdout"] == f"{ws}/base/sub\n1 bar\n"
    await mcp("create_session", session_id="other", cwd=f"{ws}", env={"FOO": "other"})
    r = await mcp("start_process", command="pwd; echo $FOO", session_id="other", process_id="in-other")
    assert r["process_id"] == "in-other" and r["session_id"] == "other"
    assert (await wait_status(mcp, "in-other"))["stdout"] == f"{ws}\nother\n"


async def test_statuses_completed_failed_error(mcp: Tools) -> None:
    ok = await mcp("start_process", command="echo done", process_id="ok")
    bad = await mcp("start_process", command="echo oops >&2; exit 3", process_id="bad")
    r = await wait_status(mcp, ok["process_id"])
    assert (r["status"], r["exit_code"], r["stdout"]) == ("completed", 0, "done\n")
    r = await wait_status(mcp, bad["process_id"])
    assert (r["status"], r["exit_code"], r["stderr"]) == ("failed", 3, "oops\n")
    assert r["ended_at"] is not None

    # A process that cannot start is recorded with status error and the reason.
    err = await mcp("start_process", command="echo never", cwd="/no/such/dir", process_id="nostart")
    assert err["status"] == "error"
    assert err["pid"] is None
    assert "/no/such/dir" in err["error"]
    r = await mcp("get_process_logs", process_id="nostart", wait_for_exit=True)
    assert r["status"] == "error" and r["exit_code"] is None
    assert "does not exist" in r["stderr"]

    listed = await mcp("list_processes")
    statuses = {p["process_id"]: p["status"] for p in listed["processes"]}
    assert statuses == {"ok": "completed", "bad": "failed", "nostart": "error"}
    entry = next(p for p in listed["processes"] if p["process_id"] == "bad")
    assert set(entry) >= {"process_id", "pid", "command", "status", "exit_code", "started_at", "ended_at"}
    failed = await mcp("list_processes", status="failed")
    assert [p["process_id"] for p in failed["processes"]] == ["bad"]
    info = await mcp("sandbox_info")
    assert sorted(info["processes"]) == ["bad", "nostart", "ok"]


async def test_kill_process_terminates_promptly_with_status_killed(mcp: Tools) -> None:
    await mcp("start_process", command="echo ready; sleep 300", process_id="sleeper")
    assert (await mcp("get_process_logs", process_id="sleeper", wait_for="ready", timeout=20))["matched"] == "ready"
    started = time.monotonic()
    r = await mcp("kill_process", process_id="sleeper")
    assert time.monotonic() - started < 3, "a process that obeys SIGTERM must not wait for the grace period"
    assert r["status"] == "killed"
    assert r["exit_code"] == 128 + 15
    assert r["signal"] == "SIGTERM"
    listed = await mcp("list_processes", status="killed")
    assert [p["process_id"] for p in listed["processes"]] == ["sleeper"]
    # Killing an ended process again is harmless and keeps its status.
    assert (await mcp("kill_process", process_id="sleeper"))["status"] == "killed"


async def test_kill_escalates_to_sigkill_when_sigterm_is_ignored(mcp: Tools) -> None:
    await mcp("start_process", command="trap '' TERM; echo ready; while :; do sleep 0.1; done", process_id="stubborn")
    await mcp("get_process_logs", process_id="stubborn", wait_for="ready", timeout=20)
    started = time.monotonic()
    r = await mcp("kill_process", process_id="stubborn")
    elapsed = time.monotonic() - started
    assert 4.5 <= elapsed <= 9, elapsed
    assert r["status"] == "killed"
    assert r["signal"] == "SIGKILL"
    assert r["exit_code"] == 137


async def test_kill_reaches_grandchildren_even_in_other_process_groups(mcp: Tools) -> None:
    ws = await workspace(mcp)
    await mcp(
        "start_process",
        command=f"sleep 300 & echo $! > {ws}/child.pid; setsid sleep 300 & echo $! > {ws}/daemon.pid; "
        "echo ready; wait",
        process_id="tree",
    )
    await mcp("get_process_logs", process_id="tree", wait_for="ready", timeout=20)
    pids = [int((await mcp.sh(f"cat {ws}/{name}.pid"))["stdout"]) for name in ("child", "daemon")]
    for pid in pids:
        assert await alive(mcp, pid)
    r = await mcp("kill_process", process_id="tree")
    assert r["status"] == "killed"
    for pid in pids:
        assert not await alive(mcp, pid), f"grandchild {pid} survived kill_process"


async def test_kill_sends_the_requested_signal(mcp: Tools) -> None:
    await mcp(
        "start_process",
        command="trap 'echo got INT; exit 0' INT; trap 'echo got USR1; exit 0' USR1; echo ready; "
        "while :; do sleep 0.1; done",
        process_id="int",
    )
    await mcp("get_process_logs", process_id="int", wait_for="ready", timeout=20)
    r = await mcp("kill_process", process_id="int", signal="INT")
    assert r["status"] == "killed"
    assert (await mcp("get_process_logs", process_id="int"))["stdout"] == "ready\ngot INT\n"

    await mcp("start_process", command="trap 'echo got USR1; exit 0' USR1; echo ready; while :; do sleep 0.1; done",
              process_id="usr1")
    await mcp("get_process_logs", process_id="usr1", wait_for="ready", timeout=20)
    await mcp("kill_process", process_id="usr1", signal="SIGUSR1")
    assert "got USR1" in (await mcp("get_process_logs", process_id="usr1"))["stdout"]

    await mcp("start_process", command="sleep 300", process_id="num")
    r = await mcp("kill_process", process_id="num", signal=9)
    assert (r["status"], r["signal"]) == ("killed", "SIGKILL")

    text = await mcp.error("kill_process", process_id="num", signal="BOGUS")
    assert "INVALID_ARGUMENT" in text


async def test_wait_for_finds_output_of_a_process_that_already_exited(mcp: Tools) -> None:
    await mcp("start_process", command="echo first; echo 'server ready on port 8080'; echo last", process_id="quick")
    await anyio.sleep(1)
    listed = await mcp("list_processes")
    assert listed["processes"][0]["status"] == "completed"  # never a stale 'running'
    started = time.monotonic()
    r = await mcp("get_process_logs", process_id="quick", wait_for=r"port \d+", timeout=20)
    assert time.monotonic() - started < 3
    assert r["matched"] == "server ready on port 8080"
    assert r["timed_out"] is False
    # No match in a finished process: returns at once, not at the timeout.
    started = time.monotonic()
    r = await mcp("get_process_logs", process_id="quick", wait_for="never printed", timeout=20)
    assert time.monotonic() - started < 3
    assert r["matched"] is None


async def test_wait_for_new_output_and_timeout(mcp: Tools) -> None:
    await mcp("start_process", command="sleep 1; echo 'warming up' >&2; sleep 0.5; echo 'Listening on :9000'; sleep 300",
              process_id="srv")
    started = time.monotonic()
    r = await mcp("get_process_logs", process_id="srv", wait_for="^Listening on", timeout=30)
    assert 1 <= time.monotonic() - started < 15
    assert r["matched"] == "Listening on :9000"
    assert r["status"] == "running" and r["exit_code"] is None
    assert r["stderr"] == "warming up\n"
    # Matches on stderr count too.
    assert (await mcp("get_process_logs", process_id="srv", wait_for="warming"))["matched"] == "warming up"
    started = time.monotonic()
    r = await mcp("get_process_logs", process_id="srv", wait_for="never", timeout=1)
    assert 0.9 <= time.monotonic() - started < 6
    assert (r["matched"], r["timed_out"], r["status"]) == (None, True, "running")
    assert "INVALID_ARGUMENT" in await mcp.error("get_process_logs", process_id="srv", wait_for="(unclosed")
    await mcp("kill_process", process_id="srv", signal="KILL")


async def test_wait_for_exit(mcp: Tools) -> None:
    await mcp("start_process", command="sleep 0.5; echo bye; exit 4", process_id="ending")
    r = await mcp("get_process_logs", process_id="ending", wait_for_exit=True, timeout=30)
    assert (r["status"], r["exit_code"], r["stdout"], r["timed_out"]) == ("failed", 4, "bye\n", False)
    await mcp("start_process", command="sleep 300", process_id="long")
    r = await mcp("get_process_logs", process_id="long", wait_for_exit=True, timeout=0.5)
    assert (r["status"], r["timed_out"]) == ("running", True)


async def test_a_million_lines_tail_truncation_and_search(mcp: Tools) -> None:
    await mcp("start_process", command="seq 1 1000000", process_id="flood")
    started = time.monotonic()
    r = await mcp("get_process_logs", process_id="flood", wait_for="^999999$", wait_for_exit=True, timeout=60)
    assert r["matched"] == "999999"
    assert r["status"] == "completed"
    assert r["truncated"] is True
    assert r["stdout"].startswith("1\n2\n3\n")
    assert r["stdout"].endswith("999999\n1000000\n")
    assert r["stdout_file"] in r["stdout"]  # the marker says where the whole log is
    assert len(r["stdout"]) <= 30_000 + 200
    tail = await mcp("get_process_logs", process_id="flood", tail=3)
    assert tail["stdout"] == "999998\n999999\n1000000\n"
    assert tail["truncated"] is False
    assert (await mcp("get_process_logs", process_id="flood", tail=0))["stdout"] == ""
    # The whole log is on disk in the sandbox.
    assert (await mcp.sh(f"wc -l < {r['stdout_file']}"))["stdout"].strip() == "1000000"
    assert time.monotonic() - started < 60


async def test_tail_counts_lines_of_each_stream(mcp: Tools) -> None:
    await mcp("start_process", command="printf 'a\\nb\\nc'; printf 'x\\ny\\n' >&2", process_id="t")
    await wait_status(mcp, "t")
    r = await mcp("get_process_logs", process_id="t", tail=2)
    assert (r["stdout"], r["stderr"]) == ("b\nc", "x\ny\n")
    r = await mcp("get_process_logs", process_id="t", tail=10)
    assert (r["stdout"], r["stderr"]) == ("a\nb\nc", "x\ny\n")


async def test_send_input_and_eof_to_cat(mcp: Tools) -> None:
    await mcp("start_process", command="cat", process_id="cat")
    r = await mcp("send_process_input", process_id="cat", data="hello\n")
    assert r == {"process_id": "cat", "bytes_written": 6}
    assert (await mcp("get_process_logs", process_id="cat", wait_for="hello", timeout=20))["matched"] == "hello"
    await mcp("send_process_input", process_id="cat", data="wörld", eof=True)
    r = await wait_status(mcp, "cat")
    assert (r["status"], r["stdout"]) == ("completed", "hello\nwörld")
    text = await mcp.error("send_process_input", process_id="cat", data="more")
    assert text.startswith("INVALID_ARGUMENT") or "INVALID_ARGUMENT" in text
    # A big write to a process that reads slowly does not block the sandbox meanwhile.
    await mcp("start_process", command="sleep 1; wc -c", process_id="wc")
    big = "x" * 1_000_000
    r = await mcp("send_process_input", process_id="wc", data=big, eof=True)
    assert r["bytes_written"] == 1_000_000
    assert (await wait_status(mcp, "wc"))["stdout"].strip() == "1000000"


async def test_unknown_ids_and_bad_arguments(mcp: Tools) -> None:
    for tool, args in (
        ("get_process_logs", {}),
        ("kill_process", {}),
        ("send_process_input", {"data": "x"}),
    ):
        text = await mcp.error(tool, process_id="nope", **args)
        assert "PROCESS_NOT_FOUND" in text and "list_processes" in text
    await mcp("start_process", command="sleep 300", process_id="dup")
    assert "PROCESS_ALREADY_EXISTS" in await mcp.error("start_process", command="true", process_id="dup")
    assert "INVALID_ARGUMENT" in await mcp.error("start_process", command="true", process_id="bad id!")
    assert "SESSION_NOT_FOUND" in await mcp.error("start_process", command="true", session_id="nosuch")
    assert "INVALID_ARGUMENT" in await mcp.error("start_process", command="true", env={"1BAD": "x"})
    await mcp("kill_all_processes")


async def test_delete_session_kills_its_processes_only(mcp: Tools) -> None:
    ws = await workspace(mcp)
    await mcp("create_session", session_id="temp")
    mine = await mcp("start_process", command=f"sleep 300 & echo $! > {ws}/bg.pid; echo ready; wait",
                     session_id="temp", process_id="mine")
    other = await mcp("start_process", command="sleep 300", process_id="other")
    await mcp("get_process_logs", process_id="mine", wait_for="ready", timeout=20)
    child = int((await mcp.sh(f"cat {ws}/bg.pid"))["stdout"])
    started = time.monotonic()
    await mcp("delete_session", session_id="temp")
    assert time.monotonic() - started < 5
    statuses = {p["process_id"]: p["status"] for p in (await mcp("list_processes"))["processes"]}
    assert statuses == {"mine": "killed", "other": "running"}
    assert not await alive(mcp, mine["pid"])
    assert not await alive(mcp, child)
    assert await alive(mcp, other["pid"])


async def test_a_running_process_keeps_its_session_from_expiring(mcp_with: Any) -> None:
    async with mcp_with(session_idle_timeout=1) as mcp:
        for name in ("serving", "idle"):
            await mcp("create_session", session_id=name)
        await mcp("start_process", command="sleep 300", session_id="serving", process_id="server")
        await anyio.sleep(2.5)
        sessions = {s["session_id"] for s in (await mcp("list_sessions"))["sessions"]}
        assert sessions == {"default", "serving"}
        assert (await mcp("list_processes"))["processes"][0]["status"] == "running"
        await mcp("kill_process", process_id="server")
        await anyio.sleep(2.5)
        sessions = {s["session_id"] for s in (await mcp("list_sessions"))["sessions"]}
        assert sessions == {"default"}


async def test_running_processes_are_limited(mcp_with: Any) -> None:
    async with mcp_with(max_processes=2) as mcp:
        for name in ("one", "two"):
            await mcp("start_process", command="sleep 300", process_id=name)
        text = await mcp.error("start_process", command="true")
        assert "LIMIT_REACHED" in text and "kill_process" in text
        await mcp("kill_process", process_id="one", signal="KILL")
        assert (await mcp("start_process", command="true", process_id="three"))["status"] == "running"


async def test_kill_all_processes(mcp: Tools) -> None:
    await mcp("start_process", command="true", process_id="done")
    await wait_status(mcp, "done")
    for name in ("a", "b"):
        await mcp("start_process", command="sleep 300", process_id=name)
    r = await mcp("kill_all_processes")
    assert r == {"killed": 2, "jobs_killed": 0}
    statuses = {p["process_id"]: p["status"] for p in (await mcp("list_processes"))["processes"]}
    assert statuses == {"done": "completed", "a": "killed", "b": "killed"}
    assert await mcp("kill_all_processes") == {"killed": 0, "jobs_killed": 0}


async def test_process_log_resource(mcp: Tools) -> None:
    info = await mcp("sandbox_info")
    await mcp("start_process", command="echo out; echo err >&2", process_id="res")
    await wait_status(mcp, "res")
    for sandbox in (info["sandbox_id"], "default"):
        r = await mcp.client.read_resource(f"sandbox://{sandbox}/processes/res/stdout")
        content = r.contents[0]
        assert isinstance(content, TextResourceContents) and content.text == "out\n"
    r = await mcp.client.read_resource(f"sandbox://{info['sandbox_id']}/processes/res/stderr")
    assert r.contents[0].text == "err\n"  # type: ignore[union-attr]
    templates = await mcp.client.list_resource_templates()
    assert "sandbox://{sandbox_id}/processes/{process_id}/{stream}" in [t.uri_template for t in templates.resource_templates]
    for uri in (
        f"sandbox://{info['sandbox_id']}/processes/nope/stdout",
        f"sandbox://{info['sandbox_id']}/processes/res/other",
        "sandbox://sbx_0000000000000000/processes/res/stdout",
    ):
        with pytest.raises(Exception, match="NOT_FOUND"):
            await mcp.client.read_resource(uri)


async def test_destroy_and_server_shutdown_kill_processes(backend: str, tmp_path: Path) -> None:
    token = f"31{os.getpid()}.5"  # a unique sleep length to find the processes on the host
    async with SandboxManager(settings_for(backend, tmp_path / "sandboxes")) as manager:
        async with Client(build_server(manager)) as client:
            mcp = Tools(client, backend)
            await mcp("start_process", command=f"sleep {token}", process_id="kept")
            await mcp("get_process_logs", process_id="kept", wait_for="x", timeout=0.5)
            kept = set(pids_with(token))
            if not kept:
                pytest.skip("the sandbox's processes are not visible from here")
            other = await mcp("create_sandbox")
            await mcp(
                "start_process", command=f"setsid sleep {token} & sleep {token}; : second",
                sandbox_id=other["sandbox_id"],
            )
            assert await eventually(lambda: len(pids_with(token)) > len(kept))
            await mcp("destroy", sandbox_id=other["sandbox_id"])
            assert await eventually(lambda: set(pids_with(token)) == kept)
    assert await eventually(lambda: not pids_with(token))
