"""Command line: ``mcp-sandbox [options]``; every option also reads MCP_SANDBOX_<NAME>."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import signal
import sys
from collections.abc import Sequence
from typing import Any, get_args, get_origin

import anyio
from pydantic import ValidationError

from . import __version__
from .backends import cgroups
from .errors import SandboxError
from .http import check_exposure, serve_http
from .manager import SandboxManager
from .server import build_server
from .settings import Settings
from .stdio import serve_stdio
from .tenants import Tokens, load_tokens
from .ui.web import serve_view

logger = logging.getLogger("mcp_sandbox")

_TRUE = {"1", "true", "yes", "on"}


def env_name(field: str) -> str:
    return "MCP_SANDBOX_" + field.upper()


def _extra(name: str) -> dict[str, Any]:
    extra = Settings.model_fields[name].json_schema_extra
    return extra if isinstance(extra, dict) else {}


def flag_name(name: str) -> str:
    """The option of a settings field; a list field names its flag in the singular (``--mount``)."""
    return str(_extra(name).get("flag") or "--" + name.replace("_", "-"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcp-sandbox",
        description="An MCP server that gives LLMs sandboxes: persistent shell sessions, background "
        "processes, files and Python/JavaScript code contexts, on local processes (bubblewrap) or Docker. "
        "With no options it serves MCP over stdio with the best available backend.",
        epilog="Every option can also be set with an environment variable MCP_SANDBOX_<NAME>, "
        "e.g. MCP_SANDBOX_COMMAND_TIMEOUT=300. 'mcp-sandbox image build' builds the Docker sandbox image.",
    )
    parser.add_argument("--version", action="version", version=f"mcp-sandbox {__version__}")
    for name, field in Settings.model_fields.items():
        flag = flag_name(name)
        help_text = f"{field.description} [env {env_name(name)}]"
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action="store_true", default=None, help=help_text)
            continue
        if get_origin(field.annotation) is list:
            parser.add_argument(flag, dest=name, action="append", default=None, help=help_text)
            continue
        choices = get_args(field.annotation) if "Literal" in str(field.annotation) else None
        default = field.get_default(call_default_factory=True)
        parser.add_argument(
            flag, dest=name, default=None, choices=choices or None,
            help=f"{help_text} (default: {default})" if default is not None else help_text,
        )
    return parser


def load_settings(argv: list[str] | None = None) -> Settings:
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        raw = os.environ.get(env_name(name))
        if raw is not None and raw != "":
            if field.annotation is bool:
                values[name] = raw.lower() in _TRUE
            elif get_origin(field.annotation) is list:
                values[name] = [i.strip() for i in raw.split(_extra(name).get("separator", ",")) if i.strip()]
            else:
                values[name] = raw
        given = getattr(args, name)
        if given is not None:
            values[name] = given
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{flag_name(str(e['loc'][0]))}: {e['msg']}" for e in exc.errors())
        build_parser().error(problems)
        raise  # unreachable: error() exits


def raise_open_files_limit() -> None:
    """Each local sandbox holds a few of the server's descriptors (its channel's pipes, a pidfd):
    the common soft limit of 1,024 would stop a server near 300 sandboxes. Up to the hard limit
    (at most 65,536), as servers do; the sandboxes inherit it, as Docker's containers get 1,048,576."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def watch_children_with_pidfds() -> None:
    """Before Python 3.12 asyncio waits for each child process in a thread of its own: a thousand
    sandboxes would be a thousand threads. A pidfd per child, polled by the event loop, does the
    same without them (Linux 5.3 and later; 3.12 does this by itself)."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # an older kernel, or a seccomp profile without pidfd_open
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)


async def serve(settings: Settings, tokens: Tokens | None = None) -> None:
    """Serve until stdin closes (stdio), the HTTP server stops, or a signal comes; then leave the
    manager's block, which destroys every sandbox. There is no other way out."""
    watch_children_with_pidfds()
    async with SandboxManager(settings) as manager:
        server = build_server(manager)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                    async for signum in signals:
                        logger.info("received %s; destroying all sandboxes", signal.Signals(signum).name)
                        if settings.transport == "stdio":
                            tg.cancel_scope.cancel()
                        stop.set()

            tg.start_soon(stop_on_signal)
            if settings.transport == "stdio":
                if settings.ui_port is not None:
                    await tg.start(serve_view, server, manager, settings.ui_port)
                await serve_stdio(server)
                logger.info("stdin closed; destroying all sandboxes")
            else:
                await serve_http(server, settings, tokens, stop, manager)
            tg.cancel_scope.cancel()


def startup_error(exc: BaseException) -> SandboxError | None:
    """The SandboxError that ended the server, also when a task group wrapped it in a group."""
    inner: Sequence[BaseException] = getattr(exc, "exceptions", ())  # an exception group (3.10 has no name for it)
    while len(inner) == 1:
        exc = inner[0]
        inner = getattr(exc, "exceptions", ())
    return exc if isinstance(exc, SandboxError) else None


def exit_now(code: int) -> None:
    cgroups.remove_own()
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)


def image_main(argv: list[str]) -> int:
    """``mcp-sandbox image build``: build the project's sandbox image for the Docker backend."""
    from .backends import docker

    parser = argparse.ArgumentParser(prog="mcp-sandbox image", description="Manage the Docker sandbox image.")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser(
        "build", help=f"Build the sandbox image from the Dockerfile shipped with mcp-sandbox ({docker.IMAGES_DIR})."
    )
    build.add_argument(
        "--tag", default=docker.PROJECT_IMAGE, help="Image name (default: %(default)s, the image the Docker backend prefers)."
    )
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level="INFO", format="%(levelname)s: %(message)s")
    try:
        return docker.build_image(args.tag)
    except SandboxError as exc:
        logger.error("%s", exc)
        return 2


def main(argv: list[str] | None = None) -> None:
    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["image"]:
        sys.exit(image_main(given[1:]))
    settings = load_settings(argv)
    logging.basicConfig(
        stream=sys.stderr, level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        check_exposure(settings)
        # Read before anything starts: a bad tokens file is one error line and exit status 2.
        tokens = load_tokens(settings) if settings.transport == "http" else None
        raise_open_files_limit()
        anyio.run(serve, settings, tokens)
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        error = startup_error(exc)
        if error is None:
            raise
        logger.error("%s", error)  # one line, no traceback: it says what to do
        sys.exit(2)
    # A thread may still be blocked reading stdin; cleanup is done, so do not wait for it.
    exit_now(0)
