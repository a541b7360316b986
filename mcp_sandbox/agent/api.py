"""The host-agent protocol, defined once: the version, the method names, the agent's config and its
defaults, and the shapes of the simple results. The agent and the host both import it, so it uses
only the standard library and runs on Python >= 3.8 (see main.py). Line encoding is in protocol.py.

tests/test_protocol.py ties it to the host: every method has an agent handler, the config's
defaults are Settings' defaults, and each result shape here has its pydantic model's fields.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, TypedDict

# Bumped when a message changes shape; the host refuses an agent that speaks another version
# (an old bundle in an image, a mismatched install).
PROTOCOL_VERSION = 2  # 2: binary frames (protocol.py), streams


class Method:
    """Requests the host sends; each has one handler in the agent's table (main.py)."""

    HELLO = "hello"
    EXEC = "exec"
    CREATE_SESSION = "create_session"
    LIST_SESSIONS = "list_sessions"
    DELETE_SESSION = "delete_session"
    SET_ENV_VARS = "set_env_vars"
    START_PROCESS = "start_process"
    LIST_PROCESSES = "list_processes"
    GET_PROCESS = "get_process"
    GET_PROCESS_LOGS = "get_process_logs"
    SEND_PROCESS_INPUT = "send_process_input"
    KILL_PROCESS = "kill_process"
    KILL_ALL_PROCESSES = "kill_all_processes"
    READ_TERMINAL = "read_terminal"  # a tty process's raw stream from an offset (terminal.py)
    RESIZE_TERMINAL = "resize_terminal"
    STOP_ALL = "stop_all"
    WRITE_FILE = "write_file"
    FILE_WRITE_OPEN = "file_write_open"
    FILE_WRITE_CHUNK = "file_write_chunk"
    FILE_WRITE_CLOSE = "file_write_close"
    READ_FILE = "read_file"
    FILE_READ_OPEN = "file_read_open"
    FILE_READ_CHUNK = "file_read_chunk"
    FILE_READ_CLOSE = "file_read_close"
    LIST_FILES = "list_files"
    MKDIR = "mkdir"
    DELETE_FILE = "delete_file"
    MOVE_FILE = "move_file"
    CREATE_CODE_CONTEXT = "create_code_context"
    RUN_CODE = "run_code"
    LIST_CODE_CONTEXTS = "list_code_contexts"
    DELETE_CODE_CONTEXT = "delete_code_context"
    LISTEN = "listen"  # accept on 127.0.0.1:port in the sandbox; each connection a stream of ``kind``


METHODS = frozenset(value for name, value in vars(Method).items() if name.isupper())

# Not requests: the host's cancel of a request it sent, and the agent's output notification.
CANCEL = "cancel"
OUTPUT = "output"


class Stream:
    """Messages about byte streams (streams.py on both ends), either way, never tied to a request.
    Streams the host opens have odd ids, those the agent opens (a listener's connections) even
    ones; neither end reuses an id."""

    # A stream's bytes, in DATA frames (protocol.py), never a JSON message; the agent hands them
    # to its handler as {"stream": n, "data": bytes}. At most WINDOW not yet credited.
    DATA = "stream_data"
    CREDIT = "stream_credit"  # {"stream": n, "bytes": k}: the receiver took k bytes; send k more
    EOF = "stream_eof"  # {"stream": n}: nothing more comes this way
    CLOSE = "stream_close"  # {"stream": n}: both ways, at once (a reset)
    # Host to agent: {"stream": n, "port": p, "confirm": bool}, connect stream n to 127.0.0.1:p.
    # The host may send the stream's data right behind it (within its window): the agent keeps it
    # until connected. If it cannot connect, it sends a CLOSE with "error": why not.
    CONNECT = "stream_connect"
    # Agent to host: {"stream": n}, stream n is connected (only if the CONNECT asked to confirm).
    CONNECTED = "stream_connected"
    OPEN = "stream_open"  # agent to host: {"stream": n, "kind": k}, a connection a listener took


STREAM_MESSAGES = frozenset(value for name, value in vars(Stream).items() if name.isupper())
# Flow control: what each end of a stream may have sent and the other not yet taken, each way (a
# stream moves at most a window per round trip, and through Docker's engine that is a millisecond
# or more); and the most one data message carries (less overhead per byte than smaller ones, and
# a tool call waits behind one at most). Measured: 64/256 KiB moved half as fast as this.
STREAM_WINDOW = 1024 << 10
STREAM_CHUNK = 256 << 10
# Streams the agent may have open that a listener accepted; it refuses connections beyond. The host
# holds at most 2 * MAX_STREAMS * STREAM_WINDOW (64 MiB) for them (streams.py).
MAX_STREAMS = 32


class Limits(TypedDict):
    max_sessions: int
    max_processes: int
    max_code_contexts: int


# The defaults of the settings the agent is started with: Settings has the same ones (the test
# checks), and an agent reads these where its config lacks a value.
DEFAULT_LIMITS: Limits = {"max_sessions": 32, "max_processes": 64, "max_code_contexts": 8}
DEFAULT_MAX_OUTPUT = 30_000
DEFAULT_COMMAND_TIMEOUT = 120.0
DEFAULT_SESSION_IDLE_TIMEOUT = 900.0
# An agent with nothing live that heard nothing from the host for this long rests (rest.py);
# 0: never. Settings.rest_after is the same.
DEFAULT_REST_AFTER = 300.0
# Where the agent keeps its state (sessions, output spill files), as seen inside the sandbox.
STATE_DIR = "/tmp/.mcp-sandbox"
# Given a channel_socket (Config), the agent's first byte on stdout says which way it talks: over
# that socket, or over stdin and stdout (backends/docker_channel.py).
ON_SOCKET, ON_PIPES = b"S", b"P"


class _ConfigRequired(TypedDict):
    sandbox_id: str
    workspace: str
    state_dir: str
    env: Dict[str, str]
    max_output: int
    command_timeout: float
    session_idle_timeout: float
    limits: Limits


class Config(_ConfigRequired, total=False):
    """The JSON the agent is started with (its argv[1]); paths are as seen inside the sandbox."""

    inherit_env: bool  # the image's environment is the base of every command's (Docker)
    rlimits: Dict[str, int]  # e.g. {"FSIZE": bytes}, see main.apply_rlimits
    cgroup: Dict[str, Any]  # {"fd": n, "v2": bool}: the sandbox's job cgroups (local backend)
    rest_after: float  # seconds; 0: never rest
    channel_socket: str  # a unix socket to talk over instead of stdin and stdout, if it connects (Docker)
    resume: int  # instead of all else: the fd of the state saved by an agent that rested (rest.py)


# -- results the agent builds by hand, as the host's models name their fields --------------------


class Hello(TypedDict):
    protocol: int
    pid: int
    python: str


class SessionCreated(TypedDict):
    session_id: str
    cwd: str


class SessionDeleted(TypedDict):
    session_id: str
    deleted: bool


class ProcessInputSent(TypedDict):
    process_id: str
    bytes_written: int


class TerminalResized(TypedDict):
    process_id: str
    cols: int
    rows: int


class ProcessesKilled(TypedDict):
    killed: int
    jobs_killed: int


class FileWritten(TypedDict):
    path: str
    bytes_written: int


class DirectoryCreated(TypedDict):
    path: str
    created: bool


class FileDeleted(TypedDict):
    path: str
    deleted: bool


class FileMoved(TypedDict):
    source: str
    destination: str


class CodeContextDeleted(TypedDict):
    context_id: str
    deleted: bool


def hello_problem(answer: Any) -> Optional[str]:
    """Why the host cannot work with an agent that answered hello so, or None."""
    version = answer.get("protocol") if isinstance(answer, dict) else None
    if version == PROTOCOL_VERSION:
        return None
    return "it speaks protocol version %r, this server %d: the agent bundle is not this server's" % (
        version, PROTOCOL_VERSION
    )
