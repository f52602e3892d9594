//! Tasks: spawn → running with a free slot, spawn → running and
//! throughput of trivial tasks under `max_parallel 8`, beside the cost of a
//! bare fork+exec of `/bin/true` measured in the same run.

use super::Row;
use super::stats::quantile;
use crate::local_cluster::LocalCluster;
use crate::protocol::{EventData, Method, NewTask, ReplyBody, TaskStatus};
use std::time::{Duration, Instant};

pub async fn run(count: usize, free_slot_spawns: usize) -> Result<Vec<Row>, String> {
    let baseline = fork_exec_true(200)?;
    let exec_p50 = quantile(&baseline, 0.5);
    let mut c = LocalCluster::with_config("max_parallel = 8\n")?;
    c.spawn_member()?;
    let mut client = c.client("bench-tasks");
    crate::client::wait_for_primary(&mut client, Duration::from_secs(30))
        .await
        .map_err(|e| format!("no primary: {e}"))?;
    let (free, agent) = free_slot(&c, &mut client, free_slot_spawns).await?;
    let mut rows = vec![Row {
        scenario: "tasks".into(),
        // The row has no p90 column; the brief's goal is stated at p50/p90.
        metric: format!(
            "spawn → running, free slot (p90 {:.2} ms)",
            quantile(&free, 0.9)
        ),
        unit: "ms".into(),
        p50: quantile(&free, 0.5),
        p99: quantile(&free, 0.99),
        samples: free.len(),
        baseline: Some("fork+exec /bin/true".into()),
        baseline_p50: Some(exec_p50),
        goal: Some("p50 ≤ 5 ms".into()),
    }];
    rows.push(Row {
        scenario: "tasks".into(),
        metric: format!(
            "spawn → agent started, free slot (p90 {:.2} ms)",
            quantile(&agent, 0.9)
        ),
        unit: "ms".into(),
        p50: quantile(&agent, 0.5),
        p99: quantile(&agent, 0.99),
        samples: agent.len(),
        baseline: Some("fork+exec /bin/true".into()),
        baseline_p50: Some(exec_p50),
        goal: None,
    });
    rows.extend(throughput(&c, &mut client, count, exec_p50).await?);
    Ok(rows)
}

/// Milliseconds from sending `task.create` until a subscriber sees the task
/// `running` (its slot taken), and until it sees the agent's pid (the shim
/// started and started the agent), one task at a time into an idle
/// workspace (each waits for the previous one to finish, so a slot is
/// always free).
async fn free_slot(
    c: &LocalCluster,
    client: &mut crate::client::Client,
    n: usize,
) -> Result<(Vec<f64>, Vec<f64>), String> {
    let first = crate::store::Reader::open(&c.ws.db_path())
        .and_then(|r| r.last_seq())
        .map_err(|e| e.to_string())?
        + 1;
    let mut sub = crate::subscriber::subscribe(&c.ws, first);
    let mut out = Vec::with_capacity(n);
    let mut agents: Vec<f64> = Vec::with_capacity(n);
    for _ in 0..n {
        let task = NewTask {
            prompt: "true".into(),
            ..Default::default()
        };
        let sent = Instant::now();
        let id = match client.call(Method::TaskCreate(task)).await {
            Ok(ReplyBody::Task(t)) => t.id,
            Ok(other) => return Err(format!("unexpected reply {other:?}")),
            Err(e) => return Err(e.to_string()),
        };
        let (mut running, mut agent) = (None, None);
        let until = Instant::now() + TASK_WAIT;
        loop {
            let event = tokio::time::timeout_at(until.into(), sub.events.recv())
                .await
                .map_err(|_| format!("task {id} did not finish within {TASK_WAIT:?}"))?
                .ok_or("the event stream ended")?;
            let EventData::TaskUpdated { task } = event.data else {
                continue;
            };
            if task.id != id {
                continue;
            }
            let ms = sent.elapsed().as_secs_f64() * 1000.0;
            if task.status == TaskStatus::Running && running.is_none() {
                running = Some(ms);
            }
            if task.pid.is_some() && agent.is_none() {
                agent = Some(ms);
            }
            if task.status.is_terminal() {
                break;
            }
        }
        out.push(running.ok_or(format!("task {id} ended without running"))?);
        // A task so quick that it ended before its pid was recorded has
        // no agent sample.
        agents.extend(agent);
    }
    Ok((out, agents))
}

/// How long one trivial task of the free-slot pass may take.
const TASK_WAIT: Duration = Duration::from_secs(30);

/// `count` trivial tasks created at once, run under `max_parallel 8`.
async fn throughput(
    c: &LocalCluster,
    client: &mut crate::client::Client,
    count: usize,
    exec_p50: f64,
) -> Result<Vec<Row>, String> {
    let syncs_before = wal_syncs(client).await?;
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
    let syncs = wal_syncs(client).await?.saturating_sub(syncs_before);
    let latency: Vec<f64> = outcome
        .tasks
        .values()
        .flatten()
        .filter_map(|t| Some(t.started_at?.saturating_sub(t.created_at) as f64))
        .collect();
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
        Row {
            scenario: "tasks".into(),
            metric: "run ends made durable by each WAL sync, in that burst".into(),
            unit: "ends".into(),
            p50: count as f64 / syncs.max(1) as f64,
            p99: count as f64 / syncs.max(1) as f64,
            samples: syncs as usize,
            baseline: None,
            baseline_p50: None,
            goal: None,
        },
    ])
}

/// The WAL syncs the primary has made for run ends so far (see
/// `store::wal_sync`).
async fn wal_syncs(client: &mut crate::client::Client) -> Result<u64, String> {
    let info = crate::client::ping(client)
        .await
        .map_err(|e| e.to_string())?;
    Ok(info.wal_syncs)
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
