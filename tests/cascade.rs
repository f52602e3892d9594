//! Dependency cascades over graphs a user can make arbitrarily deep or wide,
//! and requests that crash the primary.
//!
//! A chain of 500 dependents once overflowed the store thread's stack while
//! cancelling the root; the client resent the request to every new primary
//! and each died in turn, and no member could start afterwards. These tests
//! build chains and fans of 10,000 (through the library client, which is
//! what the CLI uses, so that building them takes seconds) and drive every
//! path that follows dependents: cancel, relaunch (re-arm), completion,
//! purge, and finalizing a run after a failover. Then the corners of the
//! cascade that the in-process model (`src/store/tests`) found, with the
//! real binary.

mod common;

use common::*;
use grove::protocol::{EventData, FailureReason, Method, NewTask, ReplyBody, TaskStatus};
use std::time::Duration;

const N: usize = 10_000;
/// Generous: a cascade over 10,000 tasks is one transaction, but the CI
/// machines are small and shared.
const LONG: Duration = Duration::from_secs(120);

/// Creates tasks through the library client; `dep_of(i, ids)` names the
/// dependency of the i-th new task.
fn create_many(g: &Grove, n: usize, root: &str, chain: bool) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ws = grove::paths::Workspace::resolve(&g.ws).unwrap();
    let config = grove::config::Config::load(&ws.state_dir).unwrap();
    rt.block_on(async {
        let mut client = grove::client::Client::new(&ws, &config, "cascade-test");
        let mut ids = Vec::with_capacity(n);
        let mut prev = root.to_string();
        for _ in 0..n {
            let dep = if chain {
                prev.clone()
            } else {
                root.to_string()
            };
            let new = NewTask {
                prompt: "true".into(),
                dependencies: vec![dep],
                ..Default::default()
            };
            match client.call(Method::TaskCreate(new)).await.unwrap() {
                ReplyBody::Task(t) => {
                    prev = t.id.clone();
                    ids.push(t.id);
                }
                other => panic!("unexpected reply {other:?}"),
            }
        }
        ids
    })
}

fn count(g: &Grove, status: TaskStatus) -> usize {
    let filter = grove::store::TaskFilter {
        status: Some(status),
        ..Default::default()
    };
    g.db().tasks(&filter).unwrap().len()
}

fn wait_count(g: &Grove, status: TaskStatus, n: usize) {
    wait_for(&format!("{n} tasks {}", status.as_str()), LONG, || {
        (count(g, status) == n).then_some(())
    });
}

#[test]
fn a_chain_of_ten_thousand_cancels_relaunches_and_survives_failover() {
    let mut g = Grove::with_config("max_parallel = 1\n");
    g.serve();
    let (primary, epoch) = g.wait_primary();
    let root = g.ok(&["spawn", "sleep 3000"]);
    let chain = create_many(&g, N, &root, true);
    assert_eq!(count(&g, TaskStatus::Pending), N);

    // Cancel fails the whole chain, in one commit, without recursion.
    g.ok(&["cancel", &root]);
    wait_count(&g, TaskStatus::Failed, N);
    let (p, e) = g.wait_primary();
    assert_eq!((p, e), (primary, epoch), "the primary survived the cascade");

    // Relaunch re-arms every dependent that failed only because of it.
    g.ok(&["relaunch", &root]);
    wait_count(&g, TaskStatus::Pending, N);
    let last = g.db().task(chain.last().unwrap()).unwrap().unwrap();
    assert_eq!(last.status, TaskStatus::Pending);

    // The root's supervisor and the primary die: the next primary finalizes
    // the root (lost) and fails the chain while adopting. Every member that
    // starts afterwards must come up.
    // Read once it runs: right after the relaunch it may not have a run yet.
    wait_for("the root's agent pid", LONG, || {
        g.db().task(&root).unwrap().unwrap().pid
    });
    let run = g.db().task(&root).unwrap().unwrap();
    g.member_by_pid(primary).signal(libc::SIGKILL);
    let run_file = g.ws.join(format!(
        ".grove/run/{root}.{}.run.json",
        run.run_id.clone().unwrap()
    ));
    let rec = read_run_record(&run_file).expect("the root's run record");
    unsafe {
        libc::kill(rec["shim_pid"].as_i64().unwrap() as i32, libc::SIGKILL);
        libc::kill(-(rec["agent_pid"].as_i64().unwrap() as i32), libc::SIGKILL);
    }
    g.serve();
    let (_, new_epoch) = g.wait_new_primary(primary, epoch);
    assert!(new_epoch > epoch);
    wait_count(&g, TaskStatus::Failed, N + 1);
    g.serve();
    g.wait_secondaries_at(1, new_epoch);
    g.task_create("echo still writable");

    // Purging the (failed) root keeps the chain failed; nothing crashes.
    g.ok(&["purge", &root]);
    g.task_create("echo after purge");
}

#[test]
fn a_fan_out_of_ten_thousand_fails_rearms_and_releases() {
    let mut g = Grove::with_config("max_parallel = 1\n");
    g.serve();
    let (primary, epoch) = g.wait_primary();
    let gate = g.ws.join("go");
    let root = g.ok(&[
        "spawn",
        &format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display()),
    ]);
    create_many(&g, N, &root, false);
    g.ok(&["cancel", &root]);
    wait_count(&g, TaskStatus::Failed, N);
    g.ok(&["relaunch", &root]);
    wait_count(&g, TaskStatus::Pending, N);
    // The root completes: every dependent is released at once.
    std::fs::write(&gate, b"").unwrap();
    wait_for("the fan released", LONG, || {
        (count(&g, TaskStatus::Pending) == 0).then_some(())
    });
    assert_eq!(g.wait_primary(), (primary, epoch));
}

#[test]
fn purging_a_completed_dependency_keeps_its_dependents_satisfied() {
    let mut g = Grove::new();
    g.serve();
    g.wait_primary();
    let gate = g.ws.join("go");
    let a = g.ok(&["spawn", "true"]);
    g.ok(&["wait", &a]);
    let blocker = g.ok(&[
        "spawn",
        &format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display()),
    ]);
    let b = g.ok(&["spawn", "echo b", "--dep", &a, "--dep", &blocker]);
    g.ok(&["purge", &a]);
    let t = g.db().task(&b).unwrap().unwrap();
    assert_eq!(
        t.status,
        TaskStatus::Pending,
        "still waiting for the blocker"
    );
    std::fs::write(&gate, b"").unwrap();
    g.ok(&["wait", &b]);
    let t = g.db().task(&b).unwrap().unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    // Relaunching it later still finds its purged dependency satisfied.
    g.ok(&["relaunch", &b]);
    g.ok(&["wait", &b]);
    assert_eq!(
        g.db().task(&b).unwrap().unwrap().status,
        TaskStatus::Completed
    );
    // And so does a retry (it was refused: "unknown dependency").
    let again: serde_json::Value = serde_json::from_str(&g.ok(&["retry", &b, "--json"])).unwrap();
    let again = again["id"].as_str().unwrap();
    g.ok(&["wait", again]);
    let t = g.db().task(again).unwrap().unwrap();
    assert_eq!(t.spec.dependencies, vec![blocker]);
}

#[test]
fn a_relaunch_that_fails_at_once_fails_the_dependents_it_had_released() {
    let mut g = Grove::with_config("max_parallel = 1\n");
    g.serve();
    g.wait_primary();
    let d = g.ok(&["spawn", "true"]);
    g.ok(&["wait", &d]);
    let x = g.ok(&["spawn", "true", "--dep", &d]);
    g.ok(&["wait", &x]);
    // The only slot is taken, so that y stays queued.
    let gate = g.ws.join("go");
    let blocker = g.ok(&[
        "spawn",
        &format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display()),
    ]);
    wait_for("the blocker running", LONG, || {
        (g.db().task(&blocker).unwrap()?.status == TaskStatus::Running).then_some(())
    });
    let y = g.ok(&["spawn", "true", "--dep", &x]);
    assert_eq!(g.db().task(&y).unwrap().unwrap().status, TaskStatus::Queued);
    // x's own dependency runs again and is deleted before it completes:
    // relaunched, x fails at once, and so must y, which still waits.
    g.ok(&["relaunch", &d]);
    g.ok(&["delete", &d]);
    g.ok(&["relaunch", &x]);
    let t = g.db().task(&x).unwrap().unwrap();
    assert_eq!(t.status, TaskStatus::Failed);
    let t = g.db().task(&y).unwrap().unwrap();
    assert_eq!(
        (t.status, t.failure_reason),
        (TaskStatus::Failed, Some(FailureReason::DependencyFailed))
    );
    std::fs::write(&gate, b"").unwrap();
    g.ok(&["wait", &blocker]);
}

#[test]
fn a_relaunch_leaves_alone_a_dependent_that_another_dependency_still_fails() {
    let mut g = Grove::new();
    g.serve();
    g.wait_primary();
    let a = g.ok(&["spawn", "exit 1"]);
    let _ = g.run(&["wait", &a]);
    let b = g.ok(&["spawn", "sleep 60"]);
    g.ok(&["cancel", &b]);
    let c = g.ok(&["spawn", "true", "--dep", &a, "--dep", &b]);
    let before = g.db().task(&c).unwrap().unwrap();
    assert_eq!(before.status, TaskStatus::Failed);
    let seq = g.db().last_seq().unwrap();
    g.ok(&["relaunch", &a]);
    let _ = g.run(&["wait", &a]);
    // c was rewritten and announced again, although nothing changed for it.
    let about_c = g
        .db()
        .events_from(seq + 1, 10_000)
        .unwrap()
        .into_iter()
        .filter(|e| matches!(&e.data, EventData::TaskUpdated { task } if task.id == c))
        .count();
    assert_eq!(about_c, 0);
    assert_eq!(g.db().task(&c).unwrap().unwrap(), before);
}

#[test]
fn a_request_that_crashes_primaries_is_refused_after_two() {
    let mut g = Grove::new();
    for _ in 0..3 {
        g.serve();
    }
    let (_, epoch) = g.wait_primary();
    g.wait_secondaries_at(2, epoch);
    let out = g.run(&[
        "task",
        "create",
        grove::test_hooks::CRASH_DURING_APPLY_PROMPT,
    ]);
    assert!(!out.status.success(), "the poison request is refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("when 2 primaries crashed"), "stderr: {err}");
    // Two members died (a dying member may still be finishing its exit when
    // the next primary answers), the third serves and takes ordinary writes.
    wait_for("two members to have exited", DEADLINE, || {
        let exited = g
            .members
            .iter_mut()
            .filter_map(|m| m.wait_exit(Duration::from_millis(1)))
            .count();
        (exited == 2).then_some(())
    });
    let (_, e) = g.wait_primary();
    assert_eq!(e, epoch + 2);
    g.task_create("echo after the poison");
    assert_eq!(g.db().tasks(&Default::default()).unwrap().len(), 1);
}
