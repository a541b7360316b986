"""Sandbox images: which one a sandbox runs, pulling it on first use, and building the project's."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import SandboxError
from .docker_engine import connect, sdk

logger = logging.getLogger(__name__)

PROJECT_IMAGE = "mcp-sandbox:latest"
FALLBACK_IMAGE = "python:3.12-slim"
IMAGES_DIR = Path(__file__).resolve().parent.parent / "images"


def resolve_image(client: Any, image: str | None) -> str:
    """The sandbox image (``image``, else the project's if built, else the fallback), present on
    the engine: pulled if needed. Blocking."""
    if image is None:
        image = PROJECT_IMAGE if has_image(client, PROJECT_IMAGE) else FALLBACK_IMAGE
    if has_image(client, image):
        return image
    try:
        pull(client, image)
    except Exception as exc:  # DockerException, or the connection's own errors
        raise SandboxError(
            "BACKEND_UNAVAILABLE",
            f"the sandbox image {image!r} is not on the Docker engine and could not be pulled ({exc}); "
            f"pull or build it ('docker pull {image}'; 'mcp-sandbox image build' builds "
            f"{PROJECT_IMAGE}), or choose an image that has python3 with --image",
        ) from exc
    return image


def has_image(client: Any, image: str) -> bool:
    try:
        client.images.get(image)
        return True
    except sdk().errors.ImageNotFound:
        return False


def pull(client: Any, image: str) -> None:
    """Pull ``image``, logging the progress now and then."""
    repository, tag = sdk().utils.parse_repository_tag(image)
    logger.info("pulling the sandbox image %s (once; later sandboxes start at once)", image)
    layers: dict[str, tuple[int, int]] = {}
    last_log = time.monotonic()
    for event in client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
        if "error" in event:
            raise sdk().errors.APIError(event["error"])
        detail = event.get("progressDetail") or {}
        if event.get("status") == "Downloading" and detail.get("total"):
            layers[event.get("id", "")] = (detail.get("current", 0), detail["total"])
        if time.monotonic() - last_log > 2 and layers:
            last_log = time.monotonic()
            done = sum(c for c, _ in layers.values()) >> 20
            total = sum(t for _, t in layers.values()) >> 20
            logger.info("pulling %s: %d of %d MiB", image, done, total)
    logger.info("pulled %s", image)


def build_image(tag: str = PROJECT_IMAGE) -> int:
    """``mcp-sandbox image build``: build the project's sandbox image; returns an exit status."""
    if not (IMAGES_DIR / "Dockerfile").is_file():
        logger.error("no Dockerfile in %s; reinstall mcp-sandbox", IMAGES_DIR)
        return 1
    cli = shutil.which("docker")
    if cli is not None:
        return subprocess.run([cli, "build", "-t", tag, str(IMAGES_DIR)]).returncode
    client = connect()
    try:
        for event in client.api.build(path=str(IMAGES_DIR), tag=tag, rm=True, decode=True):
            if "error" in event:
                logger.error("%s", event["error"].strip())
                return 1
            if "stream" in event:
                sys.stderr.write(event["stream"])
    except sdk().errors.DockerException as exc:
        logger.error("docker build failed: %s", exc)
        return 1
    logger.info("built %s", tag)
    return 0
