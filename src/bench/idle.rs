//! Idle: what members cost while nothing happens. Editors keep a member per
//! window all day, so an idle member must cost next to nothing: no CPU, few
//! wakeups (each one keeps a laptop's core out of its deep sleep states), and
//! little memory.
//!
//! Starts `n` members (one primary, `n - 1` secondaries) on a temp workspace,
//! waits until every secondary is registered, lets them settle, then reads
//! `/proc` over a few windows of several seconds: CPU time (the scheduler's
//! own run time of each member's threads), wakeups (voluntary + involuntary
//! context switches, summed over each member's threads) and memory.
//!
//! Run time is read from each thread's `schedstat` (nanoseconds on a CPU),
//! not from utime + stime: those are clock ticks (4 ms at HZ=250), and a
//! member that runs ~0.1 ms per second earns one rarely; the kernel's
//! scaling of the sampled split keeps their sum monotonic by holding it
//! back and then letting it jump, so three 5 s windows of the same idle
//! cluster read anywhere from 0.4 % to 2.8 % where the run time said a
//! steady 1.6 %. A thread that ends within a window loses its share of it;
//! an idle member starts none. The goals are absolute: there is
//! no baseline that an idle process could be compared with.
//!
//! The primary's two kinds of switches are shown apart: a voluntary one is a
//! wakeup (its thread slept); an involuntary one is a preemption while it
//! runs anyway — each heartbeat wakes every subscriber, and on a small
//! machine the woken ones preempt the primary while it is still sending.
//! Preemptions cost a little CPU (counted in the CPU row) but wake no core.

use super::Row;
use super::failover::primary;
use super::stats::quantile;
use crate::local_cluster::LocalCluster;
use std::time::{Duration, Instant};

/// How much the scenario measures.
pub struct Plan {
    pub members: usize,
    pub windows: usize,
    pub window: Duration,
}

/// Time for startup work (registration, first catch-up, the runtime's
/// blocking threads) to end before the first window.
const SETTLE: Duration = Duration::from_secs(2);

pub async fn run(plan: &Plan) -> Result<Vec<Row>, String> {
    let n = plan.members.max(1);
    let mut c = LocalCluster::new()?;
    let primary_pid = c.spawn_member()?;
    let mut client = c.client("bench-idle");
    let (pid, epoch) = primary(&mut client).await?;
    if pid != primary_pid {
        return Err(format!(
            "expected pid {primary_pid} to be primary, got {pid}"
        ));
    }
    drop(client);
    for _ in 1..n {
        c.spawn_member()?;
    }
    c.wait_registered(n - 1, epoch, pid).await?;
    tokio::time::sleep(SETTLE).await;

    let pids: Vec<u32> = c.members.iter().map(|m| m.id()).collect();
    let Windows {
        cpu_percent,
        secondaries,
        primary_switches,
    } = measure_windows(&pids, plan).await?;
    let memory = snapshot(&pids)?;
    let rss: Vec<f64> = memory.iter().map(|s| s.rss_kib as f64 / 1024.0).collect();
    let pss: Vec<f64> = memory.iter().map(|s| s.pss_kib as f64 / 1024.0).collect();

    Ok(vec![
        row(
            &format!("CPU, {n} idle members together (% of a core)"),
            "%",
            &cpu_percent,
            Some("≤ 2 %"),
        ),
        row(
            "wakeups/s per idle secondary (all switches)",
            "wakeups/s",
            &secondaries,
            Some("≤ 5/s"),
        ),
        row(
            "wakeups/s of the idle primary (voluntary)",
            "wakeups/s",
            &[primary_switches[0]],
            Some("≤ 5/s"),
        ),
        row(
            &format!("preemptions/s of the idle primary ({} subs)", n),
            "wakeups/s",
            &[primary_switches[1]],
            None,
        ),
        row("RSS per idle member", "MiB", &rss, Some("≤ 15 MiB")),
        row(
            "PSS per idle member (shared pages split)",
            "MiB",
            &pss,
            None,
        ),
    ])
}

/// Per-second rates over the measured windows.
struct Windows {
    /// CPU of all members together, per window.
    cpu_percent: Vec<f64>,
    /// Wakeups/s of each secondary.
    secondaries: Vec<f64>,
    /// The primary's voluntary and involuntary switches per second.
    primary_switches: [f64; 2],
}

async fn measure_windows(pids: &[u32], plan: &Plan) -> Result<Windows, String> {
    let mut cpu_percent = Vec::new();
    let mut wakeups: Vec<f64> = vec![0.0; pids.len()];
    let mut primary_switches = [0.0; 2];
    let mut measured = Duration::ZERO;
    for _ in 0..plan.windows.max(1) {
        let before = snapshot(pids)?;
        let t0 = Instant::now();
        tokio::time::sleep(plan.window).await;
        let after = snapshot(pids)?;
        let elapsed = t0.elapsed();
        measured += elapsed;
        let ran_ns: u64 = before
            .iter()
            .zip(&after)
            .map(|(b, a)| ran_between(&b.threads_ns, &a.threads_ns))
            .sum();
        cpu_percent.push(ran_ns as f64 / 1e9 / elapsed.as_secs_f64() * 100.0);
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            wakeups[i] +=
                (a.voluntary + a.involuntary).saturating_sub(b.voluntary + b.involuntary) as f64;
        }
        primary_switches[0] += after[0].voluntary.saturating_sub(before[0].voluntary) as f64;
        primary_switches[1] += after[0].involuntary.saturating_sub(before[0].involuntary) as f64;
    }
    let secs = measured.as_secs_f64();
    let secondaries: Vec<f64> = wakeups[1..].iter().map(|w| w / secs).collect();
    Ok(Windows {
        cpu_percent,
        secondaries,
        primary_switches: primary_switches.map(|n| n / secs),
    })
}

fn row(metric: &str, unit: &str, samples: &[f64], goal: Option<&str>) -> Row {
    Row {
        scenario: "idle".into(),
        metric: metric.into(),
        unit: unit.into(),
        p50: quantile(samples, 0.5),
        p99: quantile(samples, 0.99),
        samples: samples.len(),
        baseline: None,
        baseline_p50: None,
        goal: goal.map(String::from),
    }
}

/// One member's counters at one moment.
struct Sample {
    /// Nanoseconds each thread (by tid) has run.
    threads_ns: Vec<(u32, u64)>,
    voluntary: u64,
    involuntary: u64,
    rss_kib: u64,
    pss_kib: u64,
}

fn snapshot(pids: &[u32]) -> Result<Vec<Sample>, String> {
    pids.iter()
        .map(|&pid| {
            let gone = || {
                format!(
                    "member {pid} exited while idle (see its log), or /proc/{pid}/task/*/schedstat cannot be read here"
                )
            };
            let (voluntary, involuntary) = context_switches(pid).ok_or_else(gone)?;
            Ok(Sample {
                threads_ns: threads_run_ns(pid).ok_or_else(gone)?,
                voluntary,
                involuntary,
                rss_kib: kib_field(&format!("/proc/{pid}/status"), "VmRSS:").unwrap_or(0),
                pss_kib: kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:").unwrap_or(0),
            })
        })
        .collect()
}

/// How long each live thread of `pid` has run, in nanoseconds (the first
/// field of its `schedstat`).
fn threads_run_ns(pid: u32) -> Option<Vec<(u32, u64)>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut threads = Vec::new();
    for task in tasks.flatten() {
        let tid = task.file_name().to_str().and_then(|t| t.parse().ok());
        let ran = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok());
        if let (Some(tid), Some(ran)) = (tid, ran) {
            threads.push((tid, ran)); // else the thread ended meanwhile
        }
    }
    // A live process has a thread; none read means no `schedstat` here
    // (a kernel without CONFIG_SCHED_INFO): no reading, rather than 0 %.
    (!threads.is_empty()).then_some(threads)
}

/// Run time between two readings of one member: a thread seen only in
/// the later one started in between and counts whole.
fn ran_between(before: &[(u32, u64)], after: &[(u32, u64)]) -> u64 {
    after
        .iter()
        .map(|&(tid, ran)| {
            let earlier = before
                .iter()
                .find(|&&(t, _)| t == tid)
                .map_or(0, |&(_, r)| r);
            ran.saturating_sub(earlier)
        })
        .sum()
}

/// (voluntary, involuntary) context switches summed over the live threads.
fn context_switches(pid: u32) -> Option<(u64, u64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let (mut voluntary, mut involuntary) = (0, 0);
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        let count = |v: &str| v.trim().parse::<u64>().unwrap_or(0);
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
                voluntary += count(v);
            } else if let Some(v) = line.strip_prefix("nonvoluntary_ctxt_switches:") {
                involuntary += count(v);
            }
        }
    }
    Some((voluntary, involuntary))
}

/// A `Key:   123 kB` line of a /proc file.
fn kib_field(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::ran_between;

    #[test]
    fn run_time_counts_threads_that_started_and_skips_those_that_ended() {
        let before = [(10, 1_000), (11, 500)];
        let after = [(10, 1_700), (12, 300)];
        assert_eq!(ran_between(&before, &after), 700 + 300);
    }
}
