//! The workspace's state and configuration under change: `.grove` deleted
//! under running members, an emptied store, `grove.toml` edited while
//! members run, user and workspace engines together.

mod common;

use common::*;

/// Files of the store that `pid` holds open although they were unlinked.
fn unlinked_store_fds(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.display().to_string())
        .filter(|l| l.contains("grove.db") && l.ends_with("(deleted)"))
        .collect()
}

/// `rm -rf .grove`, retried: a member may create a file in it while it
/// is being removed.
fn remove_state_dir(g: &Grove) {
    let dir = g.ws.join(".grove");
    wait_for(
        "the state dir to be removed",
        DEADLINE,
        || match std::fs::remove_dir_all(&dir) {
            Ok(()) => Some(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(()),
            Err(_) => None,
        },
    );
}

/// `.grove` deleted while a primary and a secondary run: both notice, the
/// workspace gets a primary again at an epoch above every earlier one, no
/// member keeps the unlinked store open, writes land in the new store, and
/// a member started later still never reuses an epoch.
#[test]
fn deleting_the_state_dir_under_running_members() {
    let mut g = Grove::new();
    g.serve();
    let (_, e0) = g.wait_primary();
    g.serve();
    g.wait_secondaries_at(1, e0);
    let before = g.ok(&["spawn", "echo before"]);
    g.ok(&["wait", &before]);
    let toml = std::fs::read_to_string(g.ws.join(".grove/grove.toml")).unwrap();

    remove_state_dir(&g);

    let e1 = wait_for("a primary on the new state dir", DEADLINE, || {
        let s = g.status();
        let e = s["primary"]["epoch"].as_u64()?;
        (s["state"] == "ok" && e > e0).then_some(e)
    });
    g.wait_secondaries_at(1, e1);
    for m in &g.members {
        wait_for("the unlinked store to be closed", DEADLINE, || {
            unlinked_store_fds(m.pid).is_empty().then_some(())
        });
    }
    let after = g.task_create("echo after");
    let db = g.db();
    assert!(db.task(&after).unwrap().is_some());
    assert!(
        db.task(&before).unwrap().is_none(),
        "the new store is a new one"
    );

    // Every member stops; `.grove` goes again; a new member still starts
    // above every epoch this workspace had.
    for m in &mut g.members {
        m.signal(libc::SIGTERM);
        assert!(m.wait_exit(DEADLINE).is_some(), "a member did not stop");
    }
    remove_state_dir(&g);
    std::fs::create_dir(g.ws.join(".grove")).unwrap();
    std::fs::write(g.ws.join(".grove/grove.toml"), toml).unwrap();
    g.serve();
    let (_, e2) = g.wait_primary();
    assert!(e2 > e1, "epoch {e2} repeats (earlier: {e0}, {e1})");
}

/// A store written by a newer grove is refused by name, saying what to do
/// (it was reported as "Invalid parameter name"), and left untouched.
#[test]
fn a_store_from_a_newer_grove_is_refused_by_name() {
    let mut g = Grove::new();
    g.serve();
    let (pid, _) = g.wait_primary();
    g.member_by_pid(pid).signal(libc::SIGTERM);
    g.member_by_pid(pid).wait_exit(DEADLINE).expect("stopped");
    let db = g.ws.join(".grove/grove.db");
    let newer = grove::store::schema::SCHEMA_VERSION + 1;
    rusqlite::Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", newer)
        .unwrap();

    let i = g.serve();
    let status = g.members[i].wait_exit(DEADLINE);
    let err = g.members[i].stderr();
    assert_ne!(
        status.and_then(|s| s.code()),
        Some(0),
        "a member served a newer store: {err}"
    );
    assert!(
        err.contains(&format!(
            "the store has schema version {newer}, newer than this grove"
        )) && err.contains("upgrade grove")
            && !err.contains("Invalid parameter name"),
        "{err}"
    );
    let version: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, newer, "left as it was");
}

/// A truncated `grove.db` is refused (exit 2, with what to do), by a member
/// and by a reading command; moving it aside as told starts a new store at
/// a higher epoch. An empty store in a workspace that never ran is fine.
#[test]
fn an_emptied_store_is_refused() {
    let mut g = Grove::new();
    g.serve();
    let (pid, e0) = g.wait_primary();
    g.task_create("echo a task to lose");
    g.member_by_pid(pid).signal(libc::SIGTERM);
    g.member_by_pid(pid).wait_exit(DEADLINE).expect("stopped");
    let db = g.ws.join(".grove/grove.db");
    std::fs::File::create(&db).unwrap(); // truncates to 0 bytes

    let i = g.serve();
    let status = g.members[i].wait_exit(DEADLINE);
    let err = g.members[i].stderr();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(2),
        "a member accepted the emptied store: {err}"
    );
    assert!(
        err.contains(&format!("the store {} is empty", db.display()))
            && err.contains("mv ")
            && err.contains("backup"),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "left as it was");
    let out = g.run(&["list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is empty"), "{err}");

    std::fs::rename(&db, g.ws.join(".grove/grove.db.broken")).unwrap();
    g.serve();
    let (_, e1) = g.wait_primary();
    assert!(e1 > e0, "epoch {e1} after {e0}");

    // A workspace that never ran, with an empty file where the store goes.
    let mut fresh = Grove::new();
    std::fs::File::create(fresh.ws.join(".grove/grove.db")).unwrap();
    fresh.serve();
    fresh.wait_primary();
}

/// An engine in the user's `~/.config/grove/grove.toml` stays when the
/// workspace file defines engines too; the workspace wins per name.
#[test]
fn user_and_workspace_engines_merge_by_name() {
    let mut g = Grove::with_config(
        "heartbeat_ms = 100\n\
         [engines.wsecho]\ncommand = [\"sh\", \"-c\", \"echo ws:{prompt}\"]\n\
         [engines.both]\ncommand = [\"sh\", \"-c\", \"echo ws-wins:{prompt}\"]\n",
    );
    let xdg = g.dir.path().join("xdg");
    std::fs::create_dir_all(xdg.join("grove")).unwrap();
    std::fs::write(
        xdg.join("grove/grove.toml"),
        "[engines.userecho]\ncommand = [\"sh\", \"-c\", \"echo user:{prompt}\"]\n\
         [engines.both]\ncommand = [\"sh\", \"-c\", \"echo user-loses:{prompt}\"]\n",
    )
    .unwrap();
    g.env("XDG_CONFIG_HOME", xdg.to_str().unwrap());
    let engines: serde_json::Value = serde_json::from_str(&g.ok(&["engines", "--json"])).unwrap();
    let names: Vec<&str> = engines
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for name in ["userecho", "wsecho", "both", "shell"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    g.serve();
    g.wait_primary();
    for (engine, expect) in [
        ("userecho", "user:x"),
        ("wsecho", "ws:x"),
        ("both", "ws-wins:x"),
    ] {
        let id = g.ok(&["spawn", "x", "-e", engine]);
        g.ok(&["wait", &id]);
        let log = g.ok(&["logs", &id]);
        assert!(log.contains(expect), "{engine}: {log}");
    }
}

/// `grove.toml` edited while members run: `spawn -e` of a new engine works
/// at once, `grove config show` names each member's files and whether they
/// loaded, and a broken edit keeps the last good config in use.
#[test]
fn grove_toml_edited_while_members_run() {
    let mut g = Grove::new();
    g.serve();
    let (pid, epoch) = g.wait_primary();
    g.serve();
    g.wait_secondaries_at(1, epoch);
    let toml = g.ws.join(".grove/grove.toml");
    let out = g.run(&["spawn", "x", "-e", "newengine"]);
    assert!(!out.status.success(), "an unknown engine was accepted");

    let mut text = std::fs::read_to_string(&toml).unwrap();
    text.push_str("[engines.newengine]\ncommand = [\"sh\", \"-c\", \"echo new:{prompt}\"]\n");
    std::fs::write(&toml, &text).unwrap();
    let id = g.ok(&["spawn", "x", "-e", "newengine"]);
    g.ok(&["wait", &id]);
    assert!(g.ok(&["logs", &id]).contains("new:x"));

    let shown = g.ok(&["config", "show"]);
    let line = format!("pid {pid} (serve, primary): ");
    assert!(
        shown.contains(&line) && shown.contains(&format!("{}; loaded OK", toml.display())),
        "{shown}"
    );
    assert!(shown.contains("(serve, secondary)"), "{shown}");

    std::fs::write(&toml, "heartbeat_ms = = 1\n").unwrap();
    let report = wait_for("the primary to report the broken file", DEADLINE, || {
        let out = g.run(&["config", "show", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let primary = v["members"]
            .as_array()?
            .iter()
            .find(|m| m["role"] == "primary")?
            .clone();
        (primary["ok"] == false).then_some((out, v, primary))
    });
    let (out, v, primary) = report;
    assert_eq!(out.status.code(), Some(2));
    assert!(v["error"].as_str().unwrap().contains("line 1"), "{v}");
    assert!(
        primary["error"].as_str().unwrap().contains("grove.toml"),
        "{primary}"
    );
    // Fixed again: reported as loaded, and the engine still works.
    std::fs::write(&toml, &text).unwrap();
    wait_for("the primary to report the fixed file", DEADLINE, || {
        let v: serde_json::Value =
            serde_json::from_str(&g.ok(&["config", "show", "--json"])).ok()?;
        v["members"]
            .as_array()?
            .iter()
            .all(|m| m["ok"] == true)
            .then_some(())
    });
    let id = g.ok(&["spawn", "y", "-e", "newengine"]);
    g.ok(&["wait", &id]);
}

/// The workspace is the directory given, never searched for upwards: a
/// command run in a subdirectory of a workspace says where the grove runs.
#[test]
fn a_command_below_a_workspace_names_the_grove_above() {
    let mut g = Grove::new();
    g.serve();
    g.wait_primary();
    g.task_create("true");
    let sub = g.ws.join("src/deep");
    std::fs::create_dir_all(&sub).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["list", "--workspace"])
        .arg(&sub)
        .env("GROVE_NO_AUTOSTART", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!("a grove runs in {}", g.ws.display())),
        "{err}"
    );
}

/// A wait reads the store it started with: `.grove` deleted under running
/// members is rebuilt with a new store that holds none of the tasks waited
/// for, and nothing would ever end the wait. It ends, saying why.
#[test]
fn a_wait_ends_when_the_store_it_reads_is_replaced() {
    let mut g = Grove::with_config("heartbeat_ms = 100\n");
    g.serve();
    g.wait_primary();
    let id = g.task_create("sleep 30");
    let mut waiter = std::process::Command::new(BIN)
        .args(["wait", &id, "--workspace"])
        .arg(&g.ws)
        .env("GROVE_NO_AUTOSTART", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the wait has the store open, the store goes.
    let pid = waiter.id();
    wait_for("the wait to open the store", DEADLINE, || {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.flatten()
            .filter_map(|f| std::fs::read_link(f.path()).ok())
            .any(|t| t.to_string_lossy().ends_with("grove.db"))
            .then_some(())
    });
    remove_state_dir(&g);
    let status = wait_for("the wait to end", DEADLINE, || waiter.try_wait().unwrap());
    let mut said = String::new();
    std::io::Read::read_to_string(&mut waiter.stderr.take().unwrap(), &mut said).unwrap();
    assert_eq!(status.code(), Some(3), "{said}");
    // Replaced, or gone while the members made it anew: either way said.
    assert!(
        said.contains("the workspace's store")
            && (said.contains("replaced") || said.contains("gone")),
        "{said}"
    );
}

/// In a git repository, `git add -A` after grove ran takes none of its
/// state (the store, run records, task logs) nor its config, which is
/// shared only on purpose: grove writes `.grove/.gitignore`. A member starts again after the
/// commit (committed state would make it refuse).
#[test]
fn git_add_all_commits_no_state_of_grove() {
    let mut g = Grove::new();
    let ws = g.ws.clone();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&ws)
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t.invalid")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    git(&["init", "-q"]);
    g.serve();
    g.wait_primary();
    let id = g.ok(&["spawn", "echo a secret"]);
    g.ok(&["wait", &id]);
    git(&["add", "-A"]);
    let staged = git(&["diff", "--cached", "--name-only"]);
    let staged: Vec<&str> = staged.lines().collect();
    assert_eq!(staged, [".grove/.gitignore"], "{staged:?}");
    git(&["commit", "-qm", "work"]);
    g.ok(&["stop"]);
    g.serve();
    g.wait_primary();
}

/// A FIFO (or any file that is not a regular one) where `grove.toml` goes
/// is refused by name at once: reading it used to block every command
/// that loads the config, forever, with nothing said.
#[test]
fn a_fifo_for_grove_toml_is_refused_not_waited_on() {
    let g = Grove::new();
    let toml = g.ws.join(".grove/grove.toml");
    let _ = std::fs::remove_file(&toml);
    let c = std::ffi::CString::new(toml.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let mut child = std::process::Command::new(BIN)
        .args(["list", "--workspace"])
        .arg(&g.ws)
        .env("GROVE_NO_AUTOSTART", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let ended = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("grove list still waits on the FIFO after 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!ended.success(), "refused: {stderr}");
    assert!(
        stderr.contains("grove.toml") && stderr.contains("not a regular file"),
        "{stderr}"
    );
}
