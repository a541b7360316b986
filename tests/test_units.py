"""The host's pure logic, without a sandbox: sizes, mounts, tokens files, deadlines, request
encoding, stdin line classification, and what the tools write for the model. Runs in a second."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, get_args

import mcp_types as types
import pytest
from pydantic import ValidationError

from mcp_sandbox import deadlines
from mcp_sandbox.errors import ErrorCode, SandboxError
from mcp_sandbox.models import CodeResult, Cursor, ExecResult, ProcessLogs, ProcessScreen
from mcp_sandbox.mounts import parse_mount
from mcp_sandbox.sizes import format_size, parse_size
from mcp_sandbox.stdio import _undecodable
from mcp_sandbox.tenants import read_tokens_file
from mcp_sandbox.tools.code import render_code
from mcp_sandbox.tools.common import duration
from mcp_sandbox.tools.processes import render_logs
from mcp_sandbox.tools.sessions import render_exec
from mcp_sandbox.tools.terminals import render_screen

AGENT = Path(__file__).parent.parent / "mcp_sandbox" / "agent"


def test_every_code_the_agent_raises_is_an_error_code() -> None:
    raised = set()
    for source in AGENT.rglob("*.py"):
        raised |= set(re.findall(r'AgentError\(\s*"([A-Z_]+)"', source.read_text()))
    assert len(raised) >= 5, raised  # the scan finds the agent's errors
    assert raised <= set(get_args(ErrorCode)), raised - set(get_args(ErrorCode))


def test_sizes() -> None:
    assert parse_size("512m") == 512 << 20
    assert parse_size(" 1.5GiB ") == 3 << 29
    assert parse_size("2g") == parse_size("2G") == parse_size("2gb") == 2 << 30
    assert parse_size("4096") == 4096
    for bad in ("", "0", "-1m", "12 parsecs", "1x"):
        with pytest.raises(ValueError, match="such as 512m"):
            parse_size(bad)
    assert format_size(300 << 20) == "300 MiB"
    assert format_size(5 << 40) == "5 TiB"


def test_mounts() -> None:
    mount = parse_mount("~/data:/data/./in")
    assert mount.host == Path.home() / "data" and mount.sandbox == "/data/in" and mount.read_only
    assert str(parse_mount("/srv:/workspace/srv:rw")) == "/srv:/workspace/srv:rw"
    for bad, why in (
        ("/srv", "HOST:SANDBOX"),
        ("/srv:/x:rx", "HOST:SANDBOX"),
        ("/srv:relative", "absolute"),
        ("/srv:/", "cannot mount over"),
        ("/srv:/tmp", "cannot mount over"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_mount(bad)


def test_tokens_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# tenants\n\nalice " + "a" * 16 + "\nbob   " + "b" * 32 + "\n")
    assert read_tokens_file(path) == {"a" * 16: "alice", "b" * 32: "bob"}
    for text, why in (
        ("", "no 'name token' lines"),
        ("alice", "two fields"),
        ("al/ice " + "a" * 16, "is not 1-64 letters"),
        ("default " + "a" * 16, "single tenant"),
        ("alice short", "shorter than 16"),
        (f"alice {'a' * 16}\nbob {'a' * 16}", "same as tenant 'alice'"),
        (f"alice {'a' * 16}\nalice {'b' * 16}", "named twice"),
    ):
        path.write_text(text)
        with pytest.raises(SandboxError, match=why) as caught:
            read_tokens_file(path)
        assert caught.value.code == "INVALID_ARGUMENT"
    with pytest.raises(SandboxError, match="cannot be read"):
        read_tokens_file(tmp_path / "missing")


def test_deadlines_follow_the_time_limits() -> None:
    assert deadlines.deadline("exec", {}, 30) == 30 + deadlines.GRACE
    assert deadlines.deadline("exec", {"timeout": 5}, 30) == 5 + deadlines.GRACE
    assert deadlines.deadline("run_code", {"timeout": 5}, 30) > 5 + deadlines.GRACE
    assert deadlines.deadline("read_file", {}, 30) == deadlines.QUICK
    assert deadlines.deadline("create_session", {"timeout": 900}, 30) == deadlines.QUICK
    assert deadlines.deadline("delete_file", {}, 600) == 600 + deadlines.GRACE
    assert deadlines.deadline("get_process_logs", {"timeout": 120}, 30) == 120 + deadlines.GRACE
    assert deadlines.deadline("exec", {"timeout": "5"}, 30) == 30 + deadlines.GRACE  # no number: the default
    assert deadlines.turn("exec", {}) == "session:default"
    assert deadlines.turn("set_env_vars", {"session_id": "s"}) == "session:s"
    assert deadlines.turn("run_code", {"language": "python"}) == "context:python"
    assert deadlines.turn("run_code", {"context_id": "c"}) == "context:c"
    assert deadlines.turn("list_files", {}) is None


def undecodable(line: bytes) -> types.JSONRPCError:
    with pytest.raises(ValidationError) as caught:
        types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    return _undecodable(line, caught.value)


def test_stdin_lines_that_are_no_message_get_the_right_error() -> None:
    assert undecodable(b"not json\n").error.code == types.PARSE_ERROR
    batch = undecodable(b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]')
    assert batch.error.code == types.INVALID_REQUEST and "batches" in batch.error.message
    assert undecodable(b'"text"').error.code == types.INVALID_REQUEST
    wrong = undecodable(b'{"jsonrpc": "1.0", "id": "r1", "method": "ping"}')
    assert wrong.error.code == types.INVALID_REQUEST and wrong.id == "r1"


def exec_result(**fields: Any) -> ExecResult:
    base: dict[str, Any] = dict(
        exit_code=0, success=True, stdout="", stderr="", timed_out=False, duration_ms=12.3,
        session_id="default", cwd="/workspace", truncated=False,
    )
    return ExecResult(**{**base, **fields})


def test_render_exec() -> None:
    assert render_exec(exec_result()) == "exit code 0 · 12 ms · cwd /workspace\n(no output)"
    text = render_exec(exec_result(
        exit_code=124, timed_out=True, stdout="out\n", stderr="err", stdout_file="/tmp/o", truncated=True,
    ))
    assert text.splitlines() == [
        "timed out (killed), exit code 124 · 12 ms · cwd /workspace",
        "--- stdout (cut; full output in /tmp/o) ---",
        "out",
        "",
        "--- stderr ---",
        "err",
        "[no newline at end]",
    ]


def test_render_code_drops_trailing_newlines() -> None:
    r = CodeResult(
        context_id="c", language="python", stdout="hi\n\n", stderr="", results=[{"text/plain": "2"}],
        error=None, execution_count=3, duration_ms=5, timed_out=False,
    )
    assert render_code(r) == "python context 'c' · run 3 · 5 ms\n--- stdout ---\nhi\n--- result (text/plain) ---\n2"


def test_render_logs_says_scope_and_cut() -> None:
    now = datetime.now(timezone.utc)
    r = ProcessLogs(
        process_id="web", pid=7, command="serve", session_id="default", status="running", exit_code=None,
        started_at=now, stdout_file="/logs/o", stderr_file="/logs/e", stdout="a\nb", stderr="",
        matched="b", timed_out=False, truncated=True,
    )
    assert render_logs(r, "b", False, 2).splitlines() == [
        "web: running · pid 7 · serve",
        "matched: b",
        "--- stdout (last 2 lines; cut, full log in /logs/o) ---",
        "a",
        "b",
        "[no newline at end]",
    ]
    quiet = r.model_copy(update={"stdout": "", "status": "completed", "exit_code": 0, "matched": None})
    assert render_logs(quiet, None, True, None).endswith("(no output)")


def test_wait_for_outcome_in_logs_and_on_the_screen() -> None:
    now = datetime.now(timezone.utc)
    logs = ProcessLogs(
        process_id="web", pid=7, command="serve", session_id="default", status="running", exit_code=None,
        started_at=now, stdout_file="/logs/o", stderr_file="/logs/e", stdout="", stderr="",
        matched=None, timed_out=True, truncated=False,
    )
    screen = ProcessScreen(
        process_id="t", status="running", text="$", cursor=Cursor(row=0, col=1), cols=80, rows=1, timed_out=True
    )
    assert render_logs(logs, "ready", False, None).splitlines()[1] == (
        "no line matched 'ready' before the timeout; the process is running"
    )
    assert render_screen(screen, "ready").splitlines()[1] == "the screen did not match 'ready' before the timeout"
    ended = {"status": "failed", "exit_code": 1, "timed_out": False}
    assert render_logs(logs.model_copy(update=ended), "ready", False, None).splitlines()[1] == (
        "no line matched 'ready'; the process ended (failed)"
    )
    assert render_screen(screen.model_copy(update=ended), "ready").splitlines()[1] == (
        "the screen did not match 'ready'; the process ended (failed)"
    )
    assert render_screen(screen.model_copy(update={"matched": "$", "timed_out": False}), "[$]").splitlines()[1] == (
        "matched: $"
    )


def test_durations_as_people_say_them() -> None:
    assert [duration(s) for s in (0.5, 120, 900, 930, 7200, 5400)] == ["0.5 s", "120 s", "15 min", "930 s", "2 h", "90 min"]


def test_the_agents_defaults_are_the_settings_defaults() -> None:
    from mcp_sandbox.agent import api
    from mcp_sandbox.backends.base import AgentConfig
    from mcp_sandbox.settings import Settings

    assert AgentConfig.from_settings(Settings()) == AgentConfig()
    assert Settings().rest_after == api.DEFAULT_REST_AFTER
