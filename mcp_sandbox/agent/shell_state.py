"""A session's shell state, as files and bash scripts: pure code, without processes.

See ``sessions.py`` for how commands use it: a state file per generation, sourced by each
command's bash, and an EXIT trap that writes the next generation.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any, Dict, List, Optional

from .names import env_problem
from .output import remove_file
from .protocol import AgentError

# Ends a state file: sourcing stops at the return, and the agent reads the raw cwd after it.
_CWD_MARKER = "\nbuiltin return 0\n#cwd:"

# Variables that belong to one bash process and must not be carried to the next one.
_VOLATILE = (
    "BASH_ALIASES BASH_ARGC BASH_ARGV BASH_ARGV0 BASH_CMDS BASH_COMMAND BASH_EXECUTION_STRING "
    "BASH_LINENO BASH_REMATCH BASH_SOURCE BASH_SUBSHELL BASHPID COMP_WORDBREAKS DIRSTACK "
    "EPOCHREALTIME EPOCHSECONDS FUNCNAME GROUPS HISTCMD LINENO PIPESTATUS RANDOM SECONDS SHLVL "
    "SRANDOM _ MCP_SANDBOX_JOB"
)


def sq(text: str) -> str:
    """Quote for bash as one word."""
    return "'" + text.replace("'", "'\\''") + "'"


def check_env(env: Optional[Dict[str, Any]]) -> Dict[str, Optional[str]]:
    problem = env_problem(env)
    if problem is not None:
        raise AgentError("INVALID_ARGUMENT", problem)
    return dict(env or {})


def env_lines(env: Dict[str, Optional[str]]) -> str:
    return "".join(
        "builtin unset -v %s\n" % name if value is None else "builtin export %s=%s\n" % (name, sq(value))
        for name, value in env.items()
    )


class ShellState:
    """A session's saved shell state: its two generation directories of state files, the cwd and
    the options, and the bash scripts that restore and save them."""

    def __init__(self, directory: str, cwd: str) -> None:
        self.dir = directory
        self.cwd = cwd
        self.generation = 0
        self.opts: List[str] = []  # commands that set the options differing from bash's defaults

    def path(self, name: str, generation: Optional[int] = None) -> str:
        """A state file of the current generation (or of the one given)."""
        return os.path.join(self.dir, str(self.generation if generation is None else generation), name)

    def next_path(self, name: str) -> str:
        return self.path(name, 1 - self.generation)

    def unsaved_script(self, command: str, env: Dict[str, Optional[str]], cwd: str) -> str:
        """The bash program for a background process: the session's state now, plus ``cwd`` and
        ``env``, and nothing saved back."""
        lines = self._restore_lines() + self._command_lines(env, cwd) + ["builtin eval -- %s" % sq(command)]
        return "\n".join(lines) + "\n"

    def standby_script(self, command_fd: int) -> str:
        """Restore the state, source what comes through ``command_fd`` (it waits there for the
        command), close it, then run the command."""
        return "\n".join(
            self._restore_lines()
            + [
                "builtin source /proc/self/fd/%d || builtin exit 126" % command_fd,
                "builtin exec %d<&-" % command_fd,
                'builtin eval -- "builtin unset -v __mcp_cmd"$\'\\n\'"$__mcp_cmd"',
            ]
        ) + "\n"

    def standby_command(self, command: str, env: Dict[str, Optional[str]], cwd: Optional[str]) -> str:
        """What a standby sources: the per-command setup, and the command in ``__mcp_cmd``."""
        lines = ["SECONDS=0"] + self._command_lines(env, cwd)
        lines.append("__mcp_cmd=%s" % sq(command))
        return "\n".join(lines) + "\n"

    def _command_lines(self, env: Dict[str, Optional[str]], cwd: Optional[str]) -> List[str]:
        """Between the restore and the command: per-command cwd and env (and then nothing is
        saved), or the EXIT trap that saves the state."""
        if cwd is None and not env:
            return ["builtin trap -- %s EXIT" % sq(self._save_trap())]
        lines = [] if cwd is None else ["builtin cd -- %s || builtin exit 1" % sq(cwd)]
        return lines + env_lines(env).splitlines()

    def _restore_lines(self) -> List[str]:
        return (
            ["builtin source %s 2>/dev/null" % sq(self.path("state")), "builtin unset -v __mcp_ec"]
            + ["%s 2>/dev/null" % line for line in self.opts]
            + ["builtin shopt -s expand_aliases"]
        )

    def _save_trap(self) -> str:
        return "\n".join(
            [
                "__mcp_ec=$?",
                "{ builtin printf '#%s\\n#%s\\n' \"$SHELLOPTS\" \"$BASHOPTS\"",
                "builtin set +e +u +o pipefail",
                "builtin alias -p; builtin declare -f",
                "builtin unset -v %s" % _VOLATILE,
                # cd before the variables, so that OLDPWD keeps its value and ``cd -`` works
                "builtin printf 'builtin cd -- %q\\n' \"$PWD\"",
                "builtin declare -p; builtin umask -p",
                "builtin printf '%s%%s' \"$PWD\"" % _CWD_MARKER.replace("\n", "\\n"),
                "} >%s 2>/dev/null" % sq(self.next_path("state")),
                "builtin exit \"$__mcp_ec\"",
            ]
        )

    def adopt_new_state(self, defaults: "Options") -> None:
        """Switch to the state the command's EXIT trap wrote, if it wrote it all."""
        try:
            with open(self.next_path("state"), "rb") as f:
                state = f.read()
        except OSError:
            return  # the trap did not run (the command replaced bash with exec, ...)
        marker = state.rfind(_CWD_MARKER.encode())
        header = state.split(b"\n", 2)
        if marker < 0 or len(header) < 3 or not header[0].startswith(b"#") or not header[1].startswith(b"#"):
            return  # the trap was cut short
        self.opts = defaults.commands(header[0][1:].decode(), header[1][1:].decode())
        self.generation = 1 - self.generation
        self.cwd = state[marker + len(_CWD_MARKER) :].decode("utf-8", "replace")

    def discard_new_state(self) -> None:
        """Remove the next generation's state: the trap then creates a new file (and a half-written
        one is never adopted)."""
        remove_file(self.next_path("state"))

    def write_initial_state(self, env: Dict[str, Optional[str]]) -> None:
        os.makedirs(self.path(""), exist_ok=True)
        os.makedirs(self.next_path(""), exist_ok=True)
        with open(self.path("state"), "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(env_lines(env))
            f.write("builtin cd -- %s\n" % sq(self.cwd))

    def append_env(self, env: Dict[str, Optional[str]]) -> None:
        """Add exports/unsets to the current state, before its ``return``."""
        with open(self.path("state"), "rb") as f:
            state = f.read()
        marker = state.rfind(_CWD_MARKER.encode())
        if marker < 0:
            marker = len(state)
        lines = env_lines(env).encode("utf-8", "surrogateescape")
        with open(self.path("state"), "wb") as f:
            f.write(state[:marker] + b"\n" + lines + state[marker:])


class Options:
    """Bash's default ``set -o`` and ``shopt`` options, to turn saved ones into restore commands."""

    def __init__(self, bash: str) -> None:
        out = subprocess.run(
            [bash, "--noprofile", "--norc", "-c", 'builtin printf "%s\\n%s\\n" "$SHELLOPTS" "$BASHOPTS"'],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={},
        ).stdout.decode().split("\n")
        self.set_o = frozenset(filter(None, out[0].split(":")))
        self.shopt = frozenset(filter(None, out[1].split(":"))) if len(out) > 1 else frozenset()

    def commands(self, shellopts: str, bashopts: str) -> List[str]:
        """The commands that take a fresh bash to these options (only the differences)."""
        on = frozenset(filter(None, shellopts.split(":")))
        on_shopt = frozenset(filter(None, bashopts.split(":")))
        return (
            ["builtin set -o %s" % name for name in sorted(on - self.set_o)]
            + ["builtin set +o %s" % name for name in sorted(self.set_o - on)]
            + ["builtin shopt -s %s" % name for name in sorted(on_shopt - self.shopt)]
            + ["builtin shopt -u %s" % name for name in sorted(self.shopt - on_shopt)]
        )
