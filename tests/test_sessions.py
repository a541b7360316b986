"""Sessions, environment variables and sandboxes: the README's "Sandboxes" and "Sessions and commands"."""

from __future__ import annotations

import re
import secrets
from typing import Any

import anyio
import pytest

from .conftest import Tools

pytestmark = pytest.mark.anyio

# Unique sleep durations: without isolation, `ps` also shows other sandboxes' processes.
N = secrets.randbelow(900_000) + 100_000


async def test_sessions_have_separate_state_and_share_files(mcp: Tools) -> None:
    await mcp.sh("mkdir -p /tmp/a /tmp/b")
    created = await mcp("create_session", session_id="build", cwd="/tmp/a", env={"ROLE": "build"})
    assert created == {"session_id": "build", "cwd": "/tmp/a"}
    await mcp("create_session", session_id="test", cwd="/tmp/b", env={"ROLE": "test"})
    await mcp.sh("export ONLY_BUILD=1; echo shared > /tmp/shared.txt", session_id="build")
    r = await mcp.sh("pwd; echo $ROLE $ONLY_BUILD; cat /tmp/shared.txt", session_id="test")
    assert r["stdout"] == "/tmp/b\ntest\nshared\n"
    r = await mcp.sh("pwd; echo $ROLE", session_id="build")
    assert r["stdout"] == "/tmp/a\nbuild\n"
    r = await mcp.sh("echo [$ROLE]")
    assert r["stdout"] == "[]\n"


async def test_session_inherits_sandbox_env(mcp: Tools) -> None:
    sandbox = await mcp("create_sandbox", env={"FROM_SANDBOX": "yes", "OVERRIDE": "sandbox"})
    sid = sandbox["sandbox_id"]
    await mcp("create_session", session_id="s", env={"OVERRIDE": "session"}, sandbox_id=sid)
    r = await mcp.sh("echo $FROM_SANDBOX $OVERRIDE", sandbox_id=sid, session_id="s")
    assert r["stdout"] == "yes session\n"
    r = await mcp.sh("echo $FROM_SANDBOX $OVERRIDE", sandbox_id=sid, env={"OVERRIDE": "call"})
    assert r["stdout"] == "yes call\n"


async def test_minted_session_ids_and_list(mcp: Tools) -> None:
    first = await mcp("create_session")
    second = await mcp("create_session")
    assert first["session_id"] != second["session_id"]
    listed = await mcp("list_sessions")
    ids = [s["session_id"] for s in listed["sessions"]]
    assert ids[0] == "default" and first["session_id"] in ids and second["session_id"] in ids
    for s in listed["sessions"]:
        assert set(s) >= {"session_id", "cwd", "busy", "created_at", "last_used_at"}
        assert s["busy"] is False


async def test_busy_while_a_command_runs(mcp: Tools) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(mcp.sh, "sleep 1.5")
        await anyio.sleep(0.7)
        listed = await mcp("list_sessions")
        assert [s["busy"] for s in listed["sessions"] if s["session_id"] == "default"] == [True]


async def test_session_errors(mcp: Tools) -> None:
    await mcp("create_session", session_id="dup")
    assert (await mcp.error("create_session", session_id="dup")).find("SESSION_ALREADY_EXISTS") >= 0
    assert "INVALID_ARGUMENT" in await mcp.error("create_session", session_id="bad id!")
    assert "INVALID_ARGUMENT" in await mcp.error("create_session", session_id="-x")
    assert "FILE_NOT_FOUND" in await mcp.error("create_session", session_id="x", cwd="/no/such/dir")
    assert "NOT_DIRECTORY" in await mcp.error("create_session", session_id="y", cwd="/etc/hostname")
    err = await mcp.error("delete_session", session_id="default")
    assert err.startswith("DEFAULT_SESSION") or "DEFAULT_SESSION:" in err
    err = await mcp.error("delete_session", session_id="ghost")
    assert re.search(r"SESSION_NOT_FOUND: no session 'ghost'.*dup", err)


async def test_delete_session_kills_its_running_command(mcp: Tools) -> None:
    await mcp("create_session", session_id="doomed")
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            r = await mcp.raw("exec", command=f"echo started > d.txt; sleep 300.{N}; echo done >> d.txt", session_id="doomed")
            assert r.is_error  # the session went away under the command
            assert "SESSION_NOT_FOUND: session 'doomed' was deleted while this command ran" in r.content[0].text

        tg.start_soon(run)
        await anyio.sleep(0.7)
        assert (await mcp("delete_session", session_id="doomed")) == {"session_id": "doomed", "deleted": True}
    r = await mcp.sh(f"cat d.txt; ps -eo args | grep -c '^sleep 300\\.{N}' || true")
    assert r["stdout"] == "started\n0\n"
    assert "SESSION_NOT_FOUND" in await mcp.error("exec", command="true", session_id="doomed")


async def test_delete_session_kills_what_it_left_in_the_background(mcp: Tools) -> None:
    await mcp("create_session", session_id="bg")
    await mcp.sh(f"setsid sleep 301.{N} & sleep 302.{N} &", session_id="bg")
    await mcp.sh(f"sleep 303.{N} &")  # another session's process survives
    await mcp("delete_session", session_id="bg")
    await anyio.sleep(0.3)
    r = await mcp.sh(f"ps -eo args | grep -E '^sleep 30[123]\\.{N}' | sort")
    assert r["stdout"] == f"sleep 303.{N}\n"


async def test_set_env_vars(mcp: Tools) -> None:
    await mcp.sh("export KEEP=1 DROP=2")
    r = await mcp("set_env_vars", env={"NEW": "a b 'c'", "DROP": None})
    assert r == {"session_id": "default", "set": ["NEW"], "unset": ["DROP"]}
    out = await mcp.sh("echo \"$KEEP|$NEW|${DROP-unset}\"; bash -c 'echo $NEW'")
    assert out["stdout"] == "1|a b 'c'|unset\na b 'c'\n"
    await mcp("create_session", session_id="other")
    await mcp("set_env_vars", env={"ONLY": "other"}, session_id="other")
    assert (await mcp.sh("echo [$ONLY]"))["stdout"] == "[]\n"
    assert (await mcp.sh("echo [$ONLY]", session_id="other"))["stdout"] == "[other]\n"
    assert "INVALID_ARGUMENT" in await mcp.error("set_env_vars", env={"1BAD": "x"})
    assert "SESSION_NOT_FOUND" in await mcp.error("set_env_vars", env={"A": "x"}, session_id="nope")


async def test_sandbox_lifecycle(mcp: Tools) -> None:
    created = await mcp("create_sandbox")
    sid = created["sandbox_id"]
    assert re.fullmatch(r"sbx_[0-9a-f]{16,}", sid)
    assert created["backend"] in ("local", "docker")
    assert created["isolation"] in ("bwrap", "none", "docker", "gvisor")
    assert created["network"] is False
    assert created["workspace"].startswith("/")
    r = await mcp.sh("pwd; touch here.txt", sandbox_id=sid)
    assert r["stdout"] == created["workspace"] + "\n"
    # Sandboxes do not see each other's files.
    assert (await mcp.sh("ls here.txt 2>&1 || true"))["stdout"].find("No such file") >= 0
    info = await mcp("sandbox_info", sandbox_id=sid)
    assert info["sandbox_id"] == sid and info["sessions"] == ["default"]
    assert set(info) >= {"created_at", "idle_expires_at", "processes", "code_contexts", "limits"}
    assert info["limits"]["command_timeout"] == 60
    assert await mcp("destroy", sandbox_id=sid) == {"sandbox_id": sid, "destroyed": True}
    assert "SANDBOX_NOT_FOUND" in await mcp.error("exec", command="true", sandbox_id=sid)
    assert "SANDBOX_NOT_FOUND" in await mcp.error("destroy", sandbox_id=sid)
    assert "SANDBOX_NOT_FOUND" in await mcp.error("sandbox_info", sandbox_id="sbx_0000000000000000")


async def test_destroy_default_gives_a_fresh_one(mcp: Tools) -> None:
    await mcp.sh("echo old > marker.txt; export OLD=1")
    first = (await mcp("sandbox_info"))["sandbox_id"]
    assert (await mcp("destroy"))["sandbox_id"] == first
    second = (await mcp("sandbox_info"))["sandbox_id"]
    assert second != first
    r = await mcp.sh("cat marker.txt 2>/dev/null || echo gone; echo [$OLD]")
    assert r["stdout"] == "gone\n[]\n"


async def test_network_is_off_by_default(mcp: Tools) -> None:
    created = await mcp("create_sandbox", network=True)
    assert created["network"] is False  # the server was not started with --network
    r = await mcp.sh("cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' | sort", sandbox_id=created["sandbox_id"])
    if mcp.backend != "none":
        assert r["stdout"] == "lo\n"


async def test_max_sandboxes_limit(mcp_with: Any) -> None:
    async with mcp_with(max_sandboxes=2) as tools:
        await tools("create_sandbox")
        await tools("create_sandbox")
        err = await tools.error("create_sandbox")
        assert "LIMIT_REACHED" in err and "destroy" in err


async def test_max_sessions_limit(mcp_with: Any) -> None:
    async with mcp_with(max_sessions=3) as tools:
        await tools("create_session")
        await tools("create_session")
        err = await tools.error("create_session")
        assert "LIMIT_REACHED" in err and "delete_session" in err
        info = await tools("sandbox_info")
        assert info["limits"]["max_sessions"] == 3


async def test_destroy_before_any_default_sandbox_creates_nothing(mcp: Tools) -> None:
    assert "SANDBOX_NOT_FOUND" in await mcp.error("destroy")
    assert (await mcp.sh("echo works"))["stdout"] == "works\n"


def sandbox_exists(backend: str, root: Any, sandbox_id: str) -> bool:
    """Whether the backend still holds anything of this sandbox: its directory, or its container."""
    if backend != "docker":
        return bool((root / sandbox_id).exists())
    import docker

    from mcp_sandbox.backends.docker import LABEL_SANDBOX

    client = docker.from_env()
    try:
        return bool(client.api.containers(all=True, filters={"label": f"{LABEL_SANDBOX}={sandbox_id}"}))
    finally:
        client.close()


async def wait_for(condition: Any, seconds: float = 60) -> None:
    with anyio.fail_after(seconds):
        while not condition():
            await anyio.sleep(0.05)


async def test_warm_sandboxes_are_handed_out_replaced_and_removed(
    manager_factory: Any, backend: str, tmp_path: Any
) -> None:
    root = tmp_path / "sandboxes"
    manager = manager_factory(warm_sandboxes=1, max_sandboxes=2)
    async with manager:
        await wait_for(lambda: len(manager.warm_ids) == 1)
        first_warm = manager.warm_ids[0]
        assert first_warm not in manager.sandboxes  # invisible until handed out
        # A sandbox with its own env is started for it; the warm one stays ready.
        own = await manager.create(env={"ONLY_HERE": "yes"})
        assert (await own.exec("echo $ONLY_HERE")).stdout == "yes\n"
        assert manager.warm_ids == [first_warm]
        await manager.destroy(own.id)
        # The default spec takes the warm one, and another starts in its place.
        taken = await manager.create()
        assert taken.id == first_warm and taken.id in manager.sandboxes
        assert (await taken.exec("cd /tmp && echo warm")).stdout == "warm\n"
        await wait_for(lambda: len(manager.warm_ids) == 1)
        second_warm = manager.warm_ids[0]
        # At --max-sandboxes no new warm sandbox starts.
        await manager.create()
        await anyio.sleep(0.5)
        assert manager.warm_ids == []
        assert "LIMIT_REACHED" in str(await _error(manager.create()))
        assert sandbox_exists(backend, root, taken.id)
    # Leaving the manager removes the warm ones too.
    for sandbox_id in (first_warm, second_warm):
        await wait_for(lambda: not sandbox_exists(backend, root, sandbox_id), 30)


async def _error(call: Any) -> Exception:
    try:
        await call
    except Exception as exc:
        return exc
    raise AssertionError("the call should have failed")
