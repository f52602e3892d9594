//! `grove bench`: what users feel, measured on this machine, each figure
//! beside a baseline measured in the same run so that the ratio holds on a
//! noisy machine. Every scenario starts real `grove serve` processes of this
//! very binary on a temporary workspace and cleans them up.

mod acp;
mod cpu;
mod failover;
mod fanout;
mod handover;
mod idle;
mod join;
mod load;
mod memory;
mod rpc;
// Shared with the demo and chaos; kept nameable as `bench::stats`.
use crate::stats;
mod tasks;
mod web;

use crate::output::print_json;

/// Runs `work` on a thread of its own with its own current-thread runtime,
/// as another process's event loop would run: the counterpart of a
/// baseline, or one of several concurrent clients.
pub(crate) fn on_own_thread<T, F>(work: F) -> std::thread::JoinHandle<Result<T, String>>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        Ok(rt.block_on(work))
    })
}

/// Why `grove bench` did not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}
use serde::Serialize;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  grove bench                 # every scenario\n  grove bench failover --kills 50 --secondaries 3\n  grove bench fanout join --quick\n  grove bench idle --members 100\n  grove bench rpc --json"
)]
pub struct BenchArgs {
    /// Scenarios to run: failover, handover, rpc, fanout, join, memory,
    /// tasks, idle, acp, web (default: all).
    scenarios: Vec<String>,
    /// Secondary counts the failover scenario runs with, each its own rows.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 3, 8])]
    secondaries: Vec<usize>,
    /// How many times the failover scenario kills the primary (per count).
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// How many times the handover scenario stops the primary with SIGTERM.
    #[arg(long, default_value_t = 20)]
    handovers: usize,
    /// Events written per fanout pass (one pass per subscriber count).
    #[arg(long, default_value_t = 20000)]
    events: usize,
    /// Secondaries started and timed by the join scenario.
    #[arg(long, default_value_t = 50)]
    joins: usize,
    /// Sequential writes timed by the rpc scenario.
    #[arg(long, default_value_t = 2000)]
    writes: usize,
    /// Trivial tasks run by the tasks scenario.
    #[arg(long, default_value_t = 1000)]
    tasks: usize,
    /// Members (one primary, the rest secondaries) the idle scenario starts.
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// Megabytes of message chunks the acp scenario's agent floods.
    #[arg(long, default_value_t = 10)]
    acp_mb: u64,
    /// A short run for smoke tests (few kills, few writes).
    #[arg(long)]
    quick: bool,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

const SCENARIOS: &[&str] = &[
    "failover", "handover", "rpc", "fanout", "join", "memory", "tasks", "idle", "acp", "web",
];

/// How much each scenario does: from the flags, or small with `--quick`.
struct Plan {
    secondaries: Vec<usize>,
    kills: usize,
    handovers: usize,
    writes: usize,
    tasks: usize,
    /// Tasks started one at a time into an idle workspace.
    free_slot_spawns: usize,
    fanout: fanout::Plan,
    joins: usize,
    memory_samples: usize,
    memory_writes: usize,
    idle: idle::Plan,
    acp: acp::Plan,
}

impl Plan {
    fn new(args: &BenchArgs) -> Plan {
        let secondaries = if args.secondaries.is_empty() {
            vec![1, 3, 8]
        } else {
            args.secondaries.clone()
        };
        if args.quick {
            return Plan {
                secondaries,
                kills: 3,
                handovers: 5,
                writes: 200,
                tasks: 40,
                free_slot_spawns: 20,
                fanout: fanout::Plan {
                    events: 1000,
                    kill_rounds: 2,
                    kill_events: 400,
                },
                joins: 10,
                memory_samples: 10,
                memory_writes: 400,
                idle: idle::Plan {
                    members: args.members.clamp(1, 5),
                    windows: 1,
                    window: std::time::Duration::from_secs(1),
                },
                acp: acp::Plan {
                    chunks: 30,
                    every_ms: 20,
                    flood_bytes: 1_000_000,
                    chunk_bytes: 1000,
                },
            };
        }
        Plan {
            secondaries,
            kills: args.kills.max(1),
            handovers: args.handovers.max(1),
            writes: args.writes.max(10),
            tasks: args.tasks.max(1),
            free_slot_spawns: 200,
            fanout: fanout::Plan {
                events: args.events.max(4),
                kill_rounds: 10,
                kill_events: (args.events / 10).max(400),
            },
            joins: args.joins.max(1),
            memory_samples: 50,
            memory_writes: args.writes.max(10) * 4,
            idle: idle::Plan {
                members: args.members.max(1),
                windows: 3,
                window: std::time::Duration::from_secs(5),
            },
            acp: acp::Plan {
                chunks: 300,
                every_ms: 20,
                flood_bytes: args.acp_mb.max(1) * 1_000_000,
                chunk_bytes: 1000,
            },
        }
    }
}

/// One measured figure, with its same-run baseline when it has one.
#[derive(Debug, Serialize)]
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub unit: String,
    pub p50: f64,
    pub p99: f64,
    pub samples: usize,
    pub baseline: Option<String>,
    pub baseline_p50: Option<f64>,
    pub goal: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: Machine,
    rows: Vec<Row>,
}

#[derive(Debug, Serialize)]
struct Machine {
    cores: usize,
    kernel: String,
    grove_version: &'static str,
}

fn machine() -> Machine {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    Machine {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        kernel,
        grove_version: env!("CARGO_PKG_VERSION"),
    }
}

pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    let chosen: Vec<String> = if args.scenarios.is_empty() {
        SCENARIOS.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenarios.clone()
    };
    for s in &chosen {
        if !SCENARIOS.contains(&s.as_str()) {
            return Err(BenchError::Usage(format!(
                "unknown bench scenario '{s}'; one of: {}",
                SCENARIOS.join(", ")
            )));
        }
    }
    let plan = Plan::new(&args);
    let mut rows = Vec::new();
    for s in &chosen {
        errln!("bench: running {s} ...");
        let result = match s.as_str() {
            "failover" => failover::run(&plan.secondaries, plan.kills).await,
            "handover" => handover::run(plan.handovers).await,
            "rpc" => rpc::run(plan.writes).await,
            "fanout" => fanout::run(&plan.fanout).await,
            "join" => join::run(plan.joins).await,
            "memory" => memory::run(plan.memory_samples, plan.memory_writes).await,
            "tasks" => tasks::run(plan.tasks, plan.free_slot_spawns).await,
            "idle" => idle::run(&plan.idle).await,
            "acp" => acp::run(&plan.acp).await,
            "web" => web::run(plan.free_slot_spawns).await,
            _ => unreachable!("checked above"),
        };
        rows.extend(result.map_err(|e| BenchError::Failed(format!("bench {s}: {e}")))?);
    }
    let report = Report {
        machine: machine(),
        rows,
    };
    if args.json {
        print_json(&report);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(r: &Report) {
    outln!(
        "machine: {} cores, Linux {}, grove {}",
        r.machine.cores,
        r.machine.kernel,
        r.machine.grove_version
    );
    outln!(
        "{:<9} {:<46} {:>11} {:>11} {:>6}  {:<38} {:>11}  goal",
        "scenario",
        "metric",
        "p50",
        "p99",
        "n",
        "baseline",
        "base p50"
    );
    for row in &r.rows {
        outln!(
            "{:<9} {:<46} {:>11} {:>11} {:>6}  {:<38} {:>11}  {}",
            row.scenario,
            row.metric,
            fmt(row.p50, &row.unit),
            fmt(row.p99, &row.unit),
            row.samples,
            row.baseline.as_deref().unwrap_or("-"),
            row.baseline_p50
                .map(|b| fmt(b, &row.unit))
                .unwrap_or_else(|| "-".into()),
            row.goal.as_deref().unwrap_or("-"),
        );
    }
}

fn fmt(v: f64, unit: &str) -> String {
    match unit {
        "ms" => format!("{v:.2} ms"),
        "writes/s" | "tasks/s" | "events/s" | "chunks/s" => format!("{v:.0}/s"),
        "events" => format!("{v:.0}"),
        "MiB" => format!("{v:.1} MiB"),
        "%" => format!("{v:.2} %"),
        "wakeups/s" => format!("{v:.1}/s"),
        _ => format!("{v:.2} {unit}"),
    }
}

/// A task that never finishes on its own: benchmark writes depend on it, so
/// they stay `pending` and measure the write path, not process spawning.
pub(crate) async fn blocker(client: &mut crate::client::Client) -> Result<String, String> {
    let task = crate::protocol::NewTask {
        prompt: "sleep 3600".into(),
        tags: vec!["bench-blocker".into()],
        ..Default::default()
    };
    match client.call(crate::protocol::Method::TaskCreate(task)).await {
        Ok(crate::protocol::ReplyBody::Task(t)) => Ok(t.id),
        Ok(other) => Err(format!("unexpected reply {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// One benchmark write: a pending task (row + event + ledger entry).
pub(crate) async fn pending_write(
    client: &mut crate::client::Client,
    blocker: &str,
) -> Result<(), String> {
    let task = crate::protocol::NewTask {
        prompt: "bench write".into(),
        tags: vec!["bench".into()],
        dependencies: vec![blocker.to_string()],
        ..Default::default()
    };
    client
        .call(crate::protocol::Method::TaskCreate(task))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Cancels the blocker and waits until its run has ended, so that no
/// process outlives the benchmark: the cancel is only committed when the
/// reply comes, the primary stops the run afterwards, and the run's
/// supervisor then reports to the primary — all before the cluster drops.
pub(crate) async fn release(
    c: &crate::local_cluster::LocalCluster,
    client: &mut crate::client::Client,
    blocker: &str,
) {
    let cancel = crate::protocol::Method::TaskCancel {
        id: blocker.to_string(),
    };
    if let Err(e) = client.call(cancel).await {
        // Said, not swallowed: the wait below would otherwise only time out.
        errln!("bench: cancelling the blocker {blocker} failed: {e}");
    }
    let until = std::time::Instant::now() + RELEASE_WAIT;
    while let Some(run) = live_run(c, blocker) {
        if std::time::Instant::now() > until {
            // Ours, by the pids of its own run record: stop it directly.
            errln!(
                "bench: the blocker's run did not stop within {} s; killing its supervisor {}",
                RELEASE_WAIT.as_secs(),
                run.shim_pid
            );
            if let Some(agent) = run.agent_pid {
                crate::runs::kill_group(agent, libc::SIGKILL);
            }
            unsafe { libc::kill(run.shim_pid as i32, libc::SIGKILL) };
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// How long the primary may take to stop the blocker's run once cancelled
/// (it cancels every dependent write in the same commit first).
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The blocker's run record while its supervisor still runs.
fn live_run(
    c: &crate::local_cluster::LocalCluster,
    blocker: &str,
) -> Option<crate::runs::RunRecord> {
    let reader = crate::store::Reader::open(&c.ws.db_path()).ok()?;
    let run_id = reader.task(blocker).ok()??.run_id?;
    let run = crate::runs::RunFiles::read_run(&c.ws, blocker, &run_id)?;
    crate::proc::running(run.shim_pid).then_some(run)
}

/// Hidden helper processes the benchmarks time against (raw flock handoff)
/// or run (the acp scenario's agent).
pub use acp::bench_agent;
pub use failover::flock_helper;
