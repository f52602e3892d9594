//! Failover: SIGKILL the primary and time (a) until a client's write is
//! acknowledged by the new primary and (b) until every surviving secondary
//! has re-registered (its own write acknowledged) with the new primary —
//! for 1, 3 and 8 secondaries, beside the raw kernel flock handoff between
//! two processes (the floor any flock-elected failover stands on).
//!
//! With one secondary there is no survivor once it is promoted, so that
//! size reports the write row only.

use super::Row;
use super::stats::{monotonic_ns, ms_between, quantile};
use crate::local_cluster::LocalCluster;
use crate::protocol::{EventData, now_ms};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub async fn run(sizes: &[usize], kills: usize) -> Result<Vec<Row>, String> {
    let flock = flock_handoffs(kills, libc::SIGKILL)?;
    let baseline = Baseline {
        name: "raw flock handoff (kill -9 → waiter)",
        p50: quantile(&flock, 0.5),
    };
    let mut rows = Vec::new();
    for &n in sizes {
        let s = rounds(n, kills, libc::SIGKILL).await?;
        rows.push(s.write_row("failover", "kill -9", &baseline, "p50 ≤ 5 ms"));
        rows.extend(s.all_row("failover", "kill -9", &baseline, Some("p50 ≤ 100 ms")));
        rows.extend(s.phase_rows("failover", "kill -9"));
    }
    rows.push(flock_row("failover", "raw flock handoff", &flock));
    Ok(rows)
}

/// The same-run floor a row is compared with.
pub(super) struct Baseline {
    pub name: &'static str,
    pub p50: f64,
}

/// Timings of repeated primary stops with `secondaries` members following.
pub(super) struct Samples {
    pub secondaries: usize,
    /// Signal → the first write acknowledged by the new primary (ms).
    pub to_write: Vec<f64>,
    /// Signal → the last survivor's `hello` committed (ms; empty with no survivor).
    pub to_all: Vec<f64>,
    /// Signal → the end of each promotion phase (ms), one entry per round
    /// whose new primary logged its phases.
    pub phases: Vec<[f64; PHASES.len()]>,
    /// Signal → a survivor noticed the new `primary.json`, and → it was
    /// registered (its first write answered), per survivor and round (ms).
    pub noticed: Vec<f64>,
    pub registered: Vec<f64>,
}

/// The promotion phases the new primary logs (`node/primary.rs::Phases`),
/// as the log's field names and as the bench shows them.
pub(super) const PHASES: [(&str, &str); 5] = [
    ("lock_ns", "election lock won"),
    ("store_ns", "store read-write, epoch committed"),
    ("bound_ns", "sockets bound"),
    ("record_ns", "primary.json written"),
    ("serving_ns", "store thread and publisher started"),
];

impl Samples {
    pub fn write_row(&self, scenario: &str, how: &str, base: &Baseline, goal: &str) -> Row {
        Row {
            scenario: scenario.into(),
            metric: format!(
                "{how} → new primary accepts a write, {} sec.",
                self.secondaries
            ),
            unit: "ms".into(),
            p50: quantile(&self.to_write, 0.5),
            p99: quantile(&self.to_write, 0.99),
            samples: self.to_write.len(),
            baseline: Some(base.name.into()),
            baseline_p50: Some(base.p50),
            goal: Some(goal.into()),
        }
    }

    /// Where the time to a new primary goes: kill → the end of each
    /// promotion phase, and → a survivor noticed / registered.
    pub fn phase_rows(&self, scenario: &str, how: &str) -> Vec<Row> {
        let n = self.secondaries;
        let row = |what: &str, samples: &[f64]| Row {
            scenario: scenario.into(),
            metric: format!("{how} → {what}, {n} sec."),
            unit: "ms".into(),
            p50: quantile(samples, 0.5),
            p99: quantile(samples, 0.99),
            samples: samples.len(),
            baseline: None,
            baseline_p50: None,
            goal: None,
        };
        let mut rows: Vec<Row> = PHASES
            .iter()
            .enumerate()
            .map(|(i, (_, what))| {
                let at: Vec<f64> = self.phases.iter().map(|p| p[i]).collect();
                row(what, &at)
            })
            .filter(|r| r.samples > 0)
            .collect();
        if !self.noticed.is_empty() {
            rows.push(row("a survivor noticed primary.json", &self.noticed));
            rows.push(row("a survivor registered", &self.registered));
        }
        rows
    }

    /// `None` when no secondary survives the promotion.
    pub fn all_row(
        &self,
        scenario: &str,
        how: &str,
        base: &Baseline,
        goal: Option<&str>,
    ) -> Option<Row> {
        if self.to_all.is_empty() {
            return None;
        }
        Some(Row {
            scenario: scenario.into(),
            metric: match self.secondaries - 1 {
                1 => format!("{how} → the other secondary writes"),
                n => format!("{how} → all {n} secondaries write"),
            },
            unit: "ms".into(),
            p50: quantile(&self.to_all, 0.5),
            p99: quantile(&self.to_all, 0.99),
            samples: self.to_all.len(),
            baseline: Some(base.name.into()),
            baseline_p50: Some(base.p50),
            goal: goal.map(String::from),
        })
    }
}

pub(super) fn flock_row(scenario: &str, metric: &str, flock: &[f64]) -> Row {
    Row {
        scenario: scenario.into(),
        metric: metric.into(),
        unit: "ms".into(),
        p50: quantile(flock, 0.5),
        p99: quantile(flock, 0.99),
        samples: flock.len(),
        baseline: None,
        baseline_p50: None,
        goal: None,
    }
}

/// Stops the primary with `signal` `count` times, each time with
/// `secondaries` members following it, and times the takeover.
pub(super) async fn rounds(
    secondaries: usize,
    count: usize,
    signal: i32,
) -> Result<Samples, String> {
    let secondaries = secondaries.max(1);
    let mut c = LocalCluster::new()?;
    c.spawn_member()?;
    let mut client = c.client("bench-failover");
    let (pid, epoch) = primary(&mut client).await?;
    for _ in 0..secondaries {
        c.spawn_member()?;
    }
    c.wait_registered(secondaries, epoch, pid).await?;
    let blocker = super::blocker(&mut client).await?;
    let mut s = Samples {
        secondaries,
        to_write: Vec::new(),
        to_all: Vec::new(),
        phases: Vec::new(),
        noticed: Vec::new(),
        registered: Vec::new(),
    };
    let done = stop_primaries(&mut c, &mut client, &blocker, &mut s, count, signal).await;
    super::release(&c, &mut client, &blocker).await;
    done.map(|()| s)
}

/// The rounds themselves: stop, time, replace the lost member, repeat.
async fn stop_primaries(
    c: &mut LocalCluster,
    client: &mut crate::client::Client,
    blocker: &str,
    s: &mut Samples,
    count: usize,
    signal: i32,
) -> Result<(), String> {
    let (mut pid, mut epoch) = primary(client).await?;
    for _ in 0..count {
        // Warm: the client is connected and probed, as a running window is.
        super::pending_write(client, blocker).await?;
        let t0 = monotonic_ns();
        let t0_wall = now_ms();
        unsafe { libc::kill(pid as i32, signal) };
        // A graceful primary may still answer a write that raced the
        // signal: only a write acknowledged at a newer epoch counts.
        loop {
            super::pending_write(client, blocker).await?;
            if client.epoch() > epoch {
                break;
            }
        }
        s.to_write.push(ms_between(t0, monotonic_ns()));
        wait_exit(c, pid).await?;
        let (new_pid, new_epoch) = primary(client).await?;
        if new_epoch != epoch + 1 {
            return Err(format!(
                "expected one promotion (epoch {}), got epoch {new_epoch}",
                epoch + 1
            ));
        }
        if s.secondaries > 1 {
            // Every survivor re-registers with a write of its own (`hello`).
            c.wait_registered(s.secondaries - 1, new_epoch, new_pid)
                .await?;
            s.to_all.push(last_join_ms(c, new_epoch, t0_wall)?);
        }
        read_phases(c, new_epoch, t0, s);
        (pid, epoch) = (new_pid, new_epoch);
        c.spawn_member()?;
        c.wait_registered(s.secondaries, epoch, pid).await?;
    }
    Ok(())
}

/// Waits (bounded) until the member `pid` has exited, then reaps it.
async fn wait_exit(c: &mut LocalCluster, pid: u32) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let gone = match c.members.iter_mut().find(|m| m.id() == pid) {
            Some(m) => matches!(m.try_wait(), Ok(Some(_))),
            None => true,
        };
        if gone {
            c.reap();
            return Ok(());
        }
        if Instant::now() > until {
            return Err(format!("the old primary (pid {pid}) did not exit"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub(super) async fn primary(client: &mut crate::client::Client) -> Result<(u32, u64), String> {
    crate::client::wait_for_primary(client, Duration::from_secs(30))
        .await
        .map(|info| (info.pid, info.epoch))
        .map_err(|e| e.to_string())
}

/// The phases the members logged for `epoch`, as milliseconds after `t0`.
/// A round whose lines are not (yet) in the logs adds nothing.
fn read_phases(c: &LocalCluster, epoch: u64, t0: u64, s: &mut Samples) {
    let since = |ns: u64| ns.saturating_sub(t0) as f64 / 1e6;
    for line in member_log_lines(c) {
        let fields = log_fields(&line);
        if fields.get("epoch") != Some(&epoch) {
            continue;
        }
        if line.contains("promotion phases") {
            let mut row = [0.0; PHASES.len()];
            for (i, (key, _)) in PHASES.iter().enumerate() {
                row[i] = fields.get(*key).map_or(f64::NAN, |ns| since(*ns));
            }
            if row.iter().all(|v| v.is_finite()) {
                s.phases.push(row);
            }
        } else if line.contains("following the primary")
            && let (Some(n), Some(r)) = (fields.get("noticed_ns"), fields.get("registered_ns"))
        {
            s.noticed.push(since(*n));
            s.registered.push(since(*r));
        }
    }
}

fn member_log_lines(c: &LocalCluster) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(c.dir.path()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("member-"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|text| text.lines().map(String::from).collect::<Vec<_>>())
        .collect()
}

/// The numeric `key=value` fields of a log line; a later field wins over a
/// span's field of the same name.
fn log_fields(line: &str) -> std::collections::HashMap<&str, u64> {
    line.split(|c: char| c.is_whitespace() || c == '{' || c == '}' || c == ':')
        .filter_map(|token| token.split_once('='))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect()
}

/// Milliseconds from the kill to the last `instance.joined` of `epoch`,
/// using the events' commit timestamps (1 ms resolution).
fn last_join_ms(c: &LocalCluster, epoch: u64, t0_wall: u64) -> Result<f64, String> {
    let reader = crate::store::Reader::open(&c.ws.db_path()).map_err(|e| e.to_string())?;
    let events = reader
        .events_from(1, usize::MAX >> 1)
        .map_err(|e| e.to_string())?;
    let last = events
        .iter()
        .filter(|e| e.epoch == epoch && matches!(e.data, EventData::InstanceJoined { .. }))
        .map(|e| e.at)
        .max()
        .ok_or("no secondary re-registered")?;
    Ok(last.saturating_sub(t0_wall) as f64)
}

/// Times the kernel's lock handoff alone: a holder is sent `signal` (whose
/// default action ends it) while a waiter blocks in `flock`; the waiter
/// stamps the moment it gets the lock.
pub(super) fn flock_handoffs(rounds: usize, signal: i32) -> Result<Vec<f64>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("bench.lock");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for _ in 0..rounds {
        let mut holder = Command::new(&exe)
            .args(["bench-flock", "hold"])
            .arg(&path)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut holder_out = BufReader::new(holder.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        holder_out.read_line(&mut line).map_err(|e| e.to_string())?;
        let mut waiter = Command::new(&exe)
            .args(["bench-flock", "wait"])
            .arg(&path)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut waiter_out = BufReader::new(waiter.stdout.take().ok_or("no stdout")?);
        line.clear();
        waiter_out.read_line(&mut line).map_err(|e| e.to_string())?; // "waiting"
        // Wait until the waiter sleeps in the flock syscall.
        let until = Instant::now() + Duration::from_secs(5);
        while crate::proc::state(waiter.id()) != Some('S') && Instant::now() < until {
            std::thread::yield_now();
        }
        let t0 = monotonic_ns();
        unsafe { libc::kill(holder.id() as i32, signal) };
        line.clear();
        waiter_out.read_line(&mut line).map_err(|e| e.to_string())?;
        let got: u64 = line
            .trim()
            .parse()
            .map_err(|_| format!("bad waiter output {line:?}"))?;
        out.push(ms_between(t0, got));
        let _ = holder.wait();
        let _ = waiter.wait();
    }
    Ok(out)
}

/// `grove bench-flock hold|wait PATH`: the two sides of the flock baseline.
pub fn flock_helper(mode: &str, path: &std::path::Path) -> i32 {
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => {
            errln!("grove bench-flock: {e}");
            return 2;
        }
    };
    let mut stdout = crate::output::Stdout;
    match mode {
        "hold" => {
            if file.lock().is_err() {
                return 1;
            }
            let _ = writeln!(stdout, "locked");
            let _ = stdout.flush();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "wait" => {
            let _ = writeln!(stdout, "waiting");
            let _ = stdout.flush();
            if file.lock().is_err() {
                return 1;
            }
            let _ = writeln!(stdout, "{}", monotonic_ns());
            0
        }
        _ => {
            errln!("grove bench-flock: mode is hold or wait");
            2
        }
    }
}
