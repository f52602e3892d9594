//! `grove bench --quick` runs end to end, so the harness cannot rot. Timing
//! goals are reported by the bench itself, never asserted here.

mod common;

use serde_json::Value;

const SCENARIOS: &[&str] = &[
    "failover", "handover", "rpc", "fanout", "join", "memory", "tasks", "idle", "acp", "web",
];

fn row<'a>(rows: &'a [Value], metric: &str, report: &Value) -> &'a Value {
    let row = rows
        .iter()
        .find(|r| r["metric"] == metric)
        .unwrap_or_else(|| panic!("no row {metric}: {report}"));
    assert!(row["samples"].as_u64().unwrap() > 0, "{row}");
    row
}

#[test]
fn quick_bench_reports_every_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["bench", "--quick", "--json", "--secondaries", "1,2"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);
    let rows = report["rows"].as_array().unwrap();
    for scenario in SCENARIOS {
        assert!(
            rows.iter()
                .any(|r| r["scenario"] == *scenario && r["samples"].as_u64().unwrap() > 0),
            "no row with samples for {scenario}: {report}"
        );
    }
    // Durations and sizes are positive whatever the machine.
    for metric in [
        "kill -9 → new primary accepts a write, 1 sec.",
        "kill -9 → new primary accepts a write, 2 sec.",
        "kill -9 → the other secondary writes",
        "raw flock handoff",
        "SIGTERM → new primary accepts a write, 3 sec.",
        "write round trip (task.create)",
        "write round trip (task.create), beside its rows alone",
        "throughput, 4 concurrent writers",
        "throughput, 16 concurrent writers, beside the store's ceiling",
        "throughput, 16 concurrent writers, beside the transport's ceiling",
        "writes per commit, 16 concurrent writers",
        "events/s delivered to each of 1 subs",
        "events/s delivered to each of 8 subs",
        "events/s delivered to each of 32 subs",
        "process start → secondary ready",
        "RSS, idle primary",
        "RSS, idle secondary",
        "RSS, primary under load (4 writers)",
        "RSS per idle member",
        "PSS per idle member (shared pages split)",
    ] {
        let row = row(rows, metric, &report);
        assert!(row["p50"].as_f64().unwrap() > 0.0, "{row}");
    }
    // Counts may be zero; the rows must exist and have samples. The quick
    // idle run starts 5 members.
    for metric in [
        "events lost on the wire, 32 subs",
        "events missing after repair (all passes)",
        "CPU, 5 idle members together (% of a core)",
        "wakeups/s per idle secondary (all switches)",
        "wakeups/s of the idle primary (voluntary)",
        "preemptions/s of the idle primary (5 subs)",
    ] {
        row(rows, metric, &report);
    }
    // The acp rows name their own sizes; found by what they start with.
    // Each chunk arrived every way (directly, to a subscriber and through
    // `grove acp` to an editor), and the memory readings are real.
    for prefix in [
        "chunk agent → subscriber",
        "added per chunk",
        "chunk agent → editor",
        "added to the editor",
        "chunks/s through grove",
        "MB/s through grove",
        "peak RSS of the shim",
        "peak RSS of the primary",
    ] {
        let row = rows
            .iter()
            .find(|r| r["scenario"] == "acp" && r["metric"].as_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("no acp row {prefix}: {report}"));
        assert!(row["samples"].as_u64().unwrap() > 0, "{row}");
        assert!(row["p50"].as_f64().unwrap() > 0.0, "{row}");
        if let Some(base) = row["baseline_p50"].as_f64() {
            assert!(base > 0.0, "{row}");
        }
    }
    let bad = std::process::Command::new(common::BIN)
        .args(["bench", "nosuch"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
