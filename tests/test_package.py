"""The package as it would be published: `python -m build` makes an sdist and a wheel that pass
`twine check`, hold what the server needs, and install and run in a fresh venv.

The fresh venv gets the wheel without its dependencies; those come from this test environment
(a .pth file), so that the test needs no package index and stays fast. That the wheel asks for
them is checked on its metadata.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from .conftest import DOCKER_IMAGE, Tools, require_backend

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parent.parent


@dataclass
class Built:
    sdist: Path
    wheel: Path
    venv: Path

    @property
    def command(self) -> str:
        return str(self.venv / "bin" / "mcp-sandbox")


def run(*args: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    work = tmp_path_factory.mktemp("package")
    dist = work / "dist"
    # As `python -m build` does by default: the sdist first, then the wheel from the sdist.
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, ROOT)
    [sdist], [wheel] = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
    venv = work / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps",
        "--no-index", wheel)
    [site] = (venv / "lib").glob("python3*/site-packages")
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "test-dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(here)))
    return Built(sdist, wheel, venv)


def test_twine_check_passes(built: Built) -> None:
    output = run(sys.executable, "-m", "twine", "check", "--strict", built.sdist, built.wheel)
    assert output.count("PASSED") == 2


def test_sdist_and_wheel_hold_what_the_server_needs(built: Built) -> None:
    prompts = sorted(p.name for p in (ROOT / "prompts").glob("*.md"))
    assert prompts
    with tarfile.open(built.sdist) as sdist:
        top = sdist.getnames()[0].split("/")[0]
        names = {name.removeprefix(top + "/") for name in sdist.getnames()}
    assert {"README.md", "server.json", "pyproject.toml", "mcp_sandbox/images/Dockerfile"} <= names
    assert {f"prompts/{p}" for p in prompts} <= names
    assert not any(n.startswith(("tests/", ".ci/", "bench/")) for n in names), sorted(names)
    with zipfile.ZipFile(built.wheel) as wheel:
        names = set(wheel.namelist())
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [line.split(":", 1)[1].strip() for line in wheel.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert {"mcp_sandbox/images/Dockerfile", "mcp_sandbox/agent/main.py"} <= names
    # The live view's page and its vendored JavaScript, with its licence (no build step at install).
    assert {f"mcp_sandbox/ui/static/{f}" for f in ("view.html", "view.js", "xterm.js", "LICENSE.xterm.txt")} <= names
    assert {f"mcp_sandbox/_prompts/{p}" for p in prompts} <= names
    # A plain install brings everything --backend docker needs.
    assert {r.split(">")[0].split("<")[0].split("=")[0] for r in requires} >= {"mcp", "anyio", "pydantic", "docker"}


def test_version_and_image_files_from_the_installed_wheel(built: Built, tmp_path: Path) -> None:
    assert run(built.command, "--version", cwd=tmp_path).strip() == "mcp-sandbox 0.1.0"
    # The package imported is the installed one, not this checkout.
    where = run(built.venv / "bin" / "python", "-c", "import mcp_sandbox; print(mcp_sandbox.__file__)", cwd=tmp_path)
    assert where.startswith(str(built.venv))
    # `mcp-sandbox image build` builds from the Dockerfile in the installed package.
    images = run(built.venv / "bin" / "python", "-c", "from mcp_sandbox.backends import docker; print(docker.IMAGES_DIR)",
                 cwd=tmp_path).strip()
    assert images.startswith(str(built.venv)) and (Path(images) / "Dockerfile").is_file()


async def call_installed(built: Built, root: Path, *args: str) -> tuple[dict[str, object], list[str]]:
    params = StdioServerParameters(
        command=built.command, args=["--workspace-root", str(root), *args], cwd=str(root.parent),
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")},
    )
    async with Client(params) as client:
        mcp = Tools(client, "installed")
        prompts = [p.name for p in (await client.list_prompts()).prompts]
        return await mcp.sh("echo from-the-wheel; cat /etc/hostname"), prompts


async def test_a_tool_call_through_the_installed_wheel(built: Built, tmp_path: Path) -> None:
    with anyio.fail_after(60):
        r, prompts = await call_installed(built, tmp_path / "root", "--backend", "local")
    assert r["stdout"].startswith("from-the-wheel\n")  # type: ignore[union-attr]
    assert "analyse-data" in prompts


async def test_the_installed_wheel_runs_the_docker_backend(built: Built, tmp_path: Path) -> None:
    require_backend("docker")
    with anyio.fail_after(120):
        r, _ = await call_installed(built, tmp_path / "root", "--backend", "docker", "--image", DOCKER_IMAGE)
    assert r["stdout"] == "from-the-wheel\nsandbox\n"
