//! ACP engines with `shared = true`: one agent process serves the sessions
//! of several tasks through `grove agent-host`, initialized once. A task's
//! end or cancel ends only its session; the agent stops when no task has
//! used it for `agent_idle_ms`; a primary's `kill -9` interrupts nothing;
//! the agent's death fails every task it served, with a clear reason.
//! Real processes: `grove` members, shims, the host and the scripted
//! agent on the official Python SDK.

mod common;

use common::scripted::{pid_of, said, shared, spawn};
use common::*;

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn two_tasks_share_one_agent_initialized_once_and_a_cancel_ends_only_its_session() {
    let mut g = shared("agent_idle_ms = 1000\n");
    g.serve();
    g.wait_primary();
    let a = spawn(&g, "pid", &["--session"]);
    let b = spawn(&g, "pid", &["--session"]);
    let pid = pid_of(&g, &a);
    assert_eq!(pid_of(&g, &b), pid, "one agent serves both tasks");
    // Each task's shim answered initialize from the host's one.
    g.ok(&["say", &a, "inits"]);
    assert_eq!(said(&g, &a, "inits"), "inits 1");
    // The task says which agent serves it.
    let notes: Vec<String> = updates(&g, &a)
        .into_iter()
        .filter(|(k, _)| k == "note")
        .filter_map(|(_, u)| u["text"].as_str().map(str::to_string))
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains(&format!("shared agent (pid {pid}"))),
        "{notes:?}"
    );
    // Cancel one mid-turn: its session ends, the other's turn completes,
    // the agent lives on and still serves a new task.
    g.ok(&["say", &a, "slow 400"]);
    g.ok(&["say", &b, "slow 30"]);
    said(&g, &a, "c0");
    g.ok(&["cancel", &a]);
    wait_status(&g, &a, "cancelled");
    let expected: String = (0..30).map(|i| format!("c{i} ")).collect();
    wait_for("b's turn whole", DEADLINE, || {
        (said(&g, &b, "c0") == expected).then_some(())
    });
    wait_status(&g, &b, "idle");
    assert!(alive(pid), "the shared agent survives one task's cancel");
    let c = spawn(&g, "pid", &[]);
    assert_eq!(pid_of(&g, &c), pid);
    wait_status(&g, &c, "completed");
    g.ok(&["close", &b]);
    wait_status(&g, &b, "completed");
    assert_eq!(show(&g, &b)["failure_reason"], serde_json::Value::Null);
}

#[test]
fn the_shared_agent_stops_after_its_idle_period() {
    let mut g = shared("agent_idle_ms = 300\n");
    g.serve();
    g.wait_primary();
    let a = spawn(&g, "pid", &[]);
    let pid = pid_of(&g, &a);
    wait_status(&g, &a, "completed");
    wait_for("the idle agent to stop", DEADLINE, || {
        (!alive(pid)).then_some(())
    });
    // The next task starts a new one.
    let b = spawn(&g, "pid", &[]);
    assert_ne!(pid_of(&g, &b), pid);
    wait_status(&g, &b, "completed");
}

#[test]
fn killing_the_primary_while_two_shared_sessions_run_interrupts_neither() {
    let mut g = shared("agent_idle_ms = 1000\n");
    g.serve();
    g.serve();
    let (primary, epoch) = g.wait_primary();
    let a = spawn(&g, "slow 60", &[]);
    let b = spawn(&g, "slow 60", &[]);
    said(&g, &a, "c0");
    said(&g, &b, "c0");
    g.member_by_pid(primary).signal(libc::SIGKILL);
    g.wait_new_primary(primary, epoch);
    let expected: String = (0..60).map(|i| format!("c{i} ")).collect();
    for id in [&a, &b] {
        wait_status(&g, id, "completed");
        let u = updates(&g, id);
        assert_eq!(message_text(&u), expected, "every chunk once, in order");
        assert_eq!(u.iter().filter(|(k, _)| k == "turn_end").count(), 1);
    }
}

#[test]
fn killing_the_shared_agent_fails_every_task_it_served_with_the_reason() {
    let mut g = shared("agent_idle_ms = 1000\n");
    g.serve();
    g.wait_primary();
    let probe = spawn(&g, "pid", &[]);
    let pid = pid_of(&g, &probe);
    let a = spawn(&g, "slow 400", &[]);
    let b = spawn(&g, "slow 400", &[]);
    said(&g, &a, "c0");
    said(&g, &b, "c0");
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    for id in [&a, &b] {
        let t = wait_status(&g, id, "failed");
        assert_eq!(t["failure_reason"], "agent_error", "{t}");
        let why = t["progress_text"].as_str().unwrap_or_default();
        assert!(why.contains(&format!("shared agent (pid {pid})")), "{t}");
    }
    // A new task gets a new agent.
    let c = spawn(&g, "pid", &[]);
    assert_ne!(pid_of(&g, &c), pid);
    wait_status(&g, &c, "completed");
}

/// A shared agent that writes one line that is not ACP and lives on: the
/// host used to wait for it to exit, so every task on it stayed `running`
/// for good and the agent outlived `grove stop`. Now the agent is stopped
/// and every task it served fails with the reason.
#[test]
fn a_shared_agent_writing_what_is_not_acp_fails_every_task_and_is_stopped() {
    let mut g = shared("agent_idle_ms = 60000\n");
    g.serve();
    g.wait_primary();
    let probe = spawn(&g, "pid", &["--session"]);
    let pid = pid_of(&g, &probe);
    let slow = spawn(&g, "slow 400", &[]);
    said(&g, &slow, "c0");
    let garbage = spawn(&g, "garbage", &[]);
    for id in [&slow, &garbage, &probe] {
        let t = wait_status(&g, id, "failed");
        assert_eq!(t["failure_reason"], "agent_error", "{t}");
    }
    wait_for("the shared agent to be stopped", DEADLINE, || {
        (!alive(pid)).then_some(())
    });
}
