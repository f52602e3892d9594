// grove's web board: the members view (primary, members, failover history),
// the delegation view (counters, awaits, delegated tasks) and the goals
// view (each goal's status, iteration, progress and last conclusion). Loaded
// before board.js, whose helpers (h, short, ago, getJson, board) these
// functions use when they run.
"use strict";

// A view read from the API again when events say it changed: one read at
// a time, and one more after it if events came meanwhile.
function refresher(read) {
  let running = false, again = false;
  return async function refresh() {
    if (running) { again = true; return; }
    running = true;
    try {
      do { again = false; await read(); } while (again);
    } finally {
      running = false;
    }
  };
}

// ---- members ---------------------------------------------------------------

// What a promotion measured, in words that say what was measured: the
// takeover (lock won → serving, on the new primary's monotonic clock) and
// how long after the old primary's last heartbeat the lock was won. An
// older promotion has only the gap to the event before it, an upper bound.
function takeover(x) {
  if (x.takeover_ms !== null && x.takeover_ms !== undefined) {
    const ms = x.takeover_ms.toFixed(1);
    const parts = [x.after_ms == null ? `serving ${ms} ms after winning the lock` : `took over in ${ms} ms`];
    if (x.lock_after_heartbeat_ms !== null && x.lock_after_heartbeat_ms !== undefined) {
      parts.push(`lock won ${x.lock_after_heartbeat_ms} ms after the last heartbeat of ${short(x.prev_instance_id)}`);
    }
    return h("span", { class: "measured", "data-takeover-ms": x.takeover_ms, title: "measured by the new primary" }, parts.join("; "));
  }
  if (x.lock_won_at) return h("span", { class: "muted", "data-unmeasured": "" }, "lock won; never served");
  if (x.after_ms === null || x.after_ms === undefined) return "";
  return h("span", { class: "muted", "data-unmeasured": "", title: "not measured: the gap to the previous stored event" }, `≤ ${x.after_ms} ms (not measured)`);
}

const refreshMembers = refresher(async () => {
  let m;
  try { m = await getJson("/api/members"); } catch (e) { return; }
  board.promotions = m.promotions;
  // The newest promotion records its takeover once it serves, just after
  // its event: read again on the next event until it is there.
  const newest = m.promotions[0];
  board.membersStale = !!(newest && newest.lock_won_at && newest.takeover_ms == null);
  if (board.view !== "members") return;
  const p = m.primary;
  const rows = m.members.map((x) => h("tr", {},
    h("td", { class: "mono" }, short(x.instance_id)), h("td", {}, x.primary ? "primary" : "secondary"),
    h("td", {}, x.kind), h("td", {}, x.pid), h("td", {}, ago(x.started_at))));
  const promos = m.promotions.map((x) => h("tr", { class: "promotion", "data-epoch": x.epoch },
    h("td", {}, x.epoch), h("td", { class: "mono" }, short(x.instance_id)), h("td", {}, x.pid),
    h("td", {}, new Date(x.lock_won_at || x.at).toLocaleString()),
    h("td", {}, x.handover ? "handover" : (x.after_ms == null ? "first start" : "failover")),
    h("td", {}, takeover(x))));
  document.getElementById("members").replaceChildren(
    h("div", { class: "card" },
      h("h3", {}, "Primary"),
      p ? h("dl", { class: "facts" },
        h("dt", {}, "instance"), h("dd", { class: "mono" }, p.instance_id),
        h("dt", {}, "pid"), h("dd", {}, p.pid),
        h("dt", {}, "epoch"), h("dd", {}, p.epoch),
        h("dt", {}, "since"), h("dd", {}, ago(p.started_at))) : h("p", {}, "none")),
    h("div", { class: "card" }, h("h3", {}, "Members"),
      h("table", {}, h("thead", {}, h("tr", {}, ["instance", "role", "kind", "pid", "started"].map((c) => h("th", {}, c)))), h("tbody", {}, rows))),
    h("div", { class: "card" }, h("h3", {}, "Promotions (failovers and handovers)"),
      h("table", { id: "promotions" }, h("thead", {}, h("tr", {}, ["epoch", "instance", "pid", "lock won", "how", "takeover"].map((c) => h("th", {}, c)))), h("tbody", {}, promos))));
});

function renderMembers() {
  refreshMembers();
}

// ---- delegation -------------------------------------------------------------

const METRICS = [
  ["warm_hits", "warm hits", "a delegated task took a session on a running shared agent"],
  ["warm_attempts", "warm attempts", "delegated tasks of a shared engine that asked for a warm session"],
  ["cold_fallbacks", "cold starts (fallbacks)", "no warm session (cap reached, host gone): an agent of its own"],
  ["cap_rejections", "cap reached", "the host already served warm_cap delegated tasks"],
  ["warm_failures", "warm failures", "the warm path broke: the task failed"],
  ["warm_hit_rate", "hit rate", "warm hits over warm attempts"],
  ["live_injections", "live injections", "an await's results sent into the parent's open session"],
  ["resurrections", "resurrections", "a parent whose session had ended rerun with its children's results"],
];

const refreshDelegation = refresher(async () => {
  let d;
  try { d = await getJson("/api/delegation"); } catch (e) { return; }
  board.delegation = d;
  if (board.view !== "delegation") return;
  const fact = (key, label, value, title) => [
    h("dt", { title }, label),
    h("dd", { "data-metric": key }, value)];
  const counters = METRICS.flatMap(([key, label, title]) => {
    const v = d.counters[key] || 0;
    return fact(key, label, key === "warm_hit_rate" ? `${Math.round(v * 100)}%` : v, title);
  });
  document.getElementById("delegation").replaceChildren(
    h("div", { class: "card" }, h("h3", {}, "Delegation"),
      h("dl", { class: "facts" },
        fact("awaits_pending", "pending awaits", d.awaits_pending, "parents waiting to be resumed with their children's results (grove awaits)"),
        fact("delegated_tasks", "delegated tasks", d.delegated_tasks, "tasks that have a parent"),
        fact("delegated_open", "of them not ended", d.delegated_open, "delegated tasks not completed, failed or cancelled"),
        counters)),
    h("p", { class: "muted" }, "Counters are kept in the store, exact across restarts and failovers; grove stats --json shows the same."));
});

function renderDelegation() {
  refreshDelegation();
}

// ---- goals -----------------------------------------------------------------

// A goal in one line: its status, iteration and progress, what it last
// said (for the goals view and the task page).
function goalSummary(g) {
  const bar = h("div");
  bar.style.width = (g.progress || 0) + "%";
  const said = g.status === "blocked" && g.blocked_reason ? g.blocked_reason : g.response;
  return h("span", { class: "goal", "data-goal": g.id, "data-goal-status": g.status, "data-iteration": g.iteration },
    h("span", { class: "status " + g.status }, g.status), " ",
    `iteration ${g.iteration} of ${g.max_iterations} `,
    h("span", { class: "bar", title: g.progress == null ? "no progress reported yet" : g.progress + "%" }, bar),
    g.progress == null ? "" : ` ${g.progress}%`,
    said ? h("span", { class: "muted" }, " — " + said) : "",
    g.next_step && g.status === "running" ? h("span", { class: "muted" }, " · next: " + g.next_step) : "");
}

const refreshGoals = refresher(async () => {
  let d;
  try { d = await getJson("/api/goals"); } catch (e) { return; }
  if (board.view !== "goals") return;
  const rows = d.goals.map((g) => h("tr", { class: "goal-row", "data-id": g.id, onclick: () => (location.hash = "#task/" + g.id) },
    h("td", { class: "mono" }, short(g.id)),
    h("td", {}, goalSummary(g)),
    h("td", {}, g.objective.split("\n")[0].slice(0, 120)),
    h("td", {}, ago(g.created_at))));
  document.getElementById("goals").replaceChildren(
    h("div", { class: "card" }, h("h3", {}, "Goals"),
      rows.length
        ? h("table", { id: "goal-table" }, h("thead", {}, h("tr", {}, ["goal", "where it stands", "objective", "set"].map((c) => h("th", {}, c)))), h("tbody", {}, rows))
        : h("p", { class: "muted" }, "No goal yet: grove goal OBJECTIVE pursues one over many iterations.")));
});

function renderGoals() {
  refreshGoals();
}
