//! Idle processes sleep: a member with nothing to do, `grove events
//! --follow` and `grove wait` are woken by heartbeats and real changes only,
//! never by a polling loop (they used to `stat` primary.json every 5 ms,
//! ~200 wakeups a second each).
//!
//! Counted are *voluntary* context switches (a thread went to sleep and was
//! woken again), summed over the process's threads: a count of wakeups, not
//! a timing, and far from the bound either way (about one per heartbeat now,
//! hundreds per second before).

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Heartbeats once a second: the wakeups they cause stay small beside the
/// bound, so that only a poll loop can cross it.
const CONFIG: &str = "heartbeat_ms = 1000\n";
const WINDOW: Duration = Duration::from_secs(3);
/// Per second, per process: heartbeats (1/s) and their echoes stay far
/// below; the old 5 ms polls were ~200.
const MAX_WAKEUPS_PER_S: f64 = 20.0;

fn voluntary_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        panic!("process {pid} is gone");
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .map(|v| v.trim().parse::<u64>().unwrap_or(0))
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Wakeups per second of each process over one window.
fn wakeup_rates(pids: &[(&str, u32)]) -> Vec<(String, f64)> {
    let before: Vec<u64> = pids.iter().map(|(_, p)| voluntary_switches(*p)).collect();
    std::thread::sleep(WINDOW);
    pids.iter()
        .zip(before)
        .map(|((name, p), b)| {
            let n = voluntary_switches(*p).saturating_sub(b);
            (name.to_string(), n as f64 / WINDOW.as_secs_f64())
        })
        .collect()
}

fn assert_asleep(rates: &[(String, f64)]) {
    eprintln!("wakeups/s while idle: {rates:?}");
    for (name, rate) in rates {
        assert!(
            *rate <= MAX_WAKEUPS_PER_S,
            "{name} woke {rate:.1} times/s while idle (at most {MAX_WAKEUPS_PER_S}): it polls; all: {rates:?}"
        );
    }
}

#[test]
fn idle_members_and_followers_sleep_between_heartbeats() {
    let mut g = Grove::with_config(CONFIG);
    g.serve();
    let (primary, epoch) = g.wait_primary();
    let sec = g.serve();
    g.wait_secondaries_at(1, epoch);
    let secondary = g.members[sec].pid;
    // Let start-up work (registration, first catch-up) finish.
    wait_for("a heartbeat seen by the secondary", DEADLINE, || {
        g.members[sec]
            .stderr()
            .contains("following the primary")
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_asleep(&wakeup_rates(&[
        ("the idle primary", primary),
        ("the idle secondary", secondary),
    ]));

    // Followers of a task that runs for long: `events --follow` and `wait`.
    let task = g.task_create("sleep 600");
    let follow_out = g.dir.path().join("follow.out");
    let mut follow = Command::new(BIN)
        .args(["events", "--follow", "--workspace"])
        .arg(&g.ws)
        .stdout(std::fs::File::create(&follow_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut wait = Command::new(BIN)
        .args(["wait", &task, "--workspace"])
        .arg(&g.ws)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // An event after both started shows that the follower is subscribed.
    let marker = g.task_create("true");
    wait_for("events --follow to print the new task", DEADLINE, || {
        std::fs::read_to_string(&follow_out)
            .unwrap_or_default()
            .contains(&marker[..12])
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let rates = wakeup_rates(&[("events --follow", follow.id()), ("grove wait", wait.id())]);
    g.ok(&["cancel", &task]);
    let waited = wait.wait().unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
    assert_asleep(&rates);
    assert!(!waited.success(), "a cancelled task fails the wait");
}
