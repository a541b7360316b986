"""Terminals: processes on a pseudo-terminal, driven with keys and seen as a rendered screen
(README "Terminals"), on every backend."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_sandbox.agent.keys import key_bytes

from .conftest import Tools
from .helpers import workspace


async def screen(mcp: Tools, process_id: str, wait_for: str, timeout: float = 20) -> dict[str, Any]:
    """The screen once it matches ``wait_for`` (failing with the screen if it never does)."""
    r = await mcp("get_process_screen", process_id=process_id, wait_for=wait_for, timeout=timeout)
    assert r["matched"] is not None, f"{wait_for!r} never appeared; the screen:\n{r['text']}"
    return r


@pytest.mark.anyio
async def test_python_repl_with_ctrl_c(mcp: Tools) -> None:
    r = await mcp("start_process", command="python3 -q", tty=True, process_id="py", cols=100, rows=30)
    assert (r["tty"], r["cols"], r["rows"]) == (True, 100, 30)
    s = await screen(mcp, "py", r">>> $")
    assert (s["cols"], s["rows"]) == (100, 30)
    assert s["text"].count("\n") == 29  # rows lines
    assert s["cursor"] == {"row": 0, "col": 4, "visible": True}

    await mcp("send_process_input", process_id="py", data="6 * 7", keys=["Enter"])
    s = await screen(mcp, "py", r"^42\n>>> $")
    assert s["text"].startswith(">>> 6 * 7\n42\n>>> ")
    assert s["cursor"] == {"row": 2, "col": 4, "visible": True}

    # Ctrl-C interrupts a busy loop in the program, not the REPL.
    await mcp("send_process_input", process_id="py", data="exec('print(\"spinning\")\\nwhile True: pass')\r")
    await screen(mcp, "py", r"^spinning$")
    await mcp("send_process_input", process_id="py", keys=["C-c"])
    s = await screen(mcp, "py", r"^KeyboardInterrupt\n>>> $")
    assert 'File "<string>", line 2, in <module>' in s["text"]  # raised in the loop
    assert s["status"] == "running"
    await mcp("send_process_input", process_id="py", data="print('still', 'alive')", keys=["Enter"])
    await screen(mcp, "py", r"^still alive$")
    # The terminal is the program's: isatty and TERM.
    await mcp("send_process_input", process_id="py", data="import os, sys; print(sys.stdin.isatty(), os.environ['TERM'])\r")
    await screen(mcp, "py", r"^True xterm-256color$")

    # The raw stream is the log: echo, CR LF and all.
    logs = await mcp("get_process_logs", process_id="py", wait_for="alive")
    assert ">>> 6 * 7\r\n42\r\n" in logs["stdout"] and "KeyboardInterrupt" in logs["stdout"]
    assert logs["stderr"] == "" and logs["tty"] is True

    await mcp("send_process_input", process_id="py", keys=["C-d"])
    logs = await mcp("get_process_logs", process_id="py", wait_for_exit=True, timeout=20)
    assert logs["status"] != "running"  # CPython exits 130 after a KeyboardInterrupt: not our business
    s = await mcp("get_process_screen", process_id="py")
    assert s["status"] == logs["status"] and "still alive" in s["text"]


FULL_SCREEN = r"""
trap 'printf "\033[2;1H\033[Know %s" "$(stty size)"' WINCH
printf '\033[?1049h\033[2J\033[H\033]2;my title\007'
tput cup 4 10; printf 'at row 4, col 10'
printf '\033[21;41Hbottom\033[8;6H'
while :; do sleep 0.1; done
"""


@pytest.mark.anyio
async def test_full_screen_program_positions_its_cursor_and_sees_resizes(mcp: Tools) -> None:
    ws = await workspace(mcp)
    await mcp("write_file", path=f"{ws}/draw.sh", content=FULL_SCREEN)
    await mcp("start_process", command="bash draw.sh", cwd=ws, tty=True, process_id="draw")
    s = await screen(mcp, "draw", r"bottom$")
    lines = s["text"].split("\n")
    assert len(lines) == 24
    assert lines[4] == " " * 10 + "at row 4, col 10"
    assert lines[20] == " " * 40 + "bottom"
    assert s["cursor"] == {"row": 7, "col": 5, "visible": True}
    assert s["title"] == "my title"

    # The program sees the new size (SIGWINCH, stty) and the screen takes it.
    r = await mcp("resize_terminal", process_id="draw", cols=120, rows=40)
    assert (r["cols"], r["rows"]) == (120, 40)
    s = await screen(mcp, "draw", r"^now 40 120$")
    assert (s["cols"], s["rows"]) == (120, 40) and s["text"].count("\n") == 39
    assert (await mcp("list_processes"))["processes"][0]["cols"] == 120

    # A tty process dies like any other, and a dead one cannot be resized or typed into.
    killed = await mcp("kill_process", process_id="draw")
    assert killed["status"] == "killed"
    for tool, args in (("resize_terminal", {"cols": 80, "rows": 24}), ("send_process_input", {"data": "x"})):
        text = await mcp.error(tool, process_id="draw", **args)
        assert "INVALID_ARGUMENT" in text and "killed" in text, text


QUESTIONS = r"""
read -r -n 1 -p 'Install the thing? [y/n] ' a; echo
read -r -n 1 -p 'Really? [y/n] ' b; echo
read -e -r -p 'Your name: ' name
echo "answers: $a $b $name"
"""


@pytest.mark.anyio
async def test_questions_answered_with_keys_and_less_on_a_long_file(mcp: Tools) -> None:
    ws = await workspace(mcp)
    await mcp("write_file", path=f"{ws}/ask.sh", content=QUESTIONS)
    await mcp("start_process", command="bash ask.sh", cwd=ws, tty=True, process_id="ask")
    await screen(mcp, "ask", r"\[y/n\] $")
    await mcp("send_process_input", process_id="ask", keys=["y"])
    await screen(mcp, "ask", r"^Really\? \[y/n\] $")
    await mcp("send_process_input", process_id="ask", keys=["n"])
    await screen(mcp, "ask", r"^Your name: $")
    await mcp("send_process_input", process_id="ask", data="Ada Lovelace", keys=["Left", "Left", "Backspace", "C", "Enter"])
    s = await screen(mcp, "ask", r"^answers: ")
    assert s["matched"] == "answers: y n Ada LovelCce"
    logs = await mcp("get_process_logs", process_id="ask", wait_for_exit=True)
    assert logs["status"] == "completed"

    await mcp.sh(f"seq -f 'line %g' 1 500 > {ws}/long.txt")
    await mcp("start_process", command="less long.txt", cwd=ws, tty=True, process_id="less", rows=10)
    s = await screen(mcp, "less", r"^line 9\nlong\.txt$")  # the first prompt names the file
    assert s["text"].startswith("line 1\n") and s["cursor"]["row"] == 9
    await mcp("send_process_input", process_id="less", keys=["Space"])
    s = await screen(mcp, "less", r"^line 18\n:$")
    assert s["text"].startswith("line 10\n")
    await mcp("send_process_input", process_id="less", keys=["PageDown", "Down"])
    s = await screen(mcp, "less", r"^line 28\n:$")
    assert s["text"].startswith("line 20\n")
    await mcp("send_process_input", process_id="less", keys=["End"])
    await screen(mcp, "less", r"^line 500\n\(END\) ?$")
    await mcp("send_process_input", process_id="less", keys=["q"])
    logs = await mcp("get_process_logs", process_id="less", wait_for_exit=True)
    assert logs["status"] == "completed"
    s = await mcp("get_process_screen", process_id="less")
    assert "line" not in s["text"]  # the pager's screen is gone: the shell's came back


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["bwrap"], indirect=True)
async def test_bad_terminal_input_is_refused_with_what_to_do(mcp: Tools) -> None:
    text = await mcp.error("start_process", command="cat", cols=100)
    assert "INVALID_ARGUMENT" in text and "tty=true" in text, text
    await mcp("start_process", command="cat", tty=True, process_id="t")
    text = await mcp.error("send_process_input", process_id="t", keys=["Enter", "Hyper-x"])
    assert "INVALID_ARGUMENT" in text and "'Hyper-x'" in text and "PageDown" in text and "C-a..C-z" in text, text
    text = await mcp.error("get_process_screen", process_id="t", wait_for="(unclosed")
    assert "INVALID_ARGUMENT" in text and "regular expression" in text, text
    text = await mcp.error("get_process_screen", process_id="nope")
    assert "PROCESS_NOT_FOUND" in text, text
    # Keys the screen has no time to show are still typed, in order (Alt sends ESC first).
    await mcp("send_process_input", process_id="t", data="ab", keys=["Tab", "M-x", "Enter"])
    s = await screen(mcp, "t", r"^ab\s+\^\[x$")
    assert s["status"] == "running"

    # A process without a terminal: Enter is a newline on its pipe; terminal keys are refused.
    await mcp("start_process", command="cat", process_id="pipe")
    r = await mcp("send_process_input", process_id="pipe", data="hello", keys=["Enter"])
    assert r["bytes_written"] == 6
    assert (await mcp("get_process_logs", process_id="pipe", wait_for="hello"))["stdout"] == "hello\n"
    text = await mcp.error("send_process_input", process_id="pipe", keys=["C-c"])
    assert "INVALID_ARGUMENT" in text and "tty=true" in text and "signal=INT" in text, text
    for tool, args in (("get_process_screen", {}), ("resize_terminal", {"cols": 80, "rows": 24})):
        text = await mcp.error(tool, process_id="pipe", **args)
        assert "INVALID_ARGUMENT" in text and "no terminal" in text, text


def test_keys_are_the_bytes_an_xterm_sends() -> None:
    assert key_bytes(["Up", "home", "C-c", "Ctrl+D", "M-x", "Alt-Enter", "F5", "q"], True, False) == (
        "\x1b[A\x1b[H\x03\x04\x1bx\x1b\r\x1b[15~q"
    )
    # In application cursor mode (less, vim, readline ask for it) cursor keys say ESC O.
    assert key_bytes(["Up", "End", "PageDown"], True, True) == "\x1bOA\x1bOF\x1b[6~"
    assert key_bytes(["Enter", "Tab", "x"], False, False) == "\n\tx"


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["bwrap"], indirect=True)
async def test_the_raw_stream_from_python_follows_a_terminal(manager_factory: Any) -> None:
    """What a live view builds on: the stream from an offset, a wait for more, resizes in place."""
    async with manager_factory() as manager:
        sandbox = await manager.create()
        await sandbox.start_process("echo ready; read -r line; echo \"got $line\"; stty size; read -r", process_id="t", tty=True)
        first = await sandbox.read_terminal("t", 0, wait=10)
        assert (first.data, first.cols, first.rows, first.closed, first.resizes) == (b"ready\r\n", 80, 24, False, [])
        quiet = await sandbox.read_terminal("t", first.next_offset, wait=0.3)
        assert quiet.data == b"" and quiet.next_offset == first.next_offset == quiet.size
        await sandbox.resize_terminal("t", 100, 30)
        await sandbox.send_process_input("t", "hello", keys=["Enter"])
        piece = await sandbox.read_terminal("t", quiet.next_offset, wait=10)
        data = piece.data
        while b"30 100" not in data:
            piece = await sandbox.read_terminal("t", piece.next_offset, wait=10)
            assert piece.data, data
            data += piece.data
        assert data == b"hello\r\ngot hello\r\n30 100\r\n"
        # From the start, the size in effect there and the resize at the byte it happened.
        whole = await sandbox.read_terminal("t", 0)
        assert (whole.cols, whole.rows, whole.resizes) == (80, 24, [(quiet.size, 100, 30)])
        assert whole.data == b"ready\r\n" + data and whole.status == "running"
        await sandbox.send_process_input("t", "", eof=True)  # Ctrl-D: read gets end of input
        assert (await sandbox.get_process_logs("t", wait_for_exit=True)).status == "failed"
        end = await sandbox.read_terminal("t", whole.next_offset, wait=10)
        assert end.closed and end.data == b""
