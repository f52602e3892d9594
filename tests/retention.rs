//! History is bounded (`event_retention`), so a follower that falls far
//! enough behind finds the events it needed pruned. A `grove wait` must then
//! re-read the tasks from the store instead of trusting a stream with a
//! hole (it used to skip the hole and wait forever for a transition that had
//! already happened).

mod common;

use common::*;
use std::process::{Child, Command, Stdio};

/// Kills the child if the test ends early (it may be stopped, or waiting
/// for ever on a broken build).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_wait_that_fell_behind_the_retention_rereads_the_tasks() {
    let mut g = Grove::with_config("heartbeat_ms = 100\nevent_retention = 20\n");
    g.serve();
    let (p1, e1) = g.wait_primary();
    let gate = g.task_create("sleep 600");
    let task = g.task_create("sleep 600");

    let wait_log = g.dir.path().join("wait.log");
    let mut wait = Reaped(
        Command::new(BIN)
            .args(["wait", &task, "--workspace"])
            .arg(&g.ws)
            .env("GROVE_LOG", "grove=debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&wait_log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("the wait to take its snapshot", DEADLINE, || {
        std::fs::read_to_string(&wait_log)
            .unwrap_or_default()
            .contains("following events after seq")
            .then_some(())
    });
    // Stopped, it misses everything below; it is connected to the first
    // primary only, so nothing of the later ones waits in its socket.
    unsafe { libc::kill(wait.0.id() as i32, libc::SIGSTOP) };

    g.member_by_pid(p1).signal(libc::SIGKILL);
    g.member_by_pid(p1).wait_exit(DEADLINE).expect("p1 exits");
    g.serve();
    let (p2, e2) = g.wait_new_primary(p1, e1);
    g.ok(&["cancel", &task]);
    let cancelled_at: u64 = g.db().last_seq().unwrap();
    for _ in 0..25 {
        g.ok(&["spawn", "true", "--dep", &gate]);
    }
    // A new primary prunes on its first write: the cancel falls out.
    g.member_by_pid(p2).signal(libc::SIGKILL);
    g.member_by_pid(p2).wait_exit(DEADLINE).expect("p2 exits");
    g.serve();
    g.wait_new_primary(p2, e2);
    g.ok(&["spawn", "true", "--dep", &gate]);
    wait_for("the cancel to be pruned", DEADLINE, || {
        let first = g.db().events_from(1, 1).unwrap();
        first
            .first()
            .is_some_and(|e| e.seq > cancelled_at)
            .then_some(())
    });

    unsafe { libc::kill(wait.0.id() as i32, libc::SIGCONT) };
    let status = wait_for("the wait to end", DEADLINE, || wait.0.try_wait().unwrap());
    let mut out = String::new();
    std::io::Read::read_to_string(wait.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    let log = std::fs::read_to_string(&wait_log).unwrap_or_default();
    assert!(
        !status.success(),
        "a cancelled task fails the wait: {out}\n{log}"
    );
    assert!(
        out.contains("cancelled"),
        "the wait saw the cancel: {out}\n{log}"
    );
    assert!(log.contains("were pruned"), "the hole was noticed: {log}");
    g.ok(&["cancel", &gate]);
}
