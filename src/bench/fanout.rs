//! Fanout: committed events reaching 1, 8 and 32 subscribers
//! (`grove::subscriber::subscribe`, in this process), while four writers
//! commit as fast as the primary lets them.
//!
//! - *events/s delivered*: per subscriber, the events of the run divided by
//!   the time from the first write to that subscriber's last delivery. The
//!   p50 column is the median subscriber, the p99 column the slow tail (the
//!   rate 99 % of subscribers reach). Grove cannot deliver faster than it
//!   commits, so the commit rate of the same pass is reported beside it.
//! - *events lost on the wire*: events a subscriber delivered that a bare
//!   SUB beside it (its tap, see `probe`) never received, i.e. repaired
//!   from the store.
//! - *kill -9 mid-stream*: the gap every failover opens (committed but not
//!   yet published, and whatever the new primary published before a
//!   subscriber reconnected): how much was lost on the wire and how long
//!   after the kill the last lost event was delivered.
//! - *missing after repair*: events of a pass never delivered, or delivered
//!   out of order, by any subscriber; the goal is 0.
//!
//! The baseline (`raw`) is a bare PUB sending frames of the same size to
//! the same number of bare SUBs on the same runtime thread, with the same
//! crate and transport: what the wire alone can fan out, and what it loses
//! with nobody repairing. The taps are extra SUB sockets on that same thread
//! (2 × k sockets against the baseline's k); on a small machine their CPU
//! shows as a lower commit rate at 32 subscribers, not as subscribers
//! falling behind the commits.

mod probe;
mod raw;

use super::Row;
use super::failover::primary;
use super::load::Writers;
use super::stats::quantile;
use crate::local_cluster::LocalCluster;
use probe::{Probes, Record};
use std::time::{Duration, Instant};

const SIZES: [usize; 3] = [1, 8, 32];
const WRITERS: usize = 4;
/// Subscribers watching during the kill rounds.
const KILL_SUBSCRIBERS: usize = 8;

pub struct Plan {
    /// Events written per steady pass (one pass per size).
    pub events: usize,
    /// Kill rounds, each writing `kill_events` with a kill -9 halfway.
    pub kill_rounds: usize,
    pub kill_events: usize,
}

/// What one subscriber of one pass amounted to.
struct Tally {
    rate: f64,
    lost: usize,
    missing: usize,
    /// Kill → the last event lost on the wire delivered (ms).
    repair_ms: Option<f64>,
}

pub async fn run(plan: &Plan) -> Result<Vec<Row>, String> {
    let mut c = LocalCluster::new()?;
    c.spawn_member()?;
    let mut client = c.client("bench-fanout");
    primary(&mut client).await?;
    let blocker = super::blocker(&mut client).await?;
    let rows = measure(&mut c, &mut client, plan, &blocker).await;
    super::release(&c, &mut client, &blocker).await;
    rows
}

async fn measure(
    c: &mut LocalCluster,
    client: &mut crate::client::Client,
    plan: &Plan,
    blocker: &str,
) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let mut missing = Vec::new();
    for k in SIZES {
        let (tallies, commit_rate, payload_len) = steady(c, k, plan.events, blocker).await?;
        let raw = raw::run(k, plan.events, payload_len).await?;
        missing.extend(tallies.iter().map(|t| t.missing as f64));
        rows.extend(steady_rows(k, &tallies, commit_rate, &raw));
    }
    c.spawn_member()?; // the successor for the kill rounds
    let mut killed = Vec::new();
    for _ in 0..plan.kill_rounds {
        killed.extend(kill_round(c, client, plan.kill_events, blocker).await?);
    }
    missing.extend(killed.iter().map(|t| t.missing as f64));
    let lost: Vec<f64> = killed.iter().map(|t| t.lost as f64).collect();
    let repair: Vec<f64> = killed.iter().filter_map(|t| t.repair_ms).collect();
    rows.push(row(
        format!("kill -9 mid-stream: lost on the wire, {KILL_SUBSCRIBERS} subs"),
        "events",
        &lost,
        false,
    ));
    rows.push(row(
        "kill -9 mid-stream → lost events delivered".into(),
        "ms",
        &repair,
        false,
    ));
    let mut summary = row(
        "events missing after repair (all passes)".into(),
        "events",
        &missing,
        false,
    );
    summary.goal = Some("0 lost after repair".into());
    rows.push(summary);
    Ok(rows)
}

/// One pass of `events` writes watched by `k` subscribers. Returns their
/// tallies, the commit rate, and the encoded size of one event.
async fn steady(
    c: &LocalCluster,
    k: usize,
    events: usize,
    blocker: &str,
) -> Result<(Vec<Tally>, f64, usize), String> {
    let probes = Probes::start(&c.ws, last_seq(c)? + 1, k);
    probes.wait_ready().await?;
    // Count from here: whatever was committed while the probes connected
    // reached them by catch-up, a join's gap, not the fanout's.
    let first = last_seq(c)? + 1;
    let t0 = Instant::now();
    let per = (events / WRITERS).max(1);
    let (written, elapsed) = Writers::start(c, WRITERS, per, blocker).wait().await?;
    let target = last_seq(c)?;
    let records = probes.collect(target).await?;
    let tallies = records
        .iter()
        .map(|r| tally(r, first, target, t0, None))
        .collect();
    let commit_rate = written as f64 / elapsed.as_secs_f64().max(1e-9);
    Ok((tallies, commit_rate, event_len(c, first)?))
}

/// One pass of `events` writes with the primary killed halfway, watched by
/// `KILL_SUBSCRIBERS` subscribers; leaves a new successor starting.
async fn kill_round(
    c: &mut LocalCluster,
    client: &mut crate::client::Client,
    events: usize,
    blocker: &str,
) -> Result<Vec<Tally>, String> {
    let (pid, epoch) = primary(client).await?;
    c.wait_registered(1, epoch, pid).await?;
    let probes = Probes::start(&c.ws, last_seq(c)? + 1, KILL_SUBSCRIBERS);
    probes.wait_ready().await?;
    let first = last_seq(c)? + 1;
    let t0 = Instant::now();
    let writers = Writers::start(c, WRITERS, (events / WRITERS).max(1), blocker);
    wait_seq(c, first + events as u64 / 2).await?;
    let killed_at = Instant::now();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    writers.wait().await?;
    let target = last_seq(c)?;
    let records = probes.collect(target).await?;
    c.reap();
    c.spawn_member()?;
    Ok(records
        .iter()
        .map(|r| tally(r, first, target, t0, Some(killed_at)))
        .collect())
}

fn tally(r: &Record, first: u64, target: u64, t0: Instant, kill: Option<Instant>) -> Tally {
    let in_range = |s: u64| (first..=target).contains(&s);
    let mut delivered = std::collections::HashMap::new();
    let mut disorder = 0;
    let mut prev = 0;
    for &(seq, at) in r.delivered.iter().filter(|(s, _)| in_range(*s)) {
        if seq <= prev {
            disorder += 1;
        }
        prev = seq;
        delivered.insert(seq, at);
    }
    let expected = (target + 1).saturating_sub(first) as usize;
    let last = delivered.values().max();
    let secs = last.map_or(0.0, |l| l.duration_since(t0).as_secs_f64());
    let lost: Vec<u64> = (first..=target)
        .filter(|s| !r.tapped.contains(s) && delivered.contains_key(s))
        .collect();
    let repair_ms = kill.and_then(|k| {
        lost.iter()
            .filter_map(|s| delivered.get(s))
            .filter(|at| **at > k)
            .map(|at| at.duration_since(k).as_secs_f64() * 1000.0)
            .reduce(f64::max)
    });
    Tally {
        rate: if secs > 0.0 {
            delivered.len() as f64 / secs
        } else {
            0.0
        },
        lost: lost.len(),
        missing: expected - delivered.len().min(expected) + disorder,
        repair_ms,
    }
}

fn steady_rows(k: usize, t: &[Tally], commit_rate: f64, raw: &raw::RawRun) -> Vec<Row> {
    let rates: Vec<f64> = t.iter().map(|t| t.rate).collect();
    let lost: Vec<f64> = t.iter().map(|t| t.lost as f64).collect();
    let mut delivered = row(
        format!("events/s delivered to each of {k} subs"),
        "events/s",
        &rates,
        true,
    );
    delivered.baseline = Some(format!("raw PUB→SUB, {k} SUBs"));
    delivered.baseline_p50 = Some(quantile(&raw.rates, 0.5));
    let mut committed = row(
        format!("events/s committed meanwhile, {k} subs"),
        "events/s",
        &[commit_rate],
        false,
    );
    committed.samples = 1;
    let mut wire = row(
        format!("events lost on the wire, {k} subs"),
        "events",
        &lost,
        false,
    );
    wire.baseline = Some(format!("raw PUB→SUB lost, {k} SUBs"));
    wire.baseline_p50 = Some(quantile(&raw.lost, 0.5));
    vec![delivered, committed, wire]
}

/// A fanout row; `rate` makes the p99 column the slow tail.
fn row(metric: String, unit: &str, samples: &[f64], rate: bool) -> Row {
    Row {
        scenario: "fanout".into(),
        metric,
        unit: unit.into(),
        p50: quantile(samples, 0.5),
        p99: quantile(samples, if rate { 0.01 } else { 0.99 }),
        samples: samples.len(),
        baseline: None,
        baseline_p50: None,
        goal: None,
    }
}

fn last_seq(c: &LocalCluster) -> Result<u64, String> {
    crate::store::Reader::open(&c.ws.db_path())
        .and_then(|r| r.last_seq())
        .map_err(|e| e.to_string())
}

/// The size of event `seq` as published (its MessagePack frame).
fn event_len(c: &LocalCluster, seq: u64) -> Result<usize, String> {
    let reader = crate::store::Reader::open(&c.ws.db_path()).map_err(|e| e.to_string())?;
    let events = reader.events_from(seq, 1).map_err(|e| e.to_string())?;
    let event = events.first().ok_or("no event to size")?;
    Ok(crate::protocol::encode(event).len())
}

/// Waits until the store holds event `seq`.
async fn wait_seq(c: &LocalCluster, seq: u64) -> Result<(), String> {
    let reader = crate::store::Reader::open(&c.ws.db_path()).map_err(|e| e.to_string())?;
    let until = Instant::now() + Duration::from_secs(30);
    while reader.last_seq().map_err(|e| e.to_string())? < seq {
        if Instant::now() > until {
            return Err(format!("event {seq} was not committed within 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}
