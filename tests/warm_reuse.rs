//! Warm reuse: a delegated task (one spawned from inside a task) of a
//! `shared` ACP engine becomes a new session on the engine's running agent,
//! at most `warm_cap` such sessions at once; past the cap it gets an agent
//! of its own (cold), and any other failure of the warm path fails the task
//! without a cold rerun. Each case is counted in durable rows that
//! `grove stats --json` reports. Real processes: `grove` members, shims,
//! the agent host and the scripted agent on the official Python SDK.

mod common;

use common::scripted::{pid_of, said, shared, spawn};
use common::*;
use serde_json::Value;

/// A running parent task; every task the test spawns afterwards is its
/// child (the CLI reads `GROVE_TASK_ID` as the shim sets it for agents).
fn delegating(g: &mut Grove) -> String {
    let parent = g.ok(&["spawn", "sleep 300"]);
    g.env("GROVE_TASK_ID", &parent);
    parent
}

fn notes(g: &Grove, id: &str) -> Vec<String> {
    updates(g, id)
        .into_iter()
        .filter(|(k, _)| k == "note")
        .filter_map(|(_, u)| u["text"].as_str().map(str::to_string))
        .collect()
}

fn delegation(g: &Grove) -> Value {
    let stats: Value = serde_json::from_str(&g.ok(&["stats", "--json"])).unwrap();
    stats["delegation"].clone()
}

#[test]
fn delegated_tasks_share_one_warm_agent_up_to_the_cap_then_run_cold() {
    let mut g = shared("agent_idle_ms = 20000\nwarm_cap = 2\n");
    g.serve();
    g.wait_primary();
    let parent = delegating(&mut g);
    // The first starts the agent (nothing was warm), the second reuses it:
    // one process, initialized once.
    let a = spawn(&g, "pid", &["--session"]);
    let pid = pid_of(&g, &a);
    let b = spawn(&g, "pid", &["--session"]);
    assert_eq!(
        pid_of(&g, &b),
        pid,
        "the second delegated task reuses the agent"
    );
    assert_eq!(show(&g, &b)["parent_id"], parent.as_str());
    g.ok(&["say", &b, "inits"]);
    assert_eq!(said(&g, &b, "inits"), "inits 1");
    assert!(
        notes(&g, &b).iter().any(|n| n.contains("warm reuse")),
        "{:?}",
        notes(&g, &b)
    );
    // Cancelling one mid-turn ends only its session.
    g.ok(&["say", &a, "slow 400"]);
    g.ok(&["say", &b, "slow 20"]);
    said(&g, &a, "c0");
    g.ok(&["cancel", &a]);
    wait_status(&g, &a, "cancelled");
    let expected: String = (0..20).map(|i| format!("c{i} ")).collect();
    wait_for("b's turn whole", DEADLINE, || {
        (said(&g, &b, "c0") == expected).then_some(())
    });
    wait_status(&g, &b, "idle");
    // b holds one warm place, c takes the other: the cap is reached, so d
    // gets an agent of its own and still completes.
    let c = spawn(&g, "pid", &["--session"]);
    assert_eq!(pid_of(&g, &c), pid);
    let d = spawn(&g, "pid", &[]);
    let cold = pid_of(&g, &d);
    assert_ne!(cold, pid, "past the cap, an agent of its own");
    wait_status(&g, &d, "completed");
    assert!(
        notes(&g, &d).iter().any(|n| n.contains("warm_cap")),
        "{:?}",
        notes(&g, &d)
    );
    for id in [&b, &c] {
        g.ok(&["close", id]);
        wait_status(&g, id, "completed");
    }
    // Counted when each run ended (a cancelled run too).
    let d = wait_for("the counters of four runs", DEADLINE, || {
        let d = delegation(&g);
        (d["warm_attempts"] == 4).then_some(d)
    });
    assert_eq!(d["warm_hits"], 2, "{d}");
    assert_eq!(d["cap_rejections"], 1, "{d}");
    assert_eq!(d["cold_fallbacks"], 1, "{d}");
    assert_eq!(d["warm_failures"], 0, "{d}");
    assert_eq!(d["warm_hit_rate"], 0.5, "{d}");
    assert_eq!(d["resurrections"], 0, "{d}");
    assert_eq!(d["live_injections"], 0, "{d}");
    // A task spawned from outside any task is not delegated: not counted.
    g.unset_env("GROVE_TASK_ID");
    let e = spawn(&g, "pid", &[]);
    wait_status(&g, &e, "completed");
    assert_eq!(delegation(&g)["warm_attempts"], 4);
}

#[test]
fn a_warm_failure_fails_the_task_counted_and_never_reruns_it_cold() {
    let mut g = shared("agent_idle_ms = 20000\n");
    g.serve();
    g.wait_primary();
    delegating(&mut g);
    let probe = spawn(&g, "pid", &[]);
    let pid = pid_of(&g, &probe);
    wait_status(&g, &probe, "completed");
    let a = spawn(&g, "slow 400", &[]);
    said(&g, &a, "c0");
    // The shared agent dies mid-session: the warm path broke.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let t = wait_status(&g, &a, "failed");
    assert_eq!(t["failure_reason"], "agent_error", "{t}");
    let why = t["progress_text"].as_str().unwrap_or_default();
    assert!(why.contains(&format!("shared agent (pid {pid})")), "{t}");
    let d = wait_for("the failure counted", DEADLINE, || {
        let d = delegation(&g);
        (d["warm_failures"] == 1).then_some(d)
    });
    assert_eq!(d["warm_attempts"], 2, "{d}");
    assert_eq!(d["cold_fallbacks"], 0, "{d}");
    // No cold rerun: one prompt, one run, still failed.
    let prompts = updates(&g, &a)
        .iter()
        .filter(|(k, _)| k == "prompt")
        .count();
    assert_eq!(prompts, 1);
    assert_eq!(show(&g, &a)["status"], "failed");
}
