//! ACP engines: what grove adds between an agent and whoever watches it.
//!
//! The agent is `grove bench-agent` (`acp/agent.rs`), run by a real shim
//! as an `acp` engine of a one-member cluster. A subscriber of this process
//! (`subscriber.rs`, what `grove events` and every member use) receives the
//! `task.agent_update` events.
//!
//! - Latency: each chunk carries the monotonic time it was made. It is read
//!   twice in the same run: directly (the agent reports it on a FIFO right
//!   after writing its line on stdout: the cost of a pipe) and through grove
//!   (agent → shim → outbox → primary → store commit → PUB → subscriber).
//!   The difference is what grove adds. A third path (`acp/editor.rs`)
//!   goes all the way to an editor: this bench as the ACP client of a
//!   `grove acp` subprocess whose session's mode is the agent's engine.
//!   The shim coalesces text chunks for
//!   a window before sending them (so that a chatty agent cannot flood the
//!   store); the chunk that opens a batch waits that whole window.
//! - Throughput: the agent sends its chunks as fast as it can; the rate at
//!   which the subscriber receives them, beside the rate of a raw ACP client
//!   of this bench reading the same agent's stdout directly, and the peak
//!   resident memory (`VmHWM`) of the shim and the primary meanwhile.

mod agent;
pub use agent::run as bench_agent;

use super::Row;
use super::stats::{monotonic_ns, quantile};
use crate::local_cluster::LocalCluster;
use crate::protocol::{EventData, Method, NewTask, ReplyBody};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

mod editor;
mod tap;

pub struct Plan {
    /// Chunks of the latency phase, one every `every_ms`.
    pub chunks: usize,
    pub every_ms: u64,
    /// Bytes the flood sends, in chunks of `chunk_bytes`.
    pub flood_bytes: u64,
    pub chunk_bytes: usize,
}

const ENGINE: &str = "bench-agent";
/// How long a phase may take beyond its own length.
const SLACK: Duration = Duration::from_secs(60);

pub async fn run(plan: &Plan) -> Result<Vec<Row>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this grove: {e}"))?;
    let toml = format!(
        "[engines.{ENGINE}]\nkind = \"acp\"\ncommand = [{:?}, \"bench-agent\"]\n\
         permissions = \"allow_all\"\n",
        exe.display().to_string()
    );
    let mut c = LocalCluster::with_config(&toml)?;
    c.spawn_member()?;
    let mut client = c.client("bench-acp");
    let (primary, _) = super::failover::primary(&mut client).await?;
    let mut rows = latency(&c, &mut client, plan).await?;
    rows.extend(editor::latency(&c, &mut client, plan).await?);
    let direct = direct_flood(&exe, plan).await?;
    rows.extend(flood(&c, &mut client, primary, plan, direct).await?);
    Ok(rows)
}

/// What the subscriber received of one task: for each event, the time it
/// arrived and the chunk markers `(i, made at)` of its text.
async fn receive(
    sub: &mut crate::subscriber::Subscription,
    task: &str,
    chunks: u64,
    within: Duration,
) -> Result<Vec<(u64, Vec<(u64, u64)>)>, String> {
    let until = tokio::time::Instant::now() + within;
    let mut events = Vec::new();
    let mut got = 0;
    while got < chunks {
        let event = match tokio::time::timeout_at(until, sub.events.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) => return Err("the subscription ended".into()),
            Err(_) => return Err(format!("{got} of {chunks} chunks arrived in {within:?}")),
        };
        let at = monotonic_ns();
        if let EventData::TaskAgentUpdate { id, kind, acp, .. } = event.data
            && id == task
            && kind == "agent_message_chunk"
        {
            let update: serde_json::Value = serde_json::from_str(&acp).unwrap_or_default();
            let text = update["content"]["text"].as_str().unwrap_or("");
            let m: Vec<(u64, u64)> = agent::markers(text).collect();
            got += m.len() as u64;
            events.push((at, m));
        }
    }
    Ok(events)
}

async fn subscribed(c: &LocalCluster) -> Result<crate::subscriber::Subscription, String> {
    let first = crate::store::Reader::open(&c.ws.db_path())
        .and_then(|r| r.last_seq())
        .map_err(|e| e.to_string())?
        + 1;
    let sub = crate::subscriber::subscribe(&c.ws, first);
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while sub.health.heartbeat_age_ms().is_none() {
        if tokio::time::Instant::now() > until {
            return Err("the subscriber did not connect within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(sub)
}

async fn create(client: &mut crate::client::Client, prompt: String) -> Result<String, String> {
    let task = NewTask {
        prompt,
        engine: Some(ENGINE.into()),
        tags: vec!["bench-acp".into()],
        ..Default::default()
    };
    match client.call(Method::TaskCreate(task)).await {
        Ok(ReplyBody::Task(t)) => Ok(t.id),
        Ok(other) => Err(format!("unexpected reply {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Waits until the task has ended, so that no shim or agent outlives the
/// bench; fails with its status when it did not complete.
async fn ended(c: &LocalCluster, task: &str) -> Result<(), String> {
    let reader = crate::store::Reader::open(&c.ws.db_path()).map_err(|e| e.to_string())?;
    let until = tokio::time::Instant::now() + SLACK;
    loop {
        let t = reader
            .task(task)
            .map_err(|e| e.to_string())?
            .ok_or("the task vanished")?;
        if t.status.is_terminal() {
            return match t.status {
                crate::protocol::TaskStatus::Completed => Ok(()),
                s => Err(format!("the bench agent's task ended {s:?}")),
            };
        }
        if tokio::time::Instant::now() > until {
            return Err(format!("the bench agent's task is still {:?}", t.status));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn latency(
    c: &LocalCluster,
    client: &mut crate::client::Client,
    plan: &Plan,
) -> Result<Vec<Row>, String> {
    let tap = tap::Tap::open(&c.dir.path().join("chunks.fifo"))?;
    let mut sub = subscribed(c).await?;
    let n = plan.chunks.max(1) as u64;
    let prompt = format!("latency {n} {} {}", plan.every_ms, tap.path.display());
    let task = create(client, prompt).await?;
    let within = Duration::from_millis(plan.every_ms * n) + SLACK;
    let events = receive(&mut sub, &task, n, within).await?;
    let direct = tap.collect(n, SLACK)?;
    ended(c, &task).await?;
    let (mut through, mut base, mut added, mut opening) = (vec![], vec![], vec![], vec![]);
    for (at, markers) in &events {
        for (k, (i, made)) in markers.iter().enumerate() {
            let Some(read) = direct.get(i) else { continue };
            let grove = (at.saturating_sub(*made)) as f64 / 1e6;
            let pipe = (read.saturating_sub(*made)) as f64 / 1e6;
            through.push(grove);
            base.push(pipe);
            added.push(grove - pipe);
            if k == 0 {
                opening.push(grove - pipe);
            }
        }
    }
    let base_p50 = quantile(&base, 0.5);
    let row = |metric: String, s: &[f64], goal: Option<&str>| Row {
        scenario: "acp".into(),
        metric,
        unit: "ms".into(),
        p50: quantile(s, 0.5),
        p99: quantile(s, 0.99),
        samples: s.len(),
        baseline: Some("same chunk read directly (pipe)".into()),
        baseline_p50: Some(base_p50),
        goal: goal.map(str::to_string),
    };
    Ok(vec![
        row(
            format!("chunk agent → subscriber, one per {} ms", plan.every_ms),
            &through,
            None,
        ),
        row(
            "added per chunk (through grove − direct)".into(),
            &added,
            Some("p50 ≤ 2 ms added"),
        ),
        row(
            format!("added, chunks opening a batch ({} batches)", opening.len()),
            &opening,
            None,
        ),
    ])
}

/// The agent alone: a raw ACP client of this bench reads the flood from
/// its stdout; chunks per second from the first chunk made to the last read.
async fn direct_flood(exe: &std::path::Path, plan: &Plan) -> Result<f64, String> {
    let mut child = tokio::process::Command::new(exe)
        .arg("bench-agent")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start grove bench-agent: {e}"))?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("the bench agent has no stdio".into());
    };
    let mut lines = BufReader::new(stdout).lines();
    let dir = std::env::temp_dir();
    let prompt = format!("flood {} {}", plan.flood_bytes, plan.chunk_bytes);
    let requests = [
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": 1}}),
        serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "session/new",
            "params": {"cwd": dir, "mcpServers": []}}),
        serde_json::json!({"jsonrpc": "2.0", "id": 3, "method": "session/prompt",
            "params": {"sessionId": "bench", "prompt": [{"type": "text", "text": prompt}]}}),
    ];
    let (mut first, mut last, mut n) = (None, 0, 0u64);
    let read = async {
        for (k, request) in requests.iter().enumerate() {
            let line = format!("{request}\n");
            stdin
                .write_all(line.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            // Each answer before the next request: the crate refuses
            // session requests before initialize has been answered.
            loop {
                let line = lines.next_line().await.map_err(|e| e.to_string())?;
                let line = line.ok_or("the bench agent closed its stdout")?;
                let at = monotonic_ns();
                for (_, made) in agent::markers(&line) {
                    first.get_or_insert(made);
                    last = at;
                    n += 1;
                }
                if line.contains(&format!("\"id\":{}", k + 1)) && !line.contains("\"method\"") {
                    break;
                }
            }
        }
        Ok::<_, String>(())
    };
    tokio::time::timeout(SLACK, read)
        .await
        .map_err(|_| "the bench agent alone did not finish its flood".to_string())??;
    let _ = child.kill().await;
    let secs = last.saturating_sub(first.unwrap_or(last)) as f64 / 1e9;
    Ok(n as f64 / secs.max(1e-9))
}

async fn flood(
    c: &LocalCluster,
    client: &mut crate::client::Client,
    primary: u32,
    plan: &Plan,
    direct_rate: f64,
) -> Result<Vec<Row>, String> {
    let mut sub = subscribed(c).await?;
    let size = plan.chunk_bytes.max(32);
    let chunks = plan.flood_bytes.div_ceil(size as u64);
    let task = create(client, format!("flood {} {size}", plan.flood_bytes)).await?;
    let received = {
        let task = task.clone();
        tokio::spawn(async move {
            let r = receive(&mut sub, &task, chunks, SLACK * 2).await;
            (r, sub)
        })
    };
    // VmHWM only grows: its last reading while the shim lives is its peak.
    let (mut shim, mut shim_peak) = (None, 0.0f64);
    while !received.is_finished() {
        if shim.is_none() {
            shim = shim_pid(c, &task);
        }
        if let Some(pid) = shim {
            shim_peak = shim_peak.max(peak_rss_mib(pid).unwrap_or(0.0));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (events, _sub) = received.await.map_err(|e| e.to_string())?;
    let events = events?;
    let primary_peak = peak_rss_mib(primary).unwrap_or(0.0);
    ended(c, &task).await?;
    let first = events
        .iter()
        .flat_map(|(_, m)| m.iter().map(|(_, made)| *made))
        .min()
        .unwrap_or(0);
    let last = events.last().map(|(at, _)| *at).unwrap_or(first);
    let secs = (last.saturating_sub(first) as f64 / 1e9).max(1e-9);
    Ok(flood_rows(
        plan,
        chunks,
        (chunks as f64 / secs, direct_rate),
        (shim_peak, primary_peak),
    ))
}

/// The flood's rows: `rates` (through grove, directly) in chunks/s and the
/// peaks (shim, primary) in MiB.
fn flood_rows(plan: &Plan, chunks: u64, rates: (f64, f64), peaks: (f64, f64)) -> Vec<Row> {
    let size = plan.chunk_bytes.max(32) as f64;
    let mb = plan.flood_bytes as f64 / 1e6;
    let one = |metric: String, unit: &str, v: f64, base: Option<f64>, goal: &str| Row {
        scenario: "acp".into(),
        metric,
        unit: unit.into(),
        p50: v,
        p99: v,
        samples: chunks as usize,
        baseline: base.map(|_| "the agent read directly".to_string()),
        baseline_p50: base,
        goal: Some(goal.into()),
    };
    let of = format!("{mb:.0} MB of {size} B");
    vec![
        one(
            format!("chunks/s through grove, {of}"),
            "chunks/s",
            rates.0,
            Some(rates.1),
            "keeps up",
        ),
        one(
            format!("MB/s through grove, {of}"),
            "MB/s",
            rates.0 * size / 1e6,
            Some(rates.1 * size / 1e6),
            "keeps up",
        ),
        one(
            format!("peak RSS of the shim, {mb:.0} MB flood"),
            "MiB",
            peaks.0,
            None,
            "bounded",
        ),
        one(
            format!("peak RSS of the primary, {mb:.0} MB flood"),
            "MiB",
            peaks.1,
            None,
            "bounded",
        ),
    ]
}

/// The shim of the task's current run, while it runs.
fn shim_pid(c: &LocalCluster, task: &str) -> Option<u32> {
    let reader = crate::store::Reader::open(&c.ws.db_path()).ok()?;
    let run_id = reader.task(task).ok()??.run_id?;
    let run = crate::runs::RunFiles::read_run(&c.ws, task, &run_id)?;
    Some(run.shim_pid)
}

/// `VmHWM` (the peak resident set) of `pid` in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(kib / 1024.0)
}
