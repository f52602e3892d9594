//! Permissions: private state and socket dirs, refusal of a socket dir that
//! others own or can write, private log files, and no access for another
//! local user.

mod common;

use common::*;
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
    let rpc = g.status()["primary"]["rpc_endpoint"]
        .as_str()
        .unwrap()
        .to_string();
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

#[test]
fn another_local_user_cannot_connect() {
    if !is_root() {
        eprintln!("skipped: creating a second user needs root");
        return;
    }
    let user = "grove-other";
    let exists = Command::new("id")
        .arg(user)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !exists {
        let made = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/bin/sh", user])
            .status();
        if !matches!(made, Ok(s) if s.success()) {
            eprintln!("skipped: useradd is not available here");
            return;
        }
    }
    let mut g = Grove::new();
    g.serve();
    g.wait_primary();
    let rpc = g.status()["primary"]["rpc_endpoint"]
        .as_str()
        .unwrap()
        .to_string();
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
