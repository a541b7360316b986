"""The agent that runs inside every sandbox (standard library only, Python >= 3.8).

Backends copy or bind this package into the sandbox and start it with ``BOOTSTRAP``.
"""

# Run as: python3 -I -c BOOTSTRAP <directory holding this package> <config json>
BOOTSTRAP = "import sys; sys.path.insert(0, sys.argv.pop(1)); from agent.main import main; main()"
