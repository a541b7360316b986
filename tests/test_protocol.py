"""The protocol module (agent/api.py) against both of its users: the agent's handler table, the
host's calls, Settings' defaults and the pydantic models; and the version check at hello."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from mcp_sandbox import models
from mcp_sandbox.agent import api, protocol
from mcp_sandbox.backends.base import AgentConfig
from mcp_sandbox.frames import Frames
from mcp_sandbox.errors import SandboxError
from mcp_sandbox.manager import SandboxManager
from mcp_sandbox.settings import Settings
from mcp_sandbox.streams import Violation

from .conftest import settings_for

PACKAGE = Path(api.__file__).resolve().parent.parent


def methods_named_in(path: Path) -> set[str]:
    """The Method.X names a module uses, as their values."""
    tree = ast.parse(path.read_text())
    return {
        getattr(api.Method, node.attr)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Method"
    }


def test_every_method_has_an_agent_handler_and_a_host_caller() -> None:
    tree = ast.parse((PACKAGE / "agent" / "main.py").read_text())
    tables = [node for node in ast.walk(tree) if isinstance(node, ast.AnnAssign)
              and isinstance(node.target, ast.Name) and node.target.id == "handlers"]
    assert len(tables) == 1 and isinstance(tables[0].value, ast.Dict)
    keys = tables[0].value.keys
    assert all(isinstance(key, ast.Attribute) and isinstance(key.value, ast.Name) and key.value.id == "Method"
               for key in keys), "handler keys are Method names, not strings"
    handled = [getattr(api.Method, key.attr) for key in keys if isinstance(key, ast.Attribute)]
    assert sorted(handled) == sorted(api.METHODS)
    called = set().union(*(methods_named_in(PACKAGE / name) for name in ("sandbox.py", "sandbox_files.py", "manager.py")))
    assert called == api.METHODS


RESULTS: list[tuple[Any, type[BaseModel]]] = [
    (api.SessionCreated, models.SessionCreated),
    (api.SessionDeleted, models.SessionDeleted),
    (api.ProcessInputSent, models.ProcessInputSent),
    (api.ProcessesKilled, models.ProcessesKilled),
    (api.FileWritten, models.FileWritten),
    (api.DirectoryCreated, models.DirectoryCreated),
    (api.FileDeleted, models.FileDeleted),
    (api.FileMoved, models.FileMoved),
    (api.CodeContextDeleted, models.CodeContextDeleted),
]


@pytest.mark.parametrize(("shape", "model"), RESULTS, ids=[model.__name__ for _, model in RESULTS])
def test_result_shapes_have_their_models_fields(shape: Any, model: type[BaseModel]) -> None:
    assert set(shape.__annotations__) == set(model.model_fields)


def test_agent_defaults_are_the_settings_defaults() -> None:
    defaults = Settings()
    assert AgentConfig.from_settings(defaults) == AgentConfig()
    assert AgentConfig().limits == api.DEFAULT_LIMITS


@pytest.mark.anyio
async def test_limits_come_from_settings_of_their_names(tmp_path: Path) -> None:
    settings = settings_for("none", tmp_path, max_sessions=3, max_processes=5, max_code_contexts=2, max_output=1234)
    config = AgentConfig.from_settings(settings).for_agent("sbx_1", "/w", {}, state_dir="/s")
    assert config["limits"] == {"max_sessions": 3, "max_processes": 5, "max_code_contexts": 2}
    assert (config["max_output"], config["state_dir"]) == (1234, "/s")
    async with SandboxManager(settings) as manager:
        limits = manager.limits()
    assert set(limits) == set(models.Limits.model_fields)
    assert models.Limits(**limits).max_sessions == 3


def test_hello_problem_names_both_versions() -> None:
    assert api.hello_problem({"protocol": api.PROTOCOL_VERSION, "pid": 1, "python": "3.8.0"}) is None
    problem = api.hello_problem({"protocol": api.PROTOCOL_VERSION + 1})
    assert problem is not None and f"version {api.PROTOCOL_VERSION + 1}" in problem
    assert api.hello_problem(["not", "a", "hello"]) is not None


@pytest.mark.anyio
async def test_an_agent_of_another_version_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The agent runs from its files, so it still says the real version; this server expects another.
    monkeypatch.setattr(api, "PROTOCOL_VERSION", api.PROTOCOL_VERSION + 1)
    async with SandboxManager(settings_for("none", tmp_path)) as manager:
        with pytest.raises(SandboxError) as failure:
            await manager.create()
        assert failure.value.code == "BACKEND_UNAVAILABLE"
        assert "protocol version" in str(failure.value) and "reinstall mcp-sandbox" in str(failure.value)
        assert manager.sandboxes == {}


def plain(message: dict[str, Any]) -> dict[str, Any]:
    """The message with bytes of any type in its data as bytes, to compare."""
    return {key: {**value, "data": bytes(value["data"])}
            if isinstance(value, dict) and isinstance(value.get("data"), (bytes, bytearray, memoryview)) else value
            for key, value in message.items()}


def test_frames_carry_messages_and_bytes_beside_them_unchanged() -> None:
    """What either end encodes, the host's reader cuts into the same frames, however the bytes
    arrive; bytes beside a message come back as its data."""
    messages: list[dict[str, Any]] = [
        {"id": 1, "method": "file_write_chunk", "params": {"handle": "w1", "data": b"\x00\xffABC", "offset": 3}},
        {"id": 2, "result": {"size": 3, "data": bytearray(b"")}},
        {"id": 3, "method": "send_process_input", "params": {"data": "text stays \"JSON\"\n\u00e9"}},
        {"method": "stream_eof", "params": {"stream": 5}},
    ]
    wire = b"".join(bytes(piece) for message in messages for piece in protocol.encode(message, "surrogatepass"))
    wire += protocol.HEADER.pack(protocol.DATA, 7, 3) + b"xyz"
    for step in (len(wire), 1, 5):
        frames = Frames(1 << 20, lambda request_id: None)
        got = [frame for i in range(0, len(wire), step) for frame in frames.feed(wire[i : i + step])]
        decoded = [json.loads(payload) for _, _, payload, _ in got[:-1]]
        for (_, _, _, data), message in zip(got, decoded):
            if data is not None:
                message.get("params", message.get("result"))["data"] = data
        assert [plain(message) for message in decoded] == [plain(message) for message in messages]
        assert (got[-1][0], got[-1][1], bytes(got[-1][2])) == (protocol.DATA, 7, b"xyz")
    assert plain(protocol.decode_blob(b"".join(protocol.encode(messages[0]))[protocol.HEADER.size :])) == plain(messages[0])


def test_bytes_beside_an_answer_go_where_its_call_asked() -> None:
    into = memoryview(bytearray(8))
    wire = b"".join(bytes(piece) for piece in protocol.encode({"id": 4, "result": {"data": b"abc"}}))
    frames = Frames(1 << 20, lambda request_id: into if request_id == 4 else None)
    ((kind, frame_id, message, data),) = list(frames.feed(wire))
    assert (kind, frame_id, json.loads(message)) == (protocol.BLOB, 4, {"id": 4, "result": {}})
    assert data is not None and data.obj is into.obj and bytes(into[:3]) == b"abc" and len(data) == 3


@pytest.mark.parametrize(("header", "what"), [
    (protocol.HEADER.pack(9, 0, 1), "unknown kind"),
    (protocol.HEADER.pack(protocol.MESSAGE, 0, (1 << 20) + 1), "more than"),
    (protocol.HEADER.pack(protocol.DATA, 1, api.STREAM_CHUNK + 1), "more than"),
])
def test_a_frame_too_long_or_unknown_is_refused_at_its_header(header: bytes, what: str) -> None:
    with pytest.raises(Violation) as refused:
        list(Frames(1 << 20, lambda request_id: None).feed(header))
    assert what in refused.value.what
