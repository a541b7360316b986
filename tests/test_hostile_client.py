"""Hostile input from a client: names with a trailing newline, deleting what the sandbox stands on,
special files, and background jobs that fill a sandbox (TOOLS.md "Hostile input")."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from mcp.client import Client

from mcp_sandbox.errors import SandboxError
from mcp_sandbox.manager import SandboxManager
from mcp_sandbox.server import build_server

from .conftest import Tools, require_backend, settings_for

pytestmark = pytest.mark.anyio

# A marker no other process on the machine carries (without isolation /proc is the host's).
MARK = "3001.25"
COUNT_MARKED = (
    f"n=0; for p in /proc/[0-9]*; do case \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" in "
    f"'sleep {MARK} '*) n=$((n+1));; esac; done; echo $n"
)


def coded(text: str, *codes: str) -> bool:
    return any(f"{code}:" in text for code in codes)


async def test_ids_and_env_names_with_a_trailing_newline_are_invalid(mcp: Tools) -> None:
    assert coded(await mcp.error("create_session", session_id="s\n"), "INVALID_ARGUMENT")
    assert coded(await mcp.error("start_process", command="true", process_id="p\n"), "INVALID_ARGUMENT")
    assert coded(await mcp.error("get_process_logs", process_id="p\n"), "INVALID_ARGUMENT")
    assert coded(await mcp.error("create_code_context", context_id="c\n"), "INVALID_ARGUMENT")
    assert coded(await mcp.error("exec", command="true", session_id="default\n"), "INVALID_ARGUMENT")
    for tool, args in (
        ("exec", {"command": "echo $A"}),
        ("set_env_vars", {}),
        ("create_session", {"session_id": "envs"}),
        ("start_process", {"command": "true"}),
    ):
        text = await mcp.error(tool, env={"A\n": "1"}, **args)
        assert coded(text, "INVALID_ARGUMENT") and "environment variable name" in text, (tool, text)
    assert coded(await mcp.error("create_sandbox", env={"A\n": "1"}), "INVALID_ARGUMENT")
    await mcp("start_process", command="sleep 30", process_id="p")
    assert coded(await mcp.error("kill_process", process_id="p", signal="TERM\n"), "INVALID_ARGUMENT")
    assert (await mcp("kill_process", process_id="p", signal="TERM"))["status"] == "killed"
    # Nothing half-made: the session list and the default session are as before.
    assert [s["session_id"] for s in (await mcp("list_sessions"))["sessions"]] == ["default"]
    assert (await mcp.sh("echo ok"))["stdout"] == "ok\n"


async def test_the_agent_checks_names_in_full_too(backend: str, tmp_path: Path) -> None:
    """Defence in depth: a request that skips the host's check still gets INVALID_ARGUMENT."""
    async with SandboxManager(settings_for(backend, tmp_path / "sandboxes")) as manager:
        sandbox = await manager.create()
        for method, params in (
            ("create_session", {"session_id": "s\n"}),
            ("start_process", {"command": "true", "process_id": "p\n"}),
            ("exec", {"command": "true", "env": {"A\n": "1"}}),
            ("kill_process", {"process_id": "nosuch", "signal": "TERM\n"}),
        ):
            with pytest.raises(SandboxError) as caught:
                await sandbox.channel.request(method, params, timeout=30)
            assert caught.value.code in ("INVALID_ARGUMENT", "PROCESS_NOT_FOUND"), (method, caught.value)
            assert caught.value.code == "INVALID_ARGUMENT" or method == "kill_process"
        with pytest.raises(SandboxError, match="not valid") as caught:
            await sandbox.channel.request("create_session", {"session_id": "s\n"}, timeout=30)
        assert caught.value.code == "INVALID_ARGUMENT"


async def test_delete_refuses_root_workspace_and_the_sandbox_state(mcp: Tools) -> None:
    ws = (await mcp("sandbox_info"))["workspace"]
    await mcp("write_file", path=f"{ws}/keep.txt", content="kept\n")
    # Without isolation "/" is the host's: there only the non-recursive form is tried.
    recursive = mcp.backend != "none"
    refused = [("/", recursive), (ws, True), (".", True), (str(Path(ws).parent), recursive)]
    if mcp.backend != "none":
        refused += [("/tmp", True), ("/tmp/.mcp-sandbox", True), ("/tmp/.mcp-sandbox/sessions", True)]
    for path, rec in refused:
        text = await mcp.error("delete_file", path=path, recursive=rec)
        assert coded(text, "INVALID_ARGUMENT") and "refusing" in text, (path, text)
    text = await mcp.error("move_file", source=ws, destination=f"{ws}-moved")
    assert coded(text, "INVALID_ARGUMENT")
    # A symlink to / is only a link: deleting it is fine, deleting through it is not.
    await mcp.sh(f"ln -s / {ws}/root-link")
    if mcp.backend != "none":
        assert coded(await mcp.error("delete_file", path=f"{ws}/root-link/tmp", recursive=True), "INVALID_ARGUMENT")
    assert (await mcp("delete_file", path=f"{ws}/root-link"))["deleted"] is True
    assert (await mcp("read_file", path=f"{ws}/keep.txt"))["content"] == "kept\n"
    assert (await mcp.sh("echo still working"))["stdout"] == "still working\n"


async def test_special_files_get_a_clear_code_and_never_hang(mcp: Tools) -> None:
    ws = (await mcp("sandbox_info"))["workspace"]
    await mcp.sh(f"mkfifo {ws}/fifo")
    started = time.monotonic()
    for path in ("/proc/self/mem", "/dev/zero", "/dev/tty", f"{ws}/fifo"):
        text = await mcp.error("read_file", path=path)
        assert coded(text, "INVALID_ARGUMENT", "PERMISSION_DENIED") and "INTERNAL" not in text, (path, text)
    for path in ("proc/self/mem", "dev/zero"):
        with pytest.raises(Exception, match="INVALID_ARGUMENT|PERMISSION_DENIED"):
            await mcp.client.read_resource(f"sandbox://default/files/{path}")
    # A kernel file that claims size 0 but has content still reads.
    assert "Name:" in (await mcp("read_file", path="/proc/self/status"))["content"]
    assert time.monotonic() - started < 20


async def count_marked(mcp: Tools) -> int:
    return int((await mcp.sh(COUNT_MARKED, session_id="count"))["stdout"])


async def test_kill_all_processes_ends_background_jobs_of_exec(mcp: Tools) -> None:
    await mcp("create_session", session_id="count")
    await mcp("create_session", session_id="other")
    started = time.monotonic()
    r = await mcp.sh(
        f"for i in $(seq 20); do sleep {MARK} & done; "
        f"(while :; do sleep {MARK} & sleep 0.2; done) &"  # keeps starting more
    )
    assert r["exit_code"] == 0 and time.monotonic() - started < 10
    await mcp("start_process", command=f"sleep {MARK}", process_id="bg")
    with anyio.move_on_after(10):  # a forked job is bash until it has exec'd sleep: a busy machine
        while await count_marked(mcp) < 22:
            await anyio.sleep(0.1)
    assert await count_marked(mcp) >= 22
    finished: list[str] = []

    async def run_other() -> None:
        finished.append((await mcp.sh("sleep 2; echo survived", session_id="other"))["stdout"])

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_other)
        await anyio.sleep(0.5)  # the command in "other" is running now
        killed = await mcp("kill_all_processes")
    assert killed["killed"] == 1 and killed["jobs_killed"] >= 22
    assert finished == ["survived\n"]  # a command running now is not a background job
    assert await count_marked(mcp) == 0
    # The session keeps its state and runs at once.
    started = time.monotonic()
    assert (await mcp.sh("echo next"))["stdout"] == "next\n"
    assert time.monotonic() - started < 5


async def test_a_fork_bomb_in_the_default_session_is_ended_by_kill_all_processes(tmp_path: Path) -> None:
    """Docker with --pids-limit 100 bounds the bomb."""
    require_backend("docker")
    async with SandboxManager(settings_for("docker", tmp_path / "sandboxes", pids_limit=100)) as manager:
        async with Client(build_server(manager)) as client:
            mcp = Tools(client, "docker")
            await mcp.sh("export KEPT=yes")
            started = time.monotonic()
            await mcp.sh(":(){ :|:& };:")
            assert time.monotonic() - started < 10
            await anyio.sleep(1)
            # At the limit a command may fail to start: the error says what to do, not INTERNAL.
            for _ in range(3):
                result = await mcp.raw("exec", command="echo x", timeout=30)
                if result.is_error:
                    text = result.content[0].text  # type: ignore[union-attr]
                    assert coded(text, "LIMIT_REACHED") and "kill_all_processes" in text, text
            killed = await mcp("kill_all_processes")
            assert killed["jobs_killed"] >= 20, killed
            started = time.monotonic()
            r = await mcp.sh("echo $KEPT; ls /proc | grep -c '^[0-9]'")
            assert time.monotonic() - started < 5
            kept, processes = r["stdout"].split()
            assert kept == "yes" and int(processes) < 15, r
