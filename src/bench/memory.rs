//! Memory: resident set size (`VmRSS` in `/proc/<pid>/status`) of an idle
//! primary, an idle secondary, and the primary while four writers load it
//! as in rpc's throughput figure. There is no baseline: the goal is an
//! absolute budget for a process that runs in the background all day.
//!
//! Idle means registered and quiet (heartbeats only, no tasks) after a short
//! settle; the samples are spread over time so that p99 is the peak seen.
//! Under load the primary is sampled every few milliseconds while it serves.

use super::Row;
use super::failover::primary;
use super::load::Writers;
use super::stats::quantile;
use crate::local_cluster::LocalCluster;
use std::time::Duration;

const WRITERS: usize = 4;
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

pub async fn run(samples: usize, load_writes: usize) -> Result<Vec<Row>, String> {
    let samples = samples.max(1);
    let mut c = LocalCluster::new()?;
    let first = c.spawn_member()?;
    let mut client = c.client("bench-memory");
    let (primary_pid, epoch) = primary(&mut client).await?;
    let secondary_pid = c.spawn_member()?;
    if primary_pid != first {
        return Err(format!(
            "expected pid {first} to be primary, got {primary_pid}"
        ));
    }
    c.wait_registered(1, epoch, primary_pid).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut idle_primary = Vec::with_capacity(samples);
    let mut idle_secondary = Vec::with_capacity(samples);
    for _ in 0..samples {
        idle_primary.push(rss_mib(primary_pid)?);
        idle_secondary.push(rss_mib(secondary_pid)?);
        tokio::time::sleep(SAMPLE_EVERY).await;
    }

    let blocker = super::blocker(&mut client).await?;
    let loaded = loaded_rss(&c, primary_pid, load_writes, &blocker).await;
    super::release(&c, &mut client, &blocker).await;
    let loaded = loaded?;

    Ok(vec![
        row("idle primary", &idle_primary, "≤ 30 MiB"),
        row("idle secondary", &idle_secondary, "≤ 15 MiB"),
        row(
            &format!("primary under load ({WRITERS} writers)"),
            &loaded,
            "≤ 30 MiB",
        ),
    ])
}

/// Samples the primary's RSS every few ms while the writers run.
async fn loaded_rss(
    c: &LocalCluster,
    pid: u32,
    writes: usize,
    blocker: &str,
) -> Result<Vec<f64>, String> {
    let writers = Writers::start(c, WRITERS, (writes / WRITERS).max(1), blocker);
    let mut loaded = Vec::new();
    loop {
        loaded.push(rss_mib(pid)?);
        if writers.finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writers.wait().await?;
    Ok(loaded)
}

fn row(what: &str, samples: &[f64], goal: &str) -> Row {
    Row {
        scenario: "memory".into(),
        metric: format!("RSS, {what}"),
        unit: "MiB".into(),
        p50: quantile(samples, 0.5),
        p99: quantile(samples, 0.99),
        samples: samples.len(),
        baseline: None,
        baseline_p50: None,
        goal: Some(goal.into()),
    }
}

/// `VmRSS` of `pid` in MiB.
fn rss_mib(pid: u32) -> Result<f64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("{path} has no VmRSS line"))?;
    Ok(kib / 1024.0)
}
