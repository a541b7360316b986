"""Fast unit tests of the agent's pure logic: output cutting, spill files, ids, signals, shell state.

They run the agent's modules in this interpreter (and bash for the state scripts), without a sandbox.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from mcp_sandbox.agent.ids import Ids
from mcp_sandbox.agent.output import KEPT_SPILL_FILES, Capture, Spills, head_tail, render_log
from mcp_sandbox.agent.processes import parse_signal
from mcp_sandbox.agent.protocol import AgentError
from mcp_sandbox.agent.shell_state import Options, ShellState, env_lines, sq


def test_head_tail_keeps_short_text_whole() -> None:
    assert head_tail(b"hello", b"", 5, 100, "/spill") == ("hello", False)


def test_head_tail_cuts_long_text_around_a_marker_naming_the_file() -> None:
    text, cut = head_tail(b"a" * 50 + b"z" * 50, b"", 100, 20, "/spill")
    assert cut
    assert text.startswith("a" * 10 + "\n[... 80 characters omitted; the full output is in /spill ...]\n")
    assert text.endswith("\n" + "z" * 10)


def test_head_tail_counts_dropped_bytes_and_never_splits_a_character() -> None:
    # The tail starts inside a two-byte character: its continuation byte is skipped.
    text, cut = head_tail(b"h" * 40, "é".encode()[1:] + b"t" * 40, 1000, 20, "/spill")
    assert cut
    assert text.startswith("h" * 10 + "\n[... 980 bytes omitted;")
    assert text.endswith("\n" + "t" * 10)
    assert "\ufffd" not in text


def test_capture_spills_everything_once_the_limit_is_passed(tmp_path: Path) -> None:
    spill = tmp_path / "out.stdout"
    capture = Capture(10, str(spill))
    for _ in range(100):
        capture.feed(b"0123456789")
    text, truncated, path = capture.finish()
    assert truncated and path == str(spill)
    assert spill.read_bytes() == b"0123456789" * 100
    assert capture.total == 1000
    assert "omitted" in text


def test_capture_within_the_limit_leaves_no_file(tmp_path: Path) -> None:
    spill = tmp_path / "out.stdout"
    capture = Capture(10, str(spill))
    capture.feed(b"short")
    assert capture.finish() == ("short", False, None)
    assert not spill.exists()


def test_spills_share_one_budget_per_directory(tmp_path: Path) -> None:
    directory = str(tmp_path / "output")
    spills = Spills.at(directory)
    assert Spills.at(directory) is spills
    for number in range(KEPT_SPILL_FILES + 5):
        captures = spills.captures("run-%d" % number, 4)
        captures["stdout"].feed(b"more than four bytes")
        result = spills.finish(captures, {})
        assert result["truncated"] and result["stdout_file"] and result["stderr_file"] is None
    assert len(os.listdir(directory)) == KEPT_SPILL_FILES
    assert not os.path.exists(os.path.join(directory, "run-0.stdout"))


def test_spills_discard_removes_unseen_output(tmp_path: Path) -> None:
    spills = Spills(str(tmp_path))
    captures = spills.captures("lost", 4)
    captures["stderr"].feed(b"more than four bytes")
    spills.discard(captures)
    assert os.listdir(tmp_path) == []


@pytest.mark.anyio
async def test_render_log_tail_lines(tmp_path: Path) -> None:
    log = tmp_path / "p.stdout"
    log.write_bytes(b"".join(b"line %d\n" % n for n in range(1, 101)))
    assert await render_log(str(log), 2, 1000) == ("line 99\nline 100\n", False)
    assert await render_log(str(tmp_path / "missing"), None, 1000) == ("", False)


def test_ids_skip_ids_in_use() -> None:
    ids = Ids("proc-%d")
    assert ids.mint({"proc-1", "proc-2"}) == "proc-3"
    assert ids.mint() == "proc-4"


@pytest.mark.parametrize("value, number", [(None, signal.SIGTERM), ("KILL", 9), ("sigint", 2), (15, 15), ("1", 1)])
def test_parse_signal_accepts_names_and_numbers(value: object, number: int) -> None:
    assert parse_signal(value) == number


@pytest.mark.parametrize("value", ["TERM\n", "0", "NOPE", "1000"])
def test_parse_signal_rejects_others(value: str) -> None:
    with pytest.raises(AgentError) as caught:
        parse_signal(value)
    assert caught.value.code == "INVALID_ARGUMENT"


def test_sq_and_env_lines_survive_bash() -> None:
    tricky = "it's $HOME `x` \\ \"q\""
    script = env_lines({"A": tricky, "B": None}) + 'printf "%s|%s" "$A" "${B-unset}"'
    out = subprocess.run(["bash", "-c", script], env={"B": "set"}, capture_output=True, text=True).stdout
    assert out == tricky + "|unset"
    assert subprocess.run(["bash", "-c", "printf %s " + sq(tricky)], capture_output=True, text=True).stdout == tricky


def test_state_saved_by_the_trap_is_adopted_by_the_next_command(tmp_path: Path) -> None:
    state = ShellState(str(tmp_path / "s"), str(tmp_path))
    state.write_initial_state({"GREETING": "hi"})
    defaults = Options("bash")

    def run(command: str) -> str:
        # The standby's path: restore, take the command through a file, save the state at exit.
        command_file = tmp_path / "command"
        command_file.write_text(state.standby_command(command, {}, None))
        with open(command_file) as f:
            out = subprocess.run(
                ["bash", "--noprofile", "--norc", "-c", state.standby_script(f.fileno())],
                pass_fds=(f.fileno(),), capture_output=True, text=True,
            ).stdout
        state.adopt_new_state(defaults)
        return out

    run("mkdir sub && cd sub && export GREETING=hello && set -o pipefail && f() { echo fn; }")
    assert state.cwd == str(tmp_path / "sub")
    assert run('echo "$GREETING $PWD"; f; [[ -o pipefail ]] && echo pipefail') == (
        "hello %s\nfn\npipefail\n" % (tmp_path / "sub")
    )
    assert "builtin set -o pipefail" in state.opts
