//! The demo is part of the suite: it must pass its own checks (which read
//! the store and the members' event logs, not its own output).

mod common;

#[test]
fn demo_passes_every_check() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .arg("demo")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert!(!stdout.contains("[FAILED]"), "{stdout}");
    assert!(stdout.contains("promoted itself: epoch 2"), "{stdout}");
}
