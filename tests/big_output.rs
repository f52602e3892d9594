//! A task that writes 1 GiB: its output goes straight to its log file, so
//! the primary's memory does not grow with it. (Its own test binary: it
//! saturates the disk and would disturb timing-sensitive neighbours.)

mod common;

use common::*;

#[test]
fn a_task_writing_a_gibibyte_does_not_grow_memory() {
    let mut g = Grove::new();
    g.serve();
    let (pid, _) = g.wait_primary();
    let id = g.ok(&["spawn", "head -c 1073741824 /dev/zero | tr '\\0' x"]);
    let mut peak = 0;
    wait_for(
        "the 1 GiB task to finish",
        std::time::Duration::from_secs(300),
        || {
            peak = peak.max(rss_kib(pid));
            let t: serde_json::Value =
                serde_json::from_str(&g.ok(&["show", &id, "--json"])).ok()?;
            (t["status"] == "completed").then_some(())
        },
    );
    let log = g.ws.join(format!(".grove/logs/{id}.log"));
    assert_eq!(
        std::fs::metadata(&log).unwrap().len(),
        1 << 30,
        "the log holds all of it"
    );
    assert!(peak < 100 * 1024, "primary RSS peaked at {peak} KiB");
    std::fs::remove_file(&log).unwrap();
}
