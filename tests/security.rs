//! Permissions: private state and socket dirs, refusal of a socket dir that
//! others own or can write, private log files, and no access for another
//! local user.

mod common;

use common::*;
use serde_json::Value;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn state_dir_socket_dir_and_logs_are_private() {
    let mut g = Grove::new();
    g.serve();
    g.wait_primary();
    let id = g.ok(&["spawn", "echo secret"]);
    g.ok(&["wait", &id]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&g.ws.join(".grove")), 0o700);
    assert_eq!(mode(&g.ws.join(format!(".grove/logs/{id}.log"))), 0o600);
    // The store holds prompts and task environments: 0600, and SQLite's
    // side files follow it.
    for f in ["grove.db", "grove.db-wal", "grove.db-shm"] {
        assert_eq!(mode(&g.ws.join(".grove").join(f)), 0o600, "{f}");
    }
    let rpc = g.rpc_endpoint();
    let sock = std::path::PathBuf::from(rpc.trim_start_matches("ipc://"));
    assert_eq!(mode(sock.parent().unwrap()), 0o700);
    assert_eq!(mode(&sock) & 0o077, 0, "socket file open to others");
    // No TCP listener: every socket of the primary is a unix socket.
    let pid = g.members[0].pid;
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default()
        + &std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.display().to_string();
            l.strip_prefix("socket:[")
                .map(|s| s.trim_end_matches(']').to_string())
        })
        .collect();
    for inode in inodes {
        assert!(
            !tcp.lines()
                .any(|l| l.split_whitespace().nth(9) == Some(inode.as_str())),
            "the primary has a TCP socket"
        );
    }
}

#[test]
fn refuses_a_socket_dir_others_can_write_or_own() {
    let runtime = tempfile::tempdir().unwrap();
    let base = runtime.path().join("grove");
    std::fs::create_dir(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
    let g = Grove::new();
    let out = Command::new(BIN)
        .args(["serve", "--workspace"])
        .arg(&g.ws)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("refusing the socket dir") && err.contains("777"),
        "{err}"
    );
    if !is_root() {
        eprintln!("skipped the foreign-owner case: needs root to chown");
        return;
    }
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&base, Some(65534), Some(65534)).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--workspace"])
        .arg(&g.ws)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("owned by uid 65534"), "{err}");
}

/// A second local user for the tests that need one (root only), and its
/// uid. Made once per test binary: parallel `useradd`s race.
fn other_user() -> Option<(&'static str, u32)> {
    static USER: std::sync::OnceLock<Option<(&'static str, u32)>> = std::sync::OnceLock::new();
    *USER.get_or_init(make_other_user)
}

fn make_other_user() -> Option<(&'static str, u32)> {
    if !is_root() {
        eprintln!("skipped: creating a second user needs root");
        return None;
    }
    let user = "grove-other";
    let uid = || {
        let out = Command::new("id").args(["-u", user]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if uid().is_none() {
        let made = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/bin/sh", user])
            .status();
        if !matches!(made, Ok(s) if s.success()) {
            eprintln!("skipped: useradd is not available here");
            return None;
        }
    }
    Some((user, uid()?))
}

/// Runs a shell script as `user` in `dir`.
fn run_as(user: &str, dir: &std::path::Path, script: &str) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", user, "--", "sh", "-c", script])
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .expect("runuser")
}

#[test]
fn another_local_user_cannot_connect() {
    let Some((user, _)) = other_user() else {
        return;
    };
    let mut g = Grove::new();
    g.serve();
    g.wait_primary();
    let rpc = g.rpc_endpoint();
    let path = rpc.trim_start_matches("ipc://").to_string();
    // The other user tries the socket itself, below our 0700 directory.
    let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1]); print('CONNECTED')\nexcept OSError as e:\n    print('DENIED', e.errno)";
    let out = Command::new("runuser")
        .args(["-u", user, "--", "python3", "-c", script, &path])
        .output();
    let Ok(out) = out else {
        eprintln!("skipped: runuser is not available here");
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("DENIED"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And grove itself, run as that user, gets nothing.
    let out = Command::new("runuser")
        .args([
            "-u",
            user,
            "--",
            BIN,
            "status",
            "--no-autostart",
            "--workspace",
        ])
        .arg(&g.ws)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let _ = std::fs::metadata(&g.ws).map(|m| m.uid());
}

/// The attack of a shared directory: another user creates `.grove/` (0777)
/// with a `grove.toml` whose shell engine runs their command. Every grove
/// command of the victim refuses the workspace, naming the path and its
/// owner, and nothing of theirs runs.
#[test]
fn a_state_dir_of_another_user_is_refused() {
    let Some((user, uid)) = other_user() else {
        return;
    };
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let ws = shared.path().join("project");
    std::fs::create_dir(&ws).unwrap();
    std::fs::set_permissions(&ws, std::fs::Permissions::from_mode(0o777)).unwrap();
    let pwned = ws.join("pwned");
    let plant = format!(
        "mkdir .grove && chmod 777 .grove && printf '[engines.shell]\\ncommand = [\"sh\", \"-c\", \"id > {} ; {{prompt}}\"]\\n' > .grove/grove.toml && chmod 666 .grove/grove.toml",
        pwned.display()
    );
    let out = run_as(user, &ws, &plant);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config_home = tempfile::tempdir().unwrap();
    let victim = |args: &[&str]| {
        // Autostart on: before the fix, this started a member that ran
        // the planted engine.
        Command::new(BIN)
            .args(args)
            .arg("--workspace")
            .arg(&ws)
            .env_remove("GROVE_NO_AUTOSTART")
            .env("XDG_CONFIG_HOME", config_home.path())
            .output()
            .unwrap()
    };
    for args in [&["spawn", "echo hi"][..], &["serve"], &["status"]] {
        let out = victim(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!("{}", ws.join(".grove").display()))
                && err.contains(&format!("owned by uid {uid}"))
                && err.contains("0777")
                && err.contains("chown"),
            "{args:?}: {err}"
        );
    }
    assert!(!pwned.exists(), "the other user's engine ran");
    assert!(!ws.join(".grove/primary.json").exists(), "a member started");
    assert!(!ws.join(".grove/grove.db").exists(), "a store was created");

    // Our own state dir left open (0777): grove tightens it, but a config
    // file that the other user put in it is still refused.
    let mine = tempfile::tempdir().unwrap();
    std::fs::set_permissions(mine.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ws = mine.path();
    std::fs::create_dir(ws.join(".grove")).unwrap();
    std::fs::set_permissions(ws.join(".grove"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = run_as(user, ws, "echo 'heartbeat_ms = 100' > .grove/grove.toml");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["status", "--no-autostart", "--workspace"])
        .arg(ws)
        .env("XDG_CONFIG_HOME", config_home.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(".grove/grove.toml") && err.contains(&format!("owned by uid {uid}")),
        "{err}"
    );
    let mode = std::fs::metadata(ws.join(".grove"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "our own state dir was tightened");
}

/// A config file (ours) that others can write is refused: its content may
/// not be ours any more.
#[test]
fn a_config_file_others_can_write_is_refused() {
    let g = Grove::new();
    let toml = g.ws.join(".grove/grove.toml");
    std::fs::set_permissions(&toml, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = g.run(&["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("grove.toml")
            && err.contains("writable by every user")
            && err.contains("chmod go-w"),
        "{err}"
    );
    std::fs::set_permissions(&toml, std::fs::Permissions::from_mode(0o600)).unwrap();
    g.ok(&["config", "show"]);
}

/// Runs git in `dir`, insisting on success.
fn git(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {}", stderr_of(&out));
}

/// A `.grove/grove.toml` that came with the repository (git tracks it)
/// chooses the commands grove runs: it is used only once the user approved
/// its content with `grove config trust`, and again after each change. One
/// git does not track is the user's own and needs no approval.
#[test]
fn a_committed_config_is_used_only_once_approved() {
    let mut g = Grove::new();
    let marker = g.dir.path().join("ran");
    let toml = format!(
        "heartbeat_ms = 100\ndefault_engine = \"theirs\"\n[engines.theirs]\ncommand = [\"sh\", \"-c\", \"echo ran > {}; {{prompt}}\"]\n",
        marker.display()
    );
    let config = g.ws.join(".grove/grove.toml");
    std::fs::write(&config, &toml).unwrap();
    g.env(
        "XDG_STATE_HOME",
        &g.dir.path().join("state").display().to_string(),
    );
    git(&g.ws, &["init", "-q"]);
    std::fs::write(g.ws.join("README"), "a project\n").unwrap();
    git(&g.ws, &["add", "README"]);
    git(&g.ws, &["commit", "-qm", "first"]);
    // Untracked: the user's own.
    g.ok(&["config", "show"]);

    git(&g.ws, &["add", "-f", ".grove/grove.toml"]);
    git(&g.ws, &["commit", "-qm", "share the config"]);
    let out = g.run(&["engines"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("git tracks it")
            && err.contains("have not approved it")
            && err.contains("grove config trust"),
        "{err}"
    );
    // Not even when the environment points git at another repository
    // (a dotfiles setup's GIT_DIR), where nothing is tracked.
    let elsewhere = g.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    git(&elsewhere, &["init", "-q"]);
    g.env("GIT_DIR", &elsewhere.join(".git").display().to_string());
    let out = g.run(&["engines"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    g.unset_env("GIT_DIR");
    // A member refuses to start on it, and nothing of it ran.
    let m = g.serve();
    let status = g.members[m].wait_exit(DEADLINE).expect("the member exits");
    assert_eq!(status.code(), Some(2), "{}", g.members[m].stderr());
    assert!(
        g.members[m].stderr().contains("grove config trust"),
        "{}",
        g.members[m].stderr()
    );
    // `config show` still explains (exit 2: the config does not load).
    let out = g.run(&["config", "show"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stdout_of(&out).contains("have not approved it"),
        "{}",
        stdout_of(&out)
    );

    let approved = g.ok(&["config", "trust"]);
    assert!(
        approved.contains("engines.theirs.command") && approved.contains("echo ran"),
        "the commands it approves are shown: {approved}"
    );
    g.serve();
    g.wait_primary();
    let id = g.task_create("true");
    wait_status(&g, &id, "completed");
    assert!(marker.exists(), "the approved engine ran");

    // A pull changes it: the running member keeps the approved one and
    // says why; a new command refuses the change.
    std::fs::write(&config, format!("max_parallel = 3\n{toml}")).unwrap();
    let out = g.run(&["engines"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("changed since you approved it"),
        "{}",
        stderr_of(&out)
    );
    let member_error = || {
        let out = g.run(&["config", "show", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["members"].as_array().and_then(|ms| ms.first().cloned())
    };
    wait_for("the member to refuse the changed config", DEADLINE, || {
        let m = member_error()?;
        m["error"]
            .as_str()?
            .contains("changed since you approved it")
            .then_some(())
    });
    // `--show` lists what changed since the approval and approves nothing.
    let shown = g.ok(&["config", "trust", "--show"]);
    assert!(
        shown.contains("+ max_parallel = 3") && shown.contains("nothing approved"),
        "{shown}"
    );
    assert_eq!(
        g.run(&["engines"]).status.code(),
        Some(2),
        "--show approved it"
    );
    // Approving it again reaches the running member without a restart.
    g.ok(&["config", "trust"]);
    wait_for("the member to load the approved config", DEADLINE, || {
        let m = member_error()?;
        m["ok"].as_bool()?.then_some(())
    });
    g.ok(&["list"]);

    let revoked = g.ok(&["config", "trust", "--revoke"]);
    assert!(revoked.contains("revoked"), "{revoked}");
    assert_eq!(g.run(&["engines"]).status.code(), Some(2));
}

/// git's answer for an untracked config is kept while the repository's
/// index stays as it was (every command asks it otherwise: a fork and exec
/// of git each), and not a moment longer: `git add` of the config is
/// refused by the very next command.
#[test]
fn a_kept_git_answer_lasts_only_as_long_as_the_index() {
    let mut g = Grove::new();
    let state = g.dir.path().join("state");
    g.env("XDG_STATE_HOME", &state.display().to_string());
    git(&g.ws, &["init", "-q"]);
    std::fs::write(g.ws.join("README"), "a project\n").unwrap();
    git(&g.ws, &["add", "README"]);
    git(&g.ws, &["commit", "-qm", "first"]);
    std::fs::write(g.ws.join(".grove/grove.toml"), "max_parallel = 3\n").unwrap();
    // Kept once the index has settled (an index changed in the last two
    // seconds may change again unseen within its clock's tick).
    let kept = state.join("grove/committed");
    wait_for("git's answer to be kept", DEADLINE, || {
        g.ok(&["config", "show"]);
        std::fs::read_dir(&kept).ok()?.next().map(|_| ())
    });
    // Kept: a git that would fail is not asked.
    let fake = g.dir.path().join("fakebin");
    std::fs::create_dir_all(&fake).unwrap();
    let asked = g.dir.path().join("git-was-asked");
    let script = fake.join("git");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ntouch {}\nexit 1\n", asked.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    g.env("PATH", &path);
    g.ok(&["config", "show"]);
    assert!(
        !asked.exists(),
        "git was asked again for an unchanged index"
    );
    // The index changes: asked again, and the change is seen at once.
    g.unset_env("PATH");
    git(&g.ws, &["add", "-f", ".grove/grove.toml"]);
    let out = g.run(&["config", "show"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).contains("git tracks it"),
        "{}",
        stdout_of(&out)
    );
}

/// git skips a `.git` that is no repository (an empty dir) for the
/// repository above it: git's answer must not be kept under that `.git`,
/// whose (missing) index would never change when the outer one does.
#[test]
fn an_empty_dot_git_below_the_repository_does_not_key_the_kept_answer() {
    let mut g = Grove::new();
    let state = g.dir.path().join("state");
    g.env("XDG_STATE_HOME", &state.display().to_string());
    let outer = g.dir.path().join("outer");
    std::fs::create_dir_all(&outer).unwrap();
    git(&outer, &["init", "-q"]);
    std::fs::write(outer.join("README"), "a project\n").unwrap();
    git(&outer, &["add", "README"]);
    git(&outer, &["commit", "-qm", "first"]);
    let ws = outer.join("ws");
    std::fs::create_dir_all(ws.join(".git")).unwrap();
    std::fs::create_dir_all(ws.join(".grove")).unwrap();
    std::fs::write(ws.join(".grove/grove.toml"), "max_parallel = 3\n").unwrap();
    g.ws = ws;
    g.ok(&["config", "show"]);
    git(&outer, &["add", "-f", "ws/.grove/grove.toml"]);
    let out = g.run(&["config", "show"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout_of(&out));
    assert!(
        stdout_of(&out).contains("git tracks it"),
        "{}",
        stdout_of(&out)
    );
}

/// A store committed to the repository holds tasks someone else chose: a
/// member refuses to start on it and says how to get rid of it.
#[test]
fn committed_state_keeps_members_from_starting() {
    let mut g = Grove::new();
    git(&g.ws, &["init", "-q"]);
    let m = g.serve();
    g.wait_primary();
    let mine = g.task_create("true");
    g.members[m].signal(libc::SIGTERM);
    g.members[m].wait_exit(DEADLINE).expect("the member stops");
    git(&g.ws, &["add", "-f", ".grove/grove.db"]);
    git(&g.ws, &["commit", "-qm", "oops"]);
    let m = g.serve();
    let status = g.members[m]
        .wait_exit(DEADLINE)
        .expect("the member refuses");
    let err = g.members[m].stderr();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("git tracks grove's state")
            && err.contains(".grove/grove.db")
            && err.contains("git rm -r -q --cached -- .grove")
            && err.contains(".grove/grove.db-wal"),
        "{err}"
    );

    // Committed by mistake: taking it out of the repository is enough,
    // and the history stays.
    git(
        &g.ws,
        &["rm", "-q", "-r", "--cached", "--", ".grove/grove.db"],
    );
    git(&g.ws, &["commit", "-qm", "untrack"]);
    let m = g.serve();
    g.wait_primary();
    assert!(
        g.db().task(&mine).unwrap().is_some(),
        "the history was kept"
    );
    g.members[m].signal(libc::SIGTERM);
    g.members[m].wait_exit(DEADLINE).expect("the member stops");

    // Brought by a pull: following the rest of the advice (delete it)
    // brings the workspace back too.
    git(&g.ws, &["add", "-f", ".grove/grove.db"]);
    git(&g.ws, &["commit", "-qm", "theirs"]);
    git(
        &g.ws,
        &["rm", "-q", "-r", "--cached", "--", ".grove/grove.db"],
    );
    for f in ["grove.db", "grove.db-wal", "grove.db-shm"] {
        let _ = std::fs::remove_file(g.ws.join(".grove").join(f));
    }
    g.serve();
    g.wait_primary();
}

/// grove reads at most 64 KiB of what git lists in `.grove`: a repository
/// that commits more than that ahead of its config must not slip the
/// config, or its state, past the checks.
#[test]
fn a_flood_of_committed_files_does_not_hide_the_committed_config() {
    let mut g = Grove::new();
    g.env(
        "XDG_STATE_HOME",
        &g.dir.path().join("state").display().to_string(),
    );
    let cache = g.ws.join(".grove/cache");
    std::fs::create_dir_all(&cache).unwrap();
    for i in 0..2_000 {
        std::fs::write(cache.join(format!("entry-with-a-long-name-{i:05}")), "x").unwrap();
    }
    git(&g.ws, &["init", "-q"]);
    git(&g.ws, &["add", "-f", ".grove"]);
    git(&g.ws, &["commit", "-qm", "everything"]);
    let out = g.run(&["engines"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("grove config trust"),
        "{}",
        stderr_of(&out)
    );
    g.ok(&["config", "trust"]);
    let m = g.serve();
    let status = g.members[m]
        .wait_exit(DEADLINE)
        .expect("the member refuses");
    assert_eq!(status.code(), Some(2), "{}", g.members[m].stderr());
    assert!(
        g.members[m].stderr().contains(".grove/cache/"),
        "{}",
        g.members[m].stderr()
    );
}

/// A `.grove` that another user planted as a symbolic link is refused,
/// and the advice is to remove the link: never a recursive `chmod` or
/// `chown`, which follow the link they are given and would change what it
/// points to (another user's directory, `/tmp`).
#[test]
fn a_planted_state_link_is_refused_with_advice_that_leaves_its_target_alone() {
    if !is_root() {
        eprintln!("skipped: a link owned by another user needs root to make");
        return;
    }
    let g = Grove::new();
    let target = tempfile::tempdir().unwrap();
    let link = g.ws.join(".grove");
    std::fs::remove_dir_all(&link).unwrap();
    std::os::unix::fs::symlink(target.path(), &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
    let out = g.run(&["list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("symbolic link") && err.contains("rm "),
        "{err}"
    );
    assert!(
        !err.contains("chmod -R") && !err.contains("chown -R"),
        "{err}"
    );
}
