"""The agent's entry point: set up the channel, serve requests, clean up on the way out.

Started by a backend as ``python3 -I -S -c <bootstrap> <dir> <config json>`` inside the sandbox. It uses
only the standard library and runs on Python >= 3.8, so any image with ``python3`` works.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Optional, Tuple

from .api import DEFAULT_REST_AFTER, DEFAULT_SESSION_IDLE_TIMEOUT, ON_PIPES, ON_SOCKET, PROTOCOL_VERSION, Hello, Method
from .children import _PR_SET_DUMPABLE, _PR_SET_PDEATHSIG, Children, prctl
from .jobs import Jobs
from .pipes import enlarge_pipe
from .processes import Processes
from .protocol import Connection, Handler, Request, line_limit
from .rest import ENDING, Executor, rest_when_idle
from .saved_state import Parts, load, restore, restore_listeners
from .sessions import Sessions
from .streams import Streams
from .tasks import cancel_and_wait

if TYPE_CHECKING:
    from .contexts import Contexts
    from .files import Files


def main() -> None:
    config: Dict[str, Any] = json.loads(sys.argv[1])
    saved = None
    if "resume" in config:
        # Woken from a rest (rest.py): the one-time steps below were done, and are kept by exec.
        saved = load(config["resume"])
        config = saved["config"]
        in_fd, out_fd = saved["channel"]
        for fd in (in_fd, out_fd):
            os.set_inheritable(fd, False)
    else:
        in_fd, out_fd = take_channel(config)
        apply_rlimits(config.get("rlimits") or {})
    # The channel is the host's only door into the sandbox: code in the sandbox runs as our user,
    # and could otherwise open our pipes through /proc/<pid>/fd and write to the host or read its
    # requests. Not dumpable, only a process with CAP_SYS_PTRACE may open them, and sandboxes have
    # none. Dumpable comes back with every exec, so what we start is unaffected (and so is this
    # agent after a rest: hence again here).
    if not prctl(_PR_SET_DUMPABLE, 0):
        sys.stderr.write("mcp-sandbox agent: prctl(PR_SET_DUMPABLE, 0) failed; code in the sandbox can reach the channel\n")
    if os.getpid() != 1:
        # Without a pid namespace nothing else ends the sandbox when the server dies. As the
        # namespace's pid 1 (bubblewrap, Docker) the backend's own rule applies: bubblewrap's
        # SIGKILL when the server dies, which takes the whole namespace with it.
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    # A handler, not SIG_IGN: an ignored signal stays ignored in every child after exec, and then
    # neither kill_process's INT nor a command's own trap on INT would work.
    signal.signal(signal.SIGINT, lambda *_: None)
    asyncio.run(serve(config, in_fd, out_fd, saved))


def take_channel(config: Dict[str, Any]) -> Tuple[int, int]:
    """The channel's fds: a connection to the host's socket where the config names one and it
    connects, else private copies of stdin and stdout. Fd 0 and 1 then point elsewhere, so that
    nothing the agent or a library prints can corrupt the protocol stream."""
    if config.get("inherit_env"):
        # In a container the image's environment (PATH, HOME, LANG, ...) is the lowest layer of
        # every command's environment; only the agent can read it. The backend's env goes on top.
        config["env"] = dict(os.environ, **config["env"])
    connected = connect_channel(config["channel_socket"]) if "channel_socket" in config else None
    if connected is not None:
        in_fd, out_fd = connected, os.dup(connected)
    else:
        in_fd, out_fd = os.dup(0), os.dup(1)
        for fd in (in_fd, out_fd):
            enlarge_pipe(fd)  # file chunks are ~1.4 MB lines: fewer round trips through a 64 KiB pipe
    if "channel_socket" in config:
        os.write(1, ON_PIPES if connected is None else ON_SOCKET)  # which way: the host reads this first
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    return in_fd, out_fd


def connect_channel(path: str) -> Optional[int]:
    """The fd of a connection to the host's channel socket (backends/docker_channel.py), or None
    where it cannot be reached (an engine in a VM, gVisor): the channel is then stdin and stdout."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, 1 << 20)  # as enlarge_pipe: fewer wake-ups for floods
    return sock.detach()


def apply_rlimits(limits: Dict[str, int]) -> None:
    """Hard limits for the agent and all it starts, e.g. {"FSIZE": bytes}: the per-file size on
    every host, and memory and processes per process where the host has no cgroup for them."""
    import resource

    for name, value in limits.items():
        which = getattr(resource, "RLIMIT_" + name)
        hard = resource.getrlimit(which)[1]
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)  # a lower limit the agent was started with stays
        resource.setrlimit(which, (value, value))


def simple(fn: Callable[[Dict[str, Any]], Any]) -> Handler:
    async def handler(request: Request) -> Any:
        result = fn(request.params)
        if asyncio.iscoroutine(result):
            result = await result
        return result

    return handler


async def serve(config: Dict[str, Any], in_fd: int, out_fd: int, saved: Optional[Dict[str, Any]] = None) -> None:
    loop = asyncio.get_running_loop()
    executor = Executor()
    loop.set_default_executor(executor)
    os.makedirs(config["state_dir"], exist_ok=True)
    cgroup = config.get("cgroup")
    if cgroup is not None:
        os.set_inheritable(cgroup["fd"], False)  # for the agent alone
    children = Children(config["sandbox_id"], Jobs(cgroup["fd"], cgroup["v2"]) if cgroup is not None else None)
    # Not dumpable: the sandbox's processes, which run as the same user, can neither trace the
    # agent nor open its descriptors (the job cgroups') through /proc. After Children has opened
    # its /proc/self files: they belong to root from now on.
    prctl(_PR_SET_DUMPABLE, 0)
    children.install(loop)
    sessions = Sessions(children, config, create_default=saved is None)
    streams = Streams()
    processes = Processes(children, sessions, config)
    sessions.on_delete.append(processes.kill_session)
    sessions.in_use.append(processes.session_busy)
    # Files and code contexts are imported on first use: a sandbox starts faster without them.
    loaded_files: List["Files"] = []
    loaded_contexts: List["Contexts"] = []

    def files() -> "Files":
        if not loaded_files:
            from .files import Files

            loaded_files.append(Files(sessions, config))
        return loaded_files[0]

    def contexts() -> "Contexts":
        if not loaded_contexts:
            from .contexts import Contexts

            loaded_contexts.append(Contexts(children, sessions, config))
        return loaded_contexts[0]

    def file_op(method: str) -> Handler:
        return simple(lambda p: getattr(files(), method)(p))

    def stop_all() -> Dict[str, Any]:
        children.kill(None, "")
        return {}

    async def expire_contexts(idle_seconds: float) -> None:
        if loaded_contexts:
            await loaded_contexts[0].expire_idle(idle_seconds)

    parts = Parts(config, [in_fd, out_fd], children, sessions, processes, streams, loaded_contexts, loaded_files)
    if saved is not None:
        restore(saved, parts, contexts, files)

    handlers: Dict[str, Handler] = {
        Method.HELLO: simple(lambda p: Hello(protocol=PROTOCOL_VERSION, pid=os.getpid(), python=sys.version.split()[0])),
        Method.EXEC: sessions.exec,
        Method.CREATE_SESSION: simple(sessions.create),
        Method.LIST_SESSIONS: simple(lambda p: sessions.list()),
        Method.DELETE_SESSION: simple(lambda p: sessions.delete(p["session_id"])),
        Method.SET_ENV_VARS: simple(sessions.set_env),
        Method.START_PROCESS: simple(processes.start),
        Method.LIST_PROCESSES: simple(processes.list),
        Method.GET_PROCESS: simple(processes.info),
        Method.GET_PROCESS_LOGS: simple(processes.logs),
        Method.SEND_PROCESS_INPUT: simple(processes.send_input),
        Method.KILL_PROCESS: simple(processes.kill),
        Method.KILL_ALL_PROCESSES: simple(processes.kill_all),
        Method.READ_TERMINAL: simple(processes.read_terminal),
        Method.RESIZE_TERMINAL: simple(processes.resize_terminal),
        # The host found the sandbox over a limit (its disk budget): everything running stops.
        # Every answer is an object (the host's channel checks), so this one is empty.
        Method.STOP_ALL: simple(lambda p: stop_all()),
        Method.WRITE_FILE: file_op("write"),
        Method.FILE_WRITE_OPEN: file_op("write_open"),
        Method.FILE_WRITE_CHUNK: file_op("write_chunk"),
        Method.FILE_WRITE_CLOSE: file_op("write_close"),
        Method.READ_FILE: file_op("read"),
        Method.FILE_READ_OPEN: file_op("read_open"),
        Method.FILE_READ_CHUNK: file_op("read_chunk"),
        Method.FILE_READ_CLOSE: file_op("read_close"),
        Method.LIST_FILES: file_op("list"),
        Method.MKDIR: file_op("mkdir"),
        Method.DELETE_FILE: file_op("delete"),
        Method.MOVE_FILE: file_op("move"),
        Method.CREATE_CODE_CONTEXT: simple(lambda p: contexts().create(p)),
        Method.RUN_CODE: lambda request: contexts().run(request),
        Method.LIST_CODE_CONTEXTS: simple(lambda p: contexts().list()),
        Method.DELETE_CODE_CONTEXT: simple(lambda p: contexts().delete(p["context_id"])),
        Method.LISTEN: streams.listen,
    }
    connection = Connection(in_fd, out_fd, handlers, line_limit(config["max_output"]), streams.notifications())
    streams.conn = connection
    if saved is not None:
        await restore_listeners(saved, streams, connection)
    stopping = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, _set_once, stopping)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, ENDING)  # blocked by a rest, so as not to be lost (rest.py)
    serving = loop.create_task(connection.serve())
    janitor = loop.create_task(
        expire_idle(config.get("session_idle_timeout", DEFAULT_SESSION_IDLE_TIMEOUT), [sessions.expire_idle, expire_contexts, lambda _: sessions.rest()])
    )
    always = (serving, janitor, asyncio.current_task())
    resting = loop.create_task(rest_when_idle(config.get("rest_after", DEFAULT_REST_AFTER), parts, connection, executor, always))
    await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
    # The host is gone or asked us to stop: nothing started in the sandbox may outlive us, and
    # nothing the agent started is left pending. First no new requests, expiries or rest.
    for task in (serving, janitor, resting):
        await cancel_and_wait(task)
    # The running requests are cancelled; one step lets each kill what it started its own way.
    connection.cancel_all()
    await asyncio.sleep(0)
    children.kill(None, "")
    await connection.aclose()
    await streams.aclose()
    # Then what the components spawned: their children are gone, so none of this waits long.
    await sessions.aclose()
    await processes.aclose()
    for context in loaded_contexts:
        await context.aclose()
    for opened in loaded_files:
        await opened.aclose()


async def expire_idle(idle_seconds: float, expirers: List[Callable[[float], Awaitable[None]]]) -> None:
    """Now and then, delete the temporary sessions and contexts nobody used for a while."""
    while True:
        await asyncio.sleep(min(10.0, idle_seconds / 4))
        for expire in expirers:
            await expire(idle_seconds)



def _set_once(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)
