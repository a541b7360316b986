"""The stdio wire as scripts drive it: piped one-shots, files, and lines that are no message."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

pytestmark = pytest.mark.anyio

COMMAND = str(Path(sys.executable).parent / "mcp-sandbox")
SERVER = [COMMAND, "--backend", "local", "--isolation", "none"]


def message(request_id: int | None, method: str, params: dict[str, Any] | None = None) -> str:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if request_id is not None:
        body["id"] = request_id
    if params is not None:
        body["params"] = params
    return json.dumps(body)


INITIALIZE = message(
    1, "initialize",
    {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "script", "version": "1"}},
)
INITIALIZED = message(None, "notifications/initialized")


def exec_call(request_id: int, command: str) -> str:
    return message(request_id, "tools/call", {"name": "exec", "arguments": {"command": command}})


def answers(stdout: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


async def test_piped_one_shot_prints_the_answer(tmp_path: Path) -> None:
    """`printf ... | mcp-sandbox`: stdin closes at once, the call still gets its answer."""
    lines = "\n".join([INITIALIZE, INITIALIZED, exec_call(2, "sleep 1; echo hi")]) + "\n"
    server = shlex.join([*SERVER, "--workspace-root", str(tmp_path / "root")])
    script = f"printf %s {shlex.quote(lines)} | {server}"
    result = await anyio.run_process(["bash", "-c", script], check=False)
    assert result.returncode == 0, result.stderr.decode()
    by_id = {a.get("id"): a for a in answers(result.stdout)}
    assert by_id[2]["result"]["structuredContent"]["stdout"] == "hi\n"
    assert not any((tmp_path / "root").iterdir())  # and cleanup still ran after it


async def test_stdin_and_stdout_regular_files(tmp_path: Path) -> None:
    """Files on both ends (asyncio cannot watch them) are served the same way."""
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join([INITIALIZE, INITIALIZED, exec_call(2, "echo from-a-file"), "garbage"]) + "\n")
    output = tmp_path / "answers.jsonl"
    with requests.open("rb") as stdin, output.open("wb") as stdout:
        result = await anyio.run_process(
            [*SERVER, "--workspace-root", str(tmp_path / "root")], stdin=stdin, stdout=stdout, check=False
        )
    assert result.returncode == 0, result.stderr.decode()
    got = answers(output.read_bytes())
    assert [a.get("id") for a in got if "result" in a] == [1, 2]
    assert got[-1]["result"]["structuredContent"]["stdout"] == "from-a-file\n"
    assert [a["error"]["code"] for a in got if "error" in a] == [-32700]


async def test_stdin_from_dev_null(tmp_path: Path) -> None:
    with open("/dev/null", "rb") as stdin:
        with anyio.fail_after(30):
            result = await anyio.run_process(
                [*SERVER, "--workspace-root", str(tmp_path / "root")], stdin=stdin, check=False
            )
    assert result.returncode == 0 and result.stdout == b""


async def test_every_line_gets_an_answer(tmp_path: Path) -> None:
    """Lines that are no message get a JSON-RPC error, with the request's id when it has one."""
    bad = [
        b"garbage",  # not JSON
        b"\xff\xfe{",  # not even UTF-8
        b"[1,2,3]",  # JSON, not a message
        b"[" + INITIALIZED.encode() + b"]",  # a batch
        b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"a\\ud800b","arguments":{}}}',
        b'{"jsonrpc":"2.0","id":8,"method":"tools/call","params":"not an object"}',
        b'{"jsonrpc":"2.0","id":[1],"method":"ping"}',  # an id that is no id
        b'"just a string"',
    ]
    proc = subprocess.Popen(
        [*SERVER, "--workspace-root", str(tmp_path / "root")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdout = proc.stdout

    def read_answer() -> dict[str, Any]:
        line = stdout.readline()
        assert line, "the server closed stdout"
        return json.loads(line)  # type: ignore[no-any-return]

    try:
        proc.stdin.write(INITIALIZE.encode() + b"\n")
        proc.stdin.flush()
        assert "result" in await anyio.to_thread.run_sync(read_answer)
        for line in bad:
            proc.stdin.write(line + b"\n")
            proc.stdin.flush()
            with anyio.fail_after(10):  # an answer, not silence
                answer = await anyio.to_thread.run_sync(read_answer, abandon_on_cancel=True)
            assert answer["jsonrpc"] == "2.0" and "error" in answer, (line, answer)
            code, request_id = answer["error"]["code"], answer["id"]
            if line in (b"garbage", b"\xff\xfe{"):
                assert (code, request_id) == (-32700, None)
            elif b'"id":7' in line or b'"id":8' in line:
                assert (code, request_id) == (-32600, 7 if b'"id":7' in line else 8)
            else:
                assert (code, request_id) == (-32600, None)
        # The server goes on as before.
        proc.stdin.write((INITIALIZED + "\n" + exec_call(9, "echo still-here") + "\n").encode())
        proc.stdin.flush()
        answer = await anyio.to_thread.run_sync(read_answer, abandon_on_cancel=True)
        assert answer["id"] == 9 and answer["result"]["structuredContent"]["stdout"] == "still-here\n"
    finally:
        proc.stdin.close()
        assert await anyio.to_thread.run_sync(proc.wait, 20) == 0
