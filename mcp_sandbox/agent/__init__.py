"""The agent that runs inside every sandbox (standard library only, Python >= 3.8).

Backends bind this package into the sandbox and start it with ``BOOTSTRAP``, or send it down the
agent's stdin as a bundle and start it with ``STDIN_BOOTSTRAP``.
"""

# Both leave ssl out: the agent never speaks TLS, and asyncio imports ssl (slowly) only if it can.
# -S: the agent needs no site-packages, and skipping site saves ~10 ms of every start.

# Run as: python3 -I -S -c BOOTSTRAP <directory holding this package> <config json>
BOOTSTRAP = (
    "import sys; sys.modules.setdefault('ssl', None); sys.path.insert(0, sys.argv.pop(1)); "
    "from agent.main import main; main()"
)

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
