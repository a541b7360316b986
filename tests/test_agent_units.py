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
from mcp_sandbox.agent.signals import parse_signal
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


# Run in its own interpreter: the agent's components install a SIGCHLD handler and make their
# process a subreaper, which pytest's own process must not become.
_TEARDOWN_SCRIPT = r"""
import asyncio, json, os, sys
from mcp_sandbox.agent.children import Children
from mcp_sandbox.agent.processes import Processes
from mcp_sandbox.agent.protocol import Request
from mcp_sandbox.agent.sessions import Sessions


class Sent:
    def __init__(self):
        self.messages = []

    def send(self, message):
        self.messages.append(message)


async def main(root):
    loop = asyncio.get_running_loop()
    children = Children("teardown")
    children.install(loop)
    config = {"workspace": root, "state_dir": os.path.join(root, ".state"), "env": {"PATH": os.environ["PATH"]},
              "max_output": 10000, "command_timeout": 30, "limits": {"max_sessions": 4, "max_processes": 4}}
    sessions = Sessions(children, config)
    processes = Processes(children, sessions, config)
    sent = Sent()
    done = await sessions.exec(Request(sent, 1, {"command": "echo one; sleep 0.4; echo two", "stream": True}))
    # Left running at teardown: a command whose stdin a thread is still writing (bash never
    # reads it), with its progress task, and a TERM-ignoring process whose SIGKILL is pending.
    running = loop.create_task(sessions.exec(Request(sent, 2, {"command": "sleep 30", "stdin": "x" * 300000, "stream": True})))
    processes.start({"command": "trap '' TERM; sleep 30", "process_id": "stubborn"})
    await asyncio.sleep(0.3)
    killing = loop.create_task(processes.kill({"process_id": "stubborn"}))
    await asyncio.sleep(0.1)
    for request in (running, killing):  # as the connection cancels them on the way out
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)
    children.kill(None, "")
    await sessions.aclose()
    await processes.aclose()
    others = [repr(t) for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    print(json.dumps({"stdout": done["stdout"], "notified": [m["params"]["data"] for m in sent.messages if "method" in m],
                      "pending": others}))


asyncio.run(main(sys.argv[1]))
"""


def test_teardown_leaves_no_pending_task(tmp_path: Path) -> None:
    import json
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _TEARDOWN_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["stdout"] == "one\ntwo\n"
    assert "one\n" in report["notified"]  # the progress task ran before it was cancelled
    assert report["pending"] == []
