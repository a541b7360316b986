"""Property-based fuzzing of every tool's arguments through the real MCP client (hypothesis).

The arguments come from each tool's own input schema, as the client lists it: valid values, wrong
types, sizes, unicode, NUL bytes, lone surrogates, huge numbers, unknown ids and unknown keys. Every
call must end within a ceiling with a correct result or a coded error (``CODE: ...``), never a
hang, an INTERNAL error, a traceback or a dead server.

    python -m bench.fuzz [--examples 2000]

tests/test_fuzz.py runs the same strategies with a fixed, small number of examples.
"""

from __future__ import annotations

import argparse
import re
import shlex
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import strategies as st
from mcp.client import Client
from mcp_types import CallToolResult, Tool

from mcp_sandbox.manager import SandboxManager
from mcp_sandbox.server import build_server
from mcp_sandbox.settings import Settings

# A call's ceiling: every timeout the fuzz passes is clamped well under it (see clamp_waits).
CALL_CEILING = 60.0
WAIT_MAX = 3.0
CODED = re.compile(r"^(?:Error executing tool \w+: )?([A-Z][A-Z_]+): \S")
# The ids the fixture makes, which the fuzz mixes with unknown ones.
KNOWN = {"session_id": "s1", "process_id": "p1", "context_id": "c1"}

NASTY_TEXT = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(categories=["Cs", "Cc", "Zs", "So", "Lo", "Mn"]), max_size=30),
    st.sampled_from([
        "", " ", "\0", "a\0b", "\ud800", "x\udcff", "../../../etc/passwd", "/", "/proc/self/mem", "~",
        "-rf", "$(id)", "`id`", "%s%n", "é" * 40, "\U0001f4a5", "\u202e", "A" * 5000, "\n" * 50,
    ]),
)
HUGE_NUMBERS = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 2**63, 2**64 + 1, 1e308, -1e308, float("inf"), float("nan"), 1e-300]),
)
JUNK: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), HUGE_NUMBERS, NASTY_TEXT,
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def id_values(name: str, sandbox_id: str) -> st.SearchStrategy[Any]:
    known = sandbox_id if name == "sandbox_id" else KNOWN.get(name, "x")
    unknown = st.one_of(st.sampled_from(["nope", "sbx_0000000000000000", known.upper()]), NASTY_TEXT)
    return st.sampled_from([True, True, True, False]).flatmap(lambda use_known: st.just(known) if use_known else unknown)


def command_values() -> st.SearchStrategy[str]:
    # Mostly printf of fuzzed text (quoted, so bash sees data); sometimes the text itself, which
    # bash tries to run (bubblewrap keeps it in the sandbox).
    return st.one_of(
        st.builds(lambda text: "printf '%s' " + shlex.quote(text), st.text(max_size=50)),
        st.sampled_from(["true", "false", "exit 3", "echo $HOME; pwd", "cat /dev/null", "kill -9 $$", "ulimit -a", ":"]),
        NASTY_TEXT,
    )


def valid_values(name: str, schema: dict[str, Any], sandbox_id: str) -> st.SearchStrategy[Any]:
    """Values of the type the schema asks for (some still invalid: out of range, unknown)."""
    types = {schema.get("type")} | {option.get("type") for option in schema.get("anyOf", [])}
    if name.endswith("_id"):
        return id_values(name, sandbox_id)
    if name in ("command", "code"):
        return command_values() if name == "command" else st.one_of(
            st.builds(lambda text: f"print({text!r})", st.text(max_size=30)), NASTY_TEXT
        )
    options: list[st.SearchStrategy[Any]] = []
    if "string" in types:
        if name in ("path", "source", "destination", "cwd"):
            options.append(st.sampled_from(["f.txt", "d", "d/e/f", "/workspace", "/tmp/x", ".", "..", "/etc"]))
        if name == "language":
            options.append(st.sampled_from(["python", "javascript", "cobol"]))
        if name == "encoding":
            options.append(st.sampled_from(["utf-8", "base64", "latin-1"]))
        if name == "status":
            options.append(st.sampled_from(["running", "exited", "all"]))
        if name == "signal":
            options.append(st.sampled_from(["TERM", "SIGKILL", "kill", "SIGNOPE"]))
        options.append(NASTY_TEXT)
    if "number" in types or "integer" in types:
        options.append(st.integers(min_value=-2, max_value=100) if "integer" in types else st.floats(0, 5))
        options.append(HUGE_NUMBERS)
    if "boolean" in types:
        options.append(st.booleans())
    if "object" in types:
        options.append(st.dictionaries(NASTY_TEXT, NASTY_TEXT, max_size=3))
        options.append(st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True), st.text(max_size=20), max_size=3))
    if "null" in types:
        options.append(st.none())
    return st.one_of(*options) if options else JUNK


@st.composite
def arguments_for(draw: st.DrawFn, tool: Tool, sandbox_id: str) -> dict[str, Any]:
    schema = tool.input_schema
    required = set(schema.get("required", []))
    arguments: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        presence = draw(st.sampled_from(["valid"] * 6 + ["junk", "absent"]))
        if presence == "absent" and (name not in required or draw(st.booleans())):
            continue
        arguments[name] = draw(JUNK if presence == "junk" else valid_values(name, prop, sandbox_id))
    if draw(st.integers(0, 9)) == 0:
        arguments[draw(st.text(min_size=1, max_size=10))] = draw(JUNK)
    if tool.name == "destroy" and arguments.get("sandbox_id") == sandbox_id:
        arguments["sandbox_id"] = "sbx_0000000000000000"  # the fuzz's sandbox must live on
    return clamp_waits(tool.name, arguments)


def clamp_waits(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A long timeout is a valid request to wait long: keep the fuzz's waits short, its other
    numbers as drawn."""
    timeout = arguments.get("timeout")
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):  # a bool is no number of seconds
        if timeout == timeout and timeout > WAIT_MAX:  # NaN stays NaN
            arguments["timeout"] = WAIT_MAX
    if tool == "exec" and "timeout" not in arguments:
        arguments["timeout"] = WAIT_MAX  # a fuzzed command that waits for input must not wait 120 s
    return arguments


@dataclass
class Outcome:
    calls: int = 0
    results: int = 0
    unsendable: int = 0  # arguments the client itself cannot encode (a lone surrogate in a key)
    errors: dict[str, int] = field(default_factory=dict)  # by code

    def summary(self) -> str:
        codes = ", ".join(f"{code} {n}" for code, n in sorted(self.errors.items(), key=lambda item: -item[1]))
        return (f"{self.calls} calls: {self.results} results, {self.calls - self.results} coded errors ({codes}); "
                f"{self.unsendable} the client could not send")


def judge(tool: str, arguments: dict[str, Any], result: CallToolResult, outcome: Outcome) -> None:
    """A correct result or a coded error; never an INTERNAL one or a traceback."""
    outcome.calls += 1
    text = "\n".join(getattr(block, "text", "") for block in result.content)
    if not result.is_error:  # (its text may hold anything a command printed)
        assert result.structured_content is not None, (tool, arguments, text)
        outcome.results += 1
        return
    assert "Traceback" not in text, (tool, arguments, text)
    coded = CODED.match(text)
    assert coded, f"{tool} {arguments!r}: uncoded error {text[:300]!r}"
    code = coded.group(1)
    assert code != "INTERNAL", (tool, arguments, text)
    outcome.errors[code] = outcome.errors.get(code, 0) + 1


@dataclass
class Fuzzed:
    """A server on a loop in another thread, for hypothesis's synchronous examples."""

    portal: BlockingPortal
    manager: SandboxManager
    client: Client
    tools: list[Tool]
    sandbox_id: str
    outcome: Outcome = field(default_factory=Outcome)

    async def send(self, tool: str, arguments: dict[str, Any]) -> CallToolResult | None:
        try:
            return await self.client.call_tool(tool, arguments)
        except UnicodeEncodeError:  # refused by the client before it reached the server
            self.outcome.unsendable += 1
            return None

    def call(self, tool: str, arguments: dict[str, Any]) -> None:
        async def run() -> CallToolResult | None:
            with anyio.fail_after(CALL_CEILING):
                return await self.send(tool, arguments)

        result = self.portal.call(run)
        if result is not None:
            judge(tool, arguments, result, self.outcome)

    def call_concurrently(self, calls: list[tuple[str, dict[str, Any]]]) -> None:
        results: list[tuple[str, dict[str, Any], CallToolResult]] = []

        async def one(tool: str, arguments: dict[str, Any]) -> None:
            result = await self.send(tool, arguments)
            if result is not None:
                results.append((tool, arguments, result))

        async def run() -> None:
            with anyio.fail_after(CALL_CEILING):
                async with anyio.create_task_group() as tg:
                    for tool, arguments in calls:
                        tg.start_soon(one, tool, arguments)

        self.portal.call(run)
        for tool, arguments, result in results:
            judge(tool, arguments, result, self.outcome)

    def alive(self) -> None:
        """The server still answers, and a new sandbox runs commands (the fuzz's own sandboxes go
        first: they may fill --max-sandboxes)."""
        async def run() -> CallToolResult:
            with anyio.fail_after(CALL_CEILING):
                for sid in list(self.manager.sandboxes):
                    if sid != self.sandbox_id:
                        await self.client.call_tool("destroy", {"sandbox_id": sid})
                created = await self.client.call_tool("create_sandbox", {})
                assert created.structured_content is not None, f"create_sandbox failed after the fuzz: {created.content}"
                sid = created.structured_content["sandbox_id"]
                result = await self.client.call_tool("exec", {"command": "echo alive", "sandbox_id": sid})
                await self.client.call_tool("destroy", {"sandbox_id": sid})
                return result

        result = self.portal.call(run)
        assert result.structured_content is not None and result.structured_content["stdout"] == "alive\n", result


def settings(root: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "backend": "local", "isolation": "bwrap", "workspace_root": root, "max_sandboxes": 4,
        "command_timeout": WAIT_MAX, "log_level": "ERROR",
    }
    return Settings(**{**values, **overrides})


@asynccontextmanager
async def serving(root: Path) -> AsyncIterator[tuple[SandboxManager, Client, list[Tool], str]]:
    async with SandboxManager(settings(root)) as manager:
        async with Client(build_server(manager)) as client:
            tools = (await client.list_tools()).tools
            sid = (await client.call_tool("create_sandbox", {})).structured_content["sandbox_id"]
            await client.call_tool("create_session", {"session_id": "s1", "sandbox_id": sid})
            await client.call_tool("start_process", {"command": "sleep 600", "process_id": "p1", "sandbox_id": sid})
            await client.call_tool("create_code_context", {"context_id": "c1", "sandbox_id": sid})
            yield manager, client, tools, sid


@contextmanager
def fuzzed_server(root: Path) -> Iterator[Fuzzed]:
    with start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(serving(root)) as (manager, client, tools, sid):
            yield Fuzzed(portal, manager, client, tools, sid)


def tool_calls(fuzzed: Fuzzed) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    """One call of any tool, with fuzzed arguments."""
    return st.one_of(*(
        st.tuples(st.just(tool.name), arguments_for(tool, fuzzed.sandbox_id)) for tool in fuzzed.tools
    ))


def main() -> None:
    from hypothesis import HealthCheck, given
    from hypothesis import settings as run_settings

    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mcp-sandbox-fuzz-") as root, fuzzed_server(Path(root)) as fuzzed:
        calls = tool_calls(fuzzed)

        @run_settings(max_examples=args.examples, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
        @given(calls)
        def one(call: tuple[str, dict[str, Any]]) -> None:
            fuzzed.call(*call)

        @run_settings(max_examples=max(1, args.examples // 10), deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
        @given(st.lists(calls, min_size=2, max_size=8))
        def concurrent(batch: list[tuple[str, dict[str, Any]]]) -> None:
            fuzzed.call_concurrently(batch)

        one()
        concurrent()
        fuzzed.alive()
        print(fuzzed.outcome.summary())


if __name__ == "__main__":
    main()
