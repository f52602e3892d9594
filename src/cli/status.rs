//! `grove status`: the topology as this process sees it — the primary (from
//! `primary.json` confirmed by a ping), live secondaries (registered members
//! whose process still runs), heartbeat age, task counts.

use super::{CliError, Context, EXIT_OK, EXIT_UNAVAILABLE, print_json};
use crate::primary_record::PrimaryRecord;
use crate::protocol::{EventData, now_ms};
use serde::Serialize;
use std::time::Duration;

#[derive(Serialize)]
struct Status {
    workspace: String,
    /// "ok", "unresponsive" or "down".
    state: String,
    primary: Option<PrimaryView>,
    secondaries: Vec<crate::store::MemberRow>,
    heartbeat_age_ms: Option<u64>,
    tasks: std::collections::BTreeMap<String, u64>,
    problem: Option<String>,
}

#[derive(Serialize)]
struct PrimaryView {
    instance_id: String,
    pid: u32,
    epoch: u64,
    uptime_ms: Option<u64>,
    pub_endpoint: String,
    rpc_endpoint: String,
    last_seq: Option<u64>,
    /// The longest single poll of the primary's event loop (loop_watch).
    longest_poll_ms: Option<f64>,
}

pub async fn run(ctx: &Context, json: bool) -> Result<i32, CliError> {
    let record = PrimaryRecord::read(&ctx.ws);
    let mut client = ctx.client();
    let ping = crate::client::ping(&mut client).await;
    let (state, problem) = match &ping {
        Ok(_) => ("ok", None),
        Err(e)
            if e.is_unavailable() && matches!(e, crate::client::ClientError::Unresponsive(_)) =>
        {
            ("unresponsive", Some(e.to_string()))
        }
        Err(e) => ("down", Some(e.to_string())),
    };
    // After a failover the ping may have reached a newer primary.
    let record = PrimaryRecord::read(&ctx.ws).or(record);
    let primary = match (&ping, record) {
        (Ok(info), _) => Some(PrimaryView {
            instance_id: info.instance_id.clone(),
            pid: info.pid,
            epoch: info.epoch,
            uptime_ms: Some(info.uptime_ms),
            pub_endpoint: info.pub_endpoint.clone(),
            rpc_endpoint: info.rpc_endpoint.clone(),
            last_seq: Some(info.last_seq),
            longest_poll_ms: Some(info.longest_poll_us as f64 / 1000.0),
        }),
        (Err(_), Some(r)) if r.pid_alive() => Some(PrimaryView {
            instance_id: r.instance_id,
            pid: r.pid,
            epoch: r.epoch,
            uptime_ms: None,
            pub_endpoint: r.pub_endpoint,
            rpc_endpoint: r.rpc_endpoint,
            last_seq: None,
            longest_poll_ms: None,
        }),
        _ => None,
    };
    let heartbeat_age_ms = if primary.is_some() {
        heartbeat_age(ctx).await
    } else {
        None
    };
    let (secondaries, tasks) = match ctx.reader() {
        Ok(reader) => {
            let primary_id = primary.as_ref().map(|p| p.instance_id.clone());
            let members = reader
                .members()?
                .into_iter()
                .filter(|m| Some(&m.instance_id) != primary_id.as_ref())
                .filter(|m| crate::proc::running(m.pid))
                .collect();
            (members, reader.counts()?)
        }
        Err(_) => (Vec::new(), Default::default()),
    };
    let status = Status {
        workspace: ctx.ws.root.display().to_string(),
        state: state.to_string(),
        primary,
        secondaries,
        heartbeat_age_ms,
        tasks,
        problem,
    };
    if json {
        print_json(&status);
    } else {
        print_human(&status);
    }
    Ok(if status.state == "ok" {
        EXIT_OK
    } else {
        EXIT_UNAVAILABLE
    })
}

/// Waits for one heartbeat (at most ~2 s) and returns how old it was.
async fn heartbeat_age(ctx: &Context) -> Option<u64> {
    let first = ctx.reader().ok()?.last_seq().ok()? + 1;
    let mut sub = crate::subscriber::subscribe(&ctx.ws, first);
    let wait = Duration::from_millis((ctx.config.heartbeat_ms * 4).max(2000));
    tokio::time::timeout(wait, async {
        while let Some(e) = sub.events.recv().await {
            if matches!(e.data, EventData::Heartbeat { .. }) {
                return Some(now_ms().saturating_sub(e.at));
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

fn print_human(s: &Status) {
    outln!("workspace:   {}", s.workspace);
    outln!("state:       {}", s.state);
    match &s.primary {
        Some(p) => {
            let uptime = p
                .uptime_ms
                .map(|u| format!("{:.1}s", u as f64 / 1000.0))
                .unwrap_or_else(|| "?".into());
            outln!(
                "primary:     {} pid {} epoch {} up {}",
                &p.instance_id[..8.min(p.instance_id.len())],
                p.pid,
                p.epoch,
                uptime
            );
            outln!("  rpc:       {}", p.rpc_endpoint);
            outln!("  pub:       {}", p.pub_endpoint);
            if let Some(ms) = p.longest_poll_ms {
                outln!("  longest event-loop poll: {ms:.1} ms");
            }
        }
        None => outln!("primary:     none"),
    }
    match s.heartbeat_age_ms {
        Some(a) => outln!("heartbeat:   {a} ms ago"),
        None => outln!("heartbeat:   none received"),
    }
    outln!("secondaries: {}", s.secondaries.len());
    for m in &s.secondaries {
        outln!(
            "  {} pid {} ({}) joined at epoch {}",
            &m.instance_id[..8.min(m.instance_id.len())],
            m.pid,
            m.kind,
            m.epoch
        );
    }
    let counts: Vec<String> = s
        .tasks
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    outln!(
        "tasks:       {}",
        if counts.is_empty() {
            "none".into()
        } else {
            counts.join(", ")
        }
    );
    if let Some(p) = &s.problem {
        outln!("problem:     {p}");
    }
}

/// `grove status --watch`: refreshes twice a second until interrupted.
pub async fn watch(ctx: &Context) -> Result<i32, CliError> {
    let mut bars = super::live::TaskBars::new();
    let mut last_header = String::new();
    let mut tick = tokio::time::interval(WATCH_REFRESH);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(EXIT_OK),
        }
        let record = PrimaryRecord::read(&ctx.ws);
        let header = match (&record, ctx.reader()) {
            (Some(r), Ok(reader)) => {
                let counts = reader.counts().unwrap_or_default();
                let alive = if r.pid_alive() { "" } else { " (gone)" };
                let counts: Vec<String> = counts
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect();
                format!(
                    "primary pid {}{alive} epoch {} | {}",
                    r.pid,
                    r.epoch,
                    if counts.is_empty() {
                        "no tasks".into()
                    } else {
                        counts.join(", ")
                    }
                )
            }
            _ => "no grove member is running".to_string(),
        };
        if header != last_header {
            bars.println(&header);
            last_header = header;
        }
        if let Ok(reader) = ctx.reader() {
            let filter = crate::store::TaskFilter {
                status: Some(crate::protocol::TaskStatus::Running),
                ..Default::default()
            };
            let running = reader.tasks(&filter).unwrap_or_default();
            let ids: Vec<String> = running.iter().map(|t| t.id.clone()).collect();
            bars.retain(&ids);
            for t in &running {
                bars.update(t);
            }
        }
    }
}

/// How often `grove status --watch` redraws: twice a second reads as live
/// without flicker.
const WATCH_REFRESH: Duration = Duration::from_millis(500);
