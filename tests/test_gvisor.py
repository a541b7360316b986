"""The behavioural suite's core once more on gVisor: Docker with ``--runtime runsc``.

The tests of the modules below run here again with the ``docker-runsc`` backend (conftest's
settings_for), each named after its module. Those in DIFFERS fail there for the reason given (on
runsc 20221219, Debian 12's); README "Reliability" sums it up. test_exec's tests are not repeated
here (CI time): its whole module took 2.5 min on gVisor, with the two differences noted in DIFFERS.
"""

from __future__ import annotations

import pytest

from . import test_files, test_processes, test_sessions
from .conftest import require_backend

pytestmark = pytest.mark.anyio

STATX = "coreutils' stat and ls -l fail with EINVAL on every path (statx, which this runsc lacks)"
SLOW_START = "assumes a sandbox starts within a fraction of a second: a runsc container takes 1-2 s"
HIDDEN = "a runsc sandbox's processes are not host processes: the host cannot look for them (the test skips)"
DIFFERS = {
    "test_processes__destroy_and_server_shutdown_kill_processes": HIDDEN,
    "test_sessions__sandbox_lifecycle": STATX,
    "test_files__write_creates_parents_is_atomic_and_keeps_the_mode": STATX,
    "test_files__big_text_file_is_cut_at_a_line_and_can_be_read_on": STATX,
    "test_files__move_file": STATX,
    "test_sessions__busy_while_a_command_runs": SLOW_START,
    "test_sessions__warm_sandboxes_are_handed_out_replaced_and_removed": SLOW_START,
    # Measured once with test_exec included:
    "test_exec__huge_output_flood": STATX,
    "test_exec__client_cancel_kills_the_command": SLOW_START,
}


@pytest.fixture
def backend() -> str:
    require_backend("docker-runsc")
    return "docker-runsc"


for _module in (test_sessions, test_processes, test_files):
    for _name, _test in vars(_module).items():
        _here = f"test_{_module.__name__.rsplit('.test_', 1)[1]}__{_name[5:]}"
        if _name.startswith("test_") and callable(_test) and _here not in DIFFERS:
            globals()[_here] = _test
