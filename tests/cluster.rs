//! The multi-instance substrate with real processes: election, writes from
//! every member, gap-free events, failover by SIGKILL, SIGTERM handover,
//! hung-primary detection, the watchdog, and exactly-once retries.

mod common;

use common::*;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Waits until every listed member's events log reaches the store's last seq.
fn wait_members_caught_up(g: &Grove, members: &[usize]) -> u64 {
    let last = g.db().last_seq().unwrap();
    for &i in members {
        let m = &g.members[i];
        wait_for(
            &format!("member {} to see seq {last}", m.pid),
            DEADLINE,
            || m.seqs().last().is_some_and(|s| *s >= last).then_some(()),
        );
    }
    last
}

#[test]
fn one_primary_three_secondaries_writes_from_all_events_seen_by_all() {
    let mut g = Grove::new();
    let first = g.serve();
    let (primary_pid, epoch) = g.wait_primary();
    assert_eq!(primary_pid, g.members[first].pid);
    for _ in 0..3 {
        g.serve();
    }
    g.wait_secondaries_at(3, epoch);

    // Concurrent writers, as from several windows at once. Their tasks wait
    // on a blocker so that they stay open for progress reports.
    let blocker = g.task_create("sleep 60");
    let ws = g.ws.clone();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let ws = ws.clone();
            let blocker = blocker.clone();
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                for i in 0..10 {
                    let out = std::process::Command::new(BIN)
                        .args(["task", "create", &format!("echo writer {w} task {i}")])
                        .args(["--dep", &blocker])
                        .arg("--workspace")
                        .arg(&ws)
                        .output()
                        .unwrap();
                    assert!(out.status.success(), "{out:?}");
                    ids.push(String::from_utf8(out.stdout).unwrap().trim().to_string());
                }
                ids
            })
        })
        .collect();
    let ids: Vec<String> = writers
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 40);

    // Progress on one task from the CLI, visible to every reader.
    g.ok(&["task", "progress", &ids[0], "40", "tests pass"]);
    let shown = g.ok(&["task", "show", &ids[0], "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["progress_pct"], 40);
    assert_eq!(shown["progress_text"], "tests pass");

    let last = wait_members_caught_up(&g, &[0, 1, 2, 3]);
    for m in &g.members {
        let seqs = m.seqs();
        assert_contiguous(&seqs, &format!("member {}", m.pid));
        assert_eq!(*seqs.last().unwrap(), last);
    }
    // Each secondary registered itself with a write of its own.
    let events = g.ok(&["events", "--json"]);
    let joined = events
        .lines()
        .filter(|l| l.contains("instance.joined"))
        .count();
    assert_eq!(joined, 3);
    let listed = g.ok(&["task", "list", "--json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.len(), 41);
}

#[test]
fn kill_nine_loop_promotes_exactly_one_and_loses_nothing() {
    let mut g = Grove::new();
    g.serve();
    let (mut primary, mut epoch) = g.wait_primary();
    for _ in 0..3 {
        g.serve();
    }
    g.wait_secondaries_at(3, epoch);
    let mut acked = Vec::new();
    let kills = 10;
    for round in 0..kills {
        acked.push(g.task_create(&format!("echo before kill {round}")));
        g.member_by_pid(primary).signal(libc::SIGKILL);
        // Keep four members: the replacement joins as a secondary.
        g.serve();
        let (new_primary, new_epoch) = g.wait_new_primary(primary, epoch);
        assert_eq!(new_epoch, epoch + 1, "exactly one promotion per kill");
        primary = new_primary;
        epoch = new_epoch;
        // Every survivor (and the newcomer) can write again.
        g.wait_secondaries_at(3, epoch);
        acked.push(g.task_create(&format!("echo after kill {round}")));
    }
    let db = g.db();
    for id in &acked {
        assert!(
            db.task(id).unwrap().is_some(),
            "acknowledged task {id} lost"
        );
    }
    assert_eq!(db.integrity_check().unwrap(), "ok");
    assert_eq!(db.epoch().unwrap(), 1 + kills);
    let promotions = g
        .ok(&["events", "--json"])
        .lines()
        .filter(|l| l.contains("instance.promoted"))
        .count();
    assert_eq!(promotions as u64, 1 + kills);
    // Survivors saw every event since they joined, gap-free.
    let alive: Vec<usize> = (0..g.members.len())
        .filter(|&i| grove::proc::running(g.members[i].pid))
        .collect();
    assert_eq!(alive.len(), 4);
    wait_members_caught_up(&g, &alive);
    for &i in &alive {
        assert_contiguous(
            &g.members[i].seqs(),
            &format!("member {}", g.members[i].pid),
        );
    }
}

#[test]
fn sigterm_hands_over_at_once() {
    let mut g = Grove::new();
    g.serve();
    let (primary, epoch) = g.wait_primary();
    g.serve();
    g.wait_secondaries_at(1, epoch);
    let before = g.task_create("echo before handover");
    let started = Instant::now();
    g.member_by_pid(primary).signal(libc::SIGTERM);
    let (new_primary, new_epoch) = g.wait_new_primary(primary, epoch);
    assert_eq!(new_epoch, epoch + 1);
    let status = g
        .member_by_pid(primary)
        .wait_exit(DEADLINE)
        .expect("old primary exits");
    assert!(status.success(), "graceful stop exits 0: {status:?}");
    assert_ne!(new_primary, primary);
    let after = g.task_create("echo after handover");
    let db = g.db();
    assert!(db.task(&before).unwrap().is_some());
    assert!(db.task(&after).unwrap().is_some());
    let events = g.ok(&["events", "--json"]);
    assert!(events.contains("instance.shutdown"), "{events}");
    eprintln!("handover observed in {:?}", started.elapsed());
}

#[test]
fn sigstop_is_reported_unresponsive_and_writes_fail_fast() {
    let mut g = Grove::with_config("heartbeat_ms = 100\nprobe_timeout_ms = 300\n");
    g.serve();
    let (primary, epoch) = g.wait_primary();
    let sec = g.serve();
    g.wait_secondaries_at(1, epoch);
    g.member_by_pid(primary).signal(libc::SIGSTOP);

    let started = Instant::now();
    let out = g.run(&["task", "create", "echo while stopped"]);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "exit 3 = unavailable: {stderr}");
    assert!(stderr.contains("unresponsive"), "{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
    assert!(
        took < Duration::from_secs(5),
        "failed fast, not hung: {took:?}"
    );

    let s = g.status();
    assert_eq!(s["state"], "unresponsive", "{s}");
    // The secondary noticed the silence on its own.
    wait_for("secondary to report the silence", DEADLINE, || {
        g.members[sec]
            .stderr()
            .contains("primary unresponsive")
            .then_some(())
    });
    // Nobody took over: the lock is still held, so no split brain.
    assert_eq!(g.status()["primary"]["pid"].as_u64(), Some(primary as u64));

    g.member_by_pid(primary).signal(libc::SIGCONT);
    let (p, e) = g.wait_primary();
    assert_eq!((p, e), (primary, epoch), "a resumed primary keeps its role");
    g.task_create("echo after resume");
}

/// The fault injection the tests below rely on lives behind the
/// `test-hooks` feature; the self dev-dependency in Cargo.toml must turn it
/// on for the test crates *and* for the `grove` binary they run, with no
/// environment variable to set. (A plain `cargo build --release` binary
/// answers `grove debug-stall` with "unrecognized subcommand".)
#[test]
fn the_test_build_has_the_fault_hooks() {
    assert!(
        grove::protocol::TEST_HOOK_METHODS.contains(&"debug.stall"),
        "the library the tests link has no test hooks"
    );
    let mut g = Grove::new();
    g.serve();
    g.wait_primary();
    let out = g.run(&["debug-stall", "1"]);
    assert!(
        out.status.success(),
        "the test binary {BIN} has no working debug-stall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A primary stopped longer than the watchdog's timeout (Ctrl-Z, then
/// `fg`) was not hung: continued, it serves on. Stops begun at different
/// points of the watchdog's nap, since one begun just after the nap did
/// hides in it.
#[test]
fn a_primary_stopped_past_the_watchdog_timeout_and_continued_serves_on() {
    let mut g = Grove::with_config("heartbeat_ms = 100\nwatchdog_timeout_ms = 1000\n");
    g.serve();
    let (primary, _) = g.wait_primary();
    for round in 0..8u64 {
        std::thread::sleep(Duration::from_millis(37 * round % 250));
        let m = g.member_by_pid(primary);
        m.signal(libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(1_300));
        m.signal(libc::SIGCONT);
        // The watchdog's confirmation (200 ms here) is over by the time a
        // write through the primary answers twice.
        g.task_create(&format!("echo round {round}"));
        std::thread::sleep(Duration::from_millis(300));
        g.task_create(&format!("echo after round {round}"));
        let m = g.member_by_pid(primary);
        assert!(
            m.child.try_wait().unwrap().is_none(),
            "round {round}: the primary exited: {}",
            m.stderr()
        );
    }
    assert!(!g.member_by_pid(primary).stderr().contains("watchdog"));
}

#[test]
fn watchdog_aborts_a_hung_primary_and_failover_proceeds() {
    let mut g = Grove::with_config(
        "heartbeat_ms = 100\nprobe_timeout_ms = 300\nwatchdog_timeout_ms = 1000\n",
    );
    g.serve();
    let (primary, epoch) = g.wait_primary();
    g.serve();
    g.wait_secondaries_at(1, epoch);
    // Hang the primary's event loop far longer than the watchdog allows.
    let mut stall = std::process::Command::new(BIN)
        .args(["debug-stall", "60000", "--workspace"])
        .arg(&g.ws)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = g
        .member_by_pid(primary)
        .wait_exit(DEADLINE)
        .expect("watchdog ends the hung primary");
    assert_eq!(status.code(), Some(70), "watchdog exit code");
    assert!(g.member_by_pid(primary).stderr().contains("watchdog"));
    let (_, new_epoch) = g.wait_new_primary(primary, epoch);
    assert_eq!(new_epoch, epoch + 1);
    g.task_create("echo after watchdog");
    let _ = stall.kill();
    let _ = stall.wait();
}

#[test]
fn write_in_flight_during_a_crash_is_applied_exactly_once() {
    let mut g = Grove::new();
    g.serve();
    let (primary, epoch) = g.wait_primary();
    g.serve();
    g.wait_secondaries_at(1, epoch);
    // The primary commits this write and dies before it can answer; the
    // client must retry with the same id on the new primary.
    let id = g.ok(&[
        "task",
        "create",
        grove::test_hooks::CRASH_AFTER_COMMIT_PROMPT,
    ]);
    let (_, new_epoch) = g.wait_new_primary(primary, epoch);
    assert_eq!(new_epoch, epoch + 1);
    let tasks = g.db().tasks(&Default::default()).unwrap();
    assert_eq!(tasks.len(), 1, "applied exactly once");
    assert_eq!(tasks[0].id, id, "the retry got the recorded reply");
}

#[test]
fn explicit_request_id_is_idempotent_across_failover() {
    let mut g = Grove::new();
    g.serve();
    let (primary, epoch) = g.wait_primary();
    g.serve();
    g.wait_secondaries_at(1, epoch);
    let rid = "retry-me-7f3a";
    let first = g.ok(&["task", "create", "echo once", "--request-id", rid]);
    let again = g.ok(&["task", "create", "echo once", "--request-id", rid]);
    assert_eq!(first, again);
    g.member_by_pid(primary).signal(libc::SIGKILL);
    g.wait_new_primary(primary, epoch);
    let after = g.ok(&["task", "create", "echo once", "--request-id", rid]);
    assert_eq!(first, after, "the new primary answers from the ledger");
    assert_eq!(g.db().tasks(&Default::default()).unwrap().len(), 1);
}

/// A waiting secondary keeps the store's WAL index (`grove.db-shm`) mapped,
/// so that after a `kill -9` of the primary its promotion does not rebuild
/// the index from the whole WAL (see docs/design.md, Promotion); and it
/// still promotes, with every write before the crash kept.
#[test]
fn a_waiting_secondary_keeps_the_wal_index_for_its_promotion() {
    let mut g = Grove::new();
    g.serve();
    let (primary, epoch) = g.wait_primary();
    let second = g.serve();
    g.wait_secondaries_at(1, epoch);
    let secondary = g.members[second].pid;
    let maps_shm = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map(|m| m.contains("grove.db-shm"))
            .unwrap_or(false)
    };
    wait_for("the secondary maps the WAL index", DEADLINE, || {
        maps_shm(secondary).then_some(())
    });
    let before = g.task_create("echo before the crash");
    g.member_by_pid(primary).signal(libc::SIGKILL);
    let (new_primary, new_epoch) = g.wait_new_primary(primary, epoch);
    assert_eq!((new_primary, new_epoch), (secondary, epoch + 1));
    assert!(g.db().task(&before).unwrap().is_some());
    let after = g.task_create("echo after the crash");
    assert!(g.db().task(&after).unwrap().is_some());
}

/// A waiting secondary makes its `primary.json` file ahead of time
/// (`.grove/primary.next-PID-INSTANCE`), so that its promotion only writes and
/// renames it (see docs/design.md, Promotion): the promoted member's slot
/// becomes the record, and the slot a `kill -9`ed secondary left behind is
/// removed by the next member that makes its own.
#[test]
fn a_secondary_prepares_its_record_and_dead_members_slots_are_removed() {
    let mut g = Grove::new();
    g.serve();
    let (primary, epoch) = g.wait_primary();
    let doomed = g.serve();
    let heir = g.serve();
    g.wait_secondaries_at(2, epoch);
    let state_dir = g.ws.join(".grove");
    // `.grove/primary.next-PID-INSTANCE`
    let slot_exists = |pid: u32| {
        let prefix = format!("primary.next-{pid}-");
        (std::fs::read_dir(&state_dir).unwrap().flatten())
            .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
    };
    let (doomed_pid, heir_pid) = (g.members[doomed].pid, g.members[heir].pid);
    for pid in [doomed_pid, heir_pid] {
        wait_for("each secondary has its slot", DEADLINE, || {
            slot_exists(pid).then_some(())
        });
    }
    assert!(!slot_exists(primary), "a primary keeps no slot");
    g.member_by_pid(doomed_pid).signal(libc::SIGKILL);
    g.member_by_pid(doomed_pid).wait_exit(DEADLINE);
    assert!(slot_exists(doomed_pid), "a killed member cannot clean up");
    g.member_by_pid(primary).signal(libc::SIGKILL);
    let (new_primary, new_epoch) = g.wait_new_primary(primary, epoch);
    assert_eq!((new_primary, new_epoch), (heir_pid, epoch + 1));
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(g.ws.join(".grove/primary.json")).unwrap())
            .unwrap();
    assert_eq!(record["pid"], heir_pid);
    assert_eq!(record["epoch"], new_epoch);
    assert!(!slot_exists(heir_pid), "the slot became the record");
    // The next member to wait makes its slot, and removes the dead one's
    // first.
    let quitter = g.serve();
    g.wait_secondaries_at(1, new_epoch);
    let quitter_pid = g.members[quitter].pid;
    wait_for("the new secondary has its slot", DEADLINE, || {
        slot_exists(quitter_pid).then_some(())
    });
    assert!(
        !slot_exists(doomed_pid),
        "the dead member's slot is removed"
    );
    // A member that stops on its own removes its slot.
    g.member_by_pid(quitter_pid).signal(libc::SIGTERM);
    g.member_by_pid(quitter_pid).wait_exit(DEADLINE);
    assert!(
        !slot_exists(quitter_pid),
        "a stopped member removes its slot"
    );
}
