//! A stopped event subscriber must not grow the primary's memory.
//!
//! `grove events --follow --all` stopped with SIGSTOP, while tasks write
//! output as fast as they can, once grew the primary from 15 MB to 3.3 GB in
//! 40 s: every published message waited in that subscriber's queue. The
//! queue is bounded now (dropped at the bound; subscribers repair gaps from
//! the store) and live output is published in small, capped chunks.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WATCH: Duration = Duration::from_secs(30);
const LIMIT_KIB: u64 = 100 * 1024;

#[test]
fn a_stopped_subscriber_costs_the_primary_bounded_memory() {
    let mut g = Grove::new();
    g.serve();
    let (primary, _) = g.wait_primary();
    let idle_kib = rss_kib(primary);

    let seen = g.dir.path().join("follower.out");
    let mut follower = Command::new(BIN)
        .args(["events", "--follow", "--all", "--workspace"])
        .arg(&g.ws)
        .stdout(std::fs::File::create(&seen).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Subscribed once it printed something (heartbeats come every second).
    wait_for("the follower's first line", DEADLINE, || {
        (std::fs::metadata(&seen).map(|m| m.len()).unwrap_or(0) > 0).then_some(())
    });
    unsafe { libc::kill(follower.id() as i32, libc::SIGSTOP) };

    // About 2 MB/s of output each: far more than the live tail publishes,
    // little enough for a CI disk.
    let noisy = "while :; do head -c 150000 /dev/urandom | base64; sleep 0.1; done";
    let ids: Vec<String> = (0..4).map(|_| g.ok(&["spawn", noisy])).collect();
    for id in &ids {
        wait_for("the task running", DEADLINE, || {
            let t = g.db().task(id).unwrap()?;
            (t.status == grove::protocol::TaskStatus::Running).then_some(())
        });
    }
    let start = Instant::now();
    let mut peak = 0;
    while start.elapsed() < WATCH {
        peak = peak.max(rss_kib(primary));
        assert!(
            peak < LIMIT_KIB,
            "primary RSS {peak} KiB after {:?} (idle {idle_kib} KiB)",
            start.elapsed()
        );
        std::thread::park_timeout(Duration::from_millis(250));
    }
    for id in &ids {
        g.ok(&["cancel", id]);
    }
    let _ = follower.kill();
    let _ = follower.wait();
    // Back near idle once the reader is gone and the tasks stopped.
    let settled = wait_for("the primary back near idle", DEADLINE, || {
        let now = rss_kib(primary);
        (now < idle_kib + 40 * 1024).then_some(now)
    });
    eprintln!("primary RSS: idle {idle_kib} KiB, peak {peak} KiB, after {settled} KiB");
}
