"""Named keys for send_process_input: the bytes an xterm sends when each is pressed.

On a terminal, cursor keys follow the mode the program set (``ESC O A`` in application cursor
mode, as less, vim and readline ask for, ``ESC [ A`` otherwise). A process without a terminal reads
a pipe: only the keys that are plain text there (Enter is a newline, a character itself) make
sense; the others are refused with what to do instead, since Ctrl-C written to a pipe is a byte.
"""

from __future__ import annotations

import re
from typing import Any, List

from .protocol import AgentError

_NAMED = {
    "enter": "\r",
    "return": "\r",
    "tab": "\t",
    "backtab": "\x1b[Z",
    "escape": "\x1b",
    "esc": "\x1b",
    "backspace": "\x7f",
    "space": " ",
    "insert": "\x1b[2~",
    "delete": "\x1b[3~",
    "pageup": "\x1b[5~",
    "pagedown": "\x1b[6~",
    "f1": "\x1bOP",
    "f2": "\x1bOQ",
    "f3": "\x1bOR",
    "f4": "\x1bOS",
    "f5": "\x1b[15~",
    "f6": "\x1b[17~",
    "f7": "\x1b[18~",
    "f8": "\x1b[19~",
    "f9": "\x1b[20~",
    "f10": "\x1b[21~",
    "f11": "\x1b[23~",
    "f12": "\x1b[24~",
}
# The final byte of each cursor key, after ESC [ (normal mode) or ESC O (application mode).
_CURSOR = {"up": "A", "down": "B", "right": "C", "left": "D", "home": "H", "end": "F"}
# Ctrl with a symbol: the control codes that have no letter.
_CONTROL_SYMBOLS = {"@": "\x00", "space": "\x00", "[": "\x1b", "\\": "\x1c", "]": "\x1d", "^": "\x1e", "_": "\x1f", "?": "\x7f"}
_PIPE_KEYS = {"enter": "\n", "return": "\n", "tab": "\t", "space": " "}
_MODIFIED = re.compile(r"(C|Ctrl|M|Alt)[-+](.+)", re.IGNORECASE | re.DOTALL)

KEY_NAMES = (
    "Enter, Tab, BackTab, Escape, Backspace, Delete, Insert, Up, Down, Left, Right, Home, End, PageUp, "
    "PageDown, Space, F1-F12, any single character (itself), C-a..C-z (Ctrl: C-c, C-d, C-z, also C-@ C-[ C-\\ C-] C-^ C-_ C-?), and M-<key> "
    "(Alt, e.g. M-x, M-Enter)"
)


def key_bytes(keys: Any, tty: bool, application_cursor: bool) -> str:
    """The text to write for a list of key names, or INVALID_ARGUMENT naming what is valid."""
    if keys is None:
        return ""
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise AgentError("INVALID_ARGUMENT", "keys must be a list of key names such as [\"Enter\"] or [\"C-c\"]")
    out: List[str] = []
    for key in keys:
        if not tty:
            text = key if len(key) == 1 else _PIPE_KEYS.get(key.lower())
            if text is None:
                raise AgentError(
                    "INVALID_ARGUMENT",
                    "key %r needs a terminal, and this process was started without tty=true: its stdin is a "
                    "pipe, where only Enter, Tab, Space and single characters mean something; send text with data, end the input "
                    "with eof=true, interrupt it with kill_process signal=INT, or start it with tty=true" % key,
                )
            out.append(text)
            continue
        text = _key(key, application_cursor)
        if text is None:
            raise AgentError("INVALID_ARGUMENT", "unknown key %r; valid keys: %s" % (key, KEY_NAMES))
        out.append(text)
    return "".join(out)


def _key(key: str, application_cursor: bool) -> Any:
    if len(key) == 1:  # a character stands for itself: keys=["y", "Enter"]
        return key
    name = key.lower()
    if name in _NAMED:
        return _NAMED[name]
    if name in _CURSOR:
        return ("\x1bO" if application_cursor else "\x1b[") + _CURSOR[name]
    modified = _MODIFIED.fullmatch(key)
    if modified is None:
        return None
    modifier, rest = modified.group(1).lower(), modified.group(2)
    if modifier in ("m", "alt"):  # Alt sends ESC before the key
        plain = rest if len(rest) == 1 else _key(rest, application_cursor)
        return None if plain is None else "\x1b" + plain
    if len(rest) == 1 and rest.isascii() and rest.isalpha():
        return chr(ord(rest.lower()) - ord("a") + 1)
    return _CONTROL_SYMBOLS.get(rest.lower())
