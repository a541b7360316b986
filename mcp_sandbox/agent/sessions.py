"""Shell sessions: every command a fresh bash that restores the session's saved state.

A session's state is one file, ``state``: the ``set``/``shopt`` options as comments, then
aliases, functions, the ``cd`` back to the cwd, variables with their attributes and umask, as bash
prints them, then ``return`` and the raw cwd (never parsed: sourcing stops at the ``return``). A
command's bash sources it, applies the options (last, so that ``set -e`` cannot stop the restore),
runs the command through ``eval`` so ``cd``/``export``/functions take effect, and an EXIT trap (so
``exit N`` is covered) writes the new state, with one redirection, into the other of two
generation directories. The agent switches to that generation only when the command ended by
itself and the file is whole: a timeout or cancel kills one process group and loses nothing else.
The trap does as few writes as it can (options come from ``$SHELLOPTS``/``$BASHOPTS``, not from
printing every option), and writes a new file rather than truncating one, which is slow on ext4.

Starting bash and restoring the state is most of an ``exec``'s cost, so each idle session keeps a
*standby* bash that has already restored the current state and sources a pipe. A command writes its
setup and text into the pipe and closes it; the standby then evals the command (the text never goes
on a command line, so it may be longer than an argument may be). A standby is used only while it
is alive and its cwd is still the same directory (``set_env_vars`` drops it); otherwise, and for
commands with ``stdin``, a new bash is started the same way and handed the command at once. A
session idle for a minute loses its standby (``rest``), so that idle sandboxes cost less memory;
its next command starts its own bash, and its state is the file's, as always.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from .output import Spills, send_progress
from .ids import Ids, check_id
from .children import Children, spawn_error
from .pipes import PipeReader, make_pipe, write_and_close
from .protocol import AgentError, Request
from .shell_state import Options, ShellState, check_env
from .standby import Standby
from .tasks import TaskSet

TIMEOUT_EXIT_CODE = 124
# A session that ran nothing for this long keeps no standby bash (see Sessions.rest).
STANDBY_IDLE = 60.0
# What a rest keeps of a session: the first four make it, the others are set on it.
_SAVED = ("id", "dir", "cwd", "timeout", "generation", "opts", "created_at", "last_used_at", "commands")


class Session(ShellState):
    """A session: its shell state, plus the command running in it and its standby bash."""

    def __init__(self, session_id: str, directory: str, cwd: str, timeout: Optional[float]) -> None:
        super().__init__(directory, cwd)
        self.id = session_id
        self.timeout = timeout
        self.created_at = time.time()
        self.last_used_at = self.created_at
        self.lock = asyncio.Lock()
        self.running: Optional["asyncio.Task[Any]"] = None
        self.commands = 0
        self.standby: Optional[Standby] = None

    def record(self) -> Dict[str, Any]:
        """What a rest keeps of the session (saved_state.py): its shell state is in files already."""
        return {name: getattr(self, name) for name in _SAVED}

    @classmethod
    def from_record(cls, saved: Dict[str, Any]) -> "Session":
        session = cls(saved["id"], saved["dir"], saved["cwd"], saved["timeout"])
        for name in _SAVED[4:]:
            setattr(session, name, saved[name])
        return session

    def info(self) -> Dict[str, Any]:
        return {
            "session_id": self.id,
            "cwd": self.cwd,
            "busy": self.lock.locked(),
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
        }


class Sessions:
    """All sessions of the sandbox and the ``exec`` that runs in them."""

    def __init__(self, children: Children, config: Dict[str, Any], *, create_default: bool = True) -> None:
        self._children = children
        self._workspace: str = config["workspace"]
        self._base_env: Dict[str, str] = config["env"]
        self._max_output: int = config["max_output"]
        self._command_timeout: float = config["command_timeout"]
        self._max_sessions: int = config["limits"]["max_sessions"]
        self._dir = os.path.join(config["state_dir"], "sessions")
        self._spills = Spills.at(os.path.join(config["state_dir"], "output"))
        self._bash = shutil.which("bash", path=self._base_env.get("PATH")) or "/bin/bash"
        self._default_opts = Options(self._bash)
        self.sessions: Dict[str, Session] = {}
        # Called with a session's id when it is deleted, to end what else belongs to it.
        self.on_delete: List[Callable[[str], Awaitable[None]]] = []
        # Asked before an idle session expires: True while something it started still runs.
        self.in_use: List[Callable[[str], bool]] = []
        self._ids = Ids("session-%d")
        # Writes of long commands and stdin, and progress: awaited by aclose.
        self._tasks = TaskSet()
        self._closed = False
        if create_default:  # else the sessions come back from before a rest (saved_state.py)
            self.create({"session_id": "default"})

    def records(self) -> Dict[str, Any]:
        """What a rest keeps (saved_state.py): the id counter, each session's record and the spill
        files kept."""
        return {
            "session_ids": self._ids.count,
            "sessions": [session.record() for session in self.sessions.values()],
            "spills": self._spills.records(),
        }

    def restore(self, state: Dict[str, Any]) -> None:
        """Take back what ``records`` kept (into Sessions made without a default)."""
        self._ids.count = state["session_ids"]
        for saved in state["sessions"]:
            session = Session.from_record(saved)
            self.sessions[session.id] = session
        self._spills.restore(state["spills"])

    def resolve_dir(self, path: Optional[str], base: Optional[str] = None) -> str:
        """An existing directory, relative paths taken from ``base`` (default: the workspace)."""
        full = os.path.normpath(os.path.join(base or self._workspace, path or "."))
        if not os.path.exists(full):
            raise AgentError("FILE_NOT_FOUND", "directory %s does not exist; create it first (mkdir)" % full)
        if not os.path.isdir(full):
            raise AgentError("NOT_DIRECTORY", "%s is not a directory" % full)
        return full

    def get(self, session_id: Optional[str]) -> Session:
        session = self.sessions.get(session_id or "default")
        if session is None:
            raise AgentError(
                "SESSION_NOT_FOUND",
                "no session %r; sessions: %s; create it with create_session"
                % (session_id, ", ".join(sorted(self.sessions))),
            )
        return session

    def create(self, params: Dict[str, Any]) -> Dict[str, Any]:
        session_id = params.get("session_id")
        if session_id is None:
            session_id = self._ids.mint(self.sessions)
        check_id("session", session_id)
        if len(self.sessions) >= self._max_sessions:
            raise AgentError(
                "LIMIT_REACHED",
                "this sandbox has %d sessions, the most allowed; delete_session one you no longer need"
                % len(self.sessions),
            )
        if session_id in self.sessions:
            raise AgentError(
                "SESSION_ALREADY_EXISTS",
                "session %r already exists; use it, or delete_session it first" % session_id,
            )
        env: Dict[str, Optional[str]] = dict(self._base_env)
        env.update(check_env(params.get("env")))
        timeout = params.get("timeout")
        if timeout is not None and timeout <= 0:
            raise AgentError("INVALID_ARGUMENT", "timeout must be a positive number of seconds")
        session = Session(session_id, os.path.join(self._dir, session_id), self.resolve_dir(params.get("cwd")), timeout)
        session.write_initial_state(env)
        self.sessions[session_id] = session
        asyncio.get_running_loop().call_soon(self._prepare, session)
        return {"session_id": session_id, "cwd": session.cwd}

    def list(self) -> Dict[str, Any]:
        return {"sessions": [s.info() for s in self.sessions.values()]}

    async def delete(self, session_id: str) -> Dict[str, Any]:
        if session_id == "default":
            raise AgentError("DEFAULT_SESSION", "the default session cannot be deleted; delete another session")
        session = self.get(session_id)
        del self.sessions[session_id]
        self._drop_standby(session)
        if session.running is not None:
            session.running.cancel()
        self._children.kill_all_but("exec:%s:" % session_id, set())
        for hook in self.on_delete:
            await hook(session_id)
        shutil.rmtree(session.dir, ignore_errors=True)
        return {"session_id": session_id, "deleted": True}

    async def set_env(self, params: Dict[str, Any]) -> Dict[str, Any]:
        session = self.get(params.get("session_id"))
        env = check_env(params.get("env"))
        async with session.lock:
            session.append_env(env)
            session.last_used_at = time.time()
            self._drop_standby(session)
        asyncio.get_running_loop().call_soon(self._prepare, session)
        return {
            "session_id": session.id,
            "set": [k for k, v in env.items() if v is not None],
            "unset": [k for k, v in env.items() if v is None],
        }

    async def exec(self, request: Request) -> Dict[str, Any]:
        params = request.params
        command: str = params["command"]
        if "\0" in command:
            raise AgentError("INVALID_ARGUMENT", "the command contains a NUL byte; pass binary data through a file")
        session = self.get(params.get("session_id"))
        env = check_env(params.get("env"))
        stdin = params.get("stdin")
        timeout = params.get("timeout") or session.timeout or self._command_timeout
        async with session.lock:
            if session.id not in self.sessions:
                raise AgentError("SESSION_NOT_FOUND", "session %r was deleted while this command waited" % session.id)
            cwd = self.resolve_dir(params["cwd"], session.cwd) if params.get("cwd") else None
            session.running = asyncio.current_task()
            session.last_used_at = time.time()
            try:
                return await self._run(request, session, command, env, cwd, stdin, float(timeout))
            except asyncio.CancelledError:
                if self.sessions.get(session.id) is not session:  # delete_session cancelled it
                    raise AgentError("SESSION_NOT_FOUND", "session %r was deleted while this command ran" % session.id)
                raise
            finally:
                session.running = None
                session.last_used_at = time.time()
                # After the response is written (this task's step ends first): the next standby.
                asyncio.get_running_loop().call_soon(self._prepare, session)

    async def _run(
        self,
        request: Request,
        session: Session,
        command: str,
        env: Dict[str, Optional[str]],
        cwd: Optional[str],
        stdin: Optional[str],
        timeout: float,
    ) -> Dict[str, Any]:
        text = session.standby_command(command, env, cwd)
        started = time.monotonic()
        standby = self._take_standby(session) if stdin is None else None
        if standby is not None:
            try:
                standby.go(text, self._tasks)
            except OSError:  # it died meanwhile: a fresh bash will do
                standby.discard()
                standby = None
        if standby is None:
            self._drop_standby(session)
            session.discard_new_state()
            stdin_r = None
            if stdin is not None:
                stdin_r, stdin_w = os.pipe()
            try:
                standby = self._start_bash(session, stdin_r)
            except OSError as exc:
                if stdin_r is not None:
                    os.close(stdin_w)
                raise spawn_error(exc) from exc
            finally:
                if stdin_r is not None:
                    os.close(stdin_r)
            try:
                standby.go(text, self._tasks)
            except OSError:
                standby.discard()
                raise
        session.commands = standby.number
        tag = "exec:%s:%d;" % (session.id, session.commands)
        captures = self._spills.captures("%s-%d" % (session.id, session.commands), self._max_output)
        live = bool(request.params.get("stream"))
        pid, exited, out_fds = standby.pid, standby.exited, standby.out_fds
        readers = {name: PipeReader(out_fds[name], captures[name], live=live) for name in ("stdout", "stderr")}
        if stdin is not None:
            self._tasks.in_thread(write_and_close, stdin_w, stdin.encode("utf-8", "surrogateescape"))
        progress = self._tasks.spawn(send_progress(request, captures)) if live else None
        timed_out = False
        try:
            try:
                code = await asyncio.wait_for(asyncio.shield(exited), timeout)
            except asyncio.TimeoutError:
                timed_out = True
                self._children.kill(pid, tag)
                await exited
                code = TIMEOUT_EXIT_CODE
        except asyncio.CancelledError:
            self._children.kill(pid, tag)
            for reader in readers.values():
                reader.finish()
            raise
        finally:
            if progress is not None:
                progress.cancel()  # not awaited here, where a cancel could skip what follows: aclose awaits it
        for reader in readers.values():
            reader.finish()
        if not timed_out:  # a killed command's half-written state is removed before the next one
            session.adopt_new_state(self._default_opts)
        if code < 0:
            code = 128 - code
        result: Dict[str, Any] = {
            "exit_code": code,
            "success": code == 0,
            "timed_out": timed_out,
            "duration_ms": round((time.monotonic() - started) * 1000, 3),
            "session_id": session.id,
            "cwd": session.cwd,
        }
        return self._spills.finish(captures, result)

    def _prepare(self, session: Session) -> None:
        """Start the session's standby bash, unless it has one, is busy or is gone."""
        if (
            self._closed
            or session.standby is not None
            or session.lock.locked()
            or self.sessions.get(session.id) is not session
        ):
            return
        session.discard_new_state()  # now rather than on the command's clock
        try:
            session.standby = self._start_bash(session)
        except OSError:  # out of processes or fds: the command will start its own bash (or say why)
            pass

    def _start_bash(self, session: Session, stdin: Optional[int] = None) -> Standby:
        """A bash that restores the session's current state and waits for its command."""
        try:
            stat = os.stat(session.cwd)
            cwd_id: Optional[Tuple[int, int]] = (stat.st_dev, stat.st_ino)
        except OSError:
            cwd_id = None  # gone: the bash stays where it starts, as a command's bash would
        number = session.commands + 1
        command_r, command_w = os.pipe()
        fds: Dict[str, int] = {}
        out_fds: Dict[str, int] = {}
        try:
            for name in ("stdout", "stderr"):
                out_fds[name], fds[name] = make_pipe()
            pid, exited = self._children.spawn(
                [self._bash, "--noprofile", "--norc", "-c", session.standby_script(command_r), "bash"],
                tag="exec:%s:%d;" % (session.id, number),
                env={"PATH": self._base_env.get("PATH", os.defpath)},
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=fds["stdout"],
                stderr=fds["stderr"],
                pass_fds=(command_r,),
                script_at=4,
            )
        except OSError:
            for fd in (command_w, *out_fds.values()):
                os.close(fd)
            raise
        finally:
            os.close(command_r)
            for fd in fds.values():
                os.close(fd)
        return Standby(pid, exited, number, cwd_id, command_w, out_fds)

    def _take_standby(self, session: Session) -> Optional[Standby]:
        """The session's standby if it is still alive and in the session's cwd; it is then no longer
        kept. (The state it restored is current: a standby starts only on an idle session, and
        set_env_vars, the one change outside a command, drops it.)"""
        standby, session.standby = session.standby, None
        if standby is None:
            return None
        try:
            stat = os.stat(session.cwd)
            current: Optional[Tuple[int, int]] = (stat.st_dev, stat.st_ino)
        except OSError:
            current = None
        if standby.exited.done() or standby.cwd_id != current:
            standby.discard()
            return None
        return standby

    def _drop_standby(self, session: Session) -> None:
        if session.standby is not None:
            session.standby.discard()
            session.standby = None

    async def rest(self, idle_seconds: float = STANDBY_IDLE) -> None:
        """Drop the standby bash of sessions that ran nothing for ``idle_seconds``: an idle sandbox
        then holds no bash at all. Their state stays in its file, and their next command starts
        a bash that restores it (a few milliseconds more for that one command). Returns once the
        dropped ones are reaped (a second at most)."""
        cutoff = time.time() - idle_seconds
        dropped: List["asyncio.Future[int]"] = []
        for session in self.sessions.values():
            if session.standby is not None and not session.lock.locked() and session.last_used_at < cutoff:
                dropped.append(session.standby.exited)
                self._drop_standby(session)
        if dropped:
            await asyncio.wait(dropped, timeout=1.0)

    async def expire_idle(self, idle_seconds: float) -> None:
        """Delete sessions other than ``default`` that ran nothing for ``idle_seconds``."""
        cutoff = time.time() - idle_seconds
        for session in list(self.sessions.values()):
            if session.id != "default" and not session.lock.locked() and session.last_used_at < cutoff:
                if not any(check(session.id) for check in self.in_use):
                    await self.delete(session.id)

    async def aclose(self) -> None:
        """On the agent's way out, after its children were killed: no new standby, the standbys
        gone, and the writes into their pipes and the progress tasks ended."""
        self._closed = True
        for session in self.sessions.values():
            self._drop_standby(session)
        await self._tasks.aclose()

    def kill_background_jobs(self) -> int:
        """End what earlier commands left running (``cmd &``, daemons, a fork bomb) in every
        session, but no command running now and no standby; how many processes that was."""
        keep = set()
        for session in self.sessions.values():
            if session.running is not None:
                keep.add("exec:%s:%d;" % (session.id, session.commands))
            if session.standby is not None:
                keep.add("exec:%s:%d;" % (session.id, session.standby.number))
        return self._children.kill_all_but("exec:", keep)
