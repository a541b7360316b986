// The live view of one sandbox. It reaches the server in one of two ways, and does the same
// with either: inside an MCP Apps host (an iframe) it calls MCP tools and reads resources
// through the host (JSON-RPC over postMessage, as the MCP Apps spec says); opened from the
// server's /ui address it calls the same tools over the server's small JSON API (/ui/api).
// Everything the sandbox wrote is shown as text (textContent), never as HTML.
"use strict";

const APPS_PROTOCOL = "2026-01-26";
const $ = (id) => document.getElementById(id);
const state = {
  sandbox: null, // null: the default sandbox
  seq: -1, // the activity log's seq last shown
  dir: null, // the directory the file list shows
  process: null, // the process whose log is shown
  tty: null, // the process the terminal is attached to
  screen: "", // the screen last drawn
};

// ---- transport --------------------------------------------------------------------------------

function hostBridge() {
  let next = 1;
  const waiting = new Map();
  const handlers = {};
  window.addEventListener("message", (event) => {
    if (event.source !== window.parent) return;
    const msg = event.data;
    if (!msg || msg.jsonrpc !== "2.0") return;
    if (msg.id !== undefined && waiting.has(msg.id) && !msg.method) {
      const { resolve, reject } = waiting.get(msg.id);
      waiting.delete(msg.id);
      if (msg.error) reject(new Error(msg.error.message || "host error"));
      else resolve(msg.result);
    } else if (msg.method) {
      if (msg.id !== undefined) window.parent.postMessage({ jsonrpc: "2.0", id: msg.id, result: {} }, "*");
      (handlers[msg.method] || (() => {}))(msg.params || {});
    }
  });
  const request = (method, params, timeoutMs) => new Promise((resolve, reject) => {
    const id = next++;
    waiting.set(id, { resolve, reject });
    window.parent.postMessage({ jsonrpc: "2.0", id, method, params }, "*");
    if (timeoutMs) setTimeout(() => { if (waiting.delete(id)) reject(new Error("no answer from the host")); }, timeoutMs);
  });
  const notify = (method, params) => window.parent.postMessage({ jsonrpc: "2.0", method, params }, "*");
  return {
    kind: "host",
    handlers,
    async start() {
      await request("ui/initialize", {
        protocolVersion: APPS_PROTOCOL,
        appInfo: { name: "mcp-sandbox live view", version: "1" },
        appCapabilities: {},
      }, 3000);
      notify("ui/notifications/initialized", {});
      new ResizeObserver(() => notify("ui/notifications/size-changed", {
        width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight,
      })).observe(document.documentElement);
    },
    callTool: (name, args) => request("tools/call", { name, arguments: args }),
    readResource: (uri) => request("resources/read", { uri }),
    sandboxes: async () => null,
  };
}

function httpApi() {
  const base = location.pathname.replace(/\/+$/, "") + "/api/";
  const post = async (path, body) => {
    const response = await fetch(base + path, {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json", "x-mcp-sandbox-ui": "1" },
      body: JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
    return data;
  };
  return {
    kind: "http",
    async start() {
      // The token comes in the fragment (never sent to a server, so never in a log); it is
      // traded once for a cookie and taken out of the address bar.
      const token = new URLSearchParams(location.hash.slice(1)).get("token");
      if (token) {
        history.replaceState(null, "", location.pathname + location.search);
        await post("login", { token });
      }
    },
    callTool: (name, args) => post("tools/call", { name, arguments: args }),
    readResource: (uri) => post("resources/read", { uri }),
    sandboxes: () => post("sandboxes", {}),
  };
}

let api;

async function tool(name, args) {
  const withSandbox = state.sandbox ? { ...args, sandbox_id: state.sandbox } : args;
  const result = await api.callTool(name, withSandbox);
  if (result.isError) throw new Error((result.content || []).map((c) => c.text || "").join(" "));
  return result.structuredContent || {};
}

// ---- rendering helpers -----------------------------------------------------------------------

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

const time = (seconds) => new Date(seconds * 1000).toLocaleTimeString();

function setStatus(text, bad) {
  $("status").textContent = text;
  $("status").style.color = bad ? "var(--bad)" : "";
}

// ---- activity ---------------------------------------------------------------------------------

function renderEntry(e) {
  const ok = e.status === "done" && (e.exit_code === undefined || e.exit_code === 0) && !e.error;
  const node = el("div", { className: `entry ${e.status} ${ok ? "ok" : "fail"}` });
  node.dataset.tool = e.tool;
  let meta = `${time(e.started_at)} · ${e.tool}`;
  if (e.target) meta += ` · ${e.target}`;
  if (e.status === "running") meta += " · running…";
  else if (e.exit_code !== undefined) meta += ` · exit ${e.exit_code}`;
  if (e.ended_at) meta += ` · ${Math.round((e.ended_at - e.started_at) * 1000)} ms`;
  if (e.timed_out) meta += " · timed out";
  node.append(el("div", { className: "meta", textContent: meta }));
  node.append(el("pre", { className: "input", textContent: (e.tool === "run_code" ? "" : "$ ") + e.input }));
  if (e.stdout) node.append(el("pre", { className: "stdout", textContent: e.stdout }));
  if (e.stderr) node.append(el("pre", { className: "stderr", textContent: e.stderr }));
  if (e.result) node.append(el("pre", { className: "result", textContent: e.result }));
  if (e.image) node.append(el("img", { src: e.image, alt: "plot" }));
  if (e.error) node.append(el("pre", { className: "err", textContent: e.error }));
  return node;
}

async function refreshActivity() {
  const uri = `sandbox://${state.sandbox || "default"}/activity`;
  const read = await api.readResource(uri);
  const log = JSON.parse(read.contents[0].text);
  if (log.seq === state.seq) return;
  state.seq = log.seq;
  const box = $("activity");
  const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 20;
  box.replaceChildren(...(log.entries.length ? log.entries.map(renderEntry) : [el("p", { className: "dim", textContent: "Nothing ran yet." })]));
  if (atBottom) box.scrollTop = box.scrollHeight;
}

// ---- processes --------------------------------------------------------------------------------

async function refreshProcesses() {
  const list = await tool("list_processes", {});
  const rows = list.processes.map((p) => {
    const row = el("tr", { className: p.process_id === state.process ? "selected" : "" });
    const attach = el("button", { type: "button", textContent: "terminal" });
    attach.onclick = (event) => { event.stopPropagation(); attachTerminal(p.process_id); };
    row.append(
      el("td", { textContent: p.process_id }),
      el("td", { textContent: p.status + (p.exit_code !== null ? ` (${p.exit_code})` : "") }),
      el("td", { className: "cmd", textContent: p.command }),
      el("td", {}, p.status === "running" && p.tty ? attach : null),
    );
    row.onclick = () => { state.process = p.process_id; refreshProcesses(); };
    return row;
  });
  $("processes").replaceChildren(rows.length ? el("table", {}, ...rows) : el("p", { className: "dim", textContent: "No processes." }));
  const log = $("process-log");
  log.hidden = !state.process;
  if (state.process) {
    const logs = await tool("get_process_logs", { process_id: state.process, tail: 200 });
    log.textContent = `--- ${state.process} ---\n${logs.stdout}${logs.stderr ? "\n--- stderr ---\n" + logs.stderr : ""}`;
  }
}

// ---- files ------------------------------------------------------------------------------------

async function refreshFiles() {
  const list = await tool("list_files", state.dir ? { path: state.dir } : {});
  state.dir = list.path;
  $("files-path").textContent = list.path;
  const items = [];
  if (list.path !== "/") {
    const up = el("li", { textContent: "../" });
    up.onclick = () => { state.dir = list.path.replace(/\/[^/]+\/?$/, "") || "/"; refreshFiles(); };
    items.push(up);
  }
  for (const f of list.files) {
    const item = el("li", { textContent: f.name + (f.type === "directory" ? "/" : ""), title: `${f.size} bytes` });
    item.onclick = () => {
      if (f.type === "directory") { state.dir = f.path; refreshFiles(); } else showFile(f.path);
    };
    items.push(item);
  }
  $("files").replaceChildren(...items);
}

async function showFile(path) {
  const preview = $("preview");
  try {
    const file = await tool("read_file", { path });
    if (file.mime_type.startsWith("image/") && file.encoding === "base64") {
      preview.replaceChildren(el("div", { className: "dim", textContent: path }),
        el("img", { src: `data:${file.mime_type};base64,${file.content}`, alt: path }));
    } else {
      const text = file.encoding === "base64" ? `(binary, ${file.size} bytes)` : file.content;
      preview.replaceChildren(el("div", { className: "dim", textContent: path }), el("pre", { textContent: text }));
    }
  } catch (error) {
    preview.replaceChildren(el("pre", { className: "err", textContent: String(error.message || error) }));
  }
}

// ---- terminal ---------------------------------------------------------------------------------

let term = null;
let typed = ""; // key strokes not sent yet
let sending = false;

async function sendTyped() {
  // One call at a time, so that key strokes reach the program in order; those typed meanwhile
  // go together in the next one.
  sending = true;
  while (typed && state.tty) {
    const data = typed;
    typed = "";
    try {
      await tool("send_process_input", { process_id: state.tty, data });
    } catch (error) {
      setStatus(String(error.message || error), true);
    }
  }
  sending = false;
}

function terminal() {
  if (term) return term;
  term = new Terminal({ cols: 80, rows: 24, fontSize: 13, scrollback: 0 });
  term.open($("terminal"));
  term.onData((data) => {
    typed += data;
    if (!sending) sendTyped();
  });
  return term;
}

async function attachTerminal(processId) {
  state.tty = processId;
  state.screen = "";
  $("terminal-title").textContent = processId;
  terminal().focus();
  await refreshScreen();
}

async function newTerminal() {
  const started = await tool("start_process", { command: "bash -l", tty: true, cols: 80, rows: 24 });
  await attachTerminal(started.process_id);
}

async function refreshScreen() {
  if (!state.tty) return;
  // It answers once the program has been quiet for a moment (it has drawn what was typed).
  const screen = await tool("get_process_screen", { process_id: state.tty, timeout: 0.5 });
  const t = terminal();
  if (t.cols !== screen.cols || t.rows !== screen.rows) t.resize(screen.cols, screen.rows);
  const key = `${screen.text}\u0000${screen.cursor.row},${screen.cursor.col}`;
  if (key === state.screen) return;
  state.screen = key;
  // The server renders the screen (a terminal emulator per tty process); it is drawn whole here.
  const lines = screen.text.split("\n").slice(0, screen.rows);
  t.write("\x1b[H" + lines.map((line) => line + "\x1b[K").join("\r\n") + "\x1b[J"
    + `\x1b[${screen.cursor.row + 1};${screen.cursor.col + 1}H`);
  $("terminal-title").textContent = `${state.tty} · ${screen.status}`;
}

// ---- sandboxes and the loop -------------------------------------------------------------------

async function refreshSandboxes() {
  const found = await api.sandboxes();
  if (!found) return; // in a host, the tool call that opened the view names the sandbox
  const select = $("sandbox");
  const ids = found.sandboxes;
  if (!state.sandbox || !ids.includes(state.sandbox)) {
    const asked = new URLSearchParams(location.search).get("sandbox");
    state.sandbox = ids.includes(asked) ? asked : found.default || ids[ids.length - 1] || null;
  }
  const current = [...select.options].map((o) => o.value).join(" ");
  if (current !== ids.join(" ")) select.replaceChildren(...ids.map((id) => el("option", { value: id, textContent: id })));
  select.value = state.sandbox || "";
}

function chooseSandbox(id) {
  if (id === state.sandbox) return;
  Object.assign(state, { sandbox: id, seq: -1, dir: null, process: null, tty: null, screen: "" });
  if (term) term.reset();
}

async function tick(slow) {
  try {
    await refreshSandboxes();
    if (!state.sandbox && api.kind === "http") {
      setStatus("no sandbox yet: the view fills in when the model creates one");
      return;
    }
    await refreshActivity();
    if (slow) await Promise.all([refreshProcesses(), refreshFiles()]);
    setStatus(`${state.sandbox || "default sandbox"} · ${new Date().toLocaleTimeString()}`);
  } catch (error) {
    setStatus(String(error.message || error), true);
  }
}

async function main() {
  const inFrame = window.parent !== window;
  api = inFrame ? hostBridge() : httpApi();
  if (api.kind === "host") {
    api.handlers["ui/notifications/tool-input"] = (params) => {
      const id = (params.arguments || {}).sandbox_id;
      if (id) { chooseSandbox(id); $("sandbox").replaceChildren(el("option", { value: id, textContent: id })); }
    };
    api.handlers["ui/notifications/tool-result"] = () => tick(true);
  }
  try {
    await api.start();
  } catch (error) {
    setStatus(String(error.message || error), true);
    return;
  }
  $("sandbox").onchange = (event) => { chooseSandbox(event.target.value); tick(true); };
  $("terminal-new").onclick = () => newTerminal().catch((error) => setStatus(String(error.message || error), true));
  let round = 0;
  const loop = async () => {
    await tick(round++ % 3 === 0);
    setTimeout(loop, 1000);
  };
  loop();
  const screens = async () => {
    try { await refreshScreen(); } catch (error) { setStatus(String(error.message || error), true); }
    setTimeout(screens, 250);
  };
  screens();
}

main();
