// grove's web board: plain JavaScript, no build step, nothing from the
// network but the board itself. Every piece of text from tasks and agents
// goes into the page as text (textContent), never as HTML.
"use strict";

const TOKEN = document.querySelector('meta[name="grove-token"]').content;
const STATUSES = ["pending", "queued", "running", "waiting", "idle", "paused", "completed", "failed", "cancelled"];
const TERMINAL = new Set(["completed", "failed", "cancelled"]);

const board = {
  tasks: new Map(),     // id -> task record
  lastSeq: 0,           // the last durable event applied
  seen: [],             // every durable seq received, in order (checked by the tests)
  firstSeq: 0,          // the seq the stream started from (seen[0] when no gap)
  reconnects: 0,        // streams opened after the first
  source: null,
  view: "tasks",
  detail: null,         // the task page's state: {id, updates, upto, logNext}
  told: new Set(),      // browser notifications already shown: id + status
  engines: [],
};
window.groveBoard = board;

// ---- small helpers -------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const short = (id) => (id || "").slice(0, 8);
const firstLine = (s) => (s || "").split("\n")[0];
const ago = (ms) => {
  if (!ms) return "";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return Math.round(s) + "s ago";
  if (s < 3600) return Math.round(s / 60) + "m ago";
  return Math.round(s / 3600) + "h ago";
};

function toast(text, error) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.className = error ? "error" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), error ? 8000 : 3000);
}

async function getJson(path) {
  const r = await fetch(path, { credentials: "same-origin" });
  if (!r.ok) throw new Error(`${r.status}: ${await r.text()}`);
  return r.json();
}

// Every change carries the token in a header: the board refuses a change
// without it (a page of another site cannot set it).
async function post(path, body) {
  const r = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Grove-Token": TOKEN },
    body: JSON.stringify(Object.assign({ request_id: crypto.randomUUID ? crypto.randomUUID() : String(Math.random()) }, body || {})),
  });
  const text = await r.text();
  if (!r.ok) throw new Error(text.trim() || r.statusText);
  return text ? JSON.parse(text) : {};
}

async function act(id, action, body) {
  try {
    const reply = await post(`/api/tasks/${encodeURIComponent(id)}/${action}`, body);
    if (reply.merged && reply.merged.result === "conflict") {
      toast(`merge conflicts in ${reply.merged.files.join(", ")}: nothing was changed`, true);
    } else {
      toast(`${action}: done`);
    }
    if (board.detail && board.detail.id === id) loadDetail(id);
  } catch (e) {
    toast(`${action} refused: ${e.message}`, true);
  }
}

// ---- state and the event stream ------------------------------------------

async function loadState() {
  const s = await getJson("/api/state");
  board.tasks = new Map(s.tasks.map((t) => [t.id, t]));
  board.lastSeq = s.last_seq;
  board.firstSeq = s.last_seq + 1;
  board.seen = [];
  board.engines = s.engines;
  document.getElementById("epoch").textContent = `epoch ${s.epoch}`;
  fillEngines(s.engines, s.default_engine);
  render();
  return s.last_seq;
}

function connect(since) {
  if (board.source) board.source.close();
  const es = new EventSource(`/api/events?since=${since}`);
  board.source = es;
  const conn = document.getElementById("conn");
  let opened = false;
  es.addEventListener("hello", () => {
    if (opened || board.connected) board.reconnects += 1;
    opened = true;
    board.connected = true;
    conn.textContent = "live";
    conn.className = "conn on";
  });
  es.addEventListener("message", (e) => apply(JSON.parse(e.data)));
  es.addEventListener("output", (e) => {
    const { id } = JSON.parse(e.data);
    if (board.detail && board.detail.id === id) scheduleLog();
  });
  es.addEventListener("resync", async () => {
    // Events this page needed were pruned: read everything again.
    const seq = await loadState();
    connect(seq + 1);
  });
  es.onerror = () => {
    conn.textContent = "reconnecting…";
    conn.className = "conn off";
    // The browser reconnects by itself (sending Last-Event-ID) unless the
    // stream was refused; then start again from the last event applied.
    if (es.readyState === EventSource.CLOSED) {
      setTimeout(() => board.source === es && connect(board.lastSeq + 1), 1000);
    }
  };
}

function apply(event) {
  if (event.seq) {
    if (event.seq <= board.lastSeq) return; // already applied
    board.seen.push(event.seq);
    board.lastSeq = event.seq;
    followCluster(event);
  }
  const topic = Object.keys(event.data)[0];
  const body = event.data[topic];
  switch (topic) {
    case "task.created":
    case "task.updated": {
      const before = board.tasks.get(body.task.id);
      board.tasks.set(body.task.id, body.task);
      maybeNotify(before, body.task);
      break;
    }
    case "task.deleted":
      board.tasks.delete(body.id);
      break;
    case "task.agent_update":
      if (board.detail && board.detail.id === body.id && event.seq > board.detail.upto) {
        board.detail.updates.push({ seq: event.seq, kind: body.kind, acp: parseAcp(body.acp) });
        renderDetail();
      }
      return;
    case "task.control":
      if (board.detail && board.detail.id === body.id) renderDetail();
      return;
    case "instance.promoted":
      document.getElementById("epoch").textContent = `epoch ${body.epoch}`;
      return;
    case "instance.joined":
    case "instance.shutdown":
      return;
    default:
      return;
  }
  scheduleRender();
}

// The members and delegation views read the store again when an event may
// have changed them. Any task event may move a delegation counter (a run's
// end counts its warm use, an await's firing a live injection or a
// resurrection), and an await is recorded inside the turn whose updates
// and end follow it; a burst of events costs one read (see refresher).
function followCluster(event) {
  const topic = Object.keys(event.data)[0];
  if (board.view === "delegation" && topic !== "session.created") renderDelegation();
  if (board.view === "goals" && topic === "goal.updated") renderGoals();
  const goal = event.data["goal.updated"] && event.data["goal.updated"].goal;
  if (board.view === "task" && goal && board.detail && board.detail.id === goal.id) {
    board.detail.goal = goal;
    renderDetail();
  }
  if (board.view === "members" && (topic.startsWith("instance.") || board.membersStale)) renderMembers();
}

function parseAcp(s) {
  try { return JSON.parse(s); } catch (_) { return s; }
}

let renderPending = false;
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => {
    renderPending = false;
    render();
  });
}

// ---- notifications ---------------------------------------------------------

function maybeNotify(before, task) {
  const worth = TERMINAL.has(task.status) || task.status === "waiting";
  if (!worth || (before && before.status === task.status) || task.parent_id) return;
  const key = task.id + ":" + task.status + ":" + (task.run_id || "");
  if (board.told.has(key)) return;
  board.told.add(key);
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  const title = task.status === "waiting" ? `grove: ${short(task.id)} needs an answer` : `grove: ${short(task.id)} ${task.status}`;
  const n = new Notification(title, { body: firstLine(task.prompt).slice(0, 120), tag: key });
  n.onclick = () => { window.focus(); location.hash = "#task/" + task.id; };
}

function setUpNotifications() {
  const b = document.getElementById("notify-on");
  if (!("Notification" in window) || Notification.permission !== "default") return;
  b.hidden = false;
  b.onclick = async () => {
    await Notification.requestPermission();
    b.hidden = true;
  };
}

// ---- views -------------------------------------------------------------------

function route() {
  const hash = location.hash.slice(1) || "tasks";
  const [view, id] = hash.split("/");
  board.view = view === "task" ? "task" : (["tasks", "graph", "asks", "members", "delegation", "goals"].includes(view) ? view : "tasks");
  for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== "view-" + board.view;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === board.view);
  if (board.view === "task" && id) {
    loadDetail(id);
  } else {
    board.detail = null;
  }
  render();
}

function render() {
  renderCounts();
  if (board.view === "tasks") renderTasks();
  if (board.view === "graph") renderGraph();
  if (board.view === "asks") renderAsks();
  if (board.view === "members") renderMembers();
  if (board.view === "delegation") renderDelegation();
  if (board.view === "goals") renderGoals();
  if (board.view === "task" && board.detail) {
    board.detail.task = board.tasks.get(board.detail.id) || board.detail.task;
    renderDetail();
  }
}

function renderCounts() {
  const counts = {};
  for (const t of board.tasks.values()) counts[t.status] = (counts[t.status] || 0) + 1;
  const el = document.getElementById("counts");
  el.replaceChildren(...STATUSES.filter((s) => counts[s]).map((s) => h("span", {}, h("span", { class: "status " + s }, s), " ", counts[s])));
  const waiting = counts.waiting || 0;
  const badge = document.getElementById("asks-count");
  badge.textContent = waiting;
  badge.className = waiting ? "badge" : "badge zero";
}

function statusPill(t) {
  return h("span", { class: "status " + t.status, "data-status": t.status }, t.status);
}

function progress(t) {
  if (t.progress_pct === null || t.progress_pct === undefined) {
    return t.progress_text ? h("span", { class: "muted" }, t.progress_text) : "";
  }
  const bar = h("div");
  bar.style.width = t.progress_pct + "%";
  return h("span", { title: t.progress_text || "" }, h("span", { class: "bar" }, bar), ` ${t.progress_pct}%`);
}

function tags(t) {
  return (t.tags || []).map((g) => h("span", { class: "tag" }, g));
}

// The buttons a task's status allows (the primary checks again).
function actionButtons(t) {
  const b = (label, action, cls) => h("button", {
    type: "button", class: cls, "data-action": action,
    onclick: (e) => { e.stopPropagation(); act(t.id, action); },
  }, label);
  const out = [];
  const s = t.status;
  if (!TERMINAL.has(s)) out.push(b("Cancel", "cancel", "danger"));
  if (["queued", "pending", "running", "waiting"].includes(s)) out.push(b("Pause", "pause"));
  if (s === "paused") out.push(b("Resume", "resume"));
  if (TERMINAL.has(s)) out.push(b("Retry", "retry"), b("Relaunch", "relaunch"));
  if (s === "idle") out.push(b("Close", "close"));
  if (t.worktree && TERMINAL.has(s)) out.push(b("Merge", "merge"), b("Discard", "discard", "danger"));
  return out;
}

function matches(t) {
  const q = document.getElementById("search").value.trim().toLowerCase();
  const st = document.getElementById("status-filter").value;
  const tag = document.getElementById("tag-filter").value.trim();
  if (st && t.status !== st) return false;
  if (tag && !(t.tags || []).includes(tag)) return false;
  if (q) {
    const hay = [t.id, t.prompt, t.engine, ...(t.tags || [])].join(" ").toLowerCase();
    if (!hay.includes(q)) return false;
  }
  return true;
}

function renderTasks() {
  const rows = [...board.tasks.values()].filter(matches).reverse().map((t) =>
    h("tr", { class: "task", "data-id": t.id, onclick: () => (location.hash = "#task/" + t.id) },
      h("td", { class: "mono" }, short(t.id), t.parent_id ? h("div", { class: "muted", title: "delegated by " + t.parent_id }, "↳ " + short(t.parent_id)) : ""),
      h("td", {}, statusPill(t), t.failure_reason ? h("div", { class: "muted" }, t.failure_reason) : ""),
      h("td", {}, progress(t)),
      h("td", { class: "prompt", title: t.prompt }, firstLine(t.prompt)),
      h("td", {}, tags(t)),
      h("td", { class: "mono" }, t.engine),
      h("td", { class: "actions" }, actionButtons(t))));
  document.querySelector("#tasks tbody").replaceChildren(...rows);
  document.getElementById("empty").hidden = board.tasks.size > 0;
}

// Layers: a task's column is one more than the deepest task it waits for.
function renderGraph() {
  const tasks = [...board.tasks.values()];
  // A dependency exists before its dependent is created (the store
  // refuses others), so one pass in creation order sees every dependency
  // placed first.
  const depth = new Map();
  for (const t of tasks) {
    const deps = [...(t.dependencies || []), t.parent_id].filter((d) => d && depth.has(d));
    depth.set(t.id, deps.length ? 1 + Math.max(...deps.map((d) => depth.get(d))) : 0);
  }
  const columns = [];
  for (const t of tasks) (columns[depth.get(t.id)] ||= []).push(t);
  const W = 210, H = 44, GX = 60, GY = 14;
  const pos = new Map();
  columns.forEach((col, x) => col.forEach((t, y) => pos.set(t.id, { x: 10 + x * (W + GX), y: 10 + y * (H + GY) })));
  const width = 20 + columns.length * (W + GX);
  const height = 20 + Math.max(1, ...columns.map((c) => c.length)) * (H + GY);
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}` });
  // Solid: waits for; dashed: delegated by (the parent spawned it).
  for (const t of tasks) {
    const edges = (t.dependencies || []).map((d) => [d, false]);
    if (t.parent_id) edges.push([t.parent_id, true]);
    for (const [d, delegated] of edges) {
      if (!pos.has(d)) continue;
      const a = pos.get(d), b = pos.get(t.id);
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
      const attrs = { d: `M${x1},${y1} C${x1 + GX / 2},${y1} ${x2 - GX / 2},${y2} ${x2},${y2}` };
      if (delegated) attrs["stroke-dasharray"] = "5 4";
      root.append(svg("path", attrs));
    }
  }
  for (const t of tasks) {
    const p = pos.get(t.id);
    const colour = getComputedStyle(document.documentElement).getPropertyValue(
      { running: "--run", completed: "--ok", failed: "--bad", waiting: "--wait", idle: "--idle" }[t.status] || "--muted");
    root.append(svg("g", { class: "node", "data-id": t.id, transform: `translate(${p.x},${p.y})`, onclick: () => (location.hash = "#task/" + t.id) },
      svg("rect", { width: W, height: H }),
      svg("rect", { width: 6, height: H, fill: colour.trim() || "#888" }),
      svg("text", { x: 12, y: 17 }, `${short(t.id)} · ${t.status}`),
      svg("text", { x: 12, y: 34, class: "muted" }, firstLine(t.prompt).slice(0, 30))));
  }
  document.getElementById("graph").replaceChildren(tasks.length ? root : h("p", { class: "muted" }, "No task yet."));
}

// ---- permission requests ---------------------------------------------------

function permissionCard(t, request) {
  const req = (request && request.request) || {};
  const tool = req.toolCall || {};
  const options = req.options || [];
  const allow = options.filter((o) => (o.kind || "").startsWith("allow"));
  // The request's number: an answer for a request answered meanwhile (from
  // another window) is refused, never taken for the next one's.
  const ask = request && typeof request.ask === "number" ? request.ask : null;
  return h("div", { class: "card ask", "data-ask": t.id },
    h("div", {}, h("a", { href: "#task/" + t.id, class: "mono" }, short(t.id)), " ", firstLine(t.prompt)),
    h("div", { class: "tool" },
      h("div", { class: "title" }, tool.title || "a tool call"),
      tool.kind ? h("div", { class: "muted" }, "kind: " + tool.kind) : "",
      toolContent(tool.content || []),
      tool.rawInput ? h("pre", {}, JSON.stringify(tool.rawInput, null, 2)) : ""),
    h("div", { class: "actions" },
      (allow.length ? allow : [{ optionId: null, name: "Approve" }]).map((o) =>
        h("button", { type: "button", class: "primary", "data-action": "approve", onclick: () => act(t.id, "approve", { option: o.optionId, ask }) }, o.name || o.optionId)),
      h("button", { type: "button", class: "danger", "data-action": "deny", onclick: () => act(t.id, "deny", { ask }) }, "Deny")));
}

const askCache = new Map(); // id -> {updated_at, card}
async function renderAsks() {
  const waiting = [...board.tasks.values()].filter((t) => t.status === "waiting");
  const box = document.getElementById("asks");
  if (!waiting.length) {
    box.replaceChildren(h("p", { class: "muted" }, "No agent is waiting for an answer."));
    return;
  }
  const cards = [];
  for (const t of waiting) {
    let c = askCache.get(t.id);
    if (!c || c.updated_at !== t.updated_at) {
      try {
        const d = await getJson(`/api/tasks/${t.id}`);
        c = { updated_at: t.updated_at, card: permissionCard(t, d.permission) };
        askCache.set(t.id, c);
      } catch (e) {
        continue;
      }
    }
    cards.push(c.card);
  }
  if (board.view === "asks") box.replaceChildren(...cards);
}

// ---- the task page -------------------------------------------------------

async function loadDetail(id) {
  try {
    const d = await getJson(`/api/tasks/${encodeURIComponent(id)}`);
    board.detail = { id: d.task.id, task: d.task, goal: d.goal, upto: d.upto, updates: d.updates, permission: d.permission, log: "", logNext: null, diff: null };
    renderDetail();
    if (!d.updates.length) readLog();
  } catch (e) {
    document.getElementById("task").replaceChildren(h("p", {}, e.message));
  }
}

let logTimer = null;
function scheduleLog() {
  if (logTimer) return;
  logTimer = setTimeout(() => { logTimer = null; readLog(); }, 150);
}

// The log file is the durable output: read it from where we stopped.
async function readLog() {
  const d = board.detail;
  if (!d) return;
  const q = d.logNext === null ? "" : `?from=${d.logNext}`;
  const r = await getJson(`/api/tasks/${d.id}/log${q}`);
  if (board.detail !== d) return;
  d.log += r.text;
  d.logNext = r.next;
  renderDetail();
  if (r.next < r.size) scheduleLog();
}

function toolContent(content) {
  return (content || []).map((c) => {
    if (c.type === "diff") return diffBlock(c.oldText || "", c.newText || "", c.path);
    if (c.type === "content" && c.content) return h("pre", {}, c.content.text || JSON.stringify(c.content));
    if (c.type === "terminal") return h("div", { class: "muted" }, "terminal " + c.terminalId);
    return h("pre", {}, JSON.stringify(c));
  });
}

function diffBlock(oldText, newText, path) {
  const lines = [];
  for (const l of oldText ? oldText.split("\n") : []) lines.push(h("div", { class: "del" }, "- " + l));
  for (const l of newText ? newText.split("\n") : []) lines.push(h("div", { class: "add" }, "+ " + l));
  return h("div", {}, h("div", { class: "mono" }, path || ""), h("pre", { class: "diff" }, lines));
}

// A long patch is shown plain: an element per line would cost the page
// seconds for the megabytes the board may send.
const PATCH_COLOURED_LINES = 50000;

function patchBlock(text) {
  const lines = text.split("\n");
  if (lines.length > PATCH_COLOURED_LINES) return h("pre", { class: "diff" }, text);
  return h("pre", { class: "diff" }, lines.map((l) =>
    h("div", { class: l.startsWith("+") ? "add" : l.startsWith("-") ? "del" : l.startsWith("@@") ? "hunk" : "" }, l)));
}

// The conversation from the stored agent updates: messages merged, tool
// calls as cards updated in place, the latest plan, permission questions.
function transcript(updates) {
  const out = [];
  const tools = new Map();
  let last = null;
  let plan = null;
  for (const u of updates) {
    const a = u.acp || {};
    const text = (a.content && a.content.text) || "";
    if (["agent_message_chunk", "agent_thought_chunk", "user_message_chunk"].includes(u.kind)) {
      if (last && last.kind === u.kind) { last.el.append(text); continue; }
      const cls = { agent_message_chunk: "msg", agent_thought_chunk: "thought", user_message_chunk: "user" }[u.kind];
      last = { kind: u.kind, el: h("div", { class: cls }, text) };
      out.push(last.el);
      continue;
    }
    last = null;
    if (u.kind === "tool_call" || u.kind === "tool_call_update") {
      let card = tools.get(a.toolCallId);
      if (!card) {
        card = { data: {}, el: h("div", { class: "tool" }) };
        tools.set(a.toolCallId, card);
        out.push(card.el);
      }
      Object.assign(card.data, Object.fromEntries(Object.entries(a).filter(([, v]) => v !== null && v !== undefined)));
      const t = card.data;
      card.el.replaceChildren(h("div", { class: "title" }, t.title || "tool", " ", h("span", { class: "muted" }, [t.kind, t.status].filter(Boolean).join(" · "))), toolContent(t.content));
    } else if (u.kind === "plan") {
      const el = h("ol", { class: "plan" }, (a.entries || []).map((e) => h("li", { class: e.status }, e.content)));
      if (plan) plan.replaceWith(el); else out.push(el);
      plan = el;
    } else if (u.kind === "permission_request") {
      const tool = (a.request && a.request.toolCall) || {};
      out.push(h("div", { class: "card ask" }, "asked permission: ", tool.title || tool.toolCallId || ""));
    } else if (u.kind === "permission") {
      const ans = a.answer || {};
      out.push(h("div", { class: "muted" }, `permission: ${ans.outcome || ""} ${ans.optionId || ""} ${ans.by ? "(" + ans.by + ")" : ""}`));
    } else if (u.kind === "prompt") {
      out.push(h("div", { class: "user" }, a.text || ""));
    } else if (u.kind === "turn_end") {
      out.push(h("div", { class: "muted" }, "turn ended: " + (a.stopReason || "")));
    } else if (u.kind === "note") {
      out.push(h("div", { class: "muted" }, a.text || ""));
    }
  }
  return out;
}

function renderDetail() {
  const d = board.detail;
  if (!d) return;
  const t = board.tasks.get(d.id) || d.task;
  const facts = [
    ["id", t.id], ["engine", t.engine + (t.model ? " / " + t.model : "")],
    ["created", new Date(t.created_at).toLocaleString()],
    t.dependencies && t.dependencies.length ? ["waits for", t.dependencies.map((x) => h("a", { href: "#task/" + x, class: "mono" }, short(x) + " "))] : null,
    t.parent_id ? ["parent", h("a", { href: "#task/" + t.parent_id, class: "mono" }, short(t.parent_id))] : null,
    t.retry_of ? ["retry of", h("a", { href: "#task/" + t.retry_of, class: "mono" }, short(t.retry_of))] : null,
    t.worktree ? ["worktree", `${t.worktree.branch} (${t.worktree.path})`] : null,
    d.goal ? ["goal", goalSummary(d.goal)] : null,
    t.conclusion ? ["conclusion", h("pre", {}, typeof t.conclusion === "string" ? t.conclusion : JSON.stringify(t.conclusion, null, 2))] : null,
    t.exit_code !== null && t.exit_code !== undefined ? ["exit code", t.exit_code] : null,
  ].filter(Boolean);
  const children = [...board.tasks.values()].filter((c) => c.parent_id === t.id);
  const sayBox = h("form", { class: "say", onsubmit: (e) => {
    e.preventDefault();
    const input = e.target.querySelector("input");
    act(t.id, t.status === "paused" ? "resume" : "say", { text: input.value });
    input.value = "";
  } }, h("input", { placeholder: t.status === "paused" ? "Instructions for the resume" : "A follow-up for the agent (say)" }), h("button", { type: "submit" }, t.status === "paused" ? "Resume" : "Say"));
  const permission = t.status === "waiting" && d.permission ? permissionCard(t, d.permission) : null;
  if (t.status === "waiting" && !d.permission && !d.asking) {
    d.asking = true;
    getJson(`/api/tasks/${t.id}`).then((x) => { if (board.detail === d) { d.permission = x.permission; d.asking = false; renderDetail(); } });
  }
  if (t.status !== "waiting") d.permission = null;
  const body = d.updates.length ? transcript(d.updates) : [h("pre", { class: "log" }, d.log || "(no output yet)")];
  const diffButton = t.worktree ? h("button", { type: "button", onclick: async () => {
    const r = await getJson(`/api/tasks/${t.id}/diff`);
    d.diff = r.changes ? r.changes.text : (r.error || "no changes");
    // Past the board's cap the answer holds the first part only: say so.
    d.diffNote = r.changes && r.changes.truncated ? (r.hint || "truncated: `grove diff` shows all the changes") : null;
    renderDetail();
  } }, "Show changes") : null;
  const talks = t.status === "paused" || t.status === "idle" || (!TERMINAL.has(t.status) && d.updates.length > 0);
  document.getElementById("task").replaceChildren(...[
    h("p", {}, h("a", { href: "#tasks" }, "← tasks")),
    h("div", { class: "card" },
      h("h2", {}, statusPill(t), " ", h("span", { class: "mono" }, short(t.id)), " ", progress(t)),
      h("pre", {}, t.prompt),
      h("dl", { class: "facts" }, facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
      children.length ? h("div", {}, "delegated: ", children.map((c) => h("a", { href: "#task/" + c.id, class: "mono" }, `${short(c.id)} (${c.status}) `))) : "",
      h("div", { class: "actions" }, actionButtons(t), diffButton),
      talks ? sayBox : null),
    permission,
    d.diff !== null ? h("div", { class: "card" }, h("h3", {}, "Changes"), d.diffNote ? h("p", { class: "truncated" }, d.diffNote) : null, patchBlock(d.diff)) : null,
    h("div", { class: "card", id: "transcript" }, h("h3", {}, d.updates.length ? "Conversation" : "Log"), body),
  ].filter(Boolean));
}

// ---- the spawn form and filters ---------------------------------------------

function fillEngines(engines, chosen) {
  const sel = document.querySelector("#spawn select[name=engine]");
  if (sel.options.length) return;
  for (const e of engines) sel.append(h("option", { value: e, selected: e === chosen }, e));
}

function setUpForms() {
  const f = document.getElementById("spawn");
  f.addEventListener("submit", async (e) => {
    e.preventDefault();
    const split = (s) => s.split(/[\s,]+/).filter(Boolean);
    const body = {
      prompt: f.prompt.value,
      engine: f.engine.value,
      tags: split(f.tags.value),
      dependencies: split(f.deps.value),
      worktree: f.worktree.checked ? true : undefined,
    };
    try {
      const r = await post("/api/tasks", body);
      toast("spawned " + short(r.ok.task.id));
      f.prompt.value = "";
      f.deps.value = "";
    } catch (err) {
      toast("spawn refused: " + err.message, true);
    }
  });
  const st = document.getElementById("status-filter");
  for (const s of STATUSES) st.append(h("option", { value: s }, s));
  for (const id of ["search", "status-filter", "tag-filter"]) {
    document.getElementById(id).addEventListener("input", () => renderTasks());
  }
}

async function start() {
  setUpForms();
  setUpNotifications();
  window.addEventListener("hashchange", route);
  const seq = await loadState();
  route();
  connect(seq + 1);
}

start().catch((e) => toast("cannot load the board: " + e.message, true));
