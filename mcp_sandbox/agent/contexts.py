"""Code contexts: a persistent interpreter per context, each a worker process of its own.

A context's worker (``workers/python_worker.py`` or ``workers/node_worker.js``; their docstrings
give the protocol) runs on the sandbox's own ``python3`` or ``node``, found on the context's PATH,
so user code sees the sandbox's packages. It leads its own process group and carries the tag
``ctx:<id>:<n>;``, so killing it reaches everything it started. Its control pipes sit at fds 3
and 4; its stdout and stderr are pipes read for the worker's whole life into one pair of captures
per run, so output printed between runs (by a thread or a timer) opens the next run's output.
Runs in one context are serialised by a lock; contexts run in parallel.

At the timeout, or when the host cancels, the worker's process group gets SIGINT: a
KeyboardInterrupt in Python, an interrupted evaluation in Node.js, and, as with Ctrl-C in a
terminal, the end of the cell's foreground child processes. A worker that does not answer within
INTERRUPT_GRACE seconds is killed with its tree and replaced, and the result says so. A worker that
dies otherwise is noticed by the next run, which reports the loss rather than run code against a
state that is gone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any, Dict, Optional, Tuple

from .children import Children
from .ids import Ids, check_id
from .output import Spills, send_progress
from .protocol import AgentError, Request
from .sessions import Sessions
from .shell_state import check_env
from .tasks import TaskSet
from .worker import Captures, Message, Worker, describe_exit, launch_worker, worker_command

LANGUAGES = ("python", "javascript", "typescript")
ALIASES = {
    "py": "python", "python3": "python", "ipython": "python",
    "js": "javascript", "node": "javascript", "nodejs": "javascript",
    "ts": "typescript",
}
# How long an interrupted run may take to stop before its interpreter is killed and replaced.
INTERRUPT_GRACE = 3.0
START_TIMEOUT = 60.0


def normalise_language(value: Any) -> str:
    language = str(value).strip().lower()
    language = ALIASES.get(language, language)
    if language not in LANGUAGES:
        raise AgentError(
            "INVALID_ARGUMENT", "language %r is not supported; use python, javascript or typescript" % (value,)
        )
    return language


class Context:
    def __init__(self, context_id: str, language: str, cwd: str, env: Dict[str, str], default: bool) -> None:
        self.id = context_id
        self.language = language
        self.cwd = cwd
        self.env = env
        self.default = default
        self.created_at = time.time()
        self.last_used_at = self.created_at
        self.lock = asyncio.Lock()
        self.worker: Optional[Worker] = None
        self.started = False  # a worker ran once: a failed start then does not undo the context
        self.deleted = False
        # Why the interpreter's state was lost without a result saying so; the next run tells.
        self.lost: Optional[str] = None

    def info(self) -> Dict[str, Any]:
        worker = self.worker
        return {
            "context_id": self.id,
            "language": self.language,
            "cwd": self.cwd,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            "busy": self.lock.locked(),
            "default": self.default,
            "engine": worker.engine if worker is not None else None,
            "pid": worker.pid if worker is not None and worker.alive else None,
        }


class Contexts:
    """All code contexts of the sandbox and the ``run_code`` that runs in them."""

    def __init__(self, children: Children, sessions: Sessions, config: Dict[str, Any]) -> None:
        self._children = children
        self._sessions = sessions
        self._workspace: str = config["workspace"]
        self._base_env: Dict[str, str] = dict(config["env"])
        # Before anything can import matplotlib: a headless backend whose figures become results.
        self._base_env["MPLBACKEND"] = "Agg"
        self._max_output: int = config["max_output"]
        self._default_timeout: float = config["command_timeout"]  # --command-timeout, as for exec
        # Each context is an interpreter process: the defaults count too.
        self._max_contexts: int = config["limits"]["max_code_contexts"]
        self._spills = Spills.at(os.path.join(config["state_dir"], "output"))
        self.contexts: Dict[str, Context] = {}
        self._ids = Ids("ctx-%d")
        self._serial = 0  # numbers workers and runs, for tags and spill files
        self._tasks = TaskSet()  # progress of runs

    def records(self) -> Dict[str, Any]:
        """What a rest keeps (saved_state.py; none rests with a context): the id and run counters."""
        return {"context_ids": [self._ids.count, self._serial]}

    def restore(self, state: Dict[str, Any]) -> None:
        self._ids.count, self._serial = state["context_ids"]

    # -- the handlers ------------------------------------------------------------------------------

    async def create(self, params: Dict[str, Any]) -> Dict[str, Any]:
        language = normalise_language(params.get("language") or "python")
        context_id = params.get("context_id")
        if context_id is None:
            context_id = self._ids.mint(self.contexts)
        check_id("context", context_id)
        if context_id in self.contexts:
            raise AgentError(
                "CONTEXT_ALREADY_EXISTS",
                "code context %r already exists; use it, or delete_code_context it first" % context_id,
            )
        if context_id in LANGUAGES and context_id != language:
            raise AgentError(
                "INVALID_ARGUMENT",
                "context id %r is the default %s context's; choose another id" % (context_id, context_id),
            )
        env: Dict[str, str] = dict(self._base_env)
        for name, value in check_env(params.get("env")).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        cwd = self._sessions.resolve_dir(params.get("cwd"))
        self._check_limit()
        context = Context(context_id, language, cwd, env, default=context_id == language)
        self.contexts[context_id] = context
        async with context.lock:
            worker = await self._ensure_worker(context)
        return {
            "context_id": context.id,
            "language": language,
            "cwd": cwd,
            "engine": worker.engine,
            "version": worker.version,
        }

    def list(self) -> Dict[str, Any]:
        return {"contexts": [context.info() for context in self.contexts.values()]}

    async def delete(self, context_id: str) -> Dict[str, Any]:
        context = self.get(context_id)
        del self.contexts[context_id]
        context.deleted = True
        if context.worker is not None:
            self._spills.discard(await self._retire(context.worker))
            context.worker = None
        return {"context_id": context_id, "deleted": True}

    async def expire_idle(self, idle_seconds: float) -> None:
        """Delete contexts other than the defaults that ran nothing for ``idle_seconds``."""
        cutoff = time.time() - idle_seconds
        for context in list(self.contexts.values()):
            if not context.default and not context.lock.locked() and context.last_used_at < cutoff:
                if self.contexts.get(context.id) is context:
                    await self.delete(context.id)

    async def run(self, request: Request) -> Dict[str, Any]:
        params = request.params
        code = params.get("code")
        if not isinstance(code, str):
            raise AgentError("INVALID_ARGUMENT", "code must be a string of source code")
        timeout = params.get("timeout") or self._default_timeout
        if timeout <= 0:
            raise AgentError("INVALID_ARGUMENT", "timeout must be a positive number of seconds")
        context = self._target(params.get("context_id"), params.get("language"))
        async with context.lock:
            if context.deleted:
                raise AgentError("CONTEXT_NOT_FOUND", "code context %r was deleted while this code waited" % context.id)
            context.last_used_at = time.time()
            try:
                return await self._run(request, context, code, float(timeout))
            finally:
                context.last_used_at = time.time()

    # -- contexts ------------------------------------------------------------------------------------

    def get(self, context_id: str) -> Context:
        context = self.contexts.get(context_id)
        if context is None:
            raise AgentError(
                "CONTEXT_NOT_FOUND",
                "no code context %r; contexts: %s; create it with create_code_context, or omit "
                "context_id to use the language's default context" % (context_id, ", ".join(sorted(self.contexts)) or "none"),
            )
        return context

    def _check_limit(self) -> None:
        if len(self.contexts) >= self._max_contexts:
            raise AgentError(
                "LIMIT_REACHED",
                "this sandbox has %d code contexts (%s), the most allowed; delete_code_context one you no "
                "longer need" % (len(self.contexts), ", ".join(sorted(self.contexts))),
            )

    def _target(self, context_id: Optional[str], language: Optional[str]) -> Context:
        """The context a run names, creating a language's default context on first use."""
        wanted = normalise_language(language) if language else None
        if context_id is None or (context_id in LANGUAGES and context_id not in self.contexts):
            default = context_id or wanted or "python"
            if wanted is not None and wanted != default:
                raise AgentError(
                    "INVALID_ARGUMENT", "context %r is the default %s context, not %s" % (default, default, wanted)
                )
            context = self.contexts.get(default)
            if context is None:
                self._check_limit()
                context = Context(default, default, self._workspace, dict(self._base_env), default=True)
                self.contexts[default] = context
            return context
        context = self.get(context_id)
        if wanted is not None and wanted != context.language:
            raise AgentError(
                "INVALID_ARGUMENT",
                "code context %r runs %s, not %s; omit language, or pick a %s context"
                % (context.id, context.language, wanted, wanted),
            )
        return context

    # -- runs ----------------------------------------------------------------------------------------

    async def _run(self, request: Request, context: Context, code: str, timeout: float) -> Dict[str, Any]:
        worker = context.worker
        if worker is not None and not worker.alive:
            exit_code = worker.exited.result() if worker.exited.done() else None
            captures = await self._retire(worker)
            context.worker = None
            how = describe_exit(exit_code) if exit_code is not None else "stopped answering"
            context.lost = context.lost or "the %s interpreter of context %r %s since the last run" % (
                context.language, context.id, how,
            )
        else:
            captures = None
        if context.lost is not None:
            return await self._report_loss(context, captures)
        worker = await self._ensure_worker(context)
        captures = worker.captures
        assert captures is not None
        progress = self._tasks.spawn(send_progress(request, captures)) if request.params.get("stream") else None
        started = time.monotonic()
        timed_out = False
        try:
            try:
                outcome: Tuple[str, Optional[Message]] = ("exited", None)
                if await worker.send({"type": "execute", "code": code}):
                    outcome = await worker.wait_for("result", timeout)
                if outcome[0] == "timeout":
                    timed_out = True
                    outcome = await self._interrupt(worker)
            finally:
                if progress is not None:
                    progress.cancel()  # awaited by aclose: an await here could turn a finished run into a cancelled one
        except asyncio.CancelledError:
            await self._abandon(context, worker)
            raise
        duration_ms = round((time.monotonic() - started) * 1000, 3)
        if context.deleted:
            self._spills.discard(await self._retire(worker))
            raise AgentError("CONTEXT_NOT_FOUND", "code context %r was deleted while this code ran" % context.id)
        kind, message = outcome
        if kind == "message" and message is not None:
            output = worker.rotate(self._captures(context))
            result = self._result(context, output, duration_ms, timed_out)
            result["results"] = message.get("results") or []
            result["error"] = message.get("error")
            result["execution_count"] = message.get("execution_count")
            return result
        # The interpreter died during the run, or did not stop when interrupted: replace it.
        exit_code = worker.exited.result() if worker.exited.done() else None
        output = await self._retire(worker)
        context.worker = None
        if timed_out:
            name = "InterpreterRestarted"
            what = (
                "the code ran past the %g s timeout and did not stop within %g s of an interrupt (SIGINT), "
                "so the %s interpreter was killed" % (timeout, INTERRUPT_GRACE, context.language)
            )
        else:
            name = "InterpreterDied"
            how = describe_exit(exit_code) if exit_code is not None else "closed its control channel"
            what = "the %s interpreter %s while running this code" % (context.language, how)
        value = what + "; " + await self._replace(context)
        result = self._result(context, output, duration_ms, timed_out)
        result.update(results=[], error={"name": name, "value": value, "traceback": [value]}, execution_count=None)
        result["restarted"] = True
        return result

    async def _report_loss(self, context: Context, captures: Optional[Captures]) -> Dict[str, Any]:
        """A run on a context whose interpreter was lost: start a fresh one, run nothing."""
        reason = context.lost or "the interpreter was lost"
        context.lost = None
        try:
            await self._ensure_worker(context)
        except AgentError as exc:
            self._spills.discard(captures)
            raise AgentError(exc.code, "%s; starting a new one failed: %s" % (reason, exc.message)) from None
        value = (
            "%s. A fresh interpreter was started, so its variables, imports and definitions are gone; "
            "this code was NOT run: run it again, with the imports and definitions it needs" % reason
        )
        result = self._result(context, captures, 0.0, False)
        result.update(results=[], error={"name": "InterpreterDied", "value": value, "traceback": [value]})
        result.update(execution_count=None, restarted=True)
        return result

    async def _interrupt(self, worker: Worker) -> Tuple[str, Optional[Message]]:
        """Ctrl-C: SIGINT to the worker's process group, then wait a moment for its result."""
        try:
            os.killpg(worker.pid, signal.SIGINT)
        except OSError:  # the code moved the interpreter to another process group
            try:
                os.kill(worker.pid, signal.SIGINT)
            except OSError:
                pass
        return await worker.wait_for("result", INTERRUPT_GRACE)

    async def _abandon(self, context: Context, worker: Worker) -> None:
        """The host cancelled a run: interrupt it, or kill the interpreter if it does not stop."""
        if not context.deleted and worker.alive:
            kind, _ = await self._interrupt(worker)
            if kind == "message":
                self._spills.discard(worker.rotate(self._captures(context)))
                return
        exit_code = worker.exited.result() if worker.exited.done() else None
        self._spills.discard(await self._retire(worker))
        if context.worker is worker:
            context.worker = None
            if exit_code is not None:
                context.lost = "the %s interpreter of context %r %s during a cancelled run" % (
                    context.language, context.id, describe_exit(exit_code),
                )
            else:
                context.lost = (
                    "a cancelled run did not stop within %g s of an interrupt (SIGINT), so the %s interpreter "
                    "of context %r was killed" % (INTERRUPT_GRACE, context.language, context.id)
                )

    async def _replace(self, context: Context) -> str:
        """Start a fresh interpreter for a context that lost its own; says how that went."""
        lost = "its variables, imports and definitions are lost"
        try:
            await self._ensure_worker(context)
        except AgentError as exc:
            return "%s, and starting a new interpreter failed (%s); the next run tries again" % (lost, exc.message)
        return "a fresh interpreter was started and %s" % lost

    def _result(
        self, context: Context, captures: Optional[Captures], duration_ms: float, timed_out: bool
    ) -> Dict[str, Any]:
        result: Dict[str, Any] = {
            "context_id": context.id,
            "language": context.language,
            "duration_ms": duration_ms,
            "timed_out": timed_out,
            "restarted": False,
        }
        return self._spills.finish(captures, result)

    # -- workers -------------------------------------------------------------------------------------

    async def _ensure_worker(self, context: Context) -> Worker:
        """The context's running worker, started if it has none. Call with its lock held."""
        if context.worker is not None:
            return context.worker
        try:
            worker = await self._start(context)
        except BaseException:
            if not context.started and self.contexts.get(context.id) is context:
                del self.contexts[context.id]  # a context whose interpreter never ran is no context
            raise
        if context.deleted:
            self._spills.discard(await self._retire(worker))
            raise AgentError("CONTEXT_NOT_FOUND", "code context %r was deleted while it started" % context.id)
        context.worker = worker
        context.started = True
        return worker

    async def _start(self, context: Context) -> Worker:
        command = worker_command(context.language, context.env.get("PATH", os.defpath))
        self._serial += 1
        tag = "ctx:%s:%d;" % (context.id, self._serial)
        worker = launch_worker(
            self._children, command, tag, context.language, context.env, context.cwd, self._captures(context)
        )
        try:
            await worker.connect()
            kind, ready = await worker.wait_for("ready", START_TIMEOUT)
        except BaseException:
            self._spills.discard(await self._retire(worker))
            raise
        if kind == "message" and ready is not None and not ready.get("error"):
            worker.engine = str(ready.get("engine") or "")
            worker.version = str(ready.get("version") or "")
            return worker
        exit_code = worker.exited.result() if worker.exited.done() else None
        output = await self._retire(worker)
        stderr = output["stderr"].finish()[0].strip() if output is not None else ""
        self._spills.discard(output)
        if ready is not None and ready.get("error"):
            problem = str(ready["error"])
        elif kind == "timeout":
            problem = "%s did not start within %g s" % (command[0], START_TIMEOUT)
        else:
            how = describe_exit(exit_code) if exit_code is not None else "closed its control channel"
            problem = "%s %s at start%s" % (command[0], how, ": " + stderr[-2000:] if stderr else "")
        raise AgentError("LANGUAGE_NOT_AVAILABLE", problem)

    async def _retire(self, worker: Worker) -> Optional[Captures]:
        """Kill a worker and everything it started; return the output it left (once)."""
        self._children.kill(None if worker.exited.done() else worker.pid, worker.tag)
        if not worker.exited.done():
            await asyncio.wait({worker.exited}, timeout=5)
        captures = worker.rotate(None) if not worker.closed else None
        worker.close()
        return captures

    async def aclose(self) -> None:
        """On the agent's way out, after its children were killed: each interpreter reaped and its
        pipes closed."""
        for context in self.contexts.values():
            worker, context.worker = context.worker, None
            if worker is not None:
                self._spills.discard(await self._retire(worker))
                await worker.aclose()
        await self._tasks.aclose()

    def _captures(self, context: Context) -> Captures:
        self._serial += 1
        return self._spills.captures("ctx-%s-%d" % (context.id, self._serial), self._max_output)
