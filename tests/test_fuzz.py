"""Property-based fuzzing of every tool's arguments through the real MCP client, bounded for CI
(bench/fuzz.py holds the strategies; ``python -m bench.fuzz`` is the long run), and regression
tests for what it found."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz import Fuzzed, fuzzed_server, tool_calls

from .conftest import Tools, require_backend

EXAMPLES = int(os.environ.get("MCP_SANDBOX_FUZZ_EXAMPLES", "200"))
BOUNDED = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                   suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    require_backend("bwrap")
    with fuzzed_server(tmp_path_factory.mktemp("fuzz")) as server:
        yield server
        server.alive()
        print(server.outcome.summary())


def test_every_tool_with_fuzzed_arguments(fuzzed: Fuzzed) -> None:
    @BOUNDED
    @given(tool_calls(fuzzed))
    def one(call: tuple[str, dict[str, Any]]) -> None:
        fuzzed.call(*call)

    one()
    fuzzed.alive()
    # Both kinds of answer happened: the fuzz reaches the tools, not only argument checks.
    assert fuzzed.outcome.results >= EXAMPLES // 20 and len(fuzzed.outcome.errors) > 3, fuzzed.outcome.summary()


def test_concurrent_fuzzed_calls(fuzzed: Fuzzed) -> None:
    @settings(BOUNDED, max_examples=max(1, EXAMPLES // 10))
    @given(st.lists(tool_calls(fuzzed), min_size=2, max_size=8))
    def batch(calls: list[tuple[str, dict[str, Any]]]) -> None:
        fuzzed.call_concurrently(calls)

    batch()
    fuzzed.alive()


# -- what the fuzz found ---------------------------------------------------------------------------

@pytest.mark.anyio
async def test_names_that_are_not_utf8_do_not_stop_the_sandbox(mcp: Tools) -> None:
    # A file or directory whose name is not UTF-8 (an archive from elsewhere, a test of a tool):
    # the agent sent its bytes as they are, the host could not read the line and stopped the sandbox.
    await mcp.sh("mkdir -p names && (cd names && mkdir $'\\xff' && touch $'caf\\xe9')")
    listed = await mcp("list_files", path="names")
    assert sorted(f["name"] for f in listed["files"]) == ["caf\ufffd", "\ufffd"]
    r = await mcp.sh("cd names/$'\\xff' && pwd")
    assert r["cwd"].endswith("/names/\ufffd")
    assert (await mcp.sh("echo alive"))["stdout"] == "alive\n"


@pytest.mark.anyio
async def test_lone_surrogates_are_an_invalid_argument(mcp: Tools) -> None:
    # The transports refuse them; an in-process client passed them on, to an INTERNAL error or a
    # stopped sandbox.
    for tool, arguments in [
        ("write_file", {"path": "x\udcff.txt", "content": "hi"}),
        ("write_file", {"path": "ok.txt", "content": "a\ud800"}),
        ("exec", {"command": "echo \udcff"}),
        ("create_session", {"env": {"A": "\ud800"}}),
    ]:
        err = await mcp.error(tool, **arguments)
        assert "INVALID_ARGUMENT" in err and "lone surrogate" in err, err
    assert (await mcp.sh("echo alive"))["stdout"] == "alive\n"


@pytest.mark.anyio
async def test_arguments_of_the_wrong_type_are_a_coded_error(mcp: Tools) -> None:
    err = await mcp.error("exec", command=5)
    assert err.startswith("INVALID_ARGUMENT: command: ") and "exec tool's input schema" in err
    err = await mcp.error("get_process_logs", process_id="p", timeout=-1)
    assert err.startswith("INVALID_ARGUMENT: timeout: ")


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["bwrap"])  # a sandbox user that cannot read every file
async def test_a_move_across_filesystems_that_cannot_copy_everything_moves_nothing(mcp: Tools) -> None:
    # move_file /etc -> the workspace: shutil's error listing every unreadable file was INTERNAL,
    # and the partial copy stayed behind.
    await mcp.sh("mkdir -p /dev/shm/t/sub && echo a > /dev/shm/t/a && echo s > /dev/shm/t/sub/secret "
                 "&& chmod 000 /dev/shm/t/sub/secret")
    err = await mcp.error("move_file", source="/dev/shm/t", destination="moved")
    assert "PERMISSION_DENIED" in err and "/dev/shm/t/sub/secret" in err, err
    r = await mcp.sh("ls moved 2>&1; ls /dev/shm/t")
    assert "No such file" in r["stdout"] and "a\nsub\n" in r["stdout"], r
