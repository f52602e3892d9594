//! `grove acp` with real ACP clients:
//! - the official Python client (PyPI `agent-client-protocol`, pydantic
//!   models validate every message): a full turn with streamed chunks and
//!   tool-call updates, cancel mid-prompt, load of a session created by
//!   another `grove acp` process, two agents with a `kill -9` of the primary
//!   one, garbage input (tests/acp/acp_client_test.py);
//! - the official Rust schema crate (`agent-client-protocol-schema`, the
//!   serde types Zed uses): every message deserializes into its official
//!   type (tests/acp/agent.rs), and the regression tests of the front end.

#[path = "acp/agent.rs"]
mod agent;
mod common;

use agent::*;
use agent_client_protocol_schema::v1 as schema;
use common::*;
use schema::{SessionUpdate, ToolCallStatus};
use serde_json::json;
use std::process::Command;

#[test]
fn official_python_client_drives_grove_acp() {
    let python = test_env::python();
    let g = Grove::new();
    let bin_dir = std::path::Path::new(BIN)
        .parent()
        .unwrap()
        .display()
        .to_string();
    let out = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/acp/acp_client_test.py"
        ))
        .arg(BIN)
        .arg(&g.ws)
        .env(
            "PATH",
            format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

/// `grove acp` in front of an ACP engine (the scripted agent), driven by
/// the official Python client: tests/acp/relay_client_test.py.
#[test]
fn official_python_client_talks_to_an_acp_agent_through_grove_acp() {
    let python = test_env::python();
    let g = Grove::scripted_acp("ask", "");
    let out = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/acp/relay_client_test.py"
        ))
        .arg(BIN)
        .arg(&g.ws)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let logs: String = [
        "relay-a.log",
        "relay-b.log",
        "relay-c.log",
        "relay-d.log",
        "relay-e.log",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(g.ws.join("..").join(f)).unwrap_or_default())
    .collect();
    assert!(
        out.status.success() && stdout.contains(" passed, 0 failed"),
        "{stdout}\n{}\n{logs}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_message_fits_the_official_rust_types() {
    let g = Grove::new();
    let mut a = Agent::start(&g, "acp");
    let init = a.initialize();
    assert!(init.agent_capabilities.load_session);
    let sid = a.new_session(&g).session_id;
    let resp = a.prompt(&sid, "echo typed; exit 3");
    assert_eq!(resp.stop_reason, schema::StopReason::EndTurn);
    let kinds: Vec<String> = a
        .of(&sid)
        .iter()
        .map(|u| serde_json::to_value(u).unwrap()["sessionUpdate"].to_string())
        .collect();
    for k in [
        "available_commands_update",
        "tool_call",
        "tool_call_update",
        "agent_message_chunk",
    ] {
        assert!(
            kinds.iter().any(|x| x == &format!("\"{k}\"")),
            "no {k} in {kinds:?}"
        );
    }
    assert!(a.finish().success(), "EOF on stdin is a clean exit");
}

/// A client asking for protocol version 0 (or any version the agent does
/// not speak) gets the latest version the agent supports, not its own
/// number echoed back.
#[test]
fn initialize_answers_the_latest_supported_version() {
    let g = Grove::new();
    let mut a = Agent::start(&g, "acp");
    for asked in [0, 1, 7] {
        let init: schema::InitializeResponse =
            a.call("initialize", json!({"protocolVersion": asked}));
        assert_eq!(
            init.protocol_version,
            agent_client_protocol_schema::ProtocolVersion::V1,
            "asked for {asked}"
        );
    }
}

/// Each session/new is followed by the slash commands for *that* session,
/// however many sessions the agent holds.
#[test]
fn available_commands_go_to_the_session_they_belong_to() {
    let g = Grove::new();
    let mut a = Agent::start(&g, "acp");
    a.initialize();
    let sessions: Vec<schema::SessionId> = (0..6).map(|_| a.new_session(&g).session_id).collect();
    // Any later response comes after the updates sent before it.
    a.initialize();
    for sid in &sessions {
        let adverts = a
            .of(sid)
            .iter()
            .filter(|u| matches!(u, SessionUpdate::AvailableCommandsUpdate(_)))
            .count();
        assert_eq!(adverts, 1, "session {sid} got {adverts} command lists");
    }
}

/// The tool card of a task started by /spawn follows the task after the
/// turn that started it has ended: in progress, then completed or failed.
#[test]
fn a_spawned_task_card_follows_the_task() {
    let g = Grove::new();
    let mut a = Agent::start(&g, "acp");
    a.initialize();
    let sid = a.new_session(&g).session_id;
    let go = g.dir.path().join("go");
    let script = format!(
        "/spawn while [ ! -e {} ]; do sleep 0.05; done; echo released",
        go.display()
    );
    assert_eq!(
        a.prompt(&sid, &script).stop_reason,
        schema::StopReason::EndTurn
    );
    let card = spawned_card(&a, &sid);
    a.wait_update("the spawned card in progress", |n| {
        card_status(&n.update, &card) == Some(ToolCallStatus::InProgress)
    });
    std::fs::write(&go, "").unwrap();
    a.wait_update("the spawned card completed", |n| {
        card_status(&n.update, &card) == Some(ToolCallStatus::Completed)
    });

    a.prompt(&sid, "/spawn exit 3");
    let failing = spawned_card(&a, &sid);
    assert_ne!(failing, card);
    a.wait_update("the failing spawned card failed", |n| {
        card_status(&n.update, &failing) == Some(ToolCallStatus::Failed)
    });
}

/// The id of the last tool card announced in `sid`.
fn spawned_card(a: &Agent, sid: &schema::SessionId) -> schema::ToolCallId {
    a.of(sid)
        .iter()
        .rev()
        .find_map(|u| match u {
            SessionUpdate::ToolCall(t) => Some(t.tool_call_id.clone()),
            _ => None,
        })
        .expect("a tool_call for the spawned task")
}

/// A turn shows its card in progress with (or before) the task's output —
/// the card's content, a code block, not message text — and completed only
/// after the last of it.
#[test]
fn output_comes_while_the_card_is_in_progress() {
    let g = Grove::new();
    let mut a = Agent::start(&g, "acp");
    a.initialize();
    let sid = a.new_session(&g).session_id;
    a.prompt(&sid, "echo first; sleep 0.3; echo second");
    let updates = a.of(&sid);
    let card = spawned_card(&a, &sid);
    let position = |f: &dyn Fn(&SessionUpdate) -> bool| updates.iter().position(|u| f(u));
    let in_progress = position(&|u| card_status(u, &card) == Some(ToolCallStatus::InProgress))
        .expect("the card went in progress");
    let completed = position(&|u| card_status(u, &card) == Some(ToolCallStatus::Completed))
        .expect("the card completed");
    let first_chunk = position(&|u| card_output(u).is_some()).expect("output");
    let last_chunk = updates
        .iter()
        .rposition(|u| card_output(u).is_some())
        .unwrap();
    assert_eq!(
        card_output(updates[last_chunk]).as_deref(),
        Some("first\nsecond")
    );
    assert!(
        updates.iter().all(|u| chunk_text(u).is_none()),
        "a command's output is not the agent's message text"
    );
    assert!(
        in_progress <= first_chunk && last_chunk < completed,
        "in_progress at {in_progress}, output at {first_chunk}..={last_chunk}, completed at {completed}: {updates:?}"
    );
}

/// session/set_mode accepts only the modes session/new offered (engines
/// whose command is installed), and names them when it refuses.
#[test]
fn set_mode_refuses_an_engine_that_is_not_offered() {
    let g = Grove::with_config(
        "heartbeat_ms = 100\n[engines.ghost]\ncommand = [\"/nonexistent/ghost-agent\", \"{prompt}\"]\n",
    );
    let mut a = Agent::start(&g, "acp");
    a.initialize();
    let new = a.new_session(&g);
    let offered: Vec<String> = new
        .modes
        .expect("modes")
        .available_modes
        .iter()
        .map(|m| m.id.to_string())
        .collect();
    assert!(offered.contains(&"shell".to_string()), "{offered:?}");
    assert!(!offered.contains(&"ghost".to_string()), "{offered:?}");
    let sid = new.session_id;
    let err = a.call_err(
        "session/set_mode",
        json!({"sessionId": sid, "modeId": "ghost"}),
    );
    assert_eq!(err.code, schema::ErrorCode::InvalidParams, "{err:?}");
    assert!(
        err.message.contains("ghost") && err.message.contains("shell"),
        "the refusal names the mode and the offered ones: {}",
        err.message
    );
    let _: schema::SetSessionModeResponse = a.call(
        "session/set_mode",
        json!({"sessionId": sid, "modeId": "shell"}),
    );
    a.wait_update("the mode change", |n| {
        matches!(&n.update, SessionUpdate::CurrentModeUpdate(m) if m.current_mode_id.to_string() == "shell")
    });
}

/// An editor that stops reading stdout while a task writes a lot: the
/// agent waits (its queue to stdout is bounded) instead of holding the
/// output in memory, and delivers all of it once the editor reads again.
#[test]
fn an_editor_that_stops_reading_does_not_grow_our_memory() {
    const SIZE: usize = 64 << 20;
    let g = Grove::new();
    let mut a = Agent::start(&g, "acp");
    a.initialize();
    let sid = a.new_session(&g).session_id;
    a.prompt(&sid, "echo ok");
    let before = rss_kib(a.pid());
    let seen = a.updates.len();
    let id = a.send_request(
        "session/prompt",
        json!({"sessionId": sid, "prompt": [{"type": "text",
            "text": format!("head -c {SIZE} /dev/zero | tr '\\0' a")}]}),
    );
    wait_for("the big task to finish", DEADLINE, || {
        let listed = g.ok(&["list", "--session", &sid.to_string(), "--json"]);
        let tasks: serde_json::Value = serde_json::from_str(&listed).ok()?;
        let big = tasks
            .as_array()?
            .iter()
            .find(|t| t["prompt"].as_str().is_some_and(|p| p.starts_with("head")))?;
        (big["status"] == "completed").then_some(())
    });
    // Not a wait for a condition: it only gives an unbounded queue the
    // time to show; a bounded one passes whatever the timing.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let grown_mib = rss_kib(a.pid()).saturating_sub(before) / 1024;
    eprintln!("grove acp grew by {grown_mib} MiB with its stdout unread");
    assert!(
        grown_mib < 24,
        "grove acp grew by {grown_mib} MiB while its stdout was not read"
    );
    let resp = a.response(id);
    assert_eq!(resp["result"]["stopReason"], "end_turn", "{resp}");
    // The card shows the end of the output, bounded, up to its last byte.
    let last = a.updates[seen..]
        .iter()
        .filter(|n| n.session_id == sid)
        .filter_map(|n| card_output(&n.update))
        .next_back()
        .expect("the output is shown");
    assert_eq!(last.len(), 64 * 1024, "the card shows a bounded tail");
    assert!(last.bytes().all(|b| b == b'a'));
}
