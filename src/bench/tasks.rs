//! Tasks: spawn → running latency and throughput of trivial tasks under
//! `max_parallel 8`, beside the cost of a bare fork+exec of `/bin/true`.

use super::Row;
use super::stats::quantile;
use crate::local_cluster::LocalCluster;
use crate::protocol::{Method, NewTask, ReplyBody};
use std::time::{Duration, Instant};

pub async fn run(count: usize) -> Result<Vec<Row>, String> {
    let baseline = fork_exec_true(200)?;
    let mut c = LocalCluster::with_config("max_parallel = 8\n")?;
    c.spawn_member()?;
    let mut client = c.client("bench-tasks");
    crate::client::wait_for_primary(&mut client, Duration::from_secs(30))
        .await
        .map_err(|e| format!("no primary: {e}"))?;
    let started = Instant::now();
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let task = NewTask {
            prompt: "true".into(),
            ..Default::default()
        };
        match client.call(Method::TaskCreate(task)).await {
            Ok(ReplyBody::Task(t)) => ids.push(t.id),
            Ok(other) => return Err(format!("unexpected reply {other:?}")),
            Err(e) => return Err(e.to_string()),
        }
    }
    let outcome = crate::waiter::wait(
        &c.ws,
        &ids,
        crate::waiter::Policy::All,
        Some(Duration::from_secs(600)),
        |_| {},
    )
    .await?;
    if outcome.timed_out || !outcome.satisfied {
        return Err("not every trivial task completed".into());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let latency: Vec<f64> = outcome
        .tasks
        .values()
        .flatten()
        .filter_map(|t| Some(t.started_at?.saturating_sub(t.created_at) as f64))
        .collect();
    let exec_p50 = quantile(&baseline, 0.5);
    Ok(vec![
        Row {
            scenario: "tasks".into(),
            metric: "spawn → running (queue wait included)".into(),
            unit: "ms".into(),
            p50: quantile(&latency, 0.5),
            p99: quantile(&latency, 0.99),
            samples: latency.len(),
            baseline: Some("fork+exec /bin/true".into()),
            baseline_p50: Some(exec_p50),
            goal: None,
        },
        Row {
            scenario: "tasks".into(),
            metric: format!("{count} trivial tasks, max_parallel 8"),
            unit: "tasks/s".into(),
            p50: count as f64 / elapsed,
            p99: count as f64 / elapsed,
            samples: count,
            baseline: Some("fork+exec /bin/true".into()),
            baseline_p50: Some(1000.0 / exec_p50.max(1e-6)),
            goal: None,
        },
    ])
}

/// Milliseconds per `fork+exec+wait` of `/bin/true`.
fn fork_exec_true(n: usize) -> Result<Vec<f64>, String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        std::process::Command::new("/bin/true")
            .status()
            .map_err(|e| format!("cannot run /bin/true: {e}"))?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}
