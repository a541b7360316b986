"""The code-context workers, driven as real subprocesses over their fd 3/4 control protocol.

Each test starts a worker the way the agent does (cwd, environment, stdin on /dev/null,
stdout/stderr pipes, control input on fd 3 and control output on fd 4) and checks what a user of
run_code would: results, output, errors, interrupts and state that survives them.
"""

from __future__ import annotations

import base64
import fcntl
import functools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from .conftest import unavailable

WORKERS = Path(__file__).resolve().parent.parent / "mcp_sandbox" / "agent" / "workers"
PYTHON_WORKER = WORKERS / "python_worker.py"
NODE_WORKER = WORKERS / "node_worker.js"
TIMEOUT = 10.0
NODE = shutil.which("node") or "node"


@dataclass
class Reply:
    """One execute's result message, with the output the worker wrote before sending it."""

    message: Dict[str, Any]
    stdout: str
    stderr: str

    @property
    def results(self) -> List[Dict[str, Any]]:
        results: List[Dict[str, Any]] = self.message["results"]
        return results

    @property
    def error(self) -> Optional[Dict[str, Any]]:
        error: Optional[Dict[str, Any]] = self.message["error"]
        return error

    @property
    def texts(self) -> List[str]:
        return [bundle["text/plain"] for bundle in self.results]


class Worker:
    """A worker process with its control pipes, as the agent starts it."""

    def __init__(self, argv: List[str], cwd: Path, env: Optional[Dict[str, str]] = None) -> None:
        control_in_read, self._control_in = os.pipe()
        self._control_out, control_out_write = os.pipe()

        def place_control_fds() -> None:
            # Lift both ends above 4 first, so that placing one cannot clobber the other.
            high_in = fcntl.fcntl(control_in_read, fcntl.F_DUPFD, 10)
            high_out = fcntl.fcntl(control_out_write, fcntl.F_DUPFD, 10)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        # Not pass_fds=(3, 4): those fds exist only once preexec_fn has run, after subprocess
        # has checked pass_fds, and close_fds would then close them. Every other descriptor of
        # this process is non-inheritable, so close_fds=False lets nothing else through.
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(os.environ, **(env or {})),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=False,
            preexec_fn=place_control_fds,
        )
        os.close(control_in_read)
        os.close(control_out_write)
        assert self.process.stdout is not None and self.process.stderr is not None
        self._pipes = (self.process.stdout, self.process.stderr)
        self._stderr_fd = self.process.stderr.fileno()
        self._streams = {self.process.stdout.fileno(): b"", self._stderr_fd: b""}
        self._control_buffer = b""
        for fd in [self._control_out, *self._streams]:
            os.set_blocking(fd, False)
        self.ready = self.receive()

    def receive(self, interrupt_after: Optional[float] = None) -> Dict[str, Any]:
        """The next control message, reading stdout/stderr meanwhile so the worker never blocks."""
        start = time.monotonic()
        while b"\n" not in self._control_buffer:
            elapsed = time.monotonic() - start
            if interrupt_after is not None and elapsed >= interrupt_after:
                self.interrupt()
                interrupt_after = None
            if elapsed > TIMEOUT:
                self.kill()
                pytest.fail(f"no control message within {TIMEOUT} s; stderr: {self.stderr_so_far()!r}")
            readable, _, _ = select.select([self._control_out, *self._streams], [], [], 0.05)
            for fd in readable:
                data = os.read(fd, 65536)
                if fd == self._control_out:
                    if not data:
                        pytest.fail(f"worker closed fd 4; stderr: {self.stderr_so_far()!r}")
                    self._control_buffer += data
                else:
                    self._streams[fd] += data
        line, self._control_buffer = self._control_buffer.split(b"\n", 1)
        message: Dict[str, Any] = json.loads(line)
        return message

    def execute(self, code: str, interrupt_after: Optional[float] = None) -> Reply:
        """Runs code; the reply's output includes anything written since the previous reply."""
        os.write(self._control_in, (json.dumps({"type": "execute", "code": code}) + "\n").encode())
        message = self.receive(interrupt_after)
        assert message["type"] == "result"
        # No waiting: the worker flushes its output before it writes the result, so all of it
        # must already be in the pipes.
        self._drain()
        stdout, stderr = (data.decode() for data in self._streams.values())
        for fd in self._streams:
            self._streams[fd] = b""
        return Reply(message, stdout, stderr)

    def interrupt(self) -> None:
        self.process.send_signal(signal.SIGINT)

    def close(self) -> int:
        """Closes the control input, as the agent does to end a context, and waits for exit."""
        if self._control_in >= 0:
            os.close(self._control_in)
            self._control_in = -1
        try:
            return self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"worker still running {TIMEOUT} s after EOF on its control input")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stderr_so_far(self) -> str:
        self._drain()
        return self._streams[self._stderr_fd].decode(errors="replace")

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.kill()
        for fd in (self._control_in, self._control_out):
            if fd >= 0:
                os.close(fd)
        for pipe in self._pipes:
            pipe.close()

    def _drain(self) -> None:
        for fd in self._streams:
            try:
                while True:
                    data = os.read(fd, 65536)
                    if not data:
                        break
                    self._streams[fd] += data
            except BlockingIOError:
                pass


@functools.lru_cache(maxsize=None)
def can_import(python: str, module: str) -> bool:
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0


def python_with(*modules: str) -> Optional[str]:
    """An interpreter that can import modules: this one, else the system python3."""
    for python in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(python) and all(can_import(python, module) for module in modules):
            return python
    return None


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    workers: List[Worker] = []

    def start_worker(argv: List[str], env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None) -> Worker:
        worker = Worker(argv, cwd or tmp_path, env)
        workers.append(worker)
        return worker

    yield start_worker
    for worker in workers:
        worker.cleanup()


@pytest.fixture(params=["ipython", "python"])
def py(request: pytest.FixtureRequest, start: Any) -> Worker:
    """A Python worker on each engine: IPython, and the plain-Python fallback."""
    if request.param == "ipython":
        python = python_with("IPython")
        if python is None:
            unavailable("IPython is not installed")
        env = {"MCP_SANDBOX_NO_IPYTHON": ""}
    else:
        python, env = sys.executable, {"MCP_SANDBOX_NO_IPYTHON": "1"}
    worker: Worker = start([python, str(PYTHON_WORKER)], env)
    assert worker.ready == {
        "type": "ready",
        "language": "python",
        "engine": request.param,
        "version": worker.ready["version"],
    }
    return worker


@pytest.fixture
def node() -> None:
    if shutil.which("node") is None:
        unavailable("node is not installed")


needs_node = pytest.mark.usefixtures("node")


@pytest.fixture
def js(start: Any) -> Worker:
    worker: Worker = start([NODE, str(NODE_WORKER)])
    assert worker.ready == {
        "type": "ready",
        "language": "javascript",
        "engine": "node",
        "version": worker.ready["version"],
    }
    return worker


# ----------------------------------------------------------------------------- Python


def test_python_state_persists_and_last_expression_is_the_result(py: Worker) -> None:
    first = py.execute("x = 20")
    second = py.execute("y = x + 1\ny")
    assert first.message == {"type": "result", "results": [], "error": None, "execution_count": 1}
    assert second.texts == ["21"]
    assert second.message["execution_count"] == 2


def test_python_output_reaches_the_pipes_before_the_result(py: Worker) -> None:
    reply = py.execute("import sys\nprint('hello')\nprint('oops', file=sys.stderr)\nprint('bye')")
    assert reply.stdout == "hello\nbye\n"
    assert reply.stderr == "oops\n"
    assert reply.results == [] and reply.error is None


def test_python_output_of_child_processes_reaches_the_pipes(py: Worker) -> None:
    reply = py.execute("import subprocess\nsubprocess.run(['sh', '-c', 'echo out; echo err >&2'])\n0")
    assert reply.stdout == "out\n"
    assert reply.stderr == "err\n"


def test_python_display_adds_results_in_order(py: Worker) -> None:
    reply = py.execute("display(1, 'a')\ndisplay([2])\n3")
    assert reply.texts == ["1", "'a'", "[2]", "3"]


def test_python_none_and_statements_give_no_result(py: Worker) -> None:
    assert py.execute("None").results == []
    assert py.execute("def f():\n    return 1").results == []


def test_python_rich_representations(py: Worker) -> None:
    reply = py.execute(
        "class Rich:\n"
        "    def __repr__(self): return 'Rich()'\n"
        "    def _repr_html_(self): return '<b>rich</b>'\n"
        "    def _repr_png_(self): return b'\\x89PNG'\n"
        "    def _repr_json_(self): return {'a': [1, 2]}\n"
        "Rich()"
    )
    assert reply.results == [
        {
            "text/plain": "Rich()",
            "text/html": "<b>rich</b>",
            "image/png": base64.b64encode(b"\x89PNG").decode(),
            "application/json": {"a": [1, 2]},
        }
    ]


def test_python_exception_reports_traceback_and_keeps_state(py: Worker) -> None:
    py.execute("kept = 'yes'")
    reply = py.execute("def fail():\n    raise ValueError('bad value')\nfail()")
    assert reply.error is not None
    assert reply.error["name"] == "ValueError"
    assert reply.error["value"] == "bad value"
    traceback = "\n".join(reply.error["traceback"])
    assert "fail()" in traceback and "bad value" in traceback
    assert "python_worker" not in traceback
    assert "\x1b[" not in traceback
    assert py.execute("kept").texts == ["'yes'"]


def test_python_syntax_error(py: Worker) -> None:
    reply = py.execute("def broken(:\n    pass")
    assert reply.error is not None and reply.error["name"] == "SyntaxError"
    assert py.execute("1 + 1").texts == ["2"]


def test_python_results_before_an_error_are_kept(py: Worker) -> None:
    reply = py.execute("display('before')\n1 / 0")
    assert reply.texts == ["'before'"]
    assert reply.error is not None and reply.error["name"] == "ZeroDivisionError"


def test_python_sigint_interrupts_a_loop_and_keeps_state(py: Worker) -> None:
    py.execute("counter = 0")
    reply = py.execute("while True:\n    counter += 1", interrupt_after=0.5)
    assert reply.error is not None and reply.error["name"] == "KeyboardInterrupt"
    assert py.execute("counter > 0").texts == ["True"]


def test_python_sigint_interrupts_top_level_await(py: Worker) -> None:
    reply = py.execute("import asyncio\nawait asyncio.sleep(60)", interrupt_after=0.5)
    assert reply.error is not None and reply.error["name"] == "KeyboardInterrupt"
    assert py.execute("'alive'").texts == ["'alive'"]


def test_python_sigint_while_idle_is_ignored(py: Worker) -> None:
    py.interrupt()  # before the first cell
    time.sleep(0.3)
    py.execute("state = 42")
    py.interrupt()
    time.sleep(0.3)
    assert py.process.poll() is None
    reply = py.execute("state")
    assert reply.texts == ["42"] and reply.error is None


def test_python_top_level_await(py: Worker) -> None:
    reply = py.execute("import asyncio\nawait asyncio.sleep(0)\nanswer = await asyncio.sleep(0, 7)\nanswer")
    assert reply.texts == ["7"]
    assert py.execute("answer * 2").texts == ["14"]


def test_python_user_namespace_is_main_and_clean(py: Worker) -> None:
    assert py.execute("__name__").texts == ["'__main__'"]
    reply = py.execute("[name for name in ('json', 'signal', 'Control', 'main') if name in dir()]")
    assert reply.texts == ["[]"]


def test_python_imports_resolve_from_the_cwd(py: Worker, tmp_path: Path) -> None:
    (tmp_path / "helper_module.py").write_text("VALUE = 'from cwd'\n")
    assert py.execute("import helper_module\nhelper_module.VALUE").texts == ["'from cwd'"]


def test_python_eof_on_control_ends_the_worker(py: Worker) -> None:
    py.execute("import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()")
    assert py.close() == 0


def test_python_matplotlib_figure_is_one_png(start: Any) -> None:
    python = python_with("matplotlib")
    if python is None:
        unavailable("matplotlib is not installed")
    engines = ["python"] + (["ipython"] if can_import(python, "IPython") else [])
    for engine in engines:
        worker = start([python, str(PYTHON_WORKER)], {"MCP_SANDBOX_NO_IPYTHON": "1" if engine == "python" else ""})
        reply = worker.execute("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
        images = [bundle["image/png"] for bundle in reply.results if "image/png" in bundle]
        assert len(images) == 1, (engine, reply.results)
        assert base64.b64decode(images[0]).startswith(b"\x89PNG\r\n\x1a\n")
        assert "non-interactive" not in reply.stderr
        assert worker.execute("1").results == [{"text/plain": "1"}], "figures are closed once shown"


def test_ipython_magics_and_shell_commands(start: Any, tmp_path: Path) -> None:
    python = python_with("IPython")
    if python is None:
        unavailable("IPython is not installed")
    worker = start([python, str(PYTHON_WORKER)])
    shell = worker.execute("name = 'there'\n!echo hello {name}\n!echo to-stderr >&2")
    assert shell.stdout == "hello there\n"
    assert shell.stderr == "to-stderr\n"
    assert shell.results == [] and shell.error is None
    timed = worker.execute("%timeit -n 1 -r 1 sum(range(10))")
    assert "per loop" in timed.stdout
    assert worker.execute("%pwd").texts == [repr(str(tmp_path))]
    interrupted = worker.execute("!sleep 30\nprint('not reached')", interrupt_after=0.5)
    assert interrupted.error is not None and interrupted.error["name"] == "KeyboardInterrupt"
    assert "not reached" not in interrupted.stdout
    usage = worker.execute("%no_such_magic")
    assert usage.error is not None and usage.error["name"] == "UsageError"


def test_plain_python_on_the_system_interpreter(start: Any) -> None:
    if not os.path.exists("/usr/bin/python3"):
        unavailable("no /usr/bin/python3")
    worker = start(["/usr/bin/python3", str(PYTHON_WORKER)], {"MCP_SANDBOX_NO_IPYTHON": "1"})
    assert worker.ready["engine"] == "python"
    assert worker.execute("import sys\nsys.version_info >= (3, 8)").texts == ["True"]


# ----------------------------------------------------------------------------- JavaScript


@needs_node
def test_js_declarations_persist_across_executes(js: Worker) -> None:
    js.execute("let a = 1; const b = 2; var c = 3; function add(x, y) { return x + y } class K { v() { return 4 } }")
    reply = js.execute("a += 10\nadd(a, b) + c + new K().v()")
    assert reply.texts == ["20"]
    assert reply.message["execution_count"] == 2


@needs_node
def test_js_last_expression_results(js: Worker) -> None:
    assert js.execute("({ list: [1, 'two'], nested: { ok: true } })").results == [
        {
            "text/plain": "{ list: [ 1, 'two' ], nested: { ok: true } }",
            "application/json": {"list": [1, "two"], "nested": {"ok": True}},
        }
    ]
    assert js.execute("'text'").results == [{"text/plain": "'text'"}]
    assert js.execute("undefined").results == []
    assert js.execute("let unused = 1").results == []
    assert "application/json" not in js.execute("new Map([[1, 2]])").results[0]


@needs_node
def test_js_console_output_reaches_the_pipes_before_the_result(js: Worker) -> None:
    reply = js.execute("console.log('hello'); console.info('info'); console.error('oops'); console.warn('careful'); 1")
    assert reply.stdout == "hello\ninfo\n"
    assert reply.stderr == "oops\ncareful\n"
    assert reply.texts == ["1"]


@needs_node
def test_js_output_queued_by_a_cell_arrives_with_it(js: Worker) -> None:
    reply = js.execute(
        "Promise.resolve().then(() => console.log('then'))\n"
        "process.emitWarning('from the cell')\n"
        "Promise.reject(new Error('nobody awaits'))\n"
        "1"
    )
    assert reply.stdout == "then\n"
    assert "Warning: from the cell" in reply.stderr
    assert "Unhandled promise rejection: Error: nobody awaits" in reply.stderr


@needs_node
def test_js_thrown_errors_keep_state(js: Worker) -> None:
    js.execute("const kept = 'yes'")
    reply = js.execute("null.property")
    assert reply.error is not None
    assert reply.error["name"] == "TypeError"
    assert "null" in reply.error["value"]
    assert any("<cell 2>" in line for line in reply.error["traceback"])
    assert not any("node_worker" in line or "node:vm" in line for line in reply.error["traceback"])
    missing = js.execute("notDefinedAnywhere")
    assert missing.error is not None and missing.error["name"] == "ReferenceError"
    syntax = js.execute("let = = 1")
    assert syntax.error is not None and syntax.error["name"] == "SyntaxError"
    assert js.execute("kept").texts == ["'yes'"]


@needs_node
def test_js_top_level_await_declarations_persist(js: Worker) -> None:
    reply = js.execute("const r = await Promise.resolve(5)\nlet { a, b: [c] } = await Promise.resolve({ a: 1, b: [2] })\nr")
    assert reply.texts == ["5"] and reply.error is None
    assert js.execute("r + a + c").texts == ["8"]
    later = js.execute("async function twice(x) { return 2 * await x }\nawait twice(Promise.resolve(r))")
    assert later.texts == ["10"]
    assert js.execute("twice(1)").texts == ["Promise { 2 }"]


@needs_node
def test_js_rejected_await_is_an_error(js: Worker) -> None:
    reply = js.execute("await Promise.reject(new RangeError('boom'))")
    assert reply.error is not None
    assert reply.error["name"] == "RangeError"
    assert reply.error["value"] == "boom"
    assert js.execute("1 + 1").texts == ["2"]


@needs_node
def test_js_require_resolves_builtins_and_packages_from_the_cwd(js: Worker, tmp_path: Path) -> None:
    package = tmp_path / "node_modules" / "local-package"
    package.mkdir(parents=True)
    (package / "index.js").write_text("module.exports = { answer: 42 }\n")
    assert js.execute("require('fs').existsSync('.')").texts == ["true"]
    assert js.execute("require('local-package').answer").texts == ["42"]
    assert js.execute("require('fs').readdirSync('.') instanceof Array").texts == ["true"]


@needs_node
def test_js_sigint_interrupts_a_loop_and_keeps_state(js: Worker) -> None:
    js.execute("let counter = 0")
    reply = js.execute("while (true) { counter++ }", interrupt_after=0.5)
    assert reply.error is not None and reply.error["name"] == "Interrupted"
    assert js.execute("counter > 0").texts == ["true"]


@needs_node
def test_js_sigint_abandons_a_promise_that_never_settles(js: Worker) -> None:
    js.execute("const before = 'kept'")
    reply = js.execute("await new Promise(() => {})", interrupt_after=0.5)
    assert reply.error is not None and reply.error["name"] == "Interrupted"
    assert js.execute("before").texts == ["'kept'"]


@needs_node
def test_js_sigint_while_idle_is_ignored(js: Worker) -> None:
    js.interrupt()  # before the first cell
    time.sleep(0.3)
    js.execute("const state = 42")
    js.interrupt()
    time.sleep(0.3)
    assert js.process.poll() is None
    assert js.execute("state").texts == ["42"]


@needs_node
def test_js_errors_after_a_cell_do_not_crash_the_worker(js: Worker) -> None:
    first = js.execute("const kept = 1\nsetTimeout(() => { throw new Error('from a timer') }, 10)")
    time.sleep(0.3)
    second = js.execute("kept")
    assert second.texts == ["1"]
    assert "Uncaught exception: Error: from a timer" in first.stderr + second.stderr


@needs_node
def test_js_eof_on_control_ends_the_worker(js: Worker) -> None:
    js.execute("setInterval(() => {}, 1000)")
    assert js.close() == 0


def typescript_available(cwd: Path) -> bool:
    probe = (
        "const m = require('module');"
        "if (typeof m.stripTypeScriptTypes === 'function') process.exit(0);"
        "const path = require('path');"
        "const global = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules');"
        "for (const base of [process.cwd(), global]) {"
        "  try { m.createRequire(path.join(base, 'x.js')).resolve('typescript'); process.exit(0) } catch {}"
        "}"
        "process.exit(1)"
    )
    return subprocess.run([NODE, "-e", probe], cwd=cwd).returncode == 0


@needs_node
def test_typescript(start: Any, tmp_path: Path) -> None:
    if typescript_available(tmp_path):
        worker = start([NODE, str(NODE_WORKER), "--typescript"])
        assert worker.ready["language"] == "typescript" and "error" not in worker.ready
        assert worker.execute("const n: number = 5\ninterface P { a: string }\nn * 2").texts == ["10"]
        assert worker.execute("const m: number = await Promise.resolve(n)\nm").texts == ["5"]
    else:
        worker = start([NODE, str(NODE_WORKER), "--typescript"])
        assert worker.ready["type"] == "ready"
        assert worker.ready["language"] == "typescript"
        assert worker.ready["error"].startswith("TypeScript needs Node.js >= 22.13 or the 'typescript' package")
        assert worker.process.wait(TIMEOUT) != 0
