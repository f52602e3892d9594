//! The same engine path as tests/acp_engines.rs, against the second,
//! independent scripted agent: `grove-test-acp-agent`
//! (tests/acp_agents/scripted_agent.rs), built on the agent side of the
//! official Rust `agent-client-protocol` crate. What one SDK's agent does
//! and the other's does not cannot hide here.

mod common;

use common::*;
use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_grove-test-acp-agent");

/// A workspace whose engine `rusty` is the Rust scripted agent.
fn rusty(permissions: &str) -> Grove {
    Grove::with_config(&format!(
        "heartbeat_ms = 100\nkill_grace_ms = 2000\n[engines.rusty]\nkind = \"acp\"\n\
         command = [\"{AGENT}\"]\npermissions = \"{permissions}\"\n"
    ))
}

fn started(permissions: &str) -> Grove {
    let mut g = rusty(permissions);
    g.serve();
    g.wait_primary();
    g
}

fn spawn(g: &Grove, prompt: &str) -> String {
    g.ok(&["spawn", prompt, "-e", "rusty"])
}

fn log(g: &Grove, id: &str) -> String {
    std::fs::read_to_string(g.ws.join(format!(".grove/logs/{id}.log"))).unwrap_or_default()
}

fn first(u: &[(String, Value)], kind: &str) -> Value {
    u.iter()
        .find(|(k, _)| k == kind)
        .unwrap_or_else(|| panic!("no {kind} in {u:?}"))
        .1
        .clone()
}

/// Waits until the agent has streamed something of the turn.
fn streaming(g: &Grove, id: &str) {
    wait_for("a first chunk stored", DEADLINE, || {
        (!message_text(&updates(g, id)).is_empty()).then_some(())
    });
}

#[test]
fn a_full_turn_of_the_rust_agent_is_stored_as_updates_and_a_transcript() {
    let g = started("ask");
    let id = spawn(&g, "hello");
    wait_status(&g, &id, "completed");
    let u = updates(&g, &id);
    // The agent is the Rust one, as it introduced itself.
    assert_eq!(
        first(&u, "initialized")["agentInfo"]["name"],
        "rust-scripted-agent"
    );
    let modes = &first(&u, "session")["modes"];
    assert_eq!(modes["currentModeId"], "default", "{modes}");
    let kinds: Vec<&str> = u.iter().map(|(k, _)| k.as_str()).collect();
    for k in ["prompt", "agent_thought_chunk", "agent_message_chunk"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    assert_eq!(message_text(&u), "Hello world");
    assert_eq!(u.last().unwrap().0, "turn_end");
    assert_eq!(u.last().unwrap().1["stopReason"], "end_turn");
    let log = log(&g, &id);
    assert!(log.contains("## prompt\nhello\n"), "{log}");
    assert!(log.contains("## agent\nHello world"), "{log}");
    assert!(log.contains("## thought\ngreeting"), "{log}");
}

#[test]
fn the_rust_agent_s_tool_call_diff_and_plan_arrive_and_the_file_is_written() {
    let g = started("ask");
    std::fs::write(g.ws.join("f.txt"), "old\n").unwrap();
    let id = spawn(&g, "edit f.txt");
    wait_status(&g, &id, "completed");
    let u = updates(&g, &id);
    let call = first(&u, "tool_call");
    assert_eq!(call["kind"], "edit", "{call}");
    assert_eq!(call["title"], "Write f.txt");
    assert!(
        call["locations"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("/f.txt"),
        "{call}"
    );
    let diff = u
        .iter()
        .find(|(k, u)| k == "tool_call_update" && u["content"][0]["type"] == "diff")
        .unwrap_or_else(|| panic!("no diff in {u:?}"))
        .1
        .clone();
    assert_eq!(diff["content"][0]["newText"], "new\n");
    assert_eq!(diff["content"][0]["oldText"], "old\n");
    assert!(
        u.iter()
            .any(|(k, u)| k == "tool_call_update" && u["status"] == "completed"),
        "{u:?}"
    );
    assert_eq!(first(&u, "plan")["entries"][0]["content"], "write the file");
    assert_eq!(message_text(&u), "edited");
    // Written through grove's fs capability, inside the workdir.
    assert_eq!(
        std::fs::read_to_string(g.ws.join("f.txt")).unwrap(),
        "new\n"
    );
    let log = log(&g, &id);
    assert!(
        log.contains("   + new") && log.contains("   - old"),
        "{log}"
    );
}

#[test]
fn the_rust_agent_s_permission_is_approved_from_another_window() {
    let g = started("ask");
    let id = spawn(&g, "permission");
    wait_status(&g, &id, "waiting");
    let req = first(&updates(&g, &id), "permission_request");
    assert_eq!(req["request"]["toolCall"]["toolCallId"], "t2", "{req}");
    assert_eq!(req["request"]["options"][0]["optionId"], "allow", "{req}");
    // `grove approve` is a process of its own: another window than the
    // member whose shim holds the agent.
    g.ok(&["approve", &id]);
    wait_status(&g, &id, "completed");
    let u = updates(&g, &id);
    let answer = first(&u, "permission");
    assert_eq!(answer["answer"]["optionId"], "allow", "{answer}");
    assert_eq!(answer["answer"]["by"], "grove approve");
    assert!(
        u.iter()
            .any(|(k, u)| k == "tool_call_update" && u["status"] == "completed"),
        "{u:?}"
    );
    assert_eq!(message_text(&u), "ran make");
}

#[test]
fn the_rust_agent_s_permission_denied_fails_the_tool_and_the_turn_goes_on() {
    let g = started("ask");
    let id = spawn(&g, "permission");
    wait_status(&g, &id, "waiting");
    g.ok(&["deny", &id]);
    wait_status(&g, &id, "completed");
    let u = updates(&g, &id);
    let answer = first(&u, "permission");
    assert_eq!(answer["answer"]["optionId"], "reject", "{answer}");
    assert_eq!(answer["answer"]["by"], "grove deny");
    assert!(
        u.iter()
            .any(|(k, u)| k == "tool_call_update" && u["status"] == "failed"),
        "{u:?}"
    );
    assert_eq!(message_text(&u), "did not run make");
}

#[test]
fn cancel_ends_the_rust_agent_s_turn_through_the_protocol() {
    let g = started("ask");
    let id = spawn(&g, "slow 600");
    streaming(&g, &id);
    g.ok(&["cancel", &id]);
    wait_status(&g, &id, "cancelled");
    let u = wait_for("the turn's end stored", DEADLINE, || {
        let u = updates(&g, &id);
        u.iter().any(|(k, _)| k == "turn_end").then_some(u)
    });
    // The agent ended the turn itself (session/cancel), long before its
    // 600 chunks: no kill was needed.
    assert_eq!(u.last().unwrap().1["stopReason"], "cancelled");
    assert!(!message_text(&u).contains("c599"));
    assert!(log(&g, &id).contains("## turn ended: cancelled"));
}

#[test]
fn a_follow_up_is_the_next_turn_of_the_rust_agent_s_session() {
    let g = started("ask");
    let id = spawn(&g, "slow 20");
    streaming(&g, &id);
    g.ok(&["say", &id, "hello"]);
    wait_status(&g, &id, "completed");
    let u = updates(&g, &id);
    let slow: String = (0..20).map(|i| format!("c{i} ")).collect();
    assert_eq!(message_text(&u), slow + "Hello world");
    let prompts: Vec<&str> = u
        .iter()
        .filter(|(k, _)| k == "prompt")
        .filter_map(|(_, u)| u["text"].as_str())
        .collect();
    assert_eq!(prompts, ["slow 20", "hello"]);
    // One agent session held across both turns.
    assert_eq!(u.iter().filter(|(k, _)| k == "session").count(), 1);
    assert_eq!(u.iter().filter(|(k, _)| k == "turn_end").count(), 2);
}

#[test]
fn mode_switches_the_rust_agent_s_session_and_a_refused_mode_changes_nothing() {
    let g = started("ask");
    let id = spawn(&g, "slow 30");
    streaming(&g, &id);
    g.ok(&["mode", &id, "nonsense"]);
    g.ok(&["mode", &id, "plan"]);
    wait_status(&g, &id, "completed");
    let u = updates(&g, &id);
    let modes: Vec<&str> = u
        .iter()
        .filter(|(k, _)| k == "current_mode_update")
        .filter_map(|(_, u)| u["currentModeId"].as_str())
        .collect();
    assert_eq!(modes, ["plan"]);
    let log = log(&g, &id);
    assert!(log.contains("the agent refused mode nonsense"), "{log}");
    assert!(log.contains("## mode: plan"), "{log}");
}
