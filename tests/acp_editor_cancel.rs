//! An editor's `session/cancel` in an ACP engine's mode, from one window
//! and from two on one session (`grove acp` relaying the Rust scripted
//! agent, tests/acp_agents/scripted_agent.rs), and what each window is
//! shown: every prompt is answered, a cancelled turn leaves the session
//! idle holding no slot, a queued prompt is withdrawn without touching the
//! turn before it, and no update reaches a window twice.

#[path = "acp/agent.rs"]
#[allow(dead_code)] // the harness is shared with tests/acp.rs
mod agent;
mod common;

use agent::*;
use agent_client_protocol_schema::v1 as schema;
use common::*;
use serde_json::{Value, json};

const AGENT: &str = env!("CARGO_BIN_EXE_grove-test-acp-agent");

/// A served workspace whose engine `scripted` is the Rust scripted agent,
/// with `extra` configuration.
fn workspace(extra: &str) -> Grove {
    let mut g = Grove::with_config(&format!(
        "heartbeat_ms = 100\nkill_grace_ms = 2000\n{extra}\n[engines.scripted]\nkind = \"acp\"\n\
         command = [\"{AGENT}\"]\npermissions = \"allow_all\"\n"
    ));
    g.serve();
    g.wait_primary();
    g
}

/// A window with a new session in the `scripted` mode.
fn window(g: &Grove, name: &str) -> (Agent, schema::SessionId) {
    let mut a = Agent::start(g, name);
    a.initialize();
    let sid = a.new_session(g).session_id;
    let _: schema::SetSessionModeResponse = a.call(
        "session/set_mode",
        json!({"sessionId": sid, "modeId": "scripted"}),
    );
    (a, sid)
}

fn load(a: &mut Agent, g: &Grove, sid: &schema::SessionId) {
    let cwd = std::fs::canonicalize(&g.ws).unwrap();
    let _: schema::LoadSessionResponse = a.call(
        "session/load",
        json!({"cwd": cwd, "sessionId": sid, "mcpServers": []}),
    );
}

fn send_prompt(a: &mut Agent, sid: &schema::SessionId, text: &str) -> i64 {
    a.send_request(
        "session/prompt",
        json!({"sessionId": sid, "prompt": [{"type": "text", "text": text}]}),
    )
}

fn cancel(a: &mut Agent, sid: &schema::SessionId) {
    a.send(json!({"jsonrpc": "2.0", "method": "session/cancel", "params": {"sessionId": sid}}));
}

fn stop_reason(msg: &Value) -> String {
    msg["result"]["stopReason"]
        .as_str()
        .unwrap_or_else(|| panic!("not a prompt's answer: {msg}"))
        .to_string()
}

/// The session's kept agent task.
fn agent_task(g: &Grove, sid: &schema::SessionId) -> Value {
    wait_for("the session's agent task", DEADLINE, || {
        let list: Vec<Value> =
            serde_json::from_str(&g.ok(&["list", "--session", &sid.to_string(), "--json"]))
                .unwrap();
        list.into_iter().find(|t| t["keep_session"] == true)
    })
}

/// Every message chunk the window was shown in `sid`, in order.
fn chunks(a: &Agent, sid: &schema::SessionId) -> Vec<String> {
    a.of(sid)
        .into_iter()
        .filter_map(chunk_text)
        .map(str::to_string)
        .collect()
}

/// A prompt whose task cannot start yet (no slot) is answered `cancelled`
/// at the editor's cancel, and its task does not run later: the prompt
/// used to wait for a turn that never came, and every later prompt in
/// the window was refused as "already running".
#[test]
fn cancelling_a_prompt_that_waits_for_a_slot_answers_it_and_frees_the_session() {
    let g = workspace("max_parallel = 1");
    let blocker = g.ok(&["spawn", "sleep 600"]);
    wait_status(&g, &blocker, "running");
    let (mut a, sid) = window(&g, "acp");
    let id = send_prompt(&mut a, &sid, "hello");
    let task = agent_task(&g, &sid);
    let task = task["id"].as_str().unwrap().to_string();
    assert_eq!(show(&g, &task)["status"], "queued");
    cancel(&mut a, &sid);
    assert_eq!(stop_reason(&a.response(id)), "cancelled");
    wait_status(&g, &task, "cancelled");
    g.ok(&["cancel", &blocker]);
    // The window's session takes the next prompt, in a new agent session.
    let id = send_prompt(&mut a, &sid, "hello");
    assert_eq!(stop_reason(&a.response(id)), "end_turn");
    assert_eq!(chunks(&a, &sid).concat(), "Hello world");
}

/// A cancelled turn leaves the kept session idle, holding no slot: every
/// cancel used to pause the task, which keeps its slot, so after
/// `max_parallel` cancels nothing in the workspace could start.
#[test]
fn a_cancelled_turn_leaves_the_session_idle_and_its_slot_free() {
    let g = workspace("max_parallel = 1");
    let (mut a, sid) = window(&g, "acp");
    let id = send_prompt(&mut a, &sid, "slow 400");
    a.wait_update("the turn streams", |n| chunk_text(&n.update).is_some());
    cancel(&mut a, &sid);
    assert_eq!(stop_reason(&a.response(id)), "cancelled");
    let task = agent_task(&g, &sid)["id"].as_str().unwrap().to_string();
    wait_status(&g, &task, "idle");
    // The one slot is free: a command runs to its end.
    let out = g.ok(&["run", "echo free"]);
    assert_eq!(out.trim(), "free");
    // The same agent session takes the next turn.
    a.updates.clear();
    let id = send_prompt(&mut a, &sid, "hello");
    assert_eq!(stop_reason(&a.response(id)), "end_turn");
    assert_eq!(chunks(&a, &sid).concat(), "Hello world");
    assert_eq!(agent_task(&g, &sid)["id"], task.as_str());
}

/// Window B loads A's session while A's turn runs and queues a prompt
/// behind it: B sees each of A's updates once (a second follower in B sent
/// each twice), B's cancel withdraws B's prompt alone (it used to cancel
/// A's turn and leave B's prompt unanswered), and B's prompt never runs.
#[test]
fn a_second_window_sees_each_update_once_and_its_cancel_withdraws_only_its_prompt() {
    let g = workspace("");
    let (mut a, sid) = window(&g, "a");
    let a_id = send_prompt(&mut a, &sid, "slow 60");
    a.wait_update("A's turn streams", |n| chunk_text(&n.update).is_some());
    let mut b = Agent::start(&g, "b");
    b.initialize();
    load(&mut b, &g, &sid);
    let b_id = send_prompt(&mut b, &sid, "hello");
    b.wait_update("A's turn reaches B", |n| {
        chunk_text(&n.update).is_some_and(|t| t.starts_with("c2"))
    });
    cancel(&mut b, &sid);
    assert_eq!(stop_reason(&b.response(b_id)), "cancelled");
    assert_eq!(
        stop_reason(&a.response(a_id)),
        "end_turn",
        "A's turn was cut"
    );
    assert_eq!(chunks(&a, &sid).len(), 60, "{:?}", chunks(&a, &sid));
    let task = agent_task(&g, &sid)["id"].as_str().unwrap().to_string();
    wait_status(&g, &task, "idle");
    // Everything B was shown, once: no chunk twice, and not B's prompt.
    let shown = chunks(&b, &sid);
    let mut unique = shown.clone();
    unique.dedup();
    assert_eq!(shown, unique, "a chunk shown twice");
    assert!(!shown.concat().contains("Hello"), "{shown:?}");
    let log = std::fs::read_to_string(g.ws.join(format!(".grove/logs/{task}.log"))).unwrap();
    assert!(log.contains("follow-up withdrawn"), "{log}");
    assert!(!log.contains("Hello world"), "{log}");
}

/// A prompt queued behind another queued one (a `grove say` here) waits
/// for its own turn: it took the first turn to begin as its own, and was
/// answered at that turn's end while it still waited.
#[test]
fn a_queued_prompt_is_answered_at_its_own_turn_s_end() {
    let g = workspace("");
    let (mut a, sid) = window(&g, "a");
    let a_id = send_prompt(&mut a, &sid, "slow 30");
    a.wait_update("A's turn streams", |n| chunk_text(&n.update).is_some());
    let task = agent_task(&g, &sid)["id"].as_str().unwrap().to_string();
    g.ok(&["say", &task, "slow 5"]);
    let mut b = Agent::start(&g, "b");
    b.initialize();
    load(&mut b, &g, &sid);
    let b_id = send_prompt(&mut b, &sid, "hello");
    assert_eq!(stop_reason(&a.response(a_id)), "end_turn");
    assert_eq!(stop_reason(&b.response(b_id)), "end_turn");
    let shown = chunks(&b, &sid).concat();
    assert!(
        shown.ends_with("Hello world"),
        "B was answered before its own turn ended: {shown:?}"
    );
}

/// The same window loading its own session while its turn runs (an editor
/// reopening the thread) is shown the rest of the turn once.
#[test]
fn reloading_a_session_mid_turn_shows_the_rest_of_the_turn_once() {
    let g = workspace("");
    let (mut a, sid) = window(&g, "acp");
    let id = send_prompt(&mut a, &sid, "slow 40");
    a.wait_update("the turn streams", |n| chunk_text(&n.update).is_some());
    load(&mut a, &g, &sid);
    a.updates.clear();
    assert_eq!(stop_reason(&a.response(id)), "end_turn");
    let shown = chunks(&a, &sid);
    let mut unique = shown.clone();
    unique.dedup();
    assert_eq!(shown, unique, "a chunk shown twice after the reload");
    assert_eq!(shown.last().map(String::as_str), Some("c39 "), "{shown:?}");
}

/// A request whose id JSON-RPC does not allow (a fraction, an object) is
/// refused with an error, never taken for a notification and left
/// unanswered; a refusal of grove's is not called an outage.
#[test]
fn a_bad_request_id_is_answered_and_a_refusal_is_not_an_outage() {
    let g = workspace("");
    let mut a = Agent::start(&g, "acp");
    a.initialize();
    for id in [json!(1.5), json!({"a": 1}), json!(1e30)] {
        a.send(json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {"protocolVersion": 1}}));
        let msg = a.next();
        assert_eq!(msg["id"], Value::Null, "{msg}");
        assert_eq!(msg["error"]["code"], -32600, "{msg}");
    }
    let (mut a, sid) = window(&g, "acp2");
    let id = send_prompt(&mut a, &sid, &"x".repeat(900_000));
    a.response(id);
    let said = chunks(&a, &sid).concat();
    assert!(said.contains("grove refused it"), "{said}");
    assert!(!said.contains("unavailable"), "{said}");
}
