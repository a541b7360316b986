"""The signals the tools take by name or number (kill_process)."""

from __future__ import annotations

import re
import signal
from typing import Any

from .protocol import AgentError

_SIGNAL_NUMBER = re.compile(r"[0-9]{1,3}")


def parse_signal(value: Any) -> int:
    """TERM, SIGTERM, term, 15 or "15" -> 15."""
    if value is None or value == "":
        return signal.SIGTERM
    # Taken as given, in full: no stripping, so "TERM\n" is as wrong as any other name.
    text = str(value)
    try:
        if _SIGNAL_NUMBER.fullmatch(text):
            number = int(text)
            if number in signal.valid_signals() and number != 0:
                return number
        else:
            name = text.upper()
            return int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
    except (KeyError, ValueError):
        pass
    raise AgentError(
        "INVALID_ARGUMENT",
        "unknown signal %r; use a name such as TERM, INT, KILL, HUP, QUIT, USR1, USR2 or a number" % value,
    )
