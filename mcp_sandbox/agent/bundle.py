"""The agent package sent down a sandbox's stdin: the bundle's reader, and its writer.

The reader, ``STDIN_BOOTSTRAP``, runs in the sandbox before the agent exists there; the writer,
``write_bundle``, runs on the host only (the Docker backend). Both live here so that the format is
defined once. Standard library only, like all of the agent package.
"""

from __future__ import annotations

import importlib.util
import json
import marshal
import os
from pathlib import Path

# Run as: python3 -I -S -c STDIN_BOOTSTRAP <directory to unpack into> <config json>, then write the
# bundle to its stdin: a 10-digit length, a JSON list of [relative path, size], then the files'
# bytes one after another. What follows on stdin is the agent's channel.
STDIN_BOOTSTRAP = """\
import json, os, sys
sys.modules.setdefault("ssl", None)
def take(n):
    parts = []
    while n:
        part = os.read(0, min(n, 1 << 20))
        if not part:
            sys.exit("mcp-sandbox agent: the agent bundle on stdin ended early")
        parts.append(part)
        n -= len(part)
    return b"".join(parts)
root = sys.argv.pop(1)
for name, size in json.loads(take(int(take(10)))):
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(take(size))
sys.path.insert(0, root)
from agent.main import main
main()
"""


def write_bundle() -> bytes:
    """This agent package in the format STDIN_BOOTSTRAP unpacks: its files, and for each module
    bytecode from this Python (a sandbox with the same Python version then skips compiling)."""
    source = Path(__file__).resolve().parent
    entries: list[tuple[str, bytes]] = []
    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "tests"))
        for name in sorted(f for f in files if not f.endswith(".pyc")):
            path = Path(root, name)
            relative = f"agent/{path.relative_to(source).as_posix()}"
            data = path.read_bytes()
            entries.append((relative, data))
            if name.endswith(".py") and path.parent == source:
                entries.append((importlib.util.cache_from_source(relative), _unchecked_pyc(data, relative)))
    header = json.dumps([[name, len(data)] for name, data in entries]).encode()
    return b"%010d" % len(header) + header + b"".join(data for _, data in entries)


def _unchecked_pyc(source: bytes, name: str) -> bytes:
    """A hash-based .pyc that is used without checking the source (PEP 552)."""
    code = compile(source, name, "exec", dont_inherit=True)
    flags = 0b01  # hash-based, not checked
    return importlib.util.MAGIC_NUMBER + flags.to_bytes(4, "little") + importlib.util.source_hash(source) + marshal.dumps(code)
