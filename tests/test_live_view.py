"""The live view: the ui:// resource and _meta.ui through the real MCP client, /ui's refusals over
HTTP, and the page itself in headless Chromium (Debian's, driven by Playwright): it shows what
the model runs, and its terminal echoes what is typed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client import Client

from mcp_sandbox import tenants
from mcp_sandbox.http import build_app
from mcp_sandbox.manager import SandboxManager
from mcp_sandbox.server import build_server
from mcp_sandbox.settings import Settings
from mcp_sandbox.ui.page import VIEW_URI
from mcp_sandbox.ui.web import serve_view

from .conftest import Tools, settings_for, unavailable
from .helpers import eventually

pytestmark = pytest.mark.anyio

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
APP_MIME = "text/html;profile=mcp-app"
WAIT_MS = 20_000


async def test_resource_listed_and_tools_point_at_it(tmp_path: Path) -> None:
    async with SandboxManager(settings_for("none", tmp_path / "s")) as manager:
        async with Client(build_server(manager)) as client:
            assert "io.modelcontextprotocol/ui" in (client.server_capabilities.extensions or {})
            listed = {r.uri: r for r in (await client.list_resources()).resources}
            assert listed[VIEW_URI].mime_type == APP_MIME
            read = (await client.read_resource(VIEW_URI)).contents[0]
            assert read.mime_type == APP_MIME
            page = getattr(read, "text")
            assert "<html" in page and "Terminal" in page and "ui/initialize" in page
            tools = {t.name: t for t in (await client.list_tools()).tools}
            for name in ("exec", "run_code", "start_process"):
                assert (tools[name].meta or {}).get("ui") == {"resourceUri": VIEW_URI}, name
            assert "ui" not in (tools["read_file"].meta or {})

            result = await client.call_tool("exec", {"command": "echo same-text"})
            assert (result.meta or {}).get("ui") == {"resourceUri": VIEW_URI}
            text = getattr(result.content[0], "text")
            assert text.startswith("exit code 0 · ") and text.endswith("--- stdout ---\nsame-text\n")

            activity = (await client.read_resource("sandbox://default/activity")).contents[0]
            entries = __import__("json").loads(getattr(activity, "text"))["entries"]
            assert [(e["tool"], e["input"], e["stdout"], e["exit_code"]) for e in entries] == [
                ("exec", "echo same-text", "same-text\n", 0)
            ]


async def test_activity_is_bounded(tmp_path: Path) -> None:
    from mcp_sandbox.ui.activity import ENTRIES, TEXT_MAX

    async with SandboxManager(settings_for("none", tmp_path / "s")) as manager:
        async with Client(build_server(manager)) as client:
            tools = Tools(client, "none")
            await tools.sh(f"head -c {TEXT_MAX * 3} /dev/zero | tr '\\0' x")
            for i in range(ENTRIES + 2):
                await tools.sh(f"echo {i}")
            sandbox_id = manager.ids()[0]
            entries = list(manager.activity[sandbox_id].entries)
            assert len(entries) == ENTRIES and entries[-1]["stdout"] == f"{ENTRIES + 1}\n"
            await tools("destroy", sandbox_id=sandbox_id)
            assert sandbox_id not in manager.activity


async def test_activity_goes_with_a_sandbox_that_dies(tmp_path: Path) -> None:
    async with SandboxManager(settings_for("none", tmp_path / "s")) as manager:
        async with Client(build_server(manager)) as client:
            await Tools(client, "none").sh("echo once")
            sandbox_id = manager.ids()[0]
            assert sandbox_id in manager.activity
            handle: Any = manager.sandboxes[sandbox_id].handle
            os.kill(handle.process.pid, signal.SIGKILL)  # without isolation, the agent itself
            assert await eventually(lambda: sandbox_id not in manager.sandboxes, seconds=15)
            assert sandbox_id not in manager.activity


# -- /ui over the HTTP transport ----------------------------------------------------------------

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}


async def test_http_ui_refuses_wrong_tokens_hosts_and_origins(tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("".join(f"{name} {token}\n" for name, token in TOKENS.items()))
    settings = settings_for("none", tmp_path / "s", transport="http", port=8123, auth_tokens_file=tokens_file)
    async with SandboxManager(settings) as manager:
        app = build_app(build_server(manager), settings, manager=manager)
        ids = {}
        for name in TOKENS:
            reset = tenants.current.set(name)
            try:
                ids[name] = (await manager.create()).id
            finally:
                tenants.current.reset(reset)
        base = "http://127.0.0.1:8123"
        api = {"x-mcp-sandbox-ui": "1", "content-type": "application/json"}
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=base) as http:
            page = await http.get("/ui")
            assert page.status_code == 200 and "xterm" in page.text
            assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
            assert (await http.get("/ui", headers={"host": "evil.example:8123"})).status_code == 421
            assert (await http.post("/ui/api/sandboxes", headers=api)).status_code == 401
            wrong = {**api, "authorization": "Bearer not-a-token-of-ours"}
            assert (await http.post("/ui/api/sandboxes", headers=wrong)).status_code == 401
            assert (await http.post("/ui/api/login", headers=api, json={"token": "nope"})).status_code == 401
            assert (await http.post("/mcp", headers=api, json={})).status_code == 401  # /mcp unchanged

            login = await http.post("/ui/api/login", headers=api, json={"token": TOKENS["alice"]})
            assert login.status_code == 204 and "httponly" in login.headers["set-cookie"].lower()
            listed = await http.post("/ui/api/sandboxes", headers=api)
            assert listed.json()["sandboxes"] == [ids["alice"]]  # the cookie is alice's, and only hers
            evil = {**api, "origin": "http://evil.example"}
            assert (await http.post("/ui/api/sandboxes", headers=evil)).status_code == 403
            big = await http.post("/ui/api/tools/call", headers=api, content=b" " * (2 << 20))
            assert big.status_code == 413
            no_header = {"content-type": "application/json"}
            assert (await http.post("/ui/api/sandboxes", headers=no_header)).status_code == 403

            def call(tool: str, **arguments: Any) -> Any:
                return http.post("/ui/api/tools/call", headers=api, json={"name": tool, "arguments": arguments})

            assert (await call("exec", command="id")).status_code == 403  # the view runs no commands
            assert (await call("start_process", command="id", sandbox_id=ids["alice"])).status_code == 403
            files = (await call("list_files", sandbox_id=ids["alice"])).json()
            assert files["structuredContent"]["path"].endswith("workspace")
            bobs = (await call("list_files", sandbox_id=ids["bob"])).json()
            assert bobs["isError"] and "SANDBOX_NOT_FOUND" in bobs["content"][0]["text"]
            assert f"sandboxes: {ids['alice']};" in bobs["content"][0]["text"]  # alice's, as for /mcp
            read = await http.post("/ui/api/resources/read", headers=api, json={"uri": f"sandbox://{ids['bob']}/activity"})
            assert read.status_code == 404
            bob = {**api, "authorization": f"Bearer {TOKENS['bob']}"}
            assert (await http.post("/ui/api/sandboxes", headers=bob)).json()["sandboxes"] == [ids["bob"]]


def live_view_url(stderr: Any) -> str:
    for _ in range(200):
        line = stderr.readline().decode()
        if "live view: " in line:
            return str(line.split("live view: ", 1)[1].split()[0])
    raise AssertionError("no live view URL on stderr")


def test_ui_port_prints_one_time_urls(tmp_path: Path) -> None:
    """stdio with --ui-port 0: the URL goes to stderr; the page loads; the token logs in once,
    and the next URL follows; the server still ends when stdin closes."""
    command = str(Path(sys.executable).parent / "mcp-sandbox")
    proc = subprocess.Popen(
        [command, "--ui-port", "0", "--backend", "local", "--isolation", "none", "--workspace-root", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy(),
    )
    try:
        url = live_view_url(proc.stderr)
        assert url.startswith("http://127.0.0.1:") and "/ui#token=" in url, url
        page, token = url.split("#token=")
        api = {"x-mcp-sandbox-ui": "1"}
        with httpx2.Client() as http:
            assert http.get(page).status_code == 200
            assert http.post(page + "/api/sandboxes", headers=api, json={}).status_code == 401
            bearer = {**api, "authorization": f"Bearer {token}"}  # the token is for logging in only
            assert http.post(page + "/api/sandboxes", headers=bearer, json={}).status_code == 401
            assert http.post(page + "/api/login", headers=api, json={"token": token}).status_code == 204
            assert http.post(page + "/api/sandboxes", headers=api, json={}).json()["sandboxes"] == []
        with httpx2.Client() as other:
            assert other.post(page + "/api/login", headers=api, json={"token": token}).status_code == 401  # spent
            following = live_view_url(proc.stderr)
            assert following.split("#token=")[0] == page and following != url
            assert other.post(page + "/api/login", headers=api, json={"token": following.split("#token=")[1]}).status_code == 204
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(30) == 0


# -- the page in Chromium -------------------------------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not os.path.exists(CHROMIUM):
        unavailable(f"{CHROMIUM} is not installed (Debian package chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def test_page_shows_commands_plots_files_and_a_terminal(tmp_path: Path, browser: Any) -> None:
    settings: Settings = settings_for("none", tmp_path / "s")
    async with SandboxManager(settings) as manager:
        server = build_server(manager)
        async with Client(server) as client, anyio.create_task_group() as tg:
            tools = Tools(client, "none")
            await tools.sh("true")  # the default sandbox, for the view to show
            url = await tg.start(serve_view, server, manager, 0)
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(url)
            assert "#token=" not in page.url  # traded for a cookie, and gone from the address bar
            await page.locator("#status", has_text="sbx_").wait_for(timeout=WAIT_MS)

            await tools.sh("echo hello-from-the-model; echo oops >&2")
            activity = page.locator("#activity")
            await activity.locator("pre.stdout", has_text="hello-from-the-model").wait_for(timeout=WAIT_MS)
            await activity.locator("pre.stderr", has_text="oops").wait_for(timeout=WAIT_MS)

            plot = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2]); plt.savefig('plot.png')"
            await tools("run_code", code=plot)
            await activity.locator("img").first.wait_for(timeout=WAIT_MS)  # the figure run_code returned
            await page.locator("#files li", has_text="plot.png").click(timeout=WAIT_MS)
            image = page.locator("#preview img")
            await image.wait_for(timeout=WAIT_MS)
            assert await image.evaluate("img => img.naturalWidth") > 100

            await tools("start_process", command="sleep 600", process_id="sleeper")
            await page.locator("#processes td", has_text="sleeper").wait_for(timeout=WAIT_MS)

            await page.locator("#terminal-new").click()
            rows = page.locator("#terminal .xterm-rows")
            await rows.filter(has_text=re.compile(r"[$#]")).wait_for(timeout=WAIT_MS)  # bash's prompt
            await page.locator("#terminal").click()
            await page.keyboard.type("echo typed-$((6*7))")
            await rows.filter(has_text="echo typed-$((6*7))").wait_for(timeout=WAIT_MS)  # the echo of the keys
            await page.keyboard.press("Enter")
            await rows.filter(has_text="typed-42").wait_for(timeout=WAIT_MS)  # bash ran it
            tg.cancel_scope.cancel()


# A minimal MCP Apps host: it renders the ui:// resource in a sandboxed iframe and answers the
# view's JSON-RPC over postMessage, passing tools/call and resources/read to the real MCP client.
HOST_PAGE = """<!doctype html><html><body>
<iframe id="app" sandbox="allow-scripts" style="width:1200px;height:850px;border:0"></iframe>
<script>
const frame = document.getElementById("app");
const send = (message) => frame.contentWindow.postMessage({ jsonrpc: "2.0", ...message }, "*");
window.addEventListener("message", async (event) => {
  const msg = event.data;
  if (event.source !== frame.contentWindow || !msg || !msg.method) return;
  if (msg.method === "ui/initialize") {
    send({ id: msg.id, result: { protocolVersion: msg.params.protocolVersion, hostInfo: { name: "test-host", version: "1" },
      hostCapabilities: { serverTools: {}, serverResources: {} }, hostContext: {} } });
  } else if (msg.method === "ui/notifications/initialized") {
    send({ method: "ui/notifications/tool-input", params: { arguments: window.toolArguments } });
  } else if (msg.id !== undefined) {
    try { send({ id: msg.id, result: await window.mcp(msg.method, msg.params) }); }
    catch (error) { send({ id: msg.id, error: { code: -32000, message: String(error) } }); }
  }
});
</script></body></html>"""


async def test_page_inside_an_apps_host_calls_tools_through_it(tmp_path: Path, browser: Any) -> None:
    async with SandboxManager(settings_for("none", tmp_path / "s")) as manager:
        async with Client(build_server(manager)) as client:
            tools = Tools(client, "none")
            sandbox_id = (await tools("create_sandbox"))["sandbox_id"]
            await tools.sh("echo first", sandbox_id=sandbox_id)
            calls: list[str] = []

            async def bridge(method: str, params: dict[str, Any]) -> Any:
                calls.append(method)
                if method == "tools/call":
                    result: Any = await client.call_tool(params["name"], params.get("arguments") or {})
                elif method == "resources/read":
                    result = await client.read_resource(params["uri"])
                else:
                    raise ValueError(f"this host does not serve {method}")
                return result.model_dump(mode="json", by_alias=True, exclude_none=True)

            page = await browser.new_page(viewport={"width": 1240, "height": 900})
            await page.expose_function("mcp", bridge)
            await page.set_content(HOST_PAGE)
            view = getattr((await client.read_resource(VIEW_URI)).contents[0], "text")
            await page.evaluate(
                "([html, args]) => { window.toolArguments = args; document.getElementById('app').srcdoc = html; }",
                [view, {"command": "echo first", "sandbox_id": sandbox_id}],
            )
            app = page.frame_locator("#app")
            await app.locator("#status", has_text=sandbox_id).wait_for(timeout=WAIT_MS)
            await app.locator("#activity pre.stdout", has_text="first").wait_for(timeout=WAIT_MS)
            await tools.sh("echo second-through-the-host", sandbox_id=sandbox_id)
            await app.locator("#activity pre.stdout", has_text="second-through-the-host").wait_for(timeout=WAIT_MS)

            await app.locator("#terminal-new").click()
            rows = app.locator("#terminal .xterm-rows")
            await rows.filter(has_text=re.compile(r"[$#]")).wait_for(timeout=WAIT_MS)
            await app.locator("#terminal").click()
            await page.keyboard.type("echo via-host-$((2+3))\n")
            await rows.filter(has_text="via-host-5").wait_for(timeout=WAIT_MS)
            assert {"tools/call", "resources/read"} <= set(calls)
            processes = (await tools("list_processes", sandbox_id=sandbox_id))["processes"]
            assert any(p["tty"] and p["status"] == "running" for p in processes)  # the view's terminal
