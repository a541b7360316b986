"""exec: every rule under "What `exec` guarantees" in the README, on every backend."""

from __future__ import annotations

import secrets
import time

import anyio
import pytest

from .conftest import Tools

pytestmark = pytest.mark.anyio

# Unique sleep durations: without isolation, `ps` also shows other sandboxes' processes.
N = secrets.randbelow(900_000) + 100_000


async def test_output_exit_code_and_separate_streams(mcp: Tools) -> None:
    r = await mcp.sh("echo out; echo err >&2; exit 3")
    assert r["stdout"] == "out\n"
    assert r["stderr"] == "err\n"
    assert r["exit_code"] == 3
    assert r["success"] is False
    assert r["timed_out"] is False
    assert r["truncated"] is False
    assert r["session_id"] == "default"
    assert r["duration_ms"] >= 0


async def test_text_rendering_is_readable_lines(mcp: Tools) -> None:
    result = await mcp.raw("exec", command="printf 'line one\\nline two\\n'")
    text = result.content[0].text  # type: ignore[union-attr]
    assert "line one\nline two\n" in text
    assert "exit code 0" in text


async def test_state_persists_across_commands(mcp: Tools) -> None:
    await mcp.sh("mkdir -p /tmp/proj && cd /tmp/proj")
    await mcp.sh("export GREETING='hello world'; COUNT=3")
    await mcp.sh("greet() { echo \"$GREETING from $1\"; }")
    await mcp.sh("alias ll='echo listing'")
    await mcp.sh("set -o pipefail; shopt -s nullglob; umask 027")
    r = await mcp.sh("pwd; greet fn; ll; echo $COUNT; env | grep ^GREETING; set -o | grep pipefail; shopt nullglob; umask")
    assert r["stdout"].splitlines() == [
        "/tmp/proj",
        "hello world from fn",
        "listing",
        "3",
        "GREETING=hello world",
        "pipefail       \ton",
        "nullglob       \ton",
        "0027",
    ]
    assert r["cwd"] == "/tmp/proj"
    # A non-exported variable stays out of the environment of child processes.
    r = await mcp.sh("bash -c 'echo child:$COUNT'")
    assert r["stdout"] == "child:\n"


async def test_arrays_special_characters_and_unset(mcp: Tools) -> None:
    await mcp.sh("declare -A m=([k]='v 1'); arr=(a 'b c' $'d\\ne'); X=$'quote\\'s \"and\" $dollar'")
    r = await mcp.sh("echo \"${m[k]}\"; printf '<%s>' \"${arr[@]}\"; echo; echo \"$X\"")
    assert r["stdout"] == "v 1\n<a><b c><d\ne>\nquote's \"and\" $dollar\n"
    await mcp.sh("unset X; export -n HOME")
    r = await mcp.sh("echo \"[${X-unset}]\"; env | grep -c ^HOME= || true")
    assert r["stdout"] == "[unset]\n0\n"


async def test_virtualenv_activation_persists(mcp: Tools) -> None:
    await mcp.sh("mkdir -p venv/bin && printf 'export VIRTUAL_ENV=/ve\\nexport PATH=/ve/bin:$PATH\\nactive() { echo yes; }\\n' > venv/bin/activate")
    await mcp.sh("source venv/bin/activate")
    r = await mcp.sh("echo $VIRTUAL_ENV; echo ${PATH%%:*}; active")
    assert r["stdout"] == "/ve\n/ve/bin\nyes\n"


async def test_shell_options_persist_and_noclobber_does_not_stop_saving(mcp: Tools) -> None:
    await mcp.sh("set -o noclobber -o pipefail; shopt -s globstar extglob; shopt -u sourcepath; export A=1")
    await mcp.sh("export B=2; cd /tmp")
    r = await mcp.sh("echo $A$B; pwd; [[ $- == *C* ]] && echo C; shopt -q globstar extglob && echo shopt; shopt sourcepath")
    assert r["stdout"].splitlines() == ["12", "/tmp", "C", "shopt", "sourcepath     \toff"]
    await mcp.sh("set +C +o pipefail; shopt -u globstar extglob; shopt -s sourcepath")
    r = await mcp.sh("echo $-; set -o | grep -c 'pipefail.*on' || true; shopt globstar sourcepath")
    assert "C" not in r["stdout"].splitlines()[0]
    assert r["stdout"].splitlines()[1:] == ["0", "globstar       \toff", "sourcepath     \ton"]


async def test_cd_dash_and_odd_directory_names(mcp: Tools) -> None:
    await mcp.sh("mkdir -p /tmp/one $'/tmp/new\nline dir' && cd /tmp/one")
    r = await mcp.sh("cd $'/tmp/new\nline dir'")
    assert r["cwd"] == "/tmp/new\nline dir"
    r = await mcp.sh("cd - >/dev/null; pwd")
    assert r["stdout"] == "/tmp/one\n" and r["cwd"] == "/tmp/one"
    r = await mcp.sh("cd -")
    assert r["cwd"] == "/tmp/new\nline dir"


async def test_cwd_removed_and_recreated_between_commands(mcp: Tools) -> None:
    await mcp.sh("mkdir -p /tmp/gone && cd /tmp/gone && touch old")
    await mcp("delete_file", path="/tmp/gone", recursive=True)
    await mcp("mkdir", path="/tmp/gone")
    await mcp("write_file", path="/tmp/gone/new", content="x")
    r = await mcp.sh("ls; pwd")
    assert r["stdout"] == "new\n/tmp/gone\n"


async def test_very_long_command(mcp: Tools) -> None:
    # Longer than one argument may be (128 KiB): the command must not travel on a command line.
    r = await mcp.sh("x='" + "a" * 300_000 + "'; echo ${#x}")
    assert r["stdout"] == "300000\n"
    assert (await mcp.sh("echo ${#x}"))["stdout"] == "300000\n"
    r = await mcp.sh("y='" + "b" * 300_000 + "'; echo ${#y}; cat", stdin="in")
    assert r["stdout"] == "300000\nin"


async def test_random_and_seconds_are_not_frozen(mcp: Tools) -> None:
    a = (await mcp.sh("echo $RANDOM$RANDOM"))["stdout"]
    b = (await mcp.sh("echo $RANDOM$RANDOM"))["stdout"]
    assert a != b


async def test_stdin_is_empty_unless_given(mcp: Tools) -> None:
    r = await mcp.sh("cat; read -r line; echo \"read=$? [$line]\"", timeout=10)
    assert r["stdout"] == "read=1 []\n"
    assert r["timed_out"] is False
    r = await mcp.sh("tr a-z A-Z", stdin="hello\nworld")
    assert r["stdout"] == "HELLO\nWORLD"
    r = await mcp.sh("head -c 3", stdin="x" * 1_000_000)
    assert r["stdout"] == "xxx"


async def test_exit_ends_only_the_command(mcp: Tools) -> None:
    await mcp.sh("cd /tmp && export KEEP=1")
    r = await mcp.sh("echo before; exit 42; echo after")
    assert r["exit_code"] == 42 and r["stdout"] == "before\n"
    r = await mcp.sh("exit")
    assert r["exit_code"] == 0
    r = await mcp.sh("pwd; echo $KEEP")
    assert r["stdout"] == "/tmp\n1\n"
    # State changed before an exit is kept, like in a shell script that exits.
    await mcp.sh("export AFTER=2; cd /; exit 5")
    r = await mcp.sh("echo $AFTER; pwd")
    assert r["stdout"] == "2\n/\n"


async def test_errexit_and_nounset_do_not_break_the_session(mcp: Tools) -> None:
    r = await mcp.sh("set -eu; false; echo unreachable")
    assert r["exit_code"] == 1 and r["stdout"] == ""
    r = await mcp.sh("echo $UNDEFINED_VAR")
    assert r["exit_code"] != 0  # nounset persisted, as in a real shell
    r = await mcp.sh("set +eu; echo ok; echo ${UNDEFINED_VAR:-empty}")
    assert r["stdout"] == "ok\nempty\n"


async def test_syntax_errors_return_promptly(mcp: Tools) -> None:
    for command in ["echo 'unclosed", 'echo "unclosed', "if true; then echo x", "echo $(", "cat <<EOF\nno end", "fi"]:
        started = time.monotonic()
        r = await mcp.sh(command, timeout=30)
        assert time.monotonic() - started < 10, command
        assert r["timed_out"] is False, command
        if command.startswith("cat <<EOF"):
            continue  # bash accepts a here-document ended by end of input, with a warning
        assert r["exit_code"] != 0, command
        assert r["stderr"], command
    assert (await mcp.sh("echo fine"))["stdout"] == "fine\n"


async def test_heredocs_and_multiline_scripts(mcp: Tools) -> None:
    r = await mcp.sh("cat <<'EOF' > notes.txt\nline $1\nsecond\nEOF\nwc -l < notes.txt\nfor i in 1 2; do\n  echo i=$i\ndone")
    assert r["stdout"] == "2\ni=1\ni=2\n"


async def test_timeout_kills_the_command_and_its_children_and_keeps_state(mcp: Tools) -> None:
    await mcp.sh("cd /tmp; export STATE=before")
    started = time.monotonic()
    r = await mcp.sh(
        f"echo partial; cd /; export STATE=after; (sleep 300.{N}; echo leaked) & setsid sleep 301.{N} & sleep 302.{N}",
        timeout=1,
    )
    assert time.monotonic() - started < 10
    assert r["timed_out"] is True
    assert r["exit_code"] == 124
    assert r["stdout"] == "partial\n"
    r = await mcp.sh(f"pwd; echo $STATE; ps -eo args | grep -E '^sleep 30[012]\\.{N}' || echo none")
    assert r["stdout"] == "/tmp\nbefore\nnone\n"


async def test_builtin_loop_times_out(mcp: Tools) -> None:
    r = await mcp.sh("while :; do :; done", timeout=1)
    assert r["timed_out"] is True
    assert (await mcp.sh("echo alive"))["stdout"] == "alive\n"


async def test_command_ignoring_sigterm_is_killed(mcp: Tools) -> None:
    r = await mcp.sh(f"trap '' TERM INT HUP; sleep 300.{N}", timeout=1)
    assert r["timed_out"] is True
    r = await mcp.sh(f"ps -eo args | grep -c '^sleep 300\\.{N}' || true")
    assert r["stdout"] == "0\n"


async def test_session_timeout_default_and_override(mcp: Tools) -> None:
    await mcp("create_session", session_id="quick", timeout=1)
    r = await mcp.sh("sleep 5", session_id="quick")
    assert r["timed_out"] is True
    r = await mcp.sh("sleep 1.5; echo done", session_id="quick", timeout=10)
    assert r["timed_out"] is False and r["stdout"] == "done\n"


async def test_background_command_returns_at_once(mcp: Tools) -> None:
    started = time.monotonic()
    r = await mcp.sh("sleep 30 & echo started")
    assert time.monotonic() - started < 5
    assert r["stdout"] == "started\n"
    r = await mcp.sh("nohup sh -c 'sleep 1; echo later > bg.txt' >/dev/null 2>&1 &")
    assert r["exit_code"] == 0
    await anyio.sleep(2)
    assert (await mcp.sh("cat bg.txt"))["stdout"] == "later\n"


async def test_byte_exact_output_and_invalid_utf8(mcp: Tools) -> None:
    r = await mcp.sh("printf 'a\\n\\n\\n'; printf 'tab\\there\\r\\n' >&2")
    assert r["stdout"] == "a\n\n\n"
    assert r["stderr"] == "tab\there\r\n"
    r = await mcp.sh("printf 'ok \\xff\\xfe end\\n'; printf 'caf\\xc3\\xa9 \\xe2\\x9c\\x93\\n'")
    assert r["stdout"] == "ok \ufffd\ufffd end\ncafé ✓\n"
    r = await mcp.sh("printf 'nul:\\0:end'")
    assert r["stdout"] == "nul:\x00:end"


async def test_binary_output_does_not_break_anything(mcp: Tools) -> None:
    r = await mcp.sh("head -c 100000 /dev/urandom")
    assert r["exit_code"] == 0
    assert r["truncated"] is True
    assert (await mcp.sh("echo fine"))["stdout"] == "fine\n"


async def test_long_output_keeps_head_and_tail_and_saves_the_rest(mcp: Tools) -> None:
    r = await mcp.sh("seq 1 200000; seq 1 10 >&2")
    assert r["truncated"] is True
    out = r["stdout"]
    assert out.startswith("1\n2\n3\n")
    assert out.endswith("199999\n200000\n")
    assert len(out) < 31_000
    assert "omitted" in out and r["stdout_file"] in out
    assert r["stderr"] == "".join(f"{i}\n" for i in range(1, 11))
    assert r["stderr_file"] is None
    full = await mcp.sh(f"wc -l < {r['stdout_file']}; tail -n 1 {r['stdout_file']}")
    assert full["stdout"] == "200000\n200000\n"


async def test_huge_output_flood(mcp: Tools) -> None:
    started = time.monotonic()
    r = await mcp.sh("yes | head -c 100000000", timeout=120)
    assert time.monotonic() - started < 60
    assert r["exit_code"] == 0
    assert r["truncated"] is True
    assert len(r["stdout"]) < 31_000
    size = await mcp.sh(f"stat -c %s {r['stdout_file']}")
    assert size["stdout"] == "100000000\n"


async def test_per_command_cwd_and_env_do_not_persist(mcp: Tools) -> None:
    await mcp.sh("mkdir -p sub && export BASE=1")
    r = await mcp.sh("pwd; echo $BASE $ONLY", cwd="sub", env={"ONLY": "x"})
    assert r["stdout"].splitlines()[0].endswith("/sub")
    assert r["stdout"].splitlines()[1] == "1 x"
    r = await mcp.sh("pwd; echo [$ONLY]")
    assert not r["stdout"].splitlines()[0].endswith("/sub")
    assert r["stdout"].splitlines()[1] == "[]"
    err = await mcp.error("exec", command="true", cwd="/does/not/exist")
    assert "FILE_NOT_FOUND" in err


async def test_progress_notifications_stream_output(mcp: Tools) -> None:
    seen: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, message))

    result = await mcp.client.call_tool(
        "exec", {"command": "for i in 1 2 3; do echo tick$i; sleep 0.4; done"}, progress_callback=on_progress
    )
    assert not result.is_error
    messages = "".join(m or "" for _, m in seen)
    assert "tick1" in messages and "tick2" in messages
    assert len(seen) <= 12  # a few per second, not one per write
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)


async def test_commands_in_one_session_run_in_order(mcp: Tools) -> None:
    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(mcp.sh, f"echo {i} >> order.txt; sleep 0.{5 - i}")
            await anyio.sleep(0.05)
    r = await mcp.sh("cat order.txt")
    assert r["stdout"] == "0\n1\n2\n3\n4\n"


async def test_sessions_run_in_parallel(mcp: Tools) -> None:
    for name in ("a", "b", "c"):
        await mcp("create_session", session_id=name)
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for name in ("a", "b", "c"):
            tg.start_soon(lambda n=name: mcp.sh("sleep 1", session_id=n))
    assert time.monotonic() - started < 2.8


async def test_client_cancel_kills_the_command(mcp: Tools) -> None:
    with anyio.move_on_after(1):
        await mcp.sh(f"echo started > cancel.txt; sleep 300.{N}; echo finished >> cancel.txt")
    await anyio.sleep(0.5)
    r = await mcp.sh(f"cat cancel.txt; ps -eo args | grep -c '^sleep 300\\.{N}' || true", timeout=10)
    assert r["stdout"] == "started\n0\n"


async def test_fork_bomb_is_contained_by_timeout(mcp: Tools) -> None:
    r = await mcp.sh(f"f() {{ sleep 60.{N} & sleep 0.01; f & }}; f; wait", timeout=2)
    assert r["exit_code"] != 0 or r["timed_out"]
    await anyio.sleep(0.5)
    r = await mcp.sh(f"ps -eo args | grep -c '^sleep 60\\.{N}' || true")
    assert r["stdout"] == "0\n"


async def test_invalid_arguments(mcp: Tools) -> None:
    assert "SESSION_NOT_FOUND" in await mcp.error("exec", command="true", session_id="missing")
    assert "INVALID_ARGUMENT" in await mcp.error("exec", command="echo a\x00b")
    err = await mcp.error("exec", command="true", timeout=-1)
    assert "timeout" in err
    assert "INVALID_ARGUMENT" in await mcp.error("exec", command="true", env={"BAD NAME": "x"})
