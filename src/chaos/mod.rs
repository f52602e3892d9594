//! `grove chaos`: SIGKILL members of a throwaway grove again and again while
//! clients write and shell tasks run, then check — against the store, the
//! survivors' own event logs and `/proc`, never against this tool's own
//! bookkeeping alone — that nothing was lost, applied twice, missed, left
//! running or left behind.
//!
//! Everything is real: the members are `grove serve` processes of this
//! binary on a temporary workspace, tasks run under `grove shim`, and each
//! client is a [`Client`] in a thread of its own with its own current-thread
//! runtime, as separate windows would be. Every write carries a unique
//! request id and is resent with that same id until acknowledged.
//!
//! Deaths, in random order: `kill -9` of the primary (most of them), of a
//! secondary, of the primary and then of its successor the moment its
//! promotion shows (in the store, or in `primary.json`), and a primary dying
//! between COMMIT and reply (a crash hook that only test builds have: the
//! `test-hooks` feature, which `cargo test` and `scripts/chaos.sh` turn on;
//! without it those rounds kill the primary at a random moment instead).
//! After each, a replacement member keeps the count.
//!
//! The seed fixes the tool's choices (which member dies, after how many
//! writes, which exit codes the shell tasks return); how those choices
//! interleave with the processes' own timing is not reproducible — finding
//! such interleavings is the point.

use crate::local_cluster::LocalCluster;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::stats::{Clock, quantile, read_seqs};

mod cluster;
mod kills;
mod load;
mod verify;

use cluster::*;
use kills::*;
use load::*;
use verify::*;

/// Fast heartbeats so that subscribers notice a lost tail quickly; a short
/// kill grace so that cancelling the blocker at the end is quick.
const CONFIG: &str = "heartbeat_ms = 100\nmax_parallel = 4\nkill_grace_ms = 500\n";
/// Pause between two writes of one writer. Without it the writers fill the
/// store with tens of thousands of tasks within seconds, and the end of the
/// run (every pending write fails in one cascade) would dominate it.
const WRITE_PACE: Duration = Duration::from_millis(5);
/// Pause between two shell tasks: a few run at any time, most of them
/// across at least one kill.
const SHELL_PACE: Duration = Duration::from_millis(150);
/// How long one write may take, retries included, before it counts as
/// never acknowledged. Far above any failover: reaching it is a finding.
const WRITE_GIVE_UP: Duration = Duration::from_secs(30);
/// Deadline for whatever the cluster must do on its own: promote, register,
/// acknowledge writes, deliver events, stop.
const DEADLINE: Duration = Duration::from_secs(30);
/// Deadline for cancelling the blocker and every task becoming terminal:
/// the cancel fails every pending write in one commit, and that commit takes
/// seconds once there are thousands of them.
const SETTLE: Duration = Duration::from_secs(120);
/// How often watchers look at the store and `primary.json` (a promotion takes
/// a few milliseconds; the mid-promotion kill must land inside it).
const WATCH_POLL: Duration = Duration::from_millis(1);
/// How long a member that died may take to finish exiting after the next
/// primary already answered (its exit closes the lock first, then the rest).
#[cfg(feature = "test-hooks")]
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// Printed by every shell task: counting it in the task's log tells how many
/// times the task really ran.
const RUN_MARK: &str = "chaos-run";

#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  grove chaos                      # 20 kills, the short run (as the tests do)\n  grove chaos --kills 200          # the long run\n  grove chaos --duration 600 --members 6 --seed 42\n\nExit 0 only if every check held."
)]
pub struct ChaosArgs {
    /// Members kept running (real `grove serve` processes); at least 2.
    #[arg(long, default_value_t = 4)]
    pub members: usize,
    /// SIGKILLs to deliver in total (a kill mid-promotion counts as one more).
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Keep killing for SECS seconds instead of a number of kills.
    #[arg(long, value_name = "SECS", conflicts_with = "kills")]
    pub duration: Option<u64>,
    /// Client threads writing all along (each write a pending task).
    #[arg(long, default_value_t = 3)]
    pub writers: usize,
    /// Seed of the tool's choices (default: from the clock; always printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep the temporary workspace when a check fails (its path is printed).
    #[arg(long)]
    pub keep: bool,
}

/// Entry point of `grove chaos`: 0 only if every check held.
pub async fn run(args: ChaosArgs) -> i32 {
    if args.members < 2 || args.writers == 0 {
        errln!("grove chaos: needs --members >= 2 and --writers >= 1");
        return crate::output::EXIT_USAGE;
    }
    // On Ctrl-C or SIGTERM the run is dropped, and with it the cluster,
    // whose drop kills every process the run started.
    tokio::select! {
        result = chaos(args) => match result {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(e) => {
                errln!("grove chaos: {e}");
                1
            }
        },
        () = crate::runs::signals::stop_requested() => {
            errln!("grove chaos: interrupted; every process it started was killed");
            130
        }
    }
}

// ---------------------------------------------------------------------------
// Small tools

/// splitmix64: seedable and dependency-free; it only picks victims.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// A different run each time unless `--seed` is given (and it is printed,
/// so any run can be repeated).
fn default_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ ((std::process::id() as u64) << 32)
}

// ---------------------------------------------------------------------------
// The run

async fn chaos(args: ChaosArgs) -> Result<bool, String> {
    let seed = args.seed.unwrap_or_else(default_seed);
    let clock = Clock(Instant::now());
    let lc = LocalCluster::with_config(CONFIG)?;
    announce(&args, seed, &lc);
    let mut cl = Cluster {
        lc,
        members: Vec::new(),
        target: args.members,
    };
    let mut client = cl.lc.client("chaos-main");
    cl.spawn()?;
    wait_first_primary(&mut client, &clock).await?;
    let others = cl.refill()?;
    cl.wait_ready(&others).await?;
    clock.say(format!(
        "{} secondaries registered: {others:?}",
        others.len()
    ));

    let shared = Arc::new(Shared::default());
    let blocker = tagged(
        format!("echo {RUN_MARK}; sleep 3600"),
        "chaos-blocker",
        vec![],
    );
    let blocker = create(
        &mut client,
        &shared,
        "chaos-blocker",
        blocker,
        Kind::Blocker,
        None,
    )
    .await?;
    let handles = start_clients(&args, seed, &cl, &blocker, &shared)?;
    let mut run = Chaos {
        cl,
        client,
        shared: shared.clone(),
        rng: Rng(seed),
        tally: Tally::default(),
        blocker,
        clock,
        kills: args.kills,
        duration: args.duration.map(Duration::from_secs),
        keep: args.keep,
    };
    let loop_result = run.kill_loop().await;
    if let Err(e) = &loop_result {
        run.clock.say(format!("the kill loop stopped: {e}"));
    }
    run.clock
        .say("stopping the clients; cancelling the blocker");
    shared.stop.store(true, Ordering::Relaxed);
    join_clients(handles, &shared).await;
    let end_errors = wind_up(&mut run).await;
    run.clock.say("verifying");
    verify(&mut run, loop_result, end_errors).await
}

/// The first lines of a run: how to rerun it, and what this build can do.
fn announce(args: &ChaosArgs, seed: u64, lc: &LocalCluster) {
    let plan = match args.duration {
        Some(s) => format!("kills for {s} s"),
        None => format!("{} kills", args.kills),
    };
    outln!(
        "chaos: seed {seed} (rerun with --seed {seed}), {} members, {} writers, {plan}, workspace {}",
        args.members,
        args.writers,
        lc.ws.root.display()
    );
    #[cfg(not(feature = "test-hooks"))]
    outln!(
        "chaos: this build has no test hooks, so no primary is made to die between COMMIT and reply \
         (scripts/chaos.sh builds with --features test-hooks)"
    );
}

/// The writer threads (pending writes behind the blocker) and one thread of
/// short shell tasks, each with its own seed.
fn start_clients(
    args: &ChaosArgs,
    seed: u64,
    cl: &Cluster,
    blocker: &str,
    shared: &Arc<Shared>,
) -> Result<Vec<std::thread::JoinHandle<()>>, String> {
    let mut handles = Vec::new();
    for i in 0..=args.writers {
        let (name, load) = if i < args.writers {
            let load = Load::Pending {
                blocker: blocker.to_string(),
            };
            (format!("w{i}"), load)
        } else {
            ("sh".to_string(), Load::Shell)
        };
        let seed_i = seed.wrapping_add(i as u64 + 1);
        handles.push(
            start_client(&cl.lc.ws, &cl.lc.config, name, load, seed_i, shared.clone())
                .map_err(|e| format!("cannot start a client thread: {e}"))?,
        );
    }
    Ok(handles)
}

/// After the kill loop: the grove brought back, the blocker cancelled and
/// every task terminal. Returns what went wrong on the way.
async fn wind_up(run: &mut Chaos) -> Vec<String> {
    let mut end_errors = Vec::new();
    // A loop that stopped early may have left too few members to finish.
    if let Err(e) = run.settle().await {
        end_errors.push(format!("bringing the grove back for the end: {e}"));
    }
    // Timed: cancelling the blocker fails every pending write in one commit,
    // the costliest single write of the run.
    let cancel_started = Instant::now();
    match wind_down(&mut run.client, &run.blocker).await {
        Ok(()) => run.clock.say(format!(
            "blocker cancelled: acknowledged after {:.2} s",
            cancel_started.elapsed().as_secs_f64()
        )),
        Err(e) => end_errors.push(e),
    }
    match wait_terminal(run.cl.ws(), cancel_started, &run.clock).await {
        Ok(()) => run.clock.say(format!(
            "every task terminal {:.2} s after the cancel was sent",
            cancel_started.elapsed().as_secs_f64()
        )),
        Err(e) => end_errors.push(e),
    }
    end_errors
}

/// Detaches the temporary workspace (store, run records, member logs and
/// event logs) from its cleanup, for a post-mortem of a failed run.
fn keep_workspace(cl: &mut Cluster) {
    match tempfile::tempdir() {
        Ok(placeholder) => {
            let kept = std::mem::replace(&mut cl.lc.dir, placeholder).keep();
            outln!("kept {} for inspection", kept.display());
        }
        Err(e) => errln!("grove chaos: cannot keep the workspace: {e}"),
    }
}
