//! Bad input and faults at the workspace level: each gets a clear error or
//! a recovery, and the primary keeps serving.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn unknown_task_id_is_a_clear_error() {
    let mut g = Grove::new();
    g.serve();
    g.wait_primary();
    let out = g.run(&["task", "progress", "nosuchtask", "10"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no task nosuchtask"), "{err}");
    let out = g.run(&["task", "show", "nosuchtask"]);
    assert_eq!(out.status.code(), Some(1));
    // Still serving.
    g.task_create("echo still fine");
}

#[test]
fn refused_writes_name_the_reason() {
    let mut g = Grove::new();
    g.serve();
    g.wait_primary();
    let blocker = g.task_create("sleep 60");
    // A running task's run would go on, its slot freed: refused.
    wait_for("the blocker to run", DEADLINE, || {
        (g.db().task(&blocker).ok()??.status == grove::protocol::TaskStatus::Running).then_some(())
    });
    let out = g.run(&["task", "set-status", &blocker, "completed"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("grove cancel"), "{err}");
    let id = g.ok(&["task", "create", "echo x", "--dep", &blocker]);
    let out = g.run(&["task", "set-status", &id, "completed"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("conflict") && err.contains("pending to completed"),
        "{err}"
    );
    // Paused before it started, it has still never run.
    g.ok(&["pause", &id]);
    let out = g.run(&["task", "set-status", &id, "completed"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("never started"), "{err}");
    // Not a final status: an invalid value, a usage error.
    let out = g.run(&["task", "set-status", &id, "running"]);
    assert_eq!(out.status.code(), Some(2));
    g.ok(&["cancel", &blocker]);
    let out = g.run(&["task", "progress", &id, "101"]);
    assert_eq!(out.status.code(), Some(2));
    let out = g.run(&["task", "create", "echo y", "--dep", "doesnotexist"]);
    assert_eq!(out.status.code(), Some(1));
    let out = g.run(&["task", "create", "echo y", "--timeout", "-3"]);
    assert_eq!(out.status.code(), Some(2));
    g.ok(&["task", "delete", &id]);
    assert!(g.db().task(&id).unwrap().is_none());
}

#[test]
fn unwritable_state_dir_is_a_clear_error() {
    if unsafe { libc::geteuid() } == 0 {
        // Root writes through any mode; use a path that cannot be a directory.
        let g = Grove::new();
        std::fs::remove_dir_all(g.ws.join(".grove")).unwrap();
        std::fs::write(g.ws.join(".grove"), b"not a dir").unwrap();
        let out = g.run(&["serve"]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(".grove"), "{err}");
        return;
    }
    let g = Grove::new();
    std::fs::set_permissions(g.ws.join(".grove"), std::fs::Permissions::from_mode(0o500)).unwrap();
    let out = g.run(&["serve"]);
    std::fs::set_permissions(g.ws.join(".grove"), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not writable"), "{err}");
}

#[test]
fn stale_primary_json_with_dead_pid_is_replaced() {
    let mut g = Grove::new();
    // A record left by a primary that died long ago (pid far beyond pid_max).
    std::fs::write(
        g.ws.join(".grove/primary.json"),
        r#"{"instance_id":"ghost","pid":4000000,"epoch":41,"pub":"ipc:///nonexistent/pub","rpc":"ipc:///nonexistent/rpc","started_at":0}"#,
    )
    .unwrap();
    // No member runs: the CLI says so instead of hanging.
    let out = g.run(&["task", "create", "echo nobody"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no grove primary"), "{err}");
    assert!(err.contains("4000000"), "{err}");
    g.serve();
    let (pid, _) = g.wait_primary();
    assert_eq!(pid, g.members[0].pid);
    g.task_create("echo after stale record");
}

#[test]
fn corrupt_primary_json_is_ignored_and_rewritten() {
    let mut g = Grove::new();
    std::fs::write(g.ws.join(".grove/primary.json"), b"{ not json").unwrap();
    g.serve();
    g.wait_primary();
    let text = std::fs::read_to_string(g.ws.join(".grove/primary.json")).unwrap();
    assert!(text.contains("\"epoch\""));
}

/// The directory of the serving primary's sockets, from `status`.
fn socket_dir(g: &Grove) -> std::path::PathBuf {
    let rpc = g.rpc_endpoint();
    std::path::Path::new(rpc.trim_start_matches("ipc://"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn stale_socket_files_are_unlinked_by_the_new_primary() {
    let mut g = Grove::new();
    g.serve();
    let (primary, epoch) = g.wait_primary();
    let sock_dir = socket_dir(&g);
    // Junk a crashed primary could have left, including the next epoch's name.
    std::fs::write(sock_dir.join(format!("rpc-{}.sock", epoch + 1)), b"").unwrap();
    std::fs::write(sock_dir.join("pub-999.sock"), b"").unwrap();
    g.serve();
    g.wait_secondaries_at(1, epoch);
    g.member_by_pid(primary).signal(libc::SIGKILL);
    let (_, new_epoch) = g.wait_new_primary(primary, epoch);
    g.task_create("echo on the new primary");
    assert!(!sock_dir.join("pub-999.sock").exists());
    assert!(!sock_dir.join(format!("rpc-{epoch}.sock")).exists());
    assert!(sock_dir.join(format!("rpc-{new_epoch}.sock")).exists());
    let mode = std::fs::metadata(&sock_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// The promotion binds its sockets while the store commits its epoch,
/// naming them by the epoch recorded outside `.grove` plus one. With that
/// record lost, the store's epoch is higher: the sockets are bound again
/// under the store's epoch, and nothing is left under the guessed one.
#[test]
fn a_lost_epoch_record_still_gives_the_new_primary_its_own_sockets() {
    let mut g = Grove::new();
    g.serve();
    let (primary, _) = g.wait_primary();
    g.run(&["stop"]);
    g.serve();
    let (primary2, epoch) = wait_for("a second epoch", DEADLINE, || {
        let s = g.status();
        let p = s["primary"]["pid"].as_u64()? as u32;
        let e = s["primary"]["epoch"].as_u64()?;
        (p != primary && e >= 2).then_some((p, e))
    });
    let sock_dir = socket_dir(&g);
    g.serve();
    g.wait_secondaries_at(1, epoch);
    std::fs::remove_file(sock_dir.join("epoch")).unwrap();
    g.member_by_pid(primary2).signal(libc::SIGKILL);
    let (_, new_epoch) = g.wait_new_primary(primary2, epoch);
    assert_eq!(
        new_epoch,
        epoch + 1,
        "the store's epoch wins over the lost record"
    );
    g.task_create("echo on the new primary");
    assert!(sock_dir.join(format!("rpc-{new_epoch}.sock")).exists());
    assert!(sock_dir.join(format!("pub-{new_epoch}.sock")).exists());
    assert!(
        !sock_dir.join("rpc-1.sock").exists(),
        "the guessed epoch's socket is gone"
    );
    let mark = std::fs::read_to_string(sock_dir.join("epoch")).unwrap();
    assert_eq!(mark.trim().parse::<u64>().unwrap(), new_epoch);
}

#[test]
fn no_member_running_is_reported_not_hung() {
    let g = Grove::new();
    let out = g.run(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["state"], "down");
    let out = g.run(&["task", "list"]);
    assert_eq!(out.status.code(), Some(3), "no store yet");
}

#[test]
fn invalid_config_names_file_and_line() {
    let g = Grove::with_config("heartbeat_ms = 100\nheartbeat = 5\n");
    let out = g.run(&["engines"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("grove.toml") && err.contains("line 2"),
        "{err}"
    );
    // A command that starts nothing goes on, and says why it can.
    let out = g.run(&["stop"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("line 2") && err.contains("goes on with the defaults"),
        "{err}"
    );
}

#[test]
fn autostart_starts_a_background_member_once() {
    let g = Grove::new();
    let out = std::process::Command::new(BIN)
        .args(["spawn", "echo autostarted", "--wait", "--workspace"])
        .arg(&g.ws)
        .env_remove("GROVE_NO_AUTOSTART")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(g.ws.join(".grove/primary.json")).unwrap()).unwrap();
    let pid = record["pid"].as_i64().unwrap() as i32;
    // Stop the background member whatever happens next.
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            unsafe { libc::kill(self.0, libc::SIGTERM) };
        }
    }
    let _kill = Kill(pid);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err.matches("started `grove serve` in the background")
            .count(),
        1,
        "{err}"
    );
    // The member is up now: no second autostart.
    let again = g.run(&["spawn", "echo again"]);
    assert!(again.status.success());
    assert!(!String::from_utf8_lossy(&again.stderr).contains("background"));
    // --no-autostart (the harness default) reports instead.
    let other = Grove::new();
    let out = other.run(&["spawn", "echo nobody"]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn completions_and_config_show() {
    let g = Grove::with_config(
        "heartbeat_ms = 150\n[engines.mine]\ncommand = [\"sh\", \"-c\", \"{prompt}\"]\n",
    );
    for shell in ["bash", "zsh", "fish"] {
        let out = g.run(&["completions", shell]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("spawn"));
    }
    let shown = g.ok(&["config", "show"]);
    assert!(
        shown.contains("heartbeat_ms = 150    # ") && shown.contains("grove.toml"),
        "{shown}"
    );
    assert!(shown.contains("max_parallel = 4    # default"), "{shown}");
    assert!(
        shown.contains("engines.claude = ") && shown.contains("# built-in"),
        "{shown}"
    );
    assert!(shown.contains("engines.mine = "), "{shown}");
    let json: serde_json::Value =
        serde_json::from_str(&g.ok(&["config", "show", "--json"])).unwrap();
    assert!(
        json["settings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["key"] == "heartbeat_ms")
    );
}

#[test]
fn old_events_and_ledger_entries_are_pruned() {
    let mut g = Grove::with_config("heartbeat_ms = 100\nevent_retention = 20\n");
    g.serve();
    let (pid, epoch) = g.wait_primary();
    let blocker = g.task_create("sleep 60");
    for i in 0..40 {
        g.ok(&["task", "create", &format!("echo {i}"), "--dep", &blocker]);
    }
    let before = g.db().events_from(1, 10_000).unwrap().len();
    assert!(before > 40, "{before}");
    // A new primary prunes before its first commit.
    g.member_by_pid(pid).signal(libc::SIGTERM);
    g.member_by_pid(pid).wait_exit(DEADLINE);
    g.serve();
    g.wait_new_primary(pid, epoch);
    g.ok(&["cancel", &blocker]);
    let after = g.db().events_from(1, 10_000).unwrap();
    assert!(after.len() <= 20 + 45, "{} events kept", after.len());
    assert!(after.first().unwrap().seq > 1, "the oldest events are gone");
    // Subscribers still work from the pruned log.
    let out = g.ok(&["events", "--json"]);
    assert!(out.lines().count() >= 20);
}

#[test]
fn a_deleted_socket_dir_is_rebuilt() {
    let mut g = Grove::new();
    g.serve();
    let (pid, epoch) = g.wait_primary();
    let dir = socket_dir(&g);
    // The primary watches the dir and may rebuild it while `rm -rf` still
    // runs (then the removal fails with "not empty"): either way its socket
    // files went away under it.
    let _ = std::fs::remove_dir_all(&dir);
    // The same process notices, hands over to itself under a new epoch (more
    // than one if the removal also took the files it had just rebuilt).
    let (new_pid, new_epoch) = wait_for("the bus to come back", DEADLINE, || {
        let s = g.status();
        let p = s["primary"]["pid"].as_u64()? as u32;
        let e = s["primary"]["epoch"].as_u64()?;
        (s["state"] == "ok" && e > epoch).then_some((p, e))
    });
    assert_eq!(new_pid, pid);
    assert!(new_epoch > epoch);
    assert!(dir.exists());
    g.task_create("echo after the socket dir came back");
}

/// Unmounts (lazily) when dropped, whatever the test's outcome.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A tmpfs of `size` mounted at `mnt` (created), or `None` (said why)
/// where mounting is not possible: not root, or not allowed here.
fn small_tmpfs(mnt: &std::path::Path, size: &str) -> Option<Unmount> {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return None;
    }
    std::fs::create_dir(mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(mnt)
        .status();
    if !matches!(mounted, Ok(s) if s.success()) {
        eprintln!("skipped: cannot mount a tmpfs here");
        return None;
    }
    Some(Unmount(mnt.to_path_buf()))
}

#[test]
fn a_full_disk_is_a_clear_error_and_nothing_is_lost() {
    let g = Grove::new();
    let mnt = g.dir.path().join("small");
    let Some(_unmount) = small_tmpfs(&mnt, "3m") else {
        return;
    };
    let mut g2 = Grove::with_config("heartbeat_ms = 100\n");
    // Put this grove's workspace on the small filesystem.
    let ws = mnt.join("ws");
    std::fs::create_dir_all(ws.join(".grove")).unwrap();
    std::fs::copy(
        g2.ws.join(".grove/grove.toml"),
        ws.join(".grove/grove.toml"),
    )
    .unwrap();
    g2.ws = ws.clone();
    g2.serve();
    g2.wait_primary();
    let blocker = g2.task_create("sleep 60");
    let big = "x".repeat(100_000);
    let mut acked = Vec::new();
    let mut refusal = String::new();
    for _ in 0..80 {
        let out = g2.run(&["task", "create", &format!("echo {big}"), "--dep", &blocker]);
        if out.status.success() {
            acked.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
        } else {
            refusal = String::from_utf8_lossy(&out.stderr).to_string();
            break;
        }
    }
    assert!(!refusal.is_empty(), "the disk never filled up");
    assert!(refusal.contains("full"), "{refusal}");
    // Still serving reads and pings, and every acknowledged write is there.
    assert_eq!(g2.status()["state"], "ok");
    for id in &acked {
        assert!(
            g2.db().task(id).unwrap().is_some(),
            "acknowledged {id} lost"
        );
    }
    assert_eq!(g2.db().integrity_check().unwrap(), "ok");
    // Room again: writes resume without a restart.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mnt)
        .status();
    assert!(matches!(grown, Ok(s) if s.success()));
    g2.ok(&["cancel", &blocker]);
    g2.task_create("echo room again");
}

/// A disk that fills up while the store is first built leaves no store
/// behind: the member says the disk is full, and once there is room the
/// workspace starts as if nothing happened (a half-copied store was left
/// in place once, which every later start called malformed).
#[test]
fn a_full_disk_while_the_store_is_created_leaves_no_broken_store() {
    let g = Grove::new();
    let mnt = g.dir.path().join("tiny");
    // Room for the workspace's first files, not for a whole store: the
    // size at which the old build left a malformed `grove.db`.
    let Some(_unmount) = small_tmpfs(&mnt, "400k") else {
        return;
    };
    let mut g2 = Grove::new();
    g2.ws = mnt.join("ws");
    std::fs::create_dir_all(&g2.ws).unwrap();
    let m = g2.serve();
    let status = g2.members[m].wait_exit(DEADLINE).expect("the member exits");
    assert!(!status.success());
    let stderr = g2.members[m].stderr();
    assert!(stderr.contains("full"), "{stderr}");
    assert!(
        !g2.ws.join(".grove/grove.db").exists(),
        "a store was left behind"
    );
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mnt)
        .status();
    assert!(matches!(grown, Ok(s) if s.success()));
    g2.serve();
    g2.wait_primary();
    let id = g2.task_create("echo room again");
    assert!(g2.db().task(&id).unwrap().is_some());
    assert_eq!(g2.db().integrity_check().unwrap(), "ok");
}
