//! The counterparts the tests run (Python clients, and a real published
//! agent from npm), installed by the tests themselves into private environments
//! under `target/test-env/`, so that `cargo test --release` works alone on
//! a fresh machine and never installs anything into the user's system.
//!
//! Each environment is built once, under a file lock (test binaries and the
//! threads inside them may ask at the same time), and reused for as long as
//! its stamp — what it was built from — still matches. A build that was
//! interrupted leaves no stamp and is redone.
//!
//! Prerequisites, named in the README: `python3` with its `venv` module, Node.js
//! with `npm`, and network access to PyPI and npm the first time.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python packages of every Python counterpart (the pyzmq peer of
/// tests/peer/, the official ACP client of tests/acp/, the official MCP
/// client of tests/mcp/).
const PYTHON_REQUIREMENTS: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peer/requirements.txt");

/// `target/test-env`, next to the profile directory of the `grove` binary
/// under test (so `CARGO_TARGET_DIR` is honoured).
fn root() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_grove"));
    let target = bin
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("no target directory above {}", bin.display()));
    target.join("test-env")
}

/// The interpreter of the tests' Python environment
/// (`target/test-env/python`), with `tests/peer/requirements.txt` installed.
pub fn python() -> PathBuf {
    let dir = root().join("python");
    let requirements = std::fs::read_to_string(PYTHON_REQUIREMENTS)
        .unwrap_or_else(|e| panic!("cannot read {PYTHON_REQUIREMENTS}: {e}"));
    // A new system Python leaves the old environment's links dangling.
    let stamp = format!("{requirements}\n# {}\n", system_python_version());
    prepare(&dir, &stamp, build_python);
    dir.join("bin/python")
}

/// Claude Code's ACP adapter, the real published agent the tests drive
/// offline (against `tests/peer/model_stub.py`), pinned to the version whose
/// behaviour ../shared/REAL-AGENTS.md records.
pub const CLAUDE_AGENT_ACP: &str = "@agentclientprotocol/claude-agent-acp@0.49.0";

/// The absolute path of the adapter's entry point (run it with `node`),
/// installed once into `target/test-env/npm` (about 290 MB with the Claude
/// Code binary it pulls in). The path must be absolute: the agent's working
/// directory is the session's.
pub fn claude_agent_acp() -> PathBuf {
    let dir = root().join("npm");
    let stamp = format!("{CLAUDE_AGENT_ACP}\n# node {}\n", node_version());
    prepare(&dir, &stamp, |dir| {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        run(
            Command::new("npm")
                .args([
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                    "--prefix",
                ])
                .arg(dir)
                .arg(CLAUDE_AGENT_ACP),
            "npm install",
            "the first test run downloads the agent from the npm registry: it needs network access",
        );
    });
    dir.join("node_modules/@agentclientprotocol/claude-agent-acp/dist/index.js")
}

fn node_version() -> String {
    let out = Command::new("node")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run node ({e}): the tests need Node.js 20 or newer and npm")
        });
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Makes sure `dir` holds an environment built from `stamp`: if its stamp
/// file differs (or is missing), empties `dir`, runs `build` and records the
/// stamp last. The lock file sits beside `dir`, not in it, so that emptying
/// `dir` never removes a lock someone holds.
pub fn prepare(dir: &Path, stamp: &str, build: impl FnOnce(&Path)) {
    let parent = dir.parent().expect("an environment has a parent");
    std::fs::create_dir_all(parent)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    let lock_path = dir.with_extension("lock");
    let lock = File::create(&lock_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", lock_path.display()));
    // Blocks while another test binary or thread builds it; released when
    // `lock` is dropped (or its process dies).
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));
    let stamp_path = dir.join(".grove-test-env-stamp");
    if std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return;
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .unwrap_or_else(|e| panic!("cannot remove the stale {}: {e}", dir.display()));
    }
    eprintln!("test-env: building {} (once)", dir.display());
    build(dir);
    std::fs::write(&stamp_path, stamp)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", stamp_path.display()));
}

fn system_python_version() -> String {
    let out = Command::new("python3")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): the tests need Python 3 with its venv module")
        });
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn build_python(dir: &Path) {
    run(
        Command::new("python3").arg("-m").arg("venv").arg(dir),
        "python3 -m venv",
        "the tests need Python 3's venv module (on Debian/Ubuntu: apt-get install python3-venv)",
    );
    run(
        Command::new(dir.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg("-r")
            .arg(PYTHON_REQUIREMENTS)
            // Into the environment only: a user-wide setting must not turn
            // this into a `--user` install (pip refuses that in a venv).
            .env_remove("PIP_USER")
            .env("PIP_NO_INPUT", "1"),
        "pip install",
        "the first test run downloads the Python test packages from PyPI: it needs network access",
    );
}

/// Runs a setup step; a failure panics with its output and what to do.
fn run(cmd: &mut Command, what: &str, hint: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what} ({e}); {hint}"));
    assert!(
        out.status.success(),
        "{what} failed ({}); {hint}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
