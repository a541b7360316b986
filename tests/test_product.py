"""The server as a product: prompts, registry metadata, tool annotations and descriptions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import tomllib

from .conftest import Tools

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parent.parent
# The MCP registry's public server.json schema (2025-12-11), kept here so that the test runs offline.
SCHEMA = Path(__file__).parent / "data" / "server.schema.2025-12-11.json"


def test_server_json_is_valid_and_matches_the_package() -> None:
    server = json.loads((ROOT / "server.json").read_text())
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(server)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert server["version"] == project["version"]
    assert [p["version"] for p in server["packages"]] == [project["version"]]
    assert server["packages"][0]["identifier"] == project["name"]
    assert f"mcp-name: {server['name']}" in (ROOT / "README.md").read_text()


async def test_prompts_are_listed_and_rendered(mcp: Tools) -> None:
    listed = await mcp.client.list_prompts()
    names = {p.name for p in listed.prompts}
    assert {"analyse-data", "fix-failing-tests", "explore-repository", "debug-command"} <= names
    for prompt in listed.prompts:
        assert prompt.description
    got = await mcp.client.get_prompt("analyse-data", {"path": "data/sales.csv", "question": "Which month sold most?"})
    text = got.messages[0].content.text  # type: ignore[union-attr]
    assert "data/sales.csv" in text and "Which month sold most?" in text and "run_code" in text
    got = await mcp.client.get_prompt("explore-repository", {})
    text = got.messages[0].content.text  # type: ignore[union-attr]
    assert "{path}" not in text and "`.`" in text


async def test_every_tool_is_described_and_annotated(mcp: Tools) -> None:
    listed = await mcp.client.list_tools()
    for tool in listed.tools:
        assert tool.description and len(tool.description) > 40, tool.name
        assert tool.annotations is not None, tool.name
        assert tool.annotations.read_only_hint is not None, tool.name
        assert tool.output_schema is not None, tool.name
        if tool.name != "create_sandbox":
            assert "sandbox_id" in tool.input_schema["properties"], tool.name
        # Array parameters must say what they hold (some clients reject a bare array).
        for prop in tool.input_schema["properties"].values():
            for schema in [prop, *prop.get("anyOf", [])]:
                if schema.get("type") == "array":
                    assert "items" in schema, tool.name
    by_name = {t.name: t for t in listed.tools}
    assert by_name["sandbox_info"].annotations.read_only_hint is True  # type: ignore[union-attr]
    assert by_name["destroy"].annotations.destructive_hint is True  # type: ignore[union-attr]
    assert re.search(r"exec|command", mcp.client.instructions or "")
