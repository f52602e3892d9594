//! Engines of kind `acp`: grove is the ACP client of a real agent process
//! (scripted agents on the official SDKs, in tests/acp_agents/), held by the
//! task's shim.

mod common;

use common::*;
use serde_json::Value;

#[test]
fn engines_show_their_kind_and_a_missing_acp_binary_is_refused() {
    let mut g = Grove::with_config(
        "heartbeat_ms = 100\n[engines.ghost-acp]\nkind = \"acp\"\ncommand = [\"no-such-acp-agent-xyz\"]\n",
    );
    g.serve();
    g.wait_primary();
    let engines: Vec<Value> = serde_json::from_str(&g.ok(&["engines", "--json"])).unwrap();
    let by_name = |n: &str| engines.iter().find(|e| e["name"] == n).unwrap().clone();
    assert_eq!(by_name("claude")["kind"], "cli");
    assert_eq!(by_name("claude-acp")["kind"], "acp");
    assert_eq!(by_name("claude-acp")["command"][0], "claude-agent-acp");
    assert_eq!(by_name("ghost-acp")["available"], false);
    let text = g.ok(&["engines"]);
    let line = text.lines().find(|l| l.starts_with("ghost-acp")).unwrap();
    assert!(line.contains("acp") && line.contains("missing"), "{line}");
    // No fallback to another engine or kind: the task is not created.
    let out = g.run(&["spawn", "hello", "-e", "ghost-acp"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("acp engine 'ghost-acp'") && err.contains("no-such-acp-agent-xyz"),
        "{err}"
    );
    assert!(g.db().tasks(&Default::default()).unwrap().is_empty());
}

fn scripted(permissions: &str) -> Grove {
    Grove::scripted_acp(permissions, "")
}

fn scripted_with(permissions: &str, settings: &str) -> Grove {
    Grove::scripted_acp(permissions, settings)
}

fn log(g: &Grove, id: &str) -> String {
    std::fs::read_to_string(g.ws.join(format!(".grove/logs/{id}.log"))).unwrap_or_default()
}

fn spawn(g: &Grove, prompt: &str) -> String {
    g.ok(&["spawn", prompt, "-e", "scripted"])
}

#[test]
fn a_full_turn_is_stored_as_agent_updates_and_a_transcript() {
    let mut g = scripted("ask");
    g.serve();
    g.wait_primary();
    let id = spawn(&g, "hello");
    wait_status(&g, &id, "completed");
    let u = updates(&g, &id);
    let kinds: Vec<&str> = u.iter().map(|(k, _)| k.as_str()).collect();
    for k in [
        "initialized",
        "session",
        "prompt",
        "agent_thought_chunk",
        "agent_message_chunk",
        "turn_end",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    assert_eq!(message_text(&u), "Hello world");
    // Chunks that arrive while a batch is in flight are merged (how many
    // do depends on timing; the outbox's unit test pins the merging): never
    // more events than chunks.
    assert!(
        kinds
            .iter()
            .filter(|k| **k == "agent_message_chunk")
            .count()
            <= 4,
        "{kinds:?}"
    );
    assert_eq!(u.last().unwrap().1["stopReason"], "end_turn");
    let log = log(&g, &id);
    assert!(log.contains("## prompt\nhello\n"), "{log}");
    assert!(log.contains("## agent\nHello world"), "{log}");
    assert!(log.contains("## thought\ngreeting"), "{log}");
}

/// An agent that wrote no conclusion block concludes with its own last
/// message: not the log's tail, which is grove's transcript (the prompt
/// with the brief, `## ...` headers and notes). A later turn that breaks
/// before the agent says anything concludes failed, saying why, rather
/// than keeping the earlier turn's success.
#[test]
fn a_silent_acp_agent_concludes_with_its_own_message() {
    let mut g = scripted("ask");
    g.serve();
    g.wait_primary();
    let id = g.ok(&["spawn", "hello", "-e", "scripted", "--conclusion"]);
    let done = wait_status(&g, &id, "completed");
    let c = &done["conclusion"];
    assert_eq!(c["source"], "synthesized", "{done}");
    assert_eq!(c["status"], "success", "{done}");
    assert_eq!(c["summary"], "Hello world", "{done}");

    let kept = g.ok(&[
        "spawn",
        "hello",
        "-e",
        "scripted",
        "--conclusion",
        "--session",
    ]);
    wait_status(&g, &kept, "idle");
    g.ok(&["say", &kept, "garbage"]);
    let broken = wait_status(&g, &kept, "failed");
    let c = &broken["conclusion"];
    assert_eq!(c["status"], "failed", "{broken}");
    assert!(
        c["summary"].as_str().unwrap().contains("agent_error"),
        "{broken}"
    );
}

#[test]
fn tool_calls_diffs_and_plans_are_updates_and_the_file_is_written_in_the_workdir() {
    let mut g = scripted("ask");
    g.serve();
    g.wait_primary();
    std::fs::write(g.ws.join("f.txt"), "old\n").unwrap();
    let id = spawn(&g, "edit f.txt");
    wait_status(&g, &id, "completed");
    let u = updates(&g, &id);
    let call = u
        .iter()
        .find(|(k, _)| k == "tool_call")
        .expect("tool_call")
        .1
        .clone();
    assert_eq!(call["kind"], "edit");
    assert_eq!(call["title"], "Write f.txt");
    assert!(
        call["locations"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("/f.txt")
    );
    let diff = u
        .iter()
        .find(|(k, u)| k == "tool_call_update" && u["content"][0]["type"] == "diff")
        .expect("a diff")
        .1
        .clone();
    assert_eq!(diff["content"][0]["newText"], "new\n");
    assert_eq!(diff["content"][0]["oldText"], "old\n");
    assert!(
        u.iter()
            .any(|(k, u)| k == "tool_call_update" && u["status"] == "completed")
    );
    let plan = u.iter().find(|(k, _)| k == "plan").expect("plan").1.clone();
    assert_eq!(plan["entries"][0]["content"], "write the file");
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
fn stop_reasons_and_broken_agents_end_the_task_with_a_reason() {
    let mut g = scripted("ask");
    g.serve();
    g.wait_primary();
    let refused = spawn(&g, "refuse");
    let crashed = spawn(&g, "crash");
    let garbage = spawn(&g, "garbage");
    let t = wait_status(&g, &refused, "failed");
    assert_eq!(t["failure_reason"], "refusal", "{t}");
    let t = wait_status(&g, &crashed, "failed");
    assert_eq!(t["failure_reason"], "agent_error", "{t}");
    assert!(
        t["progress_text"]
            .as_str()
            .unwrap()
            .contains("exited mid-turn"),
        "{t}"
    );
    // What it said before dying is kept.
    assert_eq!(message_text(&updates(&g, &crashed)), "about to crash");
    let t = wait_status(&g, &garbage, "failed");
    assert_eq!(t["failure_reason"], "agent_error", "{t}");
    assert!(
        t["progress_text"]
            .as_str()
            .unwrap()
            .contains("this is not json"),
        "{t}"
    );
}

#[test]
fn file_requests_through_a_symlink_out_of_the_workdir_are_refused() {
    let mut g = scripted("ask");
    g.serve();
    g.wait_primary();
    let secret = g.dir.path().join("secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    let link = g.ws.join("link");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let read = spawn(&g, &format!("read {}", link.display()));
    let write = spawn(&g, &format!("write {}", link.display()));
    wait_status(&g, &read, "completed");
    wait_status(&g, &write, "completed");
    let said = message_text(&updates(&g, &read));
    assert!(
        said.starts_with("read refused") && said.contains("outside the task's workdir"),
        "{said}"
    );
    assert!(!said.contains("top secret"), "{said}");
    let said = message_text(&updates(&g, &write));
    assert!(said.starts_with("write refused"), "{said}");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "top secret");
}

#[test]
fn the_policy_answers_permission_requests() {
    let mut g = scripted("allow_all");
    g.serve();
    g.wait_primary();
    let id = spawn(&g, "permission");
    wait_status(&g, &id, "completed");
    let u = updates(&g, &id);
    assert_eq!(message_text(&u), "ran make");
    let p = u
        .iter()
        .find(|(k, _)| k == "permission")
        .expect("permission")
        .1
        .clone();
    assert_eq!(p["answer"]["optionId"], "allow");
    assert_eq!(p["request"]["toolCall"]["toolCallId"], "t2");
}

#[test]
fn cancel_ends_the_turn_through_the_protocol() {
    let mut g = scripted("ask");
    g.serve();
    g.wait_primary();
    let id = spawn(&g, "slow 600");
    wait_for("a first chunk stored", DEADLINE, || {
        (!message_text(&updates(&g, &id)).is_empty()).then_some(())
    });
    g.ok(&["cancel", &id]);
    wait_status(&g, &id, "cancelled");
    let u = wait_for("the turn's end stored", DEADLINE, || {
        let u = updates(&g, &id);
        u.iter().any(|(k, _)| k == "turn_end").then_some(u)
    });
    assert_eq!(u.last().unwrap().1["stopReason"], "cancelled");
    assert!(log(&g, &id).contains("## turn ended: cancelled"));
}

#[test]
fn killing_the_primary_mid_turn_loses_and_repeats_no_update() {
    let mut g = scripted("ask");
    g.serve();
    g.serve();
    let (primary, epoch) = g.wait_primary();
    let id = spawn(&g, "slow 60");
    wait_for("a first chunk stored", DEADLINE, || {
        (!message_text(&updates(&g, &id)).is_empty()).then_some(())
    });
    g.member_by_pid(primary).signal(libc::SIGKILL);
    g.wait_new_primary(primary, epoch);
    wait_status(&g, &id, "completed");
    let u = updates(&g, &id);
    let expected: String = (0..60).map(|i| format!("c{i} ")).collect();
    assert_eq!(message_text(&u), expected, "every chunk once, in order");
    assert_eq!(u.iter().filter(|(k, _)| k == "turn_end").count(), 1);
    assert_eq!(u.iter().filter(|(k, _)| k == "prompt").count(), 1);
}

/// `grove approve`/`deny` from this process: another window than the
/// member that runs the task.
fn waiting_on_permission(g: &Grove) -> String {
    let id = spawn(g, "permission");
    let t = wait_status(g, &id, "waiting");
    assert_eq!(t["status"], "waiting");
    id
}

#[test]
fn a_permission_request_waits_for_approve_from_another_window_and_keeps_its_slot() {
    let mut g = scripted_with("ask", "max_parallel = 1\n");
    g.serve();
    g.wait_primary();
    let id = waiting_on_permission(&g);
    let u = updates(&g, &id);
    let req = u
        .iter()
        .find(|(k, _)| k == "permission_request")
        .unwrap()
        .1
        .clone();
    assert_eq!(req["request"]["toolCall"]["toolCallId"], "t2");
    // Waiting keeps the slot: the next task does not start meanwhile.
    let next = spawn(&g, "hello");
    assert_eq!(show(&g, &next)["status"], "queued");
    // An option the agent did not offer is refused, naming the offered ones.
    let out = g.run(&["approve", &id, "maybe"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("allow") && err.contains("reject"), "{err}");
    g.ok(&["approve", &id]);
    wait_status(&g, &id, "completed");
    wait_status(&g, &next, "completed");
    let u = updates(&g, &id);
    assert_eq!(message_text(&u), "ran make");
    let answer = u.iter().find(|(k, _)| k == "permission").unwrap().1.clone();
    assert_eq!(answer["answer"]["optionId"], "allow");
    assert_eq!(answer["answer"]["by"], "grove approve");
    // Answered once: a second answer finds nothing pending.
    assert!(!g.run(&["approve", &id]).status.success());
}

/// The `ask` number of task `id`'s latest permission request.
fn latest_ask(g: &Grove, id: &str) -> u64 {
    let u = updates(g, id);
    u.iter()
        .rfind(|(k, _)| k == "permission_request")
        .and_then(|(_, req)| req["ask"].as_u64())
        .unwrap_or(0)
}

/// Waits until task `id` waits on permission request `ask`.
fn wait_asked(g: &Grove, id: &str, ask: u64) {
    wait_for(
        &format!("task {id} to wait on request {ask}"),
        std::time::Duration::from_secs(20),
        || (show(g, id)["status"] == "waiting" && latest_ask(g, id) == ask).then_some(()),
    );
}

/// An answer is for one request: given late (another window answered that
/// request meanwhile and the agent asked the next), it is refused, never
/// taken for the next request the user has not seen.
#[test]
fn a_late_answer_is_refused_rather_than_applied_to_the_next_request() {
    let mut g = scripted("ask");
    g.serve();
    g.wait_primary();
    let id = spawn(&g, "permtwice");
    wait_asked(&g, &id, 1);
    let out = g.run(&["deny", &id]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("permission request 1: Run step 0"), "{said}");
    wait_asked(&g, &id, 2);
    // The editor's answer to request 1, arriving now.
    let out = g.run(&["approve", &id, "--request", "1"]);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("request 1 was answered already") && err.contains("request 2 is pending"),
        "{err}"
    );
    assert_eq!(show(&g, &id)["status"], "waiting", "request 2 still waits");
    g.ok(&["approve", &id, "--request", "2"]);
    wait_status(&g, &id, "completed");
    assert_eq!(message_text(&updates(&g, &id)), "perms reject,allow");
}

/// Requests asked at once are put to the human one at a time, each with its
/// own number; the task used to fail as the second overwrote the first.
#[test]
fn permission_requests_asked_at_once_are_answered_one_by_one() {
    let mut g = scripted("ask");
    g.serve();
    g.wait_primary();
    let id = spawn(&g, "permparallel 3");
    for (ask, verb) in [(1, "approve"), (2, "deny"), (3, "approve")] {
        wait_asked(&g, &id, ask);
        g.ok(&[verb, &id, "--request", &ask.to_string()]);
    }
    let done = wait_status(&g, &id, "completed");
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(message_text(&updates(&g, &id)), "perms allow,reject,allow");
}

/// An agent that offers no option that allows: `grove approve` would have
/// answered `cancelled` and said it approved; it is refused, naming what
/// was offered.
#[test]
fn approve_is_refused_when_the_agent_offers_nothing_that_allows() {
    let mut g = scripted("ask");
    g.serve();
    g.wait_primary();
    let id = spawn(&g, "rejectonly");
    wait_asked(&g, &id, 1);
    let out = g.run(&["approve", &id]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("offered no option that allows") && err.contains("reject"),
        "{err}"
    );
    g.ok(&["deny", &id]);
    wait_status(&g, &id, "completed");
    assert_eq!(message_text(&updates(&g, &id)), "perms reject");
}

/// A follow-up to a session told to close would be accepted and never run
/// (the session ends after its turn): refused.
#[test]
fn a_follow_up_after_close_is_refused() {
    let mut g = scripted("ask");
    g.serve();
    g.wait_primary();
    let id = g.ok(&["spawn", "permission", "-e", "scripted", "--session"]);
    wait_status(&g, &id, "waiting");
    g.ok(&["close", &id]);
    let out = g.run(&["say", &id, "turns"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("session is closing"),
        "{out:?}"
    );
    g.ok(&["approve", &id]);
    wait_status(&g, &id, "completed");
}

#[test]
fn deny_rejects_and_cancel_ends_a_waiting_task() {
    let mut g = scripted("ask");
    g.serve();
    g.wait_primary();
    let denied = waiting_on_permission(&g);
    g.ok(&["deny", &denied]);
    wait_status(&g, &denied, "completed");
    assert_eq!(message_text(&updates(&g, &denied)), "did not run make");
    let cancelled = waiting_on_permission(&g);
    g.ok(&["cancel", &cancelled]);
    wait_status(&g, &cancelled, "cancelled");
    let u = wait_for("the turn's end stored", DEADLINE, || {
        let u = updates(&g, &cancelled);
        u.iter().any(|(k, _)| k == "turn_end").then_some(u)
    });
    let answer = u.iter().find(|(k, _)| k == "permission").unwrap().1.clone();
    assert_eq!(answer["answer"]["outcome"], "cancelled", "{answer}");
}

#[test]
fn a_pending_permission_request_survives_the_primary_s_kill_9() {
    let mut g = scripted("ask");
    g.serve();
    g.serve();
    let (primary, epoch) = g.wait_primary();
    let id = waiting_on_permission(&g);
    g.member_by_pid(primary).signal(libc::SIGKILL);
    g.wait_new_primary(primary, epoch);
    assert_eq!(show(&g, &id)["status"], "waiting");
    g.ok(&["approve", &id, "allow"]);
    wait_status(&g, &id, "completed");
    let u = updates(&g, &id);
    let kinds: Vec<&str> = u.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "permission_request").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "permission").count(),
        1,
        "{kinds:?}"
    );
    let at = |k: &str| kinds.iter().position(|x| *x == k).unwrap();
    assert!(at("prompt") < at("permission_request"));
    assert!(at("permission_request") < at("permission"));
    assert!(at("permission") < at("turn_end"));
    assert_eq!(message_text(&u), "ran make");
}

#[test]
fn a_follow_up_said_during_a_turn_is_the_next_turn_of_the_same_session() {
    let mut g = scripted("ask");
    g.serve();
    g.wait_primary();
    let id = spawn(&g, "slow 20");
    wait_for("a first chunk stored", DEADLINE, || {
        (!message_text(&updates(&g, &id)).is_empty()).then_some(())
    });
    g.ok(&["say", &id, "hello"]);
    wait_status(&g, &id, "completed");
    let u = updates(&g, &id);
    let first: String = (0..20).map(|i| format!("c{i} ")).collect();
    assert_eq!(message_text(&u), first + "Hello world");
    let prompts: Vec<&str> = u
        .iter()
        .filter(|(k, _)| k == "prompt")
        .filter_map(|(_, u)| u["text"].as_str())
        .collect();
    assert_eq!(prompts, ["slow 20", "hello"]);
    // One session: the agent's session/new answered once.
    assert_eq!(u.iter().filter(|(k, _)| k == "session").count(), 1);
    // The turn has ended: nothing to follow up any more.
    let out = g.run(&["say", &id, "more"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("completed"));
}

#[test]
fn mode_switches_the_agent_session_during_a_turn() {
    let mut g = scripted("ask");
    g.serve();
    g.wait_primary();
    let id = spawn(&g, "slow 30");
    wait_for("a first chunk stored", DEADLINE, || {
        (!message_text(&updates(&g, &id)).is_empty()).then_some(())
    });
    g.ok(&["mode", &id, "nonsense"]);
    g.ok(&["mode", &id, "plan"]);
    wait_status(&g, &id, "completed");
    let u = updates(&g, &id);
    let modes: Vec<&str> = u
        .iter()
        .filter(|(k, _)| k == "current_mode_update")
        .filter_map(|(_, u)| u["currentModeId"].as_str())
        .collect();
    assert_eq!(modes, ["plan"], "the refused mode changes nothing");
    let log = log(&g, &id);
    assert!(log.contains("the agent refused mode nonsense"), "{log}");
    assert!(log.contains("## mode: plan"), "{log}");
}
