"""Peers (optional): the same workloads through llm-sandbox and SWE-ReX, beside mcp-sandbox.

Each row holds mcp-sandbox's figure, with the peer's from the same run in the floor column: a ratio
below 1x means mcp-sandbox is faster (0.1x: ten times faster). A peer whose package does not import is
skipped with one line. Install them away from the project's venv, e.g.
``python3 -m venv /tmp/peers-venv && /tmp/peers-venv/bin/pip install -e . 'llm-sandbox[docker]' swe-rex``
and run ``/tmp/peers-venv/bin/python -m bench --only peers``.

How the peers are set up:

- llm-sandbox, with the backend of the same kind as ours: Docker beside ``--backend docker``,
  bubblewrap beside ``--backend bwrap`` (it has none without isolation). On Docker it uses the
  benchmark image, which is local, so it is never pulled; ``skip_environment_setup``, as its set-up
  makes a venv and upgrades pip from the network; no network, as ours; SIGKILL as stop signal, so
  that ``close()`` does not wait 10 s for the image's bash (teardown is not timed). Its ``run`` is
  stateless: a new ``python file.py`` per call. Its stateful session is measured apart (Docker only).
- SWE-ReX, with ``LocalDeployment``: a bash session on this host, with no isolation at all. Its
  ``DockerDeployment`` installs swe-rex inside the container with pip or pipx from the network, or
  builds an image from ``python:3.11``: neither works offline, so it is not measured.
"""

from __future__ import annotations

import functools
import importlib
import logging
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

from .config import Config
from .harness import Report, Row, Server, interleaved_medians_ms, mcp_sandbox

PACKAGES = {"llm-sandbox": "llm_sandbox", "SWE-ReX": "swerex"}
LLM_BACKENDS = {"docker": "docker", "bwrap": "bubblewrap"}  # llm-sandbox's backend beside each of ours
LABEL = "mcp-sandbox-bench-peer"  # on every container this module starts, to remove leftovers
REX = "SWE-ReX (local, no isolation)"
LLM_VENV = "/sandbox/.sandbox-venv"  # where llm-sandbox's stateful session expects its venv
REX_LOG = logging.getLogger("bench.peers.swe-rex")  # SWE-ReX logs each deployment's end at DEBUG
REX_LOG.setLevel(logging.WARNING)


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True


@functools.cache
def say(line: str) -> None:
    """Print a line once, not once per backend."""
    print(line, flush=True)


def installed() -> list[str]:
    """The peers whose package imports here."""
    return [name for name, module in PACKAGES.items() if importable(module)]


async def compare(report: Report, cfg: Config, backend: str) -> None:
    """Cold start, `echo hi` and a code run through each installed peer, beside mcp-sandbox."""
    peers = installed()
    for name, module in PACKAGES.items():
        if name not in peers:
            say(f"peers: {name} skipped: `import {module}` fails (install it to compare)")
    llm = LLM_BACKENDS.get(backend) if "llm-sandbox" in peers else None
    if "llm-sandbox" in peers and llm is None:
        say(f"peers: llm-sandbox skipped: it has no backend like --backend {backend}")
    rex = "SWE-ReX" in peers
    if llm is None and not rex:
        return
    try:
        await cold_starts(report, cfg, backend, llm, rex)
        await round_trips(report, cfg, backend, llm, rex)
    finally:
        if llm == "docker":
            remove_leftovers()


async def cold_starts(report: Report, cfg: Config, backend: str, llm: str | None, rex: bool) -> None:
    """A new sandbox (or session) up to the result of its first `echo hi`, taken in turn."""
    samples: dict[str, list[float]] = {"ours": [], "llm": [], "rex": []}
    async with mcp_sandbox(backend) as server:
        await server.call("exec", command="true")  # the default sandbox: warms images and caches
        if llm:
            llm_cold_start(cfg, llm)
        if rex:
            await rex_cold_start()
        for _ in range(cfg.sandbox_runs):
            samples["ours"].append(await our_cold_start(server))
            if llm:
                samples["llm"].append(llm_cold_start(cfg, llm))
            if rex:
                samples["rex"].append(await rex_cold_start())
    ours = statistics.median(samples["ours"])
    name = f"cold start to first `echo hi` ({backend}) vs"
    if llm:
        report.add(Row(f"{name} llm-sandbox", ours, floor_name=f"llm-sandbox ({llm}) open + execute_command",
                       floor=statistics.median(samples["llm"])))
    if rex:
        report.add(Row(f"{name} SWE-ReX", ours, floor_name=f"{REX}: deployment start + bash session",
                       floor=statistics.median(samples["rex"])))


async def round_trips(report: Report, cfg: Config, backend: str, llm: str | None, rex: bool) -> None:
    """`echo hi`, then a code run, in sandboxes already open: medians of calls taken in turn."""
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(mcp_sandbox(backend))
        await server.call("exec", command="true")
        await server.call("run_code", code="x = 1")
        execs: dict[str, Callable[[], Awaitable[Any]]] = {"ours": lambda: server.call("exec", command="echo hi")}
        codes: dict[str, Callable[[], Awaitable[Any]]] = {
            "ours print": lambda: server.call("run_code", code="print(1)"),
            "ours x": lambda: server.call("run_code", code="x + 1"),
        }
        if llm:
            session = stack.enter_context(llm_session(cfg, llm))
            execs["llm"] = blocking(lambda: expect(session.execute_command("echo hi"), "hi"))
            codes["llm run"] = blocking(lambda: expect(session.run("print(1)"), "1"))
            if llm == "docker":
                interactive = stack.enter_context(llm_interactive(cfg))
                codes["llm interactive"] = blocking(lambda: expect(interactive.run("x + 1"), ""))
        if rex:
            runtime = await stack.enter_async_context(rex_runtime())
            execs["rex"] = lambda: rex_echo(runtime)
        exec_ms = await interleaved_medians_ms(execs, cfg.runs)
        code_ms = await interleaved_medians_ms(codes, cfg.runs) if len(codes) > 2 else {}
    if llm:
        report.add(Row(f"exec `echo hi` ({backend}) vs llm-sandbox", exec_ms["ours"],
                       floor_name=f"llm-sandbox ({llm}) execute_command", floor=exec_ms["llm"]))
    if rex:
        report.add(Row(f"exec `echo hi` ({backend}) vs SWE-ReX", exec_ms["ours"],
                       floor_name=f"{REX} run_in_session(BashAction)", floor=exec_ms["rex"]))
    if "llm run" in code_ms:
        report.add(Row(f"run_code `print(1)` ({backend}) vs llm-sandbox", code_ms["ours print"],
                       floor_name=f"llm-sandbox ({llm}) run: a new interpreter per call", floor=code_ms["llm run"]))
    if "llm interactive" in code_ms:
        report.add(Row(f"run_code `x + 1` ({backend}) vs llm-sandbox", code_ms["ours x"],
                       floor_name=f"llm-sandbox ({llm}) InteractiveSandboxSession.run",
                       floor=code_ms["llm interactive"]))


async def our_cold_start(server: Server) -> float:
    started = time.perf_counter()
    sid = (await server.call("create_sandbox"))["sandbox_id"]
    await server.call("exec", command="echo hi", sandbox_id=sid)
    elapsed = (time.perf_counter() - started) * 1000
    await server.call("destroy", sandbox_id=sid)
    return elapsed


def blocking(fn: Callable[[], Any]) -> Callable[[], Awaitable[None]]:
    """A blocking peer call as an awaitable for the harness: it holds the event loop, as nothing else runs."""

    async def call() -> None:
        fn()

    return call


def expect(output: Any, stdout: str) -> None:
    """Fail on a failed peer call, so that no failure is timed as a result."""
    if output.exit_code != 0 or stdout not in output.stdout:
        raise RuntimeError(f"peer call failed: {output!r}")


# llm-sandbox


def llm_open(cfg: Config, kind: str) -> Any:
    """An open llm-sandbox session on the given backend (see the module docstring)."""
    from llm_sandbox import SandboxSession

    if kind == "docker":
        session = SandboxSession(
            backend="docker", lang="python", image=cfg.image, client=docker_client(),
            keep_template=True, skip_environment_setup=True,
            runtime_configs={"network_mode": "none", "stop_signal": "SIGKILL", "labels": {LABEL: "llm-sandbox"}},
        )
    else:
        session = SandboxSession(backend=kind, lang="python", skip_environment_setup=True)
    try:
        session.open()
    except BaseException:
        session.close()
        raise
    return session


def llm_cold_start(cfg: Config, kind: str) -> float:
    started = time.perf_counter()
    session = llm_open(cfg, kind)
    try:
        expect(session.execute_command("echo hi"), "hi")
        return (time.perf_counter() - started) * 1000
    finally:
        session.close()


@contextmanager
def llm_session(cfg: Config, kind: str) -> Iterator[Any]:
    session = llm_open(cfg, kind)
    try:
        if kind == "docker":
            # Without its environment set-up, `run` calls `python`, which this image names python3.
            expect(session.execute_command("ln -sf /usr/bin/python3 /usr/local/bin/python"), "")
        yield session
    finally:
        session.close()


@contextmanager
def llm_interactive(cfg: Config) -> Iterator[Any]:
    """llm-sandbox's stateful session: an IPython runner in the container, fed through files.

    It starts by running ``pip install ipython`` in its venv. The image has IPython but no pip nor
    ensurepip, and no network: so the container gets a venv on the system's packages and a no-op
    pip, and llm-sandbox connects to it by ``container_id``. Its own start is therefore not timed.
    """
    from llm_sandbox import InteractiveSandboxSession

    container = docker_client().containers.run(
        cfg.image, ["sleep", "infinity"], detach=True, user="root", network_mode="none", init=True,
        labels={LABEL: "llm-sandbox-interactive"},
    )
    try:
        prepare = (f"python3 -m venv --without-pip --system-site-packages {LLM_VENV}"
                   f" && printf '#!/bin/sh\\nexit 0\\n' > {LLM_VENV}/bin/pip && chmod +x {LLM_VENV}/bin/pip")
        result = container.exec_run(["sh", "-c", prepare])
        if result.exit_code:
            raise RuntimeError(f"preparing the container failed: {result.output!r}")
        session = InteractiveSandboxSession(backend="docker", container_id=container.id, image=cfg.image,
                                            client=docker_client())
        session.open()
        try:
            expect(session.run("x = 1"), "")
            yield session
        finally:
            session.close()
    finally:
        container.remove(force=True)


def docker_client() -> Any:
    import docker

    return docker.from_env()


def remove_leftovers() -> None:
    """Remove any container of ours that a failed run left behind."""
    for container in docker_client().containers.list(all=True, filters={"label": LABEL}):
        container.remove(force=True)


# SWE-ReX


@asynccontextmanager
async def rex_runtime() -> AsyncIterator[Any]:
    """A started LocalDeployment's runtime, with its default bash session."""
    from swerex.deployment.local import LocalDeployment
    from swerex.runtime.abstract import CreateBashSessionRequest

    deployment = LocalDeployment(logger=REX_LOG)
    await deployment.start()
    try:
        await deployment.runtime.create_session(CreateBashSessionRequest())
        yield deployment.runtime
    finally:
        await deployment.stop()


async def rex_echo(runtime: Any) -> None:
    from swerex.runtime.abstract import BashAction

    observation = await runtime.run_in_session(BashAction(command="echo hi"))
    if observation.exit_code != 0 or "hi" not in observation.output:
        raise RuntimeError(f"peer call failed: {observation!r}")


async def rex_cold_start() -> float:
    started = time.perf_counter()
    async with rex_runtime() as runtime:
        await rex_echo(runtime)
        return (time.perf_counter() - started) * 1000
