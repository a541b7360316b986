"""The egress allow-list in real sandboxes, on every backend: a proxy in the sandbox that reaches
the allowed upstreams (servers on the host's loopback, named literally) and nothing else, the
proxy variables everywhere code runs, what a denial looks like, and a real pip install."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcp_sandbox.egress.broker import Authority

from .conftest import Tools, require_backend, unavailable
from .egress_servers import echo_server, http_server
from .helpers import eventually

pytestmark = pytest.mark.anyio

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY")

# A client in the sandbox. NO_PROXY names 127.0.0.1, so to reach the host's loopback servers
# through the proxy it uses the proxy explicitly (as HTTP_PROXY names it), or no proxy (direct).
CLIENT = r"""
import http.client, os, socket, sys, urllib.parse
mode, port = sys.argv[1], int(sys.argv[2])
proxy = urllib.parse.urlsplit(os.environ["HTTP_PROXY"])
try:
    if mode == "socks":  # SOCKS5 on the same port, to 127.0.0.1:port
        s = socket.create_connection((proxy.hostname, proxy.port), timeout=10)
        s.sendall(b"\x05\x01\x00")
        s.recv(2)
        s.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + port.to_bytes(2, "big"))
        code = s.recv(10)[1]
        print("socks reply", code)
        if code:
            sys.exit()
        s.sendall(b"GET /socks HTTP/1.0\r\nHost: h\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        print(answer.decode().split("\r\n")[-1])
        sys.exit()
    if mode == "direct":
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/direct")
    else:
        conn = http.client.HTTPConnection(proxy.hostname, proxy.port, timeout=10)
        if mode.startswith("connect"):
            conn.set_tunnel("127.0.0.1", port)
            conn.request("GET", "/big/5000000" if mode == "connect-big" else "/tunnel")
        else:
            conn.request("GET", "http://127.0.0.1:%d/plain" % port)
    r = conn.getresponse()
    print(r.status, r.reason)
    print(r.getheader("X-Mcp-Sandbox-Denied"))
    body = r.read()
    print(len(body) if mode == "connect-big" else body.decode())
except OSError as exc:
    print("error:", exc)
"""


@pytest.fixture
def upstreams() -> Iterator[tuple[int, int]]:
    """Two HTTP servers on the host's loopback: one to allow, one to leave out."""
    with http_server() as allowed, http_server() as other:
        yield allowed, other


async def client(mcp: Tools, mode: str, port: int) -> list[str]:
    r = await mcp.sh(f"python3 client.py {mode} {port}")
    return r["stdout"].splitlines()


async def test_the_proxy_reaches_allowed_hosts_only(mcp_with: Any, backend: str, upstreams: tuple[int, int]) -> None:
    allowed, other = upstreams
    async with mcp_with(allow_hosts=[f"127.0.0.1:{allowed}"]) as mcp:
        await mcp("write_file", path="client.py", content=CLIENT)
        assert (await client(mcp, "plain", allowed))[:3] == [
            "200 OK", "None", f"GET /plain host=127.0.0.1:{allowed} body="
        ]
        assert (await client(mcp, "connect", allowed))[2] == f"GET /tunnel host=127.0.0.1:{allowed} body="
        assert (await client(mcp, "connect-big", allowed))[2] == "5000000"
        assert await client(mcp, "socks", allowed) == ["socks reply 0", "GET /socks host=h body="]

        why = f"127.0.0.1:{other} is not in this sandbox's egress allow-list"
        status, header, body = (await client(mcp, "plain", other))[:3]
        assert status == f"403 Forbidden: {why}" and header.startswith(why)
        assert body == f"mcp-sandbox egress proxy: {why}; allowed: 127.0.0.1:{allowed}; " \
            "the user can allow more with --allow-host"
        # A refused tunnel: the client shows the status line, which carries the reason.
        assert (await client(mcp, "connect", other)) == [f"error: Tunnel connection failed: 403 Forbidden: {why}"]

        direct = await client(mcp, "direct", allowed)
        if backend == "none":  # nothing is isolated: the host's loopback is the sandbox's
            assert direct[0] == "200 OK"
        else:  # no network but through the proxy: its loopback is its own
            assert direct[0].startswith("error:") and "refused" in direct[0].lower()

        assert await client(mcp, "socks", other) == ["socks reply 2"]  # not allowed by the rules
        network = (await mcp("sandbox_info"))["network"]
        assert network["mode"] == "proxy" and network["allow_hosts"] == [f"127.0.0.1:{allowed}"]
        assert [(b["host"], b["port"]) for b in network["blocked"]] == [("127.0.0.1", other)] * 3
        assert network["blocked"][0]["at"] >= network["blocked"][1]["at"]


async def test_proxy_variables_in_sessions_processes_and_contexts(mcp_with: Any, backend: str) -> None:
    with echo_server() as echo:
        async with mcp_with(allow_hosts=[f"127.0.0.1:{echo.port}"]) as mcp:
            shown = "; ".join(f"echo {name}=${name}" for name in PROXY_VARIABLES)
            lines = (await mcp.sh(shown))["stdout"].splitlines()
            url = lines[0].split("=", 1)[1]
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
            if backend != "none":
                assert url == "http://127.0.0.1:3128"
            expected = [f"{name}={url}" for name in PROXY_VARIABLES[:4]] + ["NO_PROXY=localhost,127.0.0.1"]
            assert lines == expected
            await mcp("create_session", session_id="other")
            assert (await mcp.sh(shown, session_id="other"))["stdout"].splitlines() == expected
            started = await mcp("start_process", command=shown)
            logs = await mcp("get_process_logs", process_id=started["process_id"], wait_for_exit=True, timeout=30)
            assert logs["stdout"].splitlines() == expected
            code = "import os\nprint(' '.join(os.environ[n] for n in %r))" % (PROXY_VARIABLES,)
            assert (await mcp("run_code", code=code))["stdout"].split() == [url] * 4 + ["localhost,127.0.0.1"]
            js = "console.log(%s.map(n => process.env[n]).join(' '))" % (list(PROXY_VARIABLES),)
            assert (await mcp("run_code", code=js, language="javascript"))["stdout"].split() == [url] * 4 + [
                "localhost,127.0.0.1"
            ]


@pytest.mark.parametrize("backend", ["bwrap"])  # the manager's logic: one backend is enough
async def test_allow_hosts_narrows_the_servers_list(mcp_with: Any, backend: str, upstreams: tuple[int, int]) -> None:
    require_backend(backend)
    allowed, other = upstreams
    async with mcp_with(allow_hosts=["127.0.0.1"], warm_sandboxes=1, network=True) as mcp:
        wider = await mcp.error("create_sandbox", allow_hosts=["127.0.0.2"])
        assert "INVALID_ARGUMENT" in wider and "not within the server's allow-list (127.0.0.1)" in wider
        assert "INVALID_ARGUMENT" in await mcp.error("create_sandbox", allow_hosts=["not a host"])
        narrow = (await mcp("create_sandbox", allow_hosts=[f"127.0.0.1:{allowed}"]))["sandbox_id"]
        await mcp("write_file", path="client.py", content=CLIENT, sandbox_id=narrow)
        assert (await client_in(mcp, narrow, "plain", allowed))[0] == "200 OK"
        assert (await client_in(mcp, narrow, "plain", other))[0].startswith("403 ")
        info = (await mcp("sandbox_info", sandbox_id=narrow))["network"]
        assert info["allow_hosts"] == [f"127.0.0.1:{allowed}"] and len(info["blocked"]) == 1
        # The server's whole list where a sandbox does not narrow it.
        whole = (await mcp("create_sandbox"))["sandbox_id"]
        await mcp("write_file", path="client.py", content=CLIENT, sandbox_id=whole)
        assert (await client_in(mcp, whole, "plain", other))[0] == "200 OK"
        assert (await mcp("sandbox_info", sandbox_id=whole))["network"]["allow_hosts"] == ["127.0.0.1"]
        # allow_hosts does not go with full network.
        assert "pass one of them" in await mcp.error("create_sandbox", network=True, allow_hosts=["127.0.0.1"])
    async with mcp_with() as mcp:  # no allow-list: nothing to narrow, and no proxy
        assert "no egress allow-list" in await mcp.error("create_sandbox", allow_hosts=["127.0.0.1"])
        assert (await mcp("sandbox_info"))["network"] == {"mode": "none", "allow_hosts": [], "blocked": []}
        assert (await mcp.sh("echo ${HTTP_PROXY:-unset}"))["stdout"] == "unset\n"


@pytest.mark.parametrize("backend", ["docker"])  # the engine's bridge network
async def test_full_network_beside_an_allow_list_has_no_proxy(mcp_with: Any, backend: str) -> None:
    require_backend(backend)
    async with mcp_with(allow_hosts=["127.0.0.1"], network=True) as mcp:
        full = (await mcp("create_sandbox", network=True))["sandbox_id"]
        assert (await mcp("sandbox_info", sandbox_id=full))["network"] == {"mode": "full", "allow_hosts": [], "blocked": []}
        assert (await mcp.sh("echo ${HTTP_PROXY:-unset}", sandbox_id=full))["stdout"] == "unset\n"


async def client_in(mcp: Tools, sandbox_id: str, mode: str, port: int) -> list[str]:
    return (await mcp.sh(f"python3 client.py {mode} {port}", sandbox_id=sandbox_id))["stdout"].splitlines()


HOLD_TUNNEL = r"""
import os, socket, sys, time, urllib.parse
proxy = urllib.parse.urlsplit(os.environ["HTTP_PROXY"])
conn = socket.create_connection((proxy.hostname, proxy.port))
conn.sendall(b"CONNECT 127.0.0.1:%s HTTP/1.1\r\n\r\n" % sys.argv[1].encode())
conn.recv(1000)
conn.sendall(b"ping")
print("tunnel up:", conn.recv(4).decode(), flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("backend", ["bwrap"])  # the stream ends with the sandbox on every backend
async def test_destroy_closes_the_sandboxs_upstream_connections(mcp_with: Any, backend: str) -> None:
    require_backend(backend)
    with echo_server() as echo:
        async with mcp_with(allow_hosts=[f"127.0.0.1:{echo.port}"]) as mcp:
            sandbox_id = (await mcp("create_sandbox"))["sandbox_id"]
            await mcp("write_file", path="hold.py", content=HOLD_TUNNEL, sandbox_id=sandbox_id)
            started = await mcp("start_process", command=f"python3 hold.py {echo.port}", sandbox_id=sandbox_id)
            logs = await mcp(
                "get_process_logs", process_id=started["process_id"], wait_for="tunnel up", timeout=30,
                sandbox_id=sandbox_id,
            )
            assert logs["matched"] == "tunnel up: ping" and echo.open == 1
            await mcp("destroy", sandbox_id=sandbox_id)
            assert await eventually(lambda: echo.open == 0)


# -- a real pip install through the allow-list -----------------------------------------------------


def pip_settings() -> tuple[str, str | None]:
    """The index URL and CA bundle this machine's pip is configured with (PIP_INDEX_URL, pip's
    configuration, else pip's default index): the test allows that index, and no host is
    written here."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
    ).stdout
    config = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        config[key.rsplit(".", 1)[-1]] = value.strip().strip("'\"")
    index = os.environ.get("PIP_INDEX_URL") or config.get("index-url")
    if not index:
        from pip._internal.models.index import PyPI

        index = PyPI.simple_url
    return index.rstrip("/"), os.environ.get("PIP_CERT") or config.get("cert")


def hosts_of(index: str, package: str, cert: str | None) -> list[str]:
    """Patterns for the index and the hosts its page for ``package`` links the files on."""
    context = None
    if cert:
        import ssl

        context = ssl.create_default_context(cafile=cert)
    try:
        with urllib.request.urlopen(f"{index}/{package}/", timeout=30, context=context) as page:
            links = re.findall(r'href="([^"]+)"', page.read().decode())
    except OSError as exc:
        unavailable(f"the package index {index} cannot be reached from this machine: {exc}")
    patterns = set()
    for url in [index] + [urllib.parse.urljoin(f"{index}/{package}/", link) for link in links]:
        parts = urllib.parse.urlsplit(url)
        patterns.add(f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}")
    return sorted(patterns)


@pytest.mark.parametrize("backend", ["bwrap"])
async def test_pip_install_through_the_allow_list(mcp_with: Any, backend: str) -> None:
    require_backend(backend)
    index, cert = pip_settings()
    if not index.startswith(("http://", "https://")):
        unavailable(f"pip's index {index} is not on the network")
    package = "six"  # one small pure-Python module, no dependencies
    async with mcp_with(allow_hosts=hosts_of(index, package, cert), command_timeout=300) as mcp:
        if (await mcp.sh("python3 -m pip --version"))["exit_code"] != 0:
            unavailable("the sandbox's python3 has no pip (Debian: python3-pip)")
        # Only the index: pip's configuration files here may point at local wheels.
        r = await mcp.sh(
            f"PIP_CONFIG_FILE=/dev/null python3 -m pip install --no-cache-dir --disable-pip-version-check "
            f"--index-url {index}/ {f'--cert {cert} ' if cert else ''}--target pkgs {package} 2>&1 "
            f"&& PYTHONPATH=pkgs python3 -c 'import six; print(six.__name__, \"ok\")'",
            timeout=300,
        )
        assert r["exit_code"] == 0, r["stdout"]
        assert r["stdout"].endswith("six ok\n")
        # Without the index in the list, the same install is refused at the proxy.
        narrowed = (await mcp("create_sandbox", allow_hosts=[]))["sandbox_id"]
        r = await mcp.sh(
            f"PIP_CONFIG_FILE=/dev/null python3 -m pip install --no-cache-dir --retries 1 --index-url {index}/ "
            f"--target pkgs {package} 2>&1", sandbox_id=narrowed, timeout=120,
        )
        assert r["exit_code"] != 0 and "403 Forbidden" in r["stdout"], r["stdout"]
        blocked = (await mcp("sandbox_info", sandbox_id=narrowed))["network"]["blocked"]
        assert blocked and blocked[0]["host"] == urllib.parse.urlsplit(index).hostname


# -- credential brokering ---------------------------------------------------------------------------

BROKER_CLIENT = r"""
import http.client, os, ssl, sys, urllib.parse
proxy = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
conn = http.client.HTTPSConnection(proxy.hostname, proxy.port, timeout=10, context=ssl.create_default_context())
conn.set_tunnel("127.0.0.1", int(sys.argv[1]))
conn.request("GET", "/api", headers={"Authorization": "from the sandbox"})
print(conn.getresponse().read().decode())
"""


async def test_injected_header_reaches_the_api_not_the_sandbox(
    mcp_with: Any, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream_ca = Authority()  # the API's certificate; the server trusts it as it would a public CA
    (tmp_path / "upstream-ca.pem").write_bytes(upstream_ca.pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "upstream-ca.pem"))
    monkeypatch.setenv("E15_API_TOKEN", "Bearer s3cret")
    with http_server(upstream_ca.context_for("127.0.0.1")) as api:
        settings = {"allow_hosts": [f"127.0.0.1:{api}"], "inject_headers": [f"127.0.0.1:{api}:Authorization=env:E15_API_TOKEN"]}
        async with mcp_with(**settings) as mcp:
            variables = (await mcp.sh("env | grep -E '^(SSL_CERT_FILE|NODE_EXTRA_CA_CERTS)=' | sort"))["stdout"]
            if backend == "none":  # no broker without isolation: code there could read the server's memory
                assert variables == ""
                return
            assert variables == "NODE_EXTRA_CA_CERTS=/tmp/.mcp-sandbox/egress-ca.pem\nSSL_CERT_FILE=/tmp/.mcp-sandbox/egress-ca.pem\n"
            await mcp("write_file", path="client.py", content=BROKER_CLIENT)
            r = await mcp.sh(f"python3 client.py {api}")
            assert r["stdout"] == f"GET /api host=127.0.0.1:{api} body= auth=Bearer s3cret\n", r
            assert (await mcp.sh("env | grep -c s3cret; grep -c s3cret /tmp/.mcp-sandbox/egress-ca.pem"))["stdout"] == "0\n0\n"
