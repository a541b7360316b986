"""Run the benchmarks: ``python -m bench [--smoke] [--backend bwrap|none|docker ...] [--only NAME ...]``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable

import anyio

from . import code, files, peers, scale, shell
from .config import Config
from .harness import Report

Case = Callable[[Report, Config, str], Awaitable[None]]
CASES: dict[str, Case] = {
    "exec": shell.exec_round_trip,
    "lifecycle": shell.cold_start_and_destroy,
    "warm": shell.warm_start,
    "output": shell.big_output,
    "parallel": shell.parallel_sessions,
    "files": files.small_file_over_mcp,
    "bigfile": files.big_file,
    "stream": files.stream_download,
    "code": code.run_code,
    "scale": scale.many_sandboxes,
    "peers": peers.compare,  # optional: llm-sandbox and SWE-ReX, when installed
}


def docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


async def run(cases: list[str], backends: list[str], cfg: Config) -> Report:
    report = Report()
    for backend in backends:
        for name in cases:
            await CASES[name](report, cfg, backend)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and one or two runs: checks the harness only")
    parser.add_argument("--backend", action="append", choices=["bwrap", "none", "docker"],
                        help="backends to measure (default: bwrap, and docker when an engine answers)")
    parser.add_argument("--only", action="append", choices=sorted(CASES), help="run only these measurements")
    args = parser.parse_args()
    backends = args.backend or (["bwrap", "docker"] if docker_available() else ["bwrap"])
    cfg = Config.smoke() if args.smoke else Config()
    os.environ["MCP_SANDBOX_IMAGE"] = cfg.image  # the servers the benchmarks start use it too
    default = [name for name in CASES if name != "peers" or peers.installed()]
    report = anyio.run(run, args.only or default, backends, cfg)
    print()
    print(report.table())
    sys.stdout.flush()


main()
