"""The protocol module (agent/api.py) against both of its users: the agent's handler table, the
host's calls, Settings' defaults and the pydantic models; and the version check at hello."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from mcp_sandbox import models
from mcp_sandbox.agent import api
from mcp_sandbox.backends.base import AgentConfig
from mcp_sandbox.errors import SandboxError
from mcp_sandbox.manager import SandboxManager
from mcp_sandbox.settings import Settings

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
    (api.TerminalResized, models.TerminalResized),
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
