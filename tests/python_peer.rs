//! Runs the Python test peer (`tests/peer/grove_peer.py`, written only from
//! `ipc-schema/`) against a real `grove serve`: the proof that the contract
//! is enough for a libzmq client in another language.
//!
//! pyzmq and msgpack come from the tests' own Python environment
//! (`common::test_env`); if it cannot be built this test fails — it never
//! passes silently.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_grove");
/// Generous: CI machines are shared and slow.
const DEADLINE: Duration = Duration::from_secs(30);
const PEER_DEADLINE: Duration = Duration::from_secs(180);

/// A child process that is stopped when the guard drops, even when the test
/// panics: SIGTERM first (a grove member hands over cleanly), then SIGKILL.
struct Guard {
    child: Child,
    name: &'static str,
}

impl Guard {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn wait_for(&mut self, within: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + within;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
                _ => return None,
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on the pid of our own, not yet reaped, child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        if self.wait_for(Duration::from_secs(5)).is_none() {
            eprintln!(
                "{} (pid {}) ignored SIGTERM; killing it",
                self.name,
                self.pid()
            );
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `grove <args> --workspace <ws>` to completion with a deadline.
fn grove(ws: &Path, env: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--workspace")
        .arg(ws)
        .env_remove("GROVE_WORKSPACE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_deadline(cmd, "grove", DEADLINE)
}

/// Runs a command to completion, killing it after `within`. Output goes to
/// anonymous files, so a chatty child can never block on a full pipe.
fn run_with_deadline(mut cmd: Command, name: &'static str, within: Duration) -> Output {
    use std::io::{Read, Seek};
    let mut stdout = tempfile::tempfile().expect("temp file");
    let mut stderr = tempfile::tempfile().expect("temp file");
    cmd.stdin(Stdio::null())
        .stdout(stdout.try_clone().expect("dup"))
        .stderr(stderr.try_clone().expect("dup"));
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let mut guard = Guard { child, name };
    let Some(status) = guard.wait_for(within) else {
        panic!("{name} did not finish within {within:?}");
    };
    let read = |f: &mut std::fs::File| {
        let mut buf = Vec::new();
        f.rewind().expect("rewind");
        f.read_to_end(&mut buf).expect("read output");
        buf
    };
    Output {
        status,
        stdout: read(&mut stdout),
        stderr: read(&mut stderr),
    }
}

#[test]
fn python_peer_speaks_the_contract() {
    let python = common::test_env::python();
    let tmp = tempfile::tempdir().expect("tempdir");
    let ws = tmp.path().join("ws");
    std::fs::create_dir_all(&ws).expect("mkdir workspace");
    // Keep the user's ~/.config/grove/grove.toml out of the test.
    let xdg = tmp.path().join("xdg-config");
    std::fs::create_dir_all(&xdg).expect("mkdir xdg");
    let env: &[(&str, &Path)] = &[("XDG_CONFIG_HOME", &xdg)];

    let server_log = tmp.path().join("serve.log");
    let stderr = std::fs::File::create(&server_log).expect("log file");
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--workspace")
        .arg(&ws)
        .env_remove("GROVE_WORKSPACE")
        .env("GROVE_LOG", "grove=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut server = Guard {
        child: cmd.spawn().expect("spawn grove serve"),
        name: "grove serve",
    };
    let server_stderr = || std::fs::read_to_string(&server_log).unwrap_or_default();

    // Wait until the primary answers (status pings it).
    let until = Instant::now() + DEADLINE;
    loop {
        if let Ok(Some(st)) = server.child.try_wait() {
            panic!("grove serve exited early ({st}):\n{}", server_stderr());
        }
        let out = grove(&ws, env, &["status", "--json"]);
        let state = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["state"].as_str().map(str::to_string));
        if state.as_deref() == Some("ok") {
            break;
        }
        assert!(
            Instant::now() < until,
            "the primary did not become ready within {DEADLINE:?}: state {state:?}; \
             stdout {}; stderr {}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            server_stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The peer.
    let mut py = Command::new(python);
    py.arg(repo().join("tests/peer/grove_peer.py"))
        .arg(&ws)
        .current_dir(repo())
        .env("PYTHONUNBUFFERED", "1");
    let out = run_with_deadline(py, "python grove_peer.py", PEER_DEADLINE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!(
        "peer exit: {}\n--- peer stdout ---\n{stdout}\n--- peer stderr ---\n{stderr}\n--- server log ---\n{}",
        out.status,
        server_stderr()
    );
    assert!(out.status.success(), "the Python peer failed\n{report}");
    let summary = stdout.lines().last().unwrap_or_default();
    let passed: usize = summary
        .strip_suffix(" passed, 0 failed")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected summary line {summary:?}\n{report}"));
    assert!(passed > 0, "the peer ran no checks\n{report}");

    // The primary survived every malformed frame and still serves.
    assert!(
        matches!(server.child.try_wait(), Ok(None)),
        "grove serve died during the peer run\n{report}"
    );
    let out = grove(&ws, env, &["task", "list"]);
    assert!(
        out.status.success(),
        "`grove task list` failed after the peer run: {}\n{report}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = grove(&ws, env, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(status["state"], "ok", "status after the peer run\n{report}");

    // Graceful stop: SIGTERM, the member hands over and exits.
    unsafe { libc::kill(server.pid(), libc::SIGTERM) };
    let st = server.wait_for(DEADLINE);
    assert!(
        st.is_some_and(|s| s.success()),
        "grove serve did not stop cleanly on SIGTERM ({st:?})\n{}",
        server_stderr()
    );
}

/// The private environment is built once even when several tests ask at
/// the same time, reused while its stamp matches, rebuilt when the stamp
/// changes or when a build was interrupted (no stamp written).
#[test]
fn test_env_is_built_once_under_its_lock() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("env");
    let builds = AtomicUsize::new(0);
    let build = |d: &Path| {
        builds.fetch_add(1, Ordering::SeqCst);
        std::fs::create_dir_all(d).expect("mkdir env");
        // Long enough for the other threads to queue on the lock.
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| common::test_env::prepare(&dir, "v1", build));
        }
    });
    assert_eq!(builds.load(Ordering::SeqCst), 1, "built once");
    common::test_env::prepare(&dir, "v1", build);
    assert_eq!(builds.load(Ordering::SeqCst), 1, "reused");
    common::test_env::prepare(&dir, "v2", build);
    assert_eq!(builds.load(Ordering::SeqCst), 2, "rebuilt for a new stamp");
    // An interrupted build leaves no stamp: the next call starts over.
    let interrupted = std::panic::catch_unwind(|| {
        common::test_env::prepare(&dir, "v3", |_: &Path| panic!("interrupted"))
    });
    assert!(interrupted.is_err());
    common::test_env::prepare(&dir, "v3", build);
    assert_eq!(
        builds.load(Ordering::SeqCst),
        3,
        "rebuilt after an interruption"
    );
}
