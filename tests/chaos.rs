//! `grove chaos --kills 20`, the short run, is part of the suite: members
//! SIGKILLed at random under continuous writes and real shell tasks, checked
//! against the store, the members' own event logs and `/proc`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Far above the few seconds it takes; still well under two minutes.
const LIMIT: Duration = Duration::from_secs(100);

/// Waits for the child with a deadline. On timeout it gets SIGTERM first,
/// on which it kills every process it started, then SIGKILL.
fn wait_with_deadline(child: &mut Child) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + LIMIT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) | Err(_) => break,
        }
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let grace = Instant::now() + Duration::from_secs(10);
    while Instant::now() < grace && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn chaos_short_run_passes_every_check() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let out = std::fs::File::create(&out_path).expect("a stdout file");
    let err = std::fs::File::create(&err_path).expect("a stderr file");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_grove"))
        .args(["chaos", "--kills", "20"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("grove chaos starts");
    let status = wait_with_deadline(&mut child);
    let (stdout, stderr) = (read(&out_path), read(&err_path));
    let Some(status) = status else {
        panic!("grove chaos did not finish within {LIMIT:?}:\n{stdout}\n{stderr}");
    };
    assert!(
        status.success(),
        "grove chaos failed ({status}):\n{stdout}\n{stderr}"
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("chaos: 20 kills,"))
        .unwrap_or_else(|| panic!("no summary line:\n{stdout}"));
    assert!(summary.ends_with("all checks passed"), "{summary}");
    for claim in [
        " 0 lost,",
        " 0 applied twice,",
        " 0 events missed,",
        "integrity ok,",
    ] {
        assert!(summary.contains(claim), "{claim:?} missing from: {summary}");
    }
    assert!(!stdout.contains("[FAILED]"), "{stdout}");
    assert!(started.elapsed() < LIMIT, "took {:?}", started.elapsed());
}
