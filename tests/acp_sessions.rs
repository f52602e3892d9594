//! ACP sessions that grove holds beyond one turn, and how a task steers
//! its agent: kept sessions (`--session`, idle, `grove close`, the idle
//! timeout), pause and resume through the protocol, a task's own
//! permission policy and the permission timeout, models chosen through the
//! session's model option, the configured MCP servers. Real processes:
//! `grove` members and the scripted agent on the official Python SDK.

mod common;

use common::*;
use serde_json::Value;

fn log(g: &Grove, id: &str) -> String {
    std::fs::read_to_string(g.ws.join(format!(".grove/logs/{id}.log"))).unwrap_or_default()
}

fn kinds(u: &[(String, Value)]) -> Vec<&str> {
    u.iter().map(|(k, _)| k.as_str()).collect()
}

fn last_message(g: &Grove, id: &str) -> String {
    let u = updates(g, id);
    let last_prompt = u.iter().rposition(|(k, _)| k == "prompt").unwrap_or(0);
    message_text(&u[last_prompt..])
}

#[test]
fn a_kept_session_goes_idle_between_turns_holds_no_slot_and_closes() {
    let mut g = Grove::scripted_acp("ask", "max_parallel = 1\n");
    g.serve();
    g.wait_primary();
    // --wait returns when the first turn ends: the task is idle.
    let out = g.run(&["spawn", "hello", "-e", "scripted", "--session", "--wait"]);
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8_lossy(&out.stderr)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(show(&g, &id)["status"], "idle");
    assert_eq!(show(&g, &id)["keep_session"], true);
    // Idle holds no slot: with max_parallel 1 another task runs meanwhile.
    let other = g.ok(&["spawn", "hello", "-e", "scripted"]);
    wait_status(&g, &other, "completed");
    // A follow-up is the next turn of the same session, at once.
    g.ok(&["say", &id, "turns"]);
    wait_for("the second turn answered", DEADLINE, || {
        (last_message(&g, &id) == "turns 2").then_some(())
    });
    wait_status(&g, &id, "idle");
    g.ok(&["close", &id]);
    wait_status(&g, &id, "completed");
    let u = updates(&g, &id);
    let k = kinds(&u);
    assert_eq!(k.iter().filter(|k| **k == "session").count(), 1, "{k:?}");
    assert_eq!(k.iter().filter(|k| **k == "idle").count(), 2, "{k:?}");
    // Closed: no more follow-ups, and a second close is refused.
    let out = g.run(&["say", &id, "more"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(!g.run(&["close", &id]).status.success());
    // A task that does not keep its session cannot be closed.
    let one = g.ok(&["spawn", "slow 100", "-e", "scripted"]);
    let out = g.run(&["close", &one]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--session"),
        "{out:?}"
    );
    g.ok(&["cancel", &one]);
}

#[test]
fn an_idle_session_is_closed_at_its_idle_timeout() {
    let mut g = Grove::scripted_acp("ask", "idle_timeout_ms = 300\n");
    g.serve();
    g.wait_primary();
    let id = g.ok(&["spawn", "hello", "-e", "scripted", "--session"]);
    wait_status(&g, &id, "completed");
    assert!(log(&g, &id).contains("idle_timeout_ms"), "{}", log(&g, &id));
    assert_eq!(message_text(&updates(&g, &id)), "Hello world");
}

#[test]
fn an_idle_session_survives_the_primary_s_kill_9_and_takes_the_next_follow_up() {
    let mut g = Grove::scripted_acp("ask", "");
    g.serve();
    g.serve();
    let (primary, epoch) = g.wait_primary();
    let id = g.ok(&["spawn", "hello", "-e", "scripted", "--session"]);
    wait_status(&g, &id, "idle");
    g.member_by_pid(primary).signal(libc::SIGKILL);
    g.wait_new_primary(primary, epoch);
    assert_eq!(show(&g, &id)["status"], "idle");
    // The new primary wakes the adopted shim for the control.
    g.ok(&["say", &id, "turns"]);
    wait_for("the follow-up answered", DEADLINE, || {
        (last_message(&g, &id) == "turns 2").then_some(())
    });
    wait_status(&g, &id, "idle");
    g.ok(&["close", &id]);
    wait_status(&g, &id, "completed");
}

#[test]
fn pause_cancels_the_turn_keeps_the_session_and_resume_continues_it() {
    let mut g = Grove::scripted_acp("ask", "");
    g.serve();
    g.wait_primary();
    let id = g.ok(&["spawn", "slow 400", "-e", "scripted"]);
    wait_for("a first chunk stored", DEADLINE, || {
        (!message_text(&updates(&g, &id)).is_empty()).then_some(())
    });
    g.ok(&["pause", &id]);
    wait_status(&g, &id, "paused");
    wait_for("the turn cancelled in the transcript", DEADLINE, || {
        log(&g, &id)
            .contains("paused: the turn is cancelled")
            .then_some(())
    });
    let agent = show(&g, &id)["pid"].clone();
    g.ok(&["resume", &id]);
    wait_status(&g, &id, "completed");
    assert_eq!(last_message(&g, &id), "continued");
    // Paused again mid-turn, resumed with instructions: they are the turn.
    let second = g.ok(&["spawn", "slow 400", "-e", "scripted", "--session"]);
    wait_for("a first chunk stored", DEADLINE, || {
        (!message_text(&updates(&g, &second)).is_empty()).then_some(())
    });
    g.ok(&["pause", &second]);
    wait_status(&g, &second, "paused");
    g.ok(&["resume", &second, "--instructions", "turns"]);
    wait_for("the instructions answered", DEADLINE, || {
        (last_message(&g, &second) == "turns 2").then_some(())
    });
    wait_status(&g, &second, "idle");
    let u = updates(&g, &id);
    assert_eq!(kinds(&u).iter().filter(|k| **k == "session").count(), 1);
    assert_eq!(show(&g, &id)["pid"], agent, "the same agent process");
    g.ok(&["close", &second]);
    wait_status(&g, &second, "completed");
}

#[test]
fn a_task_s_own_policy_overrides_its_engine_s() {
    let mut g = Grove::scripted_acp("ask", "");
    g.serve();
    g.wait_primary();
    let yolo = g.ok(&["spawn", "permission", "-e", "scripted", "--yolo"]);
    wait_status(&g, &yolo, "completed");
    assert_eq!(message_text(&updates(&g, &yolo)), "ran make");
    assert_eq!(show(&g, &yolo)["permissions"], "allow_all");
    let reads = g.ok(&[
        "spawn",
        "permission",
        "-e",
        "scripted",
        "--permissions",
        "allow_reads",
    ]);
    // An `execute` tool is not a read: it waits for a human.
    wait_status(&g, &reads, "waiting");
    g.ok(&["cancel", &reads]);
    // Those flags are for ACP engines only.
    let out = g.run(&["spawn", "true", "-e", "shell", "--session"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("acp engines"),
        "{out:?}"
    );
    let out = g.run(&["spawn", "x", "-e", "scripted", "--permissions", "sometimes"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn an_unanswered_permission_request_is_denied_at_the_permission_timeout() {
    let mut g = Grove::scripted_acp("ask", "permission_timeout_ms = 300\n");
    g.serve();
    g.wait_primary();
    let id = g.ok(&["spawn", "permission", "-e", "scripted"]);
    wait_status(&g, &id, "completed");
    let u = updates(&g, &id);
    assert_eq!(message_text(&u), "did not run make");
    let answer = u.iter().find(|(k, _)| k == "permission").unwrap().1.clone();
    assert_eq!(answer["answer"]["optionId"], "reject", "{answer}");
    assert!(
        answer["answer"]["by"]
            .as_str()
            .unwrap()
            .contains("permission_timeout_ms"),
        "{answer}"
    );
}

#[test]
fn a_model_is_chosen_through_the_session_s_model_option_after_its_alias() {
    let mut g = Grove::scripted_acp("ask", "[models]\nbig = \"Smart One\"\n");
    g.serve();
    g.wait_primary();
    let id = g.ok(&["spawn", "model", "-e", "scripted", "-m", "big"]);
    wait_status(&g, &id, "completed");
    assert_eq!(message_text(&updates(&g, &id)), "model smart");
    let id = g.ok(&["spawn", "model", "-e", "scripted", "-m", "fast"]);
    wait_status(&g, &id, "completed");
    assert_eq!(message_text(&updates(&g, &id)), "model fast");
    // A model the agent does not offer fails the task, naming what it offers.
    let id = g.ok(&["spawn", "model", "-e", "scripted", "-m", "huge"]);
    let t = wait_status(&g, &id, "failed");
    assert_eq!(t["failure_reason"], "agent_error");
    let log = log(&g, &id);
    assert!(
        log.contains("no model 'huge'") && log.contains("fast, smart"),
        "{log}"
    );
}

#[test]
fn mcp_inject_false_keeps_grove_s_own_server_out() {
    let settings = "mcp_inject = false\n[mcp_servers.files]\ncommand = [\"/bin/true\"]\n";
    let mut g = Grove::scripted_acp("ask", settings);
    g.serve();
    g.wait_primary();
    let id = g.ok(&["spawn", "mcp", "-e", "scripted"]);
    wait_status(&g, &id, "completed");
    assert_eq!(message_text(&updates(&g, &id)), "mcp files");
}

#[test]
fn configured_mcp_servers_reach_the_agent_s_session() {
    let settings = "[mcp_servers.files]\ncommand = [\"/bin/true\", \"--stdio\"]\n\
                    [mcp_servers.web]\nurl = \"http://127.0.0.1:9/mcp\"\n";
    let mut g = Grove::scripted_acp("ask", settings);
    g.serve();
    g.wait_primary();
    let id = g.ok(&["spawn", "mcp", "-e", "scripted"]);
    wait_status(&g, &id, "completed");
    let u = updates(&g, &id);
    // grove's own server comes first (delegation), then the configured.
    assert_eq!(message_text(&u), "mcp grove,files");
    // The agent takes no HTTP servers: said, not silently dropped.
    let notes: Vec<&str> = u
        .iter()
        .filter(|(k, _)| k == "note")
        .filter_map(|(_, v)| v["text"].as_str())
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("web") && n.contains("HTTP")),
        "{notes:?}"
    );
    // A server with neither a command nor a url is a config error.
    std::fs::write(
        g.ws.join(".grove/grove.toml"),
        "[mcp_servers.broken]\nenv = { A = \"1\" }\n",
    )
    .unwrap();
    let out = g.run(&["config", "show"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("mcp_servers.broken needs either"),
        "{out:?}"
    );
}
