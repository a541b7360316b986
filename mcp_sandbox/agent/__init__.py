"""The agent that runs inside every sandbox (standard library only, Python >= 3.8).

Backends bind this package into the sandbox and start it with ``BOOTSTRAP``, or send it down the
agent's stdin as a bundle and start it with ``bundle.STDIN_BOOTSTRAP``.
"""

# Both bootstraps leave ssl out: the agent never speaks TLS, and asyncio imports ssl (slowly) only if it can.
# -S: the agent needs no site-packages, and skipping site saves ~10 ms of every start.

# Run as: python3 -I -S -c BOOTSTRAP <directory holding this package> <config json>
BOOTSTRAP = (
    "import sys; sys.modules.setdefault('ssl', None); sys.path.insert(0, sys.argv.pop(1)); "
    "from agent.main import main; main()"
)
