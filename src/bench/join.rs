//! Join: from starting a `grove serve` process beside a running primary
//! until that secondary is ready to read and write — its `hello` committed
//! (the reply is sent right after COMMIT) and its row in the members table
//! at the current epoch.
//!
//! The moment of readiness is the arrival of its `instance.joined` event on
//! a subscription this bench holds open for the whole run, so no polling
//! interval inflates the figure; the members row is then checked. The
//! baseline is the same binary started as `grove --version` until it has
//! exited: fork, exec, loading and argument parsing, with no grove work.
//! The two are measured alternately so they share the machine's noise.

use super::Row;
use super::failover::primary;
use super::stats::quantile;
use crate::local_cluster::LocalCluster;
use crate::protocol::EventData;
use crate::subscriber::Subscription;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub async fn run(count: usize) -> Result<Vec<Row>, String> {
    let mut c = LocalCluster::new()?;
    c.spawn_member()?;
    let mut client = c.client("bench-join");
    let (_, epoch) = primary(&mut client).await?;
    let mut sub = subscription(&c).await?;
    let mut join = Vec::with_capacity(count);
    let mut version = Vec::with_capacity(count);
    for _ in 0..count {
        version.push(version_ms()?);
        join.push(join_ms(&mut c, &mut sub, epoch).await?);
    }
    Ok(vec![Row {
        scenario: "join".into(),
        metric: "process start → secondary ready".into(),
        unit: "ms".into(),
        p50: quantile(&join, 0.5),
        p99: quantile(&join, 0.99),
        samples: join.len(),
        baseline: Some("process start → `grove --version` exits".into()),
        baseline_p50: Some(quantile(&version, 0.5)),
        goal: Some("≤ baseline + 30 ms".into()),
    }])
}

/// A subscription from the end of the log, live on the primary's PUB.
async fn subscription(c: &LocalCluster) -> Result<Subscription, String> {
    let reader = crate::store::Reader::open(&c.ws.db_path()).map_err(|e| e.to_string())?;
    let first = reader.last_seq().map_err(|e| e.to_string())? + 1;
    let sub = crate::subscriber::subscribe(&c.ws, first);
    let until = Instant::now() + Duration::from_secs(10);
    while sub.health.heartbeat_age_ms().is_none() {
        if Instant::now() > until {
            return Err("the subscription received no heartbeat".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(sub)
}

/// Starts one secondary, times it to readiness, then stops it again.
async fn join_ms(c: &mut LocalCluster, sub: &mut Subscription, epoch: u64) -> Result<f64, String> {
    let t0 = Instant::now();
    let pid = c.spawn_member()?;
    let joined = joined(sub, pid, epoch).await;
    let elapsed = t0.elapsed().as_secs_f64() * 1000.0;
    let visible = joined.and_then(|()| member_visible(c, pid, epoch));
    if let Some(i) = c.members.iter().position(|m| m.id() == pid) {
        let mut child = c.members.remove(i);
        let _ = child.kill();
        let _ = child.wait();
    }
    visible.map(|()| elapsed)
}

/// Waits for the `instance.joined` of `pid` at `epoch`.
async fn joined(sub: &mut Subscription, pid: u32, epoch: u64) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline, sub.events.recv())
            .await
            .map_err(|_| format!("secondary {pid} did not join within 10 s"))?
            .ok_or("the subscription ended")?;
        if let EventData::InstanceJoined { member, epoch: e } = &event.data
            && member.pid == pid
            && *e == epoch
        {
            return Ok(());
        }
    }
}

fn member_visible(c: &LocalCluster, pid: u32, epoch: u64) -> Result<(), String> {
    let reader = crate::store::Reader::open(&c.ws.db_path()).map_err(|e| e.to_string())?;
    let members = reader.members().map_err(|e| e.to_string())?;
    if members.iter().any(|m| m.pid == pid && m.epoch == epoch) {
        Ok(())
    } else {
        Err(format!(
            "secondary {pid} is not in the members table at epoch {epoch}"
        ))
    }
}

/// Milliseconds from spawning `grove --version` until it has exited.
fn version_ms() -> Result<f64, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let status = Command::new(exe)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run grove --version: {e}"))?;
    if !status.success() {
        return Err(format!("grove --version failed: {status}"));
    }
    Ok(t0.elapsed().as_secs_f64() * 1000.0)
}
