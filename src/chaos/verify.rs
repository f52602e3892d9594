//! The end-of-run checks, each against the store, the survivors' own
//! event logs or `/proc`: no acknowledged write lost or applied twice, no
//! event missed, no process left behind.

use super::*;

use crate::paths::Workspace;
use crate::protocol::{FailureReason, TaskRecord, TaskStatus};
use crate::runs::{RunFiles, RunRecord};
use crate::store::Reader;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// What the store says about the acknowledged writes.
#[derive(Default)]
pub(super) struct WriteFindings {
    pub(super) acked: usize,
    pub(super) by_kind: HashMap<&'static str, usize>,
    pub(super) lost: Vec<String>,
    pub(super) doubled: Vec<String>,
    pub(super) wrong_outcome: Vec<String>,
    pub(super) ran_twice: Vec<String>,
    pub(super) stuck_running: Vec<String>,
    pub(super) not_terminal: usize,
    /// Seconds from creation to the final state of each shell task (each
    /// runs 0.2 s): how long failovers delay real work.
    pub(super) shell_latency: Vec<f64>,
}

pub(super) fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Write => "pending writes",
        Kind::Shell => "shell tasks",
        Kind::Probe => "probes",
        Kind::Blocker => "blocker",
    }
}

/// Every acknowledged request id must name exactly one stored task (the
/// one in its reply) with its ledger row; every request id seen in the
/// store must be applied once; every task must have its expected ending.
pub(super) fn check_writes(
    ws: &Workspace,
    reader: &Reader,
    acks: &[Ack],
) -> Result<WriteFindings, String> {
    let tasks = reader
        .tasks(&Default::default())
        .map_err(|e| e.to_string())?;
    let mut by_request: HashMap<&str, Vec<&TaskRecord>> = HashMap::new();
    for t in &tasks {
        for tag in t.spec.tags.iter().filter(|t| t.starts_with("chaos-")) {
            by_request.entry(tag.as_str()).or_default().push(t);
        }
    }
    let mut f = WriteFindings {
        acked: acks.len(),
        ..Default::default()
    };
    for (request, applied) in &by_request {
        if applied.len() > 1 {
            f.doubled
                .push(format!("{request}: applied {} times", applied.len()));
        }
    }
    for ack in acks {
        *f.by_kind.entry(kind_name(ack.kind)).or_default() += 1;
        let stored = by_request
            .get(ack.request_id.as_str())
            .and_then(|v| v.iter().find(|t| t.id == ack.task_id));
        let in_ledger = reader.ledger_has(&ack.request_id).unwrap_or(false);
        match stored {
            None => f.lost.push(format!(
                "{} (task {}, ledger row {})",
                ack.request_id,
                ack.task_id,
                if in_ledger { "present" } else { "missing" }
            )),
            Some(_) if !in_ledger => f.lost.push(format!(
                "{}: task stored but its ledger row is missing",
                ack.request_id
            )),
            Some(t) => {
                if let Some(why) = wrong_outcome(ack, t) {
                    f.wrong_outcome
                        .push(format!("{} ({}): {why}", ack.request_id, t.id));
                }
                if let (Kind::Shell, Some(end)) = (ack.kind, t.finished_at) {
                    let secs = end.saturating_sub(t.created_at) as f64 / 1000.0;
                    f.shell_latency.push(secs);
                }
                if matches!(ack.kind, Kind::Shell | Kind::Blocker) {
                    let runs = count_runs(&RunFiles::log(ws, &t.id));
                    if runs > 1 {
                        f.ran_twice
                            .push(format!("{} ({}): ran {runs} times", ack.request_id, t.id));
                    }
                }
            }
        }
    }
    for t in &tasks {
        if t.status == TaskStatus::Running {
            f.stuck_running
                .push(format!("{} ({})", t.id, t.spec.prompt));
        }
        if !t.status.is_terminal() {
            f.not_terminal += 1;
        }
    }
    Ok(f)
}

/// How each kind of task must end: shell tasks with their own exit code,
/// writes and probes failed with their cancelled blocker, the blocker
/// cancelled. `None` when it ended so.
pub(super) fn wrong_outcome(ack: &Ack, t: &TaskRecord) -> Option<String> {
    let ok = match ack.kind {
        Kind::Shell => match ack.expect_exit {
            Some(0) => t.status == TaskStatus::Completed && t.exit_code == Some(0),
            code => {
                t.status == TaskStatus::Failed
                    && t.failure_reason == Some(FailureReason::ExitCode)
                    && t.exit_code == code
            }
        },
        Kind::Write | Kind::Probe => {
            t.status == TaskStatus::Failed
                && t.failure_reason == Some(FailureReason::DependencyFailed)
        }
        Kind::Blocker => t.status == TaskStatus::Cancelled,
    };
    (!ok).then(|| {
        format!(
            "ended {}{} exit code {:?}, expected {}",
            t.status.as_str(),
            t.failure_reason
                .map(|r| format!(" ({})", r.as_str()))
                .unwrap_or_default(),
            t.exit_code,
            match (ack.kind, ack.expect_exit) {
                (Kind::Shell, Some(c)) => format!("exit code {c}"),
                (Kind::Blocker, _) => "cancelled".into(),
                _ => "failed (dependency_failed)".into(),
            }
        )
    })
}

/// How many times a task's script started (shell tasks and the blocker
/// print [`RUN_MARK`] first), from its log.
pub(super) fn count_runs(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.trim() == RUN_MARK)
        .count()
}

/// Durable event seqs in a member's events log, in arrival order. A line
/// being written right now may be cut short: it is skipped, and read whole
/// on the next poll.
/// One member's view of the event stream.
pub(super) struct StreamFinding {
    pub(super) pid: u32,
    pub(super) survivor: bool,
    pub(super) from: u64,
    pub(super) to: u64,
    pub(super) missed: usize,
    pub(super) out_of_order: bool,
}

/// Each member's subscriber starts at the end of the log as its process
/// starts (a member that promotes itself at once starts after its own
/// `instance.promoted`); from there it must deliver every durable event, in
/// order. Survivors must reach the store's last seq (they get a deadline to
/// catch up); a killed member's log must have no hole up to where it died.
pub(super) async fn check_events(
    cl: &Cluster,
    reader: &Reader,
) -> Result<(u64, Vec<StreamFinding>), String> {
    let last = reader.last_seq().map_err(|e| e.to_string())?;
    let until = Instant::now() + DEADLINE;
    let mut findings = Vec::new();
    for m in &cl.members {
        // One that died on its own is reported as such; here it is held
        // to what a killed member is held to.
        let dead = m.killed || !crate::proc::running(m.pid);
        while !dead
            && read_seqs(&m.events_log)
                .iter()
                .max()
                .is_none_or(|s| *s < last)
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        findings.push(stream_finding(m, dead, last));
    }
    Ok((last, findings))
}

/// Compares one member's events log with the range it must cover. A
/// survivor that logged nothing missed everything since it was started.
pub(super) fn stream_finding(m: &Member, dead: bool, last: u64) -> StreamFinding {
    let seqs = read_seqs(&m.events_log);
    let from = seqs.first().copied().unwrap_or(m.spawn_seq + 1);
    let to = if dead {
        seqs.iter().copied().max().unwrap_or(0)
    } else {
        last
    };
    let have: BTreeSet<u64> = seqs.iter().copied().collect();
    StreamFinding {
        pid: m.pid,
        survivor: !dead,
        from,
        to,
        missed: (from..=to).filter(|s| !have.contains(s)).count(),
        out_of_order: seqs.windows(2).any(|w| w[1] <= w[0]),
    }
}

/// Shim pids of every run recorded in `.grove/run/*.run.json`.
pub(super) fn recorded_shims(ws: &Workspace) -> HashSet<u32> {
    let Ok(entries) = std::fs::read_dir(RunFiles::dir(ws)) else {
        return HashSet::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".run.json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<RunRecord>(&b).ok())
        .map(|r| r.shim_pid)
        .collect()
}

/// Live processes of any recorded run: each shim is a session leader
/// (setsid) and its agent and the agent's children stay in its session, so
/// a live non-zombie process whose session is a recorded shim pid is a
/// leftover — the shim, the agent or a grandchild.
pub(super) fn run_processes(ws: &Workspace) -> Vec<u32> {
    let shims = recorded_shims(ws);
    crate::proc::all()
        .into_iter()
        .filter(|p| p.state != 'Z' && shims.contains(&p.session))
        .map(|p| p.pid)
        .collect()
}

/// Polls until no run process is left (cancelled agents get `kill_grace_ms`
/// to go); returns whatever is still there at the deadline.
pub(super) async fn wait_orphans(ws: &Workspace) -> Vec<u32> {
    let until = Instant::now() + DEADLINE;
    loop {
        let left = run_processes(ws);
        if left.is_empty() || Instant::now() > until {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs every check, prints them and the summary line; true if all held.
pub(super) async fn verify(
    run: &mut Chaos,
    loop_result: Result<(), String>,
    end_errors: Vec<String>,
) -> Result<bool, String> {
    let found = gather(run, loop_result, end_errors).await?;
    outln!();
    outln!("checks:");
    let mut report = Report::default();
    check_writes_and_events(&mut report, &found, &run.tally);
    check_the_end(&mut report, &found);
    print_timings(&found, &run.tally);
    print_verdict(&report, &found, &run.tally);
    let ok = report.failed.is_empty();
    if !ok && run.keep {
        keep_workspace(&mut run.cl);
    }
    Ok(ok)
}

/// Everything the checks look at, gathered once the kill loop ended.
struct Findings {
    loop_result: Result<(), String>,
    end_errors: Vec<String>,
    writes: WriteFindings,
    died: Vec<u32>,
    last_seq: u64,
    streams: Vec<StreamFinding>,
    not_stopped: Vec<u32>,
    orphans: Vec<u32>,
    integrity: String,
    failures: Vec<String>,
    /// Refused by the crash guard after two kills in flight (not failures).
    guarded: Vec<String>,
}

async fn gather(
    run: &mut Chaos,
    loop_result: Result<(), String>,
    end_errors: Vec<String>,
) -> Result<Findings, String> {
    let ws = run.cl.ws().clone();
    let reader = Reader::open(&ws.db_path()).map_err(|e| e.to_string())?;
    let acks = run.shared.acks();
    let writes = check_writes(&ws, &reader, &acks)?;
    let died: Vec<u32> = run
        .cl
        .survivors()
        .filter(|m| !crate::proc::running(m.pid))
        .map(|m| m.pid)
        .collect();
    let (last_seq, streams) = check_events(&run.cl, &reader).await?;
    drop(reader);
    let not_stopped = run.cl.stop().await;
    let orphans = wait_orphans(&ws).await;
    let integrity = Reader::open(&ws.db_path())
        .and_then(|r| r.integrity_check())
        .unwrap_or_else(|e| e.to_string());
    Ok(Findings {
        loop_result,
        end_errors,
        writes,
        died,
        last_seq,
        streams,
        not_stopped,
        orphans,
        integrity,
        failures: run.shared.failures(),
        guarded: run.shared.guarded(),
    })
}

/// The checks printed so far, and the short names of those that failed.
#[derive(Default)]
struct Report {
    failed: Vec<String>,
}

impl Report {
    fn check(&mut self, passed: bool, what: String, short: String, detail: &[String]) {
        outln!("  [{}] {what}", if passed { "ok" } else { "FAILED" });
        for d in detail.iter().take(10) {
            outln!("         {d}");
        }
        if detail.len() > 10 {
            outln!("         ... and {} more", detail.len() - 10);
        }
        if !passed {
            self.failed.push(short);
        }
    }
}

/// The kill loop, acknowledged writes, and what subscribers saw.
fn check_writes_and_events(report: &mut Report, f: &Findings, t: &Tally) {
    let writes = &f.writes;
    report.check(
        f.loop_result.is_ok(),
        format!(
            "kill loop: {} kills ({} of the primary, {} primaries dead between COMMIT and reply, {} of a secondary, {} of a new primary mid-promotion, {} of them before it published primary.json)",
            t.kills(),
            t.primary,
            t.at_commit,
            t.secondary,
            t.promoting,
            t.before_record
        ),
        "the kill loop stopped early".into(),
        &f.loop_result.clone().err().into_iter().collect::<Vec<_>>(),
    );
    let mut kinds: Vec<String> = writes
        .by_kind
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    kinds.sort();
    report.check(
        writes.lost.is_empty(),
        format!(
            "acknowledged writes lost: {} of {} ({})",
            writes.lost.len(),
            writes.acked,
            kinds.join(", ")
        ),
        format!("{} acknowledged writes lost", writes.lost.len()),
        &writes.lost,
    );
    report.check(
        writes.doubled.is_empty(),
        format!("writes applied twice: {}", writes.doubled.len()),
        format!("{} writes applied twice", writes.doubled.len()),
        &writes.doubled,
    );
    let mut refused = f.failures.clone();
    refused.extend(f.guarded.iter().map(|g| format!("(not a failure) {g}")));
    report.check(
        f.failures.is_empty(),
        format!(
            "writes refused or never acknowledged (each retried with its id for {} s): {}; \
             refused by the crash guard after two or more primaries were killed with them in \
             flight, as it is built to (a kill from outside looks like a crash): {}",
            WRITE_GIVE_UP.as_secs(),
            f.failures.len(),
            f.guarded.len()
        ),
        format!("{} writes refused or never acknowledged", f.failures.len()),
        &refused,
    );
    check_streams(report, f);
    report.check(
        f.integrity == "ok",
        format!("PRAGMA integrity_check: {}", f.integrity),
        format!("integrity_check: {}", f.integrity),
        &[],
    );
}

fn missed_events(f: &Findings) -> usize {
    f.streams.iter().map(|s| s.missed).sum()
}

fn check_streams(report: &mut Report, f: &Findings) {
    let missed = missed_events(f);
    let disordered = f.streams.iter().filter(|s| s.out_of_order).count();
    let survivors = f.streams.iter().filter(|s| s.survivor).count();
    // Survivors always; killed members only when something is wrong.
    let detail: Vec<String> = f
        .streams
        .iter()
        .filter(|s| s.survivor || s.missed > 0 || s.out_of_order)
        .map(|s| {
            format!(
                "{} pid {}: events {}..={}, {} missed{}",
                if s.survivor {
                    "member"
                } else {
                    "killed member"
                },
                s.pid,
                s.from,
                s.to,
                s.missed,
                if s.out_of_order { ", OUT OF ORDER" } else { "" }
            )
        })
        .collect();
    report.check(
        missed == 0 && disordered == 0,
        format!(
            "events missed by subscribers: {missed} ({survivors} survivors up to store seq {}; {} killed members up to their death)",
            f.last_seq,
            f.streams.len() - survivors
        ),
        format!("{missed} events missed, {disordered} logs out of order"),
        &detail,
    );
}

/// How the run ended: every task terminal with the right outcome, once,
/// and no member or process left behind.
fn check_the_end(report: &mut Report, f: &Findings) {
    let writes = &f.writes;
    report.check(
        f.end_errors.is_empty(),
        "end of the run: blocker cancelled, every task terminal".into(),
        "the end of the run failed".into(),
        &f.end_errors,
    );
    report.check(
        writes.stuck_running.is_empty() && writes.not_terminal == 0,
        format!(
            "tasks stuck running: {} ({} not terminal)",
            writes.stuck_running.len(),
            writes.not_terminal
        ),
        format!(
            "{} tasks stuck running, {} not terminal",
            writes.stuck_running.len(),
            writes.not_terminal
        ),
        &writes.stuck_running,
    );
    report.check(
        writes.wrong_outcome.is_empty(),
        format!(
            "tasks with a wrong ending: {} (shell tasks keep their exit code, writes fail with their blocker)",
            writes.wrong_outcome.len()
        ),
        format!("{} tasks with a wrong ending", writes.wrong_outcome.len()),
        &writes.wrong_outcome,
    );
    report.check(
        writes.ran_twice.is_empty(),
        format!(
            "tasks run more than once (shell tasks, and the blocker adopted by every new primary): {}",
            writes.ran_twice.len()
        ),
        format!("{} tasks ran twice", writes.ran_twice.len()),
        &writes.ran_twice,
    );
    report.check(
        f.died.is_empty(),
        format!("members that died without being killed: {}", f.died.len()),
        format!("{} members died on their own", f.died.len()),
        &f.died
            .iter()
            .map(|p| format!("pid {p}"))
            .collect::<Vec<_>>(),
    );
    let left = f.orphans.len() + f.not_stopped.len();
    report.check(
        left == 0,
        format!(
            "orphan processes left: {} (shims/agents of .grove/run/*.run.json still alive: {:?}; members that ignored SIGTERM: {:?})",
            left, f.orphans, f.not_stopped
        ),
        format!("{left} orphan processes"),
        &[],
    );
}

fn print_timings(f: &Findings, t: &Tally) {
    let fo = &t.failover_ms;
    outln!(
        "  failover, kill -9 of the primary → a write acknowledged: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} kills)",
        quantile(fo, 0.5),
        quantile(fo, 0.99),
        quantile(fo, 1.0),
        fo.len()
    );
    let sl = &f.writes.shell_latency;
    outln!(
        "  shell tasks (0.2 s each), created → final state: p50 {:.2} s, p99 {:.2} s, max {:.2} s ({} tasks)",
        quantile(sl, 0.5),
        quantile(sl, 0.99),
        quantile(sl, 1.0),
        sl.len()
    );
    outln!();
}

/// The one-line summary scripts and the tests read.
fn print_verdict(report: &Report, f: &Findings, t: &Tally) {
    let verdict = if report.failed.is_empty() {
        "all checks passed".to_string()
    } else {
        format!("FAILED: {}", report.failed.join("; "))
    };
    let left = f.orphans.len() + f.not_stopped.len();
    outln!(
        "chaos: {} kills, {} writes acknowledged, {} lost, {} applied twice, {} events missed, integrity {}, {} stuck running, {left} orphans, failover p50 {:.1} ms p99 {:.1} ms, {verdict}",
        t.kills(),
        f.writes.acked,
        f.writes.lost.len(),
        f.writes.doubled.len(),
        missed_events(f),
        f.integrity,
        f.writes.stuck_running.len(),
        quantile(&t.failover_ms, 0.5),
        quantile(&t.failover_ms, 0.99),
    );
}
