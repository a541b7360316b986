"""Code contexts: every rule under "Code contexts" in the README, on every backend.

The sandbox's own interpreters run the code: on the local backends that is the host's
/usr/bin/python3 and node, in Docker the image's. Tests that need IPython or matplotlib in the
sandbox use ``unavailable`` (a skip here, a failure in CI).
"""

from __future__ import annotations

import base64
import os
import time
from typing import Any

import anyio
import pytest
from mcp_types import ImageContent, TextContent

from .conftest import Tools, unavailable
from .helpers import eventually

pytestmark = pytest.mark.anyio

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def run(mcp: Tools, code: str, **arguments: Any) -> dict[str, Any]:
    return await mcp("run_code", code=code, **arguments)


def texts(r: dict[str, Any]) -> list[str]:
    return [bundle["text/plain"] for bundle in r["results"]]


async def require_module(mcp: Tools, module: str) -> None:
    r = await run(mcp, f"import importlib.util\nimportlib.util.find_spec({module!r}) is not None")
    if texts(r) != ["True"]:
        unavailable(f"{module} is not installed in the {mcp.backend} sandbox's python3")


# ----------------------------------------------------------------------------- Python


async def test_state_persists_and_last_expression_is_a_result(mcp: Tools) -> None:
    first = await run(mcp, "x = 41\ndef inc(v):\n    return v + 1\nprint('set')")
    assert first["context_id"] == "python" and first["language"] == "python"
    assert first["stdout"] == "set\n" and first["stderr"] == ""
    assert first["results"] == [] and first["error"] is None
    assert first["timed_out"] is False and first["restarted"] is False
    second = await run(mcp, "import math\ninc(x)")
    assert texts(second) == ["42"]
    assert second["execution_count"] == first["execution_count"] + 1
    assert texts(await run(mcp, "math.floor(2.5), x", language="python")) == ["(2, 41)"]
    listed = (await mcp("list_code_contexts"))["contexts"]
    assert [(c["context_id"], c["language"], c["default"]) for c in listed] == [("python", "python", True)]
    assert (await mcp("sandbox_info"))["code_contexts"] == ["python"]


async def test_text_content_is_readable(mcp: Tools) -> None:
    result = await mcp.raw("run_code", code="print('hello out')\nimport sys\nprint('hello err', file=sys.stderr)\n6 * 7")
    text = result.content[0].text  # type: ignore[union-attr]
    assert "hello out" in text and "hello err" in text and "42" in text
    assert text.index("hello out") < text.index("42")


async def test_contexts_are_isolated(mcp: Tools) -> None:
    a = await mcp("create_code_context", context_id="a")
    assert a["context_id"] == "a" and a["language"] == "python" and a["cwd"]
    minted = await mcp("create_code_context")
    assert minted["context_id"] not in ("a", "python")
    await run(mcp, "secret = 'only in a'", context_id="a")
    r = await run(mcp, "secret", context_id=minted["context_id"])
    assert r["error"]["name"] == "NameError"
    r = await run(mcp, "secret")
    assert r["error"]["name"] == "NameError"
    assert texts(await run(mcp, "secret", context_id="a")) == ["'only in a'"]
    info = await mcp("sandbox_info")
    assert set(info["code_contexts"]) == {"a", minted["context_id"], "python"}


async def test_cwd_and_env_of_a_context(mcp: Tools) -> None:
    await mcp.sh("mkdir -p sub")
    created = await mcp("create_code_context", context_id="env", cwd="sub", env={"GREETING": "hi"})
    assert created["cwd"].endswith("/sub")
    r = await run(mcp, "import os\nprint(os.getcwd(), os.environ['GREETING'], os.environ['MPLBACKEND'])", context_id="env")
    assert r["stdout"] == f"{created['cwd']} hi Agg\n"


async def test_exception_has_a_traceback_and_the_state_survives(mcp: Tools) -> None:
    await run(mcp, "kept = [1, 2]")
    r = await run(mcp, "def fail(v):\n    raise ValueError(f'bad value {v}')\nprint('before')\nfail(3)")
    assert r["stdout"] == "before\n"
    assert r["error"]["name"] == "ValueError"
    assert r["error"]["value"] == "bad value 3"
    trace = "\n".join(r["error"]["traceback"])
    assert "fail" in trace and "ValueError" in trace
    assert r["timed_out"] is False and r["restarted"] is False
    syntax = await run(mcp, "def broken(:\n    pass")
    assert syntax["error"]["name"] == "SyntaxError"
    assert texts(await run(mcp, "kept")) == ["[1, 2]"]
    result = await mcp.raw("run_code", code="1 / 0")
    assert not result.is_error  # an exception in user code is a result, not a tool error
    assert "ZeroDivisionError" in result.content[0].text  # type: ignore[union-attr]


async def test_rich_display(mcp: Tools) -> None:
    r = await run(
        mcp,
        "class Rich:\n"
        "    def __repr__(self): return 'Rich()'\n"
        "    def _repr_html_(self): return '<b>rich</b>'\n"
        "    def _repr_markdown_(self): return '**rich**'\n"
        "    def _repr_json_(self): return {'rich': True}\n"
        "    def _repr_svg_(self): return '<svg xmlns=\"http://www.w3.org/2000/svg\"/>'\n"
        "display(Rich())\n"
        "display('plain', 3)\n"
        "Rich()",
    )
    assert r["error"] is None
    assert len(r["results"]) == 4
    first, plain, number, last = r["results"]
    assert first == last
    assert first["text/plain"] == "Rich()"
    assert first["text/html"] == "<b>rich</b>"
    assert first["text/markdown"] == "**rich**"
    assert first["application/json"] == {"rich": True}
    assert first["image/svg+xml"].startswith("<svg")
    assert plain == {"text/plain": "'plain'"} and number == {"text/plain": "3"}
    # Only a final expression is a result; None and statements are not.
    assert (await run(mcp, "None"))["results"] == []
    assert (await run(mcp, "y = 3"))["results"] == []


async def test_plain_python_engine_where_ipython_is_off(mcp: Tools) -> None:
    # The fallback is a file of its own beside the worker: it must reach every backend's sandbox.
    created = await mcp("create_code_context", context_id="plain", env={"MCP_SANDBOX_NO_IPYTHON": "1"})
    assert created["engine"] == "python"
    r = await run(mcp, "def half(v):\n    return 1 / v\nhalf(2)", context_id="plain")
    assert texts(r) == ["0.5"]
    r = await run(mcp, "half(0)", context_id="plain")
    assert r["error"]["name"] == "ZeroDivisionError"
    assert "return 1 / v" in "\n".join(r["error"]["traceback"])


async def test_ipython_magics_and_shell_commands(mcp: Tools) -> None:
    created = await mcp("create_code_context", context_id="ip")
    if created["engine"] != "ipython":
        unavailable(f"IPython is not installed in the {mcp.backend} sandbox's python3")
    r = await run(mcp, "name = 'there'\n!echo hello {name}\n%pwd", context_id="ip")
    assert r["stdout"] == "hello there\n"
    assert texts(r) == [repr(created["cwd"])]


async def test_output_of_child_processes_is_captured(mcp: Tools) -> None:
    r = await run(mcp, "import subprocess\nsubprocess.run('echo from child; echo child err >&2', shell=True)\nNone")
    assert r["stdout"] == "from child\n"
    assert r["stderr"] == "child err\n"


async def test_matplotlib_figure_is_a_png_result_and_an_image(mcp: Tools) -> None:
    await require_module(mcp, "matplotlib")
    result = await mcp.raw(
        "run_code", code="import matplotlib.pyplot as plt\nplt.plot([1, 4, 9])\nplt.title('squares')\nplt.show()"
    )
    assert not result.is_error, result.content
    structured = result.structured_content
    assert structured is not None and structured["error"] is None, structured
    pngs = [bundle["image/png"] for bundle in structured["results"] if "image/png" in bundle]
    assert len(pngs) == 1
    assert base64.b64decode(pngs[0]).startswith(PNG_MAGIC)
    images = [block for block in result.content if isinstance(block, ImageContent)]
    assert len(images) == 1
    assert images[0].mime_type == "image/png" and images[0].data == pngs[0]
    assert isinstance(result.content[0], TextContent) and "image/png" in result.content[0].text
    # Figures are closed once shown: the next run has no image.
    assert (await run(mcp, "len(plt.get_fignums())"))["results"] == [{"text/plain": "0"}]


async def test_timeout_interrupts_and_keeps_the_state(mcp: Tools) -> None:
    await run(mcp, "counter = 7")
    started = time.monotonic()
    r = await run(mcp, "import time\nprint('looping', flush=True)\nwhile True:\n    time.sleep(0.05)", timeout=1)
    assert time.monotonic() - started < 10
    assert r["timed_out"] is True and r["restarted"] is False
    assert r["error"]["name"] == "KeyboardInterrupt"
    assert r["stdout"] == "looping\n"
    busy = await run(mcp, "while True:\n    counter += 0", timeout=1)
    assert busy["timed_out"] is True and busy["error"]["name"] == "KeyboardInterrupt"
    assert texts(await run(mcp, "counter")) == ["7"]


async def test_code_that_ignores_the_interrupt_gets_a_fresh_interpreter(mcp: Tools) -> None:
    await run(mcp, "lost = 1")
    started = time.monotonic()
    result = await mcp.raw(
        "run_code",
        code="import time\nwhile True:\n    try:\n        time.sleep(1)\n    except KeyboardInterrupt:\n        pass",
        timeout=1,
    )
    assert time.monotonic() - started < 20
    r = result.structured_content
    assert r is not None and not result.is_error
    assert r["timed_out"] is True and r["restarted"] is True
    assert r["error"]["name"] == "InterpreterRestarted"
    assert "restarted" in result.content[0].text  # type: ignore[union-attr]
    after = await run(mcp, "lost")
    assert after["error"]["name"] == "NameError"
    assert texts(await run(mcp, "1 + 1")) == ["2"]


async def test_client_cancel_interrupts_and_keeps_the_state(mcp: Tools) -> None:
    await run(mcp, "survivor = 'still here'")
    with anyio.move_on_after(1.5):
        await run(mcp, "import time\nwhile True:\n    time.sleep(0.05)")
    started = time.monotonic()
    assert texts(await run(mcp, "survivor")) == ["'still here'"]
    assert time.monotonic() - started < 10


async def test_output_between_runs_opens_the_next_run(mcp: Tools) -> None:
    r = await run(mcp, "import threading\nthreading.Timer(0.2, lambda: print('late', flush=True)).start()")
    assert r["stdout"] == ""
    await anyio.sleep(0.8)
    assert (await run(mcp, "print('now')"))["stdout"] == "late\nnow\n"


async def test_output_flood_is_capped(mcp: Tools) -> None:
    started = time.monotonic()
    r = await run(mcp, "import sys\nfor i in range(200000):\n    print(i)\nsys.stdout.write('x' * 20_000_000)\n'done'")
    assert time.monotonic() - started < 60
    assert texts(r) == ["'done'"]
    assert r["truncated"] is True
    assert len(r["stdout"]) < 31_000
    assert r["stdout"].startswith("0\n1\n2\n")
    assert r["stdout"].endswith("x" * 100)
    assert r["stdout_file"] in r["stdout"]
    size = await mcp.sh(f"stat -c %s {r['stdout_file']}")
    assert int(size["stdout"]) == len("".join(f"{i}\n" for i in range(200000))) + 20_000_000
    assert (await run(mcp, "print('small')"))["stdout"] == "small\n"


async def test_progress_notifications_during_a_long_run(mcp: Tools) -> None:
    seen: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, message))

    result = await mcp.client.call_tool(
        "run_code",
        {"code": "import time\nfor i in range(3):\n    print(f'tick{i}', flush=True)\n    time.sleep(0.4)"},
        progress_callback=on_progress,
    )
    assert not result.is_error
    messages = "".join(m or "" for _, m in seen)
    assert "tick0" in messages and "tick1" in messages
    assert len(seen) <= 12
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)


async def test_runs_are_serialised_per_context_and_parallel_across_contexts(mcp: Tools) -> None:
    await mcp("create_code_context", context_id="one")
    await mcp("create_code_context", context_id="two")
    await run(mcp, "import time\norder = []", context_id="one")
    await run(mcp, "import time", context_id="two")
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(lambda i=i: run(mcp, f"time.sleep(0.{5 - i}); order.append({i})", context_id="one"))
            await anyio.sleep(0.05)
        tg.start_soon(lambda: run(mcp, "time.sleep(1)", context_id="two"))
    assert time.monotonic() - started < 2.5  # "two" ran beside "one", not after it
    assert texts(await run(mcp, "order", context_id="one")) == ["[0, 1, 2]"]


async def test_interpreter_killed_from_outside(mcp: Tools) -> None:
    await mcp("create_code_context", context_id="victim")
    pid = texts(await run(mcp, "import os\nstate = 1\nos.getpid()", context_id="victim"))[0]
    listed = {c["context_id"]: c for c in (await mcp("list_code_contexts"))["contexts"]}
    assert listed["victim"]["pid"] == int(pid)
    await mcp.sh(f"kill -9 {pid}")
    await anyio.sleep(0.3)
    r = await run(mcp, "state", context_id="victim")
    assert r["restarted"] is True
    assert r["error"]["name"] == "InterpreterDied"
    assert "SIGKILL" in r["error"]["value"] and "not run" in r["error"]["value"].lower()
    assert texts(await run(mcp, "1 + 1", context_id="victim")) == ["2"]
    assert (await run(mcp, "state", context_id="victim"))["error"]["name"] == "NameError"
    await mcp("create_code_context", context_id="fresh")
    assert texts(await run(mcp, "'works'", context_id="fresh")) == ["'works'"]
    # Dying in the middle of a run is reported by that run.
    r = await run(mcp, "import os, signal\nprint('bye', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)", context_id="fresh")
    assert r["error"]["name"] == "InterpreterDied" and r["restarted"] is True
    assert r["stdout"] == "bye\n"
    assert texts(await run(mcp, "'again'", context_id="fresh")) == ["'again'"]


async def test_delete_kills_the_interpreter(mcp: Tools) -> None:
    await mcp("create_code_context", context_id="doomed")
    pid = texts(await run(mcp, "import os\nos.getpid()", context_id="doomed"))[0]
    assert await mcp("delete_code_context", context_id="doomed") == {"context_id": "doomed", "deleted": True}
    r = await mcp.sh(f"for i in $(seq 50); do kill -0 {pid} 2>/dev/null || break; sleep 0.1; done; kill -0 {pid} 2>/dev/null && echo alive || echo gone")
    assert r["stdout"] == "gone\n"
    assert "CONTEXT_NOT_FOUND" in await mcp.error("run_code", code="1", context_id="doomed")
    assert "doomed" not in (await mcp("sandbox_info"))["code_contexts"]
    # A deleted default context comes back fresh on the next run.
    await run(mcp, "z = 1")
    await mcp("delete_code_context", context_id="python")
    assert (await run(mcp, "z"))["error"]["name"] == "NameError"


async def test_invalid_arguments(mcp: Tools) -> None:
    assert "CONTEXT_NOT_FOUND" in await mcp.error("run_code", code="1", context_id="missing")
    assert "CONTEXT_NOT_FOUND" in await mcp.error("delete_code_context", context_id="missing")
    await mcp("create_code_context", context_id="dup")
    err = await mcp.error("create_code_context", context_id="dup")
    assert "CONTEXT_ALREADY_EXISTS" in err and "dup" in err
    err = await mcp.error("create_code_context", language="ruby")
    assert "INVALID_ARGUMENT" in err and "python" in err
    assert "INVALID_ARGUMENT" in await mcp.error("run_code", code="1", language="cobol")
    assert "INVALID_ARGUMENT" in await mcp.error("run_code", code="1", context_id="dup", language="javascript")
    assert "INVALID_ARGUMENT" in await mcp.error("create_code_context", context_id="bad id")
    assert "INVALID_ARGUMENT" in await mcp.error("create_code_context", context_id="python", language="javascript")
    assert "FILE_NOT_FOUND" in await mcp.error("create_code_context", cwd="/does/not/exist")
    # The interpreters come from the context's PATH; without them the language is not available.
    err = await mcp.error("create_code_context", language="javascript", env={"PATH": "/nowhere"})
    assert "LANGUAGE_NOT_AVAILABLE" in err and "node" in err
    err = await mcp.error("create_code_context", env={"PATH": "/nowhere"})
    assert "LANGUAGE_NOT_AVAILABLE" in err and "python3" in err
    assert "timeout" in await mcp.error("run_code", code="1", timeout=-1)
    # Nothing half-made is left behind.
    assert {c["context_id"] for c in (await mcp("list_code_contexts"))["contexts"]} == {"dup"}


async def test_contexts_die_with_their_sandbox(mcp: Tools) -> None:
    sandbox = (await mcp("create_sandbox"))["sandbox_id"]
    pid = int(texts(await run(mcp, "import os\nos.getpid()", sandbox_id=sandbox))[0])
    await mcp("destroy", sandbox_id=sandbox)
    if mcp.backend == "none":  # elsewhere the sandbox's pids are in a namespace of their own
        assert await eventually(lambda: not os.path.exists(f"/proc/{pid}"), 5)
    assert "SANDBOX_NOT_FOUND" in await mcp.error("run_code", code="1", sandbox_id=sandbox)


async def test_idle_contexts_expire_but_defaults_stay(mcp_with: Any) -> None:
    async with mcp_with(session_idle_timeout=1) as tools:
        await tools("create_code_context", context_id="temp")
        await tools("run_code", code="1")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            contexts = {c["context_id"] for c in (await tools("list_code_contexts"))["contexts"]}
            if "temp" not in contexts:
                break
            await anyio.sleep(0.25)
        assert contexts == {"python"}


async def test_code_contexts_are_limited(mcp_with: Any) -> None:
    async with mcp_with(max_code_contexts=2) as tools:
        await tools("create_code_context", context_id="first")
        await tools("run_code", code="1")  # the default context counts too
        err = await tools.error("create_code_context")
        assert "LIMIT_REACHED" in err and "delete_code_context" in err
        assert "LIMIT_REACHED" in await tools.error("run_code", code="1", language="javascript")
        await tools("delete_code_context", context_id="first")
        await tools("create_code_context", context_id="second")


# ----------------------------------------------------------------------------- JavaScript


async def test_javascript_declarations_persist(mcp: Tools) -> None:
    r = await run(mcp, "let a = 1; const b = 2; function add(x, y) { return x + y }\nconsole.log('hi from js')", language="javascript")
    assert r["context_id"] == "javascript" and r["language"] == "javascript"
    assert r["stdout"] == "hi from js\n" and r["error"] is None
    r = await run(mcp, "a += 10\nconsole.error('to stderr')\nadd(a, b)", language="javascript")
    assert texts(r) == ["13"]
    assert r["stderr"] == "to stderr\n"
    r = await run(mcp, "({ list: [1, 'two'] })", context_id="javascript")
    assert r["results"] == [{"text/plain": "{ list: [ 1, 'two' ] }", "application/json": {"list": [1, "two"]}}]


async def test_javascript_top_level_await_and_require(mcp: Tools) -> None:
    r = await run(
        mcp,
        "const os = require('os')\nconst wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms))\n"
        "await wait(50)\nconst answer = await Promise.resolve(42)\nanswer",
        language="javascript",
    )
    assert r["error"] is None, r["error"]
    assert texts(r) == ["42"]
    assert texts(await run(mcp, "typeof os.platform() + ':' + answer", language="javascript")) == ["'string:42'"]


async def test_javascript_errors_and_rejections(mcp: Tools) -> None:
    await run(mcp, "let keep = 'kept'", language="javascript")
    r = await run(mcp, "null.property", language="javascript")
    assert r["error"]["name"] == "TypeError"
    assert "null" in r["error"]["value"]
    assert r["error"]["traceback"]
    r = await run(mcp, "throw new RangeError('out of range')", language="javascript")
    assert r["error"]["name"] == "RangeError" and r["error"]["value"] == "out of range"
    r = await run(mcp, "await Promise.reject(new Error('rejected'))", language="javascript")
    assert r["error"]["name"] == "Error" and r["error"]["value"] == "rejected"
    r = await run(mcp, "Promise.reject(new Error('nobody waits')); 'after'", language="javascript")
    assert texts(r) == ["'after'"]
    assert "nobody waits" in r["stderr"]
    assert texts(await run(mcp, "keep", language="javascript")) == ["'kept'"]


async def test_javascript_endless_loop_is_interrupted(mcp: Tools) -> None:
    await run(mcp, "let survivor = 5", language="javascript")
    started = time.monotonic()
    r = await run(mcp, "while (true) {}", language="javascript", timeout=1)
    assert time.monotonic() - started < 10
    assert r["timed_out"] is True and r["restarted"] is False
    assert r["error"]["name"] == "Interrupted"
    assert texts(await run(mcp, "survivor", language="javascript")) == ["5"]


async def test_typescript_runs_or_says_it_cannot(mcp: Tools) -> None:
    result = await mcp.raw("create_code_context", language="typescript", context_id="ts")
    if result.is_error:
        err = result.content[0].text  # type: ignore[union-attr]
        assert "LANGUAGE_NOT_AVAILABLE" in err and "TypeScript" in err
        assert "LANGUAGE_NOT_AVAILABLE" in await mcp.error("run_code", code="1", language="typescript")
        assert (await mcp("list_code_contexts"))["contexts"] == []
        return
    r = await run(mcp, "const n: number = 21\nn * 2", context_id="ts")
    assert texts(r) == ["42"]
