//! `grove bench --quick` runs end to end, so the harness cannot rot. Timing
//! goals are reported by the bench itself, never asserted here.

mod common;

#[test]
fn quick_bench_reports_every_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["bench", "--quick", "--json", "--secondaries", "2"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);
    let rows = report["rows"].as_array().unwrap();
    for metric in [
        "kill -9 → new primary accepts a write",
        "raw flock handoff",
        "write round trip (task.create)",
        "throughput, 4 concurrent writers",
    ] {
        let row = rows
            .iter()
            .find(|r| r["metric"] == metric)
            .unwrap_or_else(|| panic!("no row {metric}: {report}"));
        assert!(row["p50"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["samples"].as_u64().unwrap() > 0, "{row}");
    }
    let bad = std::process::Command::new(common::BIN)
        .args(["bench", "nosuch"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
