"""MCP prompts, loaded from the Markdown files in the project's prompts/ directory.

A file starts with a header between ``---`` lines: ``name:``, ``title:``, ``description:`` and
one ``argument: NAME | required|optional[=DEFAULT] | DESCRIPTION`` line per argument. The rest is
the prompt text, in which ``{NAME}`` stands for an argument's value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.prompts.base import Prompt, PromptArgument


def prompts_dir() -> Path:
    packaged = Path(__file__).parent / "_prompts"  # where the wheel puts them
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "prompts"


@dataclass
class PromptFile:
    name: str
    title: str
    description: str
    body: str
    arguments: list[PromptArgument] = field(default_factory=list)
    defaults: dict[str, str] = field(default_factory=dict)

    def render(self, **values: Any) -> str:
        text = self.body
        for argument in self.arguments:
            value = values.get(argument.name)
            text = text.replace("{" + argument.name + "}", str(value) if value else self.defaults.get(argument.name, ""))
        return text


def parse(text: str) -> PromptFile:
    _, header, body = text.split("---\n", 2)
    fields: dict[str, str] = {}
    prompt = PromptFile(name="", title="", description="", body=body.strip() + "\n")
    for line in header.strip().splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key == "argument":
            name, kind, description = (part.strip() for part in value.split("|", 2))
            required = kind == "required"
            if kind.startswith("optional="):
                prompt.defaults[name] = kind.split("=", 1)[1]
            prompt.arguments.append(PromptArgument(name=name, description=description, required=required))
        else:
            fields[key] = value
    prompt.name, prompt.title, prompt.description = fields["name"], fields["title"], fields["description"]
    return prompt


def load_prompts(directory: Path | None = None) -> list[PromptFile]:
    return [parse(path.read_text(encoding="utf-8")) for path in sorted((directory or prompts_dir()).glob("*.md"))]


def register(server: MCPServer) -> None:
    for prompt in load_prompts():
        server.add_prompt(
            Prompt(
                name=prompt.name, title=prompt.title, description=prompt.description,
                arguments=prompt.arguments, fn=prompt.render,
            )
        )
