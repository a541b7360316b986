"""The interpreter behind one Python code context, started by the sandbox agent.

The agent runs ``python3 python_worker.py`` with the user's cwd and environment, stdin on
/dev/null and stdout/stderr on pipes that carry the user's output. Two more inherited file
descriptors carry the control protocol, one JSON object per line:

* fd 3, agent -> worker: ``{"type": "execute", "code": "..."}``, one at a time;
* fd 4, worker -> agent: ``{"type": "ready", "language": "python", "engine": ..., "version": ...}``
  once at startup, then one ``{"type": "result", "results": [bundle, ...], "error": null or
  {"name", "value", "traceback": [line, ...]}, "execution_count": n}`` per execute, written only
  after the cell's output has been flushed to stdout/stderr.

A bundle maps MIME types (text/plain, text/html, text/markdown, text/latex, image/png and
image/jpeg as base64, image/svg+xml, application/json) to data. SIGINT interrupts the running
cell with KeyboardInterrupt and is ignored while idle; EOF on fd 3 ends the worker.

With IPython importable (and ``MCP_SANDBOX_NO_IPYTHON`` unset) cells run in an IPython
``InteractiveShell`` as in Jupyter (magics, ``!cmd``, rich display); otherwise in a plain-Python
fallback with the same result shape (``plain_engine.py``, beside this file). Standard library only
besides that; runs on Python >= 3.8.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import sys
import threading
import traceback
import types
import warnings
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Protocol

if TYPE_CHECKING:
    import asyncio

CONTROL_IN_FD = 3
CONTROL_OUT_FD = 4
MIME_TYPES = frozenset(
    (
        "text/plain",
        "text/html",
        "text/markdown",
        "text/latex",
        "image/png",
        "image/jpeg",
        "image/svg+xml",
        "application/json",
    )
)
BINARY_MIME_TYPES = frozenset(("image/png", "image/jpeg"))
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# How long threads and atexit handlers that user code left behind may delay the worker's exit.
EXIT_GRACE_SECONDS = 2.0

Bundle = Dict[str, Any]
ErrorInfo = Dict[str, Any]


class Cell:
    """What one execute produced: display results in order, and the error if it failed."""

    def __init__(self) -> None:
        self.results: List[Bundle] = []
        self.error: Optional[ErrorInfo] = None

    def add(self, data: Dict[str, Any]) -> None:
        bundle = clean_bundle(data)
        if bundle:
            self.results.append(bundle)

    def fail(self, exc: BaseException, traceback_lines: List[str]) -> None:
        self.error = {
            "name": type(exc).__name__,
            "value": str(exc),
            "traceback": traceback_lines or exception_only(exc),
        }


class Engine(Protocol):
    name: str

    def run(self, code: str, count: int, cell: Cell) -> None:
        """Run one cell, recording its results and any error, KeyboardInterrupt included."""


def clean_bundle(data: Dict[str, Any]) -> Bundle:
    """Keep the MIME types the protocol knows, with values the agent can put in JSON as-is."""
    bundle: Bundle = {}
    for mime, value in data.items():
        if mime not in MIME_TYPES or value is None:
            continue
        if mime in BINARY_MIME_TYPES and isinstance(value, bytes):
            bundle[mime] = base64.b64encode(value).decode("ascii")
        elif mime == "application/json":
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                continue
            bundle[mime] = value
        elif isinstance(value, str):
            bundle[mime] = value
    return bundle


def exception_only(exc: BaseException) -> List[str]:
    return "".join(traceback.format_exception_only(type(exc), exc)).rstrip("\n").split("\n")


def figure_bundles() -> List[Bundle]:
    """Every open matplotlib figure as a PNG, then closed, as Jupyter's inline backend does."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return []
    bundles: List[Bundle] = []
    try:
        for number in pyplot.get_fignums():
            figure = pyplot.figure(number)
            png = io.BytesIO()
            figure.savefig(png, format="png", bbox_inches="tight")
            bundles.append({"image/png": png.getvalue(), "text/plain": repr(figure)})
    except Exception:
        traceback.print_exc()
    finally:
        pyplot.close("all")
    return bundles


def flush_output() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass  # user code may have closed or replaced the stream; nothing left to flush


class Control:
    """The JSON-lines control channel to the agent."""

    def __init__(self) -> None:
        # Work on private, non-inheritable copies of fds 3 and 4, so that processes the user
        # starts (os.system, !cmd) never hold the agent's pipes open and code that writes to
        # fd 3 or 4 cannot corrupt the protocol.
        in_fd = os.dup(CONTROL_IN_FD)
        self._out_fd = os.dup(CONTROL_OUT_FD)
        os.close(CONTROL_IN_FD)
        os.close(CONTROL_OUT_FD)
        self._in = os.fdopen(in_fd, "rb")

    def receive(self) -> Optional[Dict[str, Any]]:
        """The next message, or None at EOF. Lines that are not JSON objects are skipped."""
        while True:
            line = self._in.readline()
            if not line:
                return None
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                return message

    def send(self, message: Dict[str, Any]) -> None:
        data = memoryview((json.dumps(message) + "\n").encode("utf-8"))
        while data:
            data = data[os.write(self._out_fd, data) :]


def allow_interrupts(allow: bool) -> None:
    """Let SIGINT raise KeyboardInterrupt (while a cell runs) or drop it (while idle).

    Dropping it keeps an interrupt that races with the end of a cell from killing the worker or
    hitting the next cell. The C default handler leaves no worker frame in user tracebacks, and
    a no-op handler (unlike SIG_IGN) is not inherited by processes that user threads start.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler if allow else ignore_signal)


def ignore_signal(signum: int, frame: Optional[types.FrameType]) -> None:
    pass


def start_ipython() -> Optional[Engine]:
    """An engine on an IPython InteractiveShell, or None when IPython cannot be imported."""
    try:
        from IPython.core.displayhook import DisplayHook
        from IPython.core.displaypub import DisplayPublisher
        from IPython.core.error import UsageError
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config
    except ImportError:
        return None

    class IPythonEngine:
        name = "ipython"

        def __init__(self) -> None:
            self.cell = Cell()
            self.traceback: List[str] = []
            config = Config()
            config.HistoryManager.hist_file = ":memory:"
            config.InteractiveShell.colors = "nocolor"
            self.shell = Shell.instance(
                config=config, displayhook_class=Hook, display_pub_class=Publisher
            )

        def run(self, code: str, count: int, cell: Cell) -> None:
            self.cell = cell
            self.traceback = []
            self.shell.execution_count = count
            result = self.shell.run_cell(code, store_history=True)
            error = result.error_before_exec or result.error_in_exec
            if error is not None:
                lines = ANSI_ESCAPE.sub("", "\n".join(self.traceback)).rstrip("\n").split("\n")
                cell.fail(error, lines if self.traceback else [])

    class Shell(InteractiveShell):
        def _showtraceback(
            self, etype: type[BaseException], evalue: BaseException, stb: list[str]
        ) -> None:
            engine.traceback = stb

        def system(self, cmd: str) -> None:
            # Unlike IPython's default (a pty via pexpect), the command writes straight to the
            # worker's stdout and stderr pipes, so its output streams live with the two kept
            # apart; and unlike system_raw, an interrupt propagates and stops the cell.
            import subprocess

            command = self.var_expand(cmd, depth=1)
            try:
                status = subprocess.call(command, shell=True, executable=os.environ.get("SHELL"))
            except KeyboardInterrupt:
                raise KeyboardInterrupt from None  # without subprocess internals in the traceback
            self.user_ns["_exit_code"] = -(status - 128) if status > 128 else status
            # The option arrived in IPython 8.8; Debian 12 ships 8.5.
            if getattr(self, "system_raise_on_error", False) and status != 0:
                raise subprocess.CalledProcessError(status, cmd)

        def enable_gui(self, gui: Optional[str] = None) -> None:
            # `%matplotlib inline` lands here with nothing to do; a GUI event loop cannot run
            # in a headless sandbox.
            if gui not in (None, "inline"):
                raise UsageError(
                    "no GUI event loop in the sandbox; use `%matplotlib inline`"
                )

    class Hook(DisplayHook):
        """Captures the last expression's formatted value instead of printing Out[n]."""

        def write_output_prompt(self) -> None:
            pass

        def write_format_data(
            self, format_dict: Dict[str, Any], md_dict: Optional[Dict[str, Any]] = None
        ) -> None:
            engine.cell.add(format_dict)

        def finish_displayhook(self) -> None:
            pass

    class Publisher(DisplayPublisher):
        """Captures display() output instead of printing its text/plain."""

        def publish(self, data: Dict[str, Any], *args: Any, **kwargs: Any) -> None:
            engine.cell.add(data)

        def clear_output(self, wait: bool = False) -> None:
            engine.cell.results.clear()

    engine = IPythonEngine()
    return engine


def start_engine() -> Engine:
    if not os.environ.get("MCP_SANDBOX_NO_IPYTHON"):
        engine = start_ipython()
        if engine is not None:
            return engine
    return plain_engine()


def plain_engine() -> Engine:
    """The plain-Python fallback, from plain_engine.py beside this file. Loaded by its path under a
    private name: this directory is not on sys.path under -P/PYTHONSAFEPATH (and main takes it off
    anyway), and a module of the user's named plain_engine must stay importable."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plain_engine.py")
    spec = importlib.util.spec_from_file_location("_mcp_sandbox_plain_engine", path)
    assert spec is not None and spec.loader is not None  # a .py path always has both
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    engine: Engine = module.PlainEngine()
    return engine


def execute(engine: Engine, code: str, count: int) -> Cell:
    cell = Cell()
    try:
        try:
            allow_interrupts(True)
            engine.run(code, count, cell)
            for bundle in figure_bundles():
                cell.add(bundle)
        finally:
            allow_interrupts(False)
    except KeyboardInterrupt as exc:
        # The interrupt landed in the worker's own code just before or after the user's.
        allow_interrupts(False)
        if cell.error is None:
            cell.fail(exc, [])
    return cell


def exit_worker() -> None:
    flush_output()
    # Threads the user left running and atexit handlers get a moment, not a veto.
    timer = threading.Timer(EXIT_GRACE_SECONDS, os._exit, (0,))
    timer.daemon = True
    timer.start()
    sys.exit(0)


def main() -> None:
    # Before anything can import matplotlib: a headless backend whose figures we collect.
    os.environ["MPLBACKEND"] = "Agg"
    # plt.show() is a no-op under Agg; the figure is still shown, as a result of the cell.
    warnings.filterwarnings("ignore", message=".*non-interactive, and thus cannot be shown")
    # Like the interactive interpreter: no script arguments, and imports resolve from the cwd
    # rather than from this file's directory (which is not on the path under -P/PYTHONSAFEPATH).
    sys.argv = [""]
    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        sys.path[0] = ""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)  # the agent forwards output as it comes

    control = Control()
    allow_interrupts(False)
    engine = start_engine()
    version = "%d.%d.%d" % sys.version_info[:3]
    control.send({"type": "ready", "language": "python", "engine": engine.name, "version": version})

    count = 0
    while True:
        message = control.receive()
        if message is None:
            break
        if message.get("type") != "execute":
            continue
        count += 1
        cell = execute(engine, str(message.get("code", "")), count)
        flush_output()
        control.send(
            {
                "type": "result",
                "results": cell.results,
                "error": cell.error,
                "execution_count": count,
            }
        )
    exit_worker()


if __name__ == "__main__":
    main()
