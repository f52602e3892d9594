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
//! between COMMIT and reply (the `GROVE_DEBUG_HOOKS` crash hook). After each,
//! a replacement member keeps the count.
//!
//! The seed fixes the tool's choices (which member dies, after how many
//! writes, which exit codes the shell tasks return); how those choices
//! interleave with the processes' own timing is not reproducible — finding
//! such interleavings is the point.

use crate::client::{Client, ClientError};
use crate::local_cluster::LocalCluster;
use crate::paths::Workspace;
use crate::primary_record::PrimaryRecord;
use crate::protocol::{
    ErrorCode, EventData, FailureReason, Method, NewTask, ReplyBody, TaskRecord, TaskStatus,
};
use crate::shim::{RunFiles, RunRecord};
use crate::store::Reader;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
        return crate::cli::EXIT_USAGE;
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
        () = interrupted() => {
            errln!("grove chaos: interrupted; every process it started was killed");
            130
        }
    }
}

/// Resolves on the first SIGINT, SIGTERM or SIGHUP (never, if the handlers
/// cannot be installed).
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
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

/// Prefixes progress lines with the time since start, so a log of a failed
/// run shows where the time went.
struct Clock(Instant);

impl Clock {
    fn say(&self, msg: impl AsRef<str>) {
        outln!(
            "[{:>7.2}s] {}",
            self.0.elapsed().as_secs_f64(),
            msg.as_ref()
        );
    }
}

/// Nearest-rank quantile of unsorted samples (NaN when empty).
fn quantile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
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
// What the clients saw

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A pending task behind the blocker: a pure write, no process.
    Write,
    /// A real short shell task with a known exit code.
    Shell,
    /// The write the kill loop sends right after killing a primary.
    Probe,
    /// The never-finishing task every write depends on.
    Blocker,
}

/// One acknowledged write: the client holds this reply, so the store must
/// hold the task.
#[derive(Debug, Clone)]
struct Ack {
    request_id: String,
    task_id: String,
    kind: Kind,
    expect_exit: Option<i32>,
}

/// State shared by the client threads and the kill loop.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    acks: Mutex<Vec<Ack>>,
    /// Writes refused for good or never acknowledged, with why.
    failures: Mutex<Vec<String>>,
}

impl Shared {
    fn ack(&self, ack: Ack) {
        self.acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ack);
    }
    fn acked(&self) -> usize {
        self.acks.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
    fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn fail(&self, what: String) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(what);
    }
    fn failures(&self) -> Vec<String> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Sends `method` under `id` until a primary answers, resending the SAME id
/// across failovers and client errors: the ledger makes that safe, and it is
/// exactly what grove promises clients. A refusal recorded in the ledger is
/// final (resending gets it again); `unavailable` and `internal` are not.
async fn call_until_acked(
    client: &mut Client,
    id: &str,
    method: Method,
    give_up: Duration,
) -> Result<ReplyBody, String> {
    let until = Instant::now() + give_up;
    loop {
        let err = match client.call_with_id(id, method.clone()).await {
            Ok(body) => return Ok(body),
            Err(ClientError::Refused(e))
                if !matches!(e.code, ErrorCode::Unavailable | ErrorCode::Internal) =>
            {
                return Err(format!("refused: {e}"));
            }
            Err(e) => e,
        };
        if Instant::now() >= until {
            return Err(format!(
                "not acknowledged within {} s (last error: {err})",
                give_up.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A write tagged with its own request id, so that the store can be asked
/// how many times each request was applied.
fn tagged(prompt: String, id: &str, dependencies: Vec<String>) -> NewTask {
    NewTask {
        prompt,
        tags: vec!["chaos".into(), id.to_string()],
        dependencies,
        ..Default::default()
    }
}

/// Creates a task under `id` (retried with that id) and records the ack.
async fn create(
    client: &mut Client,
    shared: &Shared,
    id: &str,
    task: NewTask,
    kind: Kind,
    expect_exit: Option<i32>,
) -> Result<String, String> {
    match call_until_acked(client, id, Method::TaskCreate(task), WRITE_GIVE_UP).await? {
        ReplyBody::Task(t) => {
            shared.ack(Ack {
                request_id: id.to_string(),
                task_id: t.id.clone(),
                kind,
                expect_exit,
            });
            Ok(t.id)
        }
        other => Err(format!("unexpected reply to task.create: {other:?}")),
    }
}

/// What one client thread writes.
#[derive(Clone)]
enum Load {
    Pending { blocker: String },
    Shell,
}

/// One client thread: its own runtime, its own client, writing until told
/// to stop — and finishing (acknowledging) the write in flight when told.
fn start_client(
    ws: &Workspace,
    config: &crate::config::Config,
    name: String,
    load: Load,
    seed: u64,
    shared: Arc<Shared>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let client = Client::new(ws, config, &format!("chaos-{name}"));
    std::thread::Builder::new()
        .name(format!("chaos-{name}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return shared.fail(format!("{name}: no runtime: {e}")),
            };
            runtime.block_on(client_loop(client, name, load, Rng(seed), shared));
        })
}

/// Writes one task after another, each under a fresh request id; pending
/// writes go fast, shell tasks slower so that a few run at any time.
async fn client_loop(
    mut client: Client,
    name: String,
    load: Load,
    mut rng: Rng,
    shared: Arc<Shared>,
) {
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let id = format!("chaos-{name}-{n}");
        let (task, kind, expect, pace) = match &load {
            Load::Pending { blocker } => (
                tagged(format!("chaos write {id}"), &id, vec![blocker.clone()]),
                Kind::Write,
                None,
                WRITE_PACE,
            ),
            Load::Shell => {
                let code = rng.below(3) as i32;
                let script = format!("echo {RUN_MARK}; sleep 0.2; exit {code}");
                (
                    tagged(script, &id, vec![]),
                    Kind::Shell,
                    Some(code),
                    SHELL_PACE,
                )
            }
        };
        if let Err(e) = create(&mut client, &shared, &id, task, kind, expect).await {
            shared.fail(format!("{id}: {e}"));
        }
        tokio::time::sleep(pace).await;
    }
}

/// Waits for the client threads; a thread still busy after the deadline is
/// reported (it cannot be killed, and the process exits anyway).
async fn join_clients(handles: Vec<std::thread::JoinHandle<()>>, shared: &Shared) {
    let until = Instant::now() + WRITE_GIVE_UP + DEADLINE;
    for h in handles {
        while !h.is_finished() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !h.is_finished() {
            let name = h.thread().name().unwrap_or("?").to_string();
            shared.fail(format!(
                "client thread {name} did not finish its last write"
            ));
        } else if h.join().is_err() {
            shared.fail("a client thread panicked".into());
        }
    }
}

// ---------------------------------------------------------------------------
// The members

/// A member this run started, and what it needs to check it afterwards.
struct Member {
    pid: u32,
    events_log: PathBuf,
    /// The store's last seq just before this member was started: a survivor
    /// that logged nothing missed everything after it.
    spawn_seq: u64,
    killed: bool,
}

/// The throwaway grove and which of its members this tool killed.
struct Cluster {
    lc: LocalCluster,
    members: Vec<Member>,
    target: usize,
}

impl Cluster {
    fn ws(&self) -> &Workspace {
        &self.lc.ws
    }

    /// Starts a member logging every event it receives to its own file.
    fn spawn(&mut self) -> Result<u32, String> {
        let events_log = self
            .lc
            .dir
            .path()
            .join(format!("member-{}.events", self.members.len()));
        let spawn_seq = Reader::open(&self.ws().db_path())
            .and_then(|r| r.last_seq())
            .unwrap_or(0);
        let pid = self.lc.spawn_member_logged(Some(&events_log))?;
        self.members.push(Member {
            pid,
            events_log,
            spawn_seq,
            killed: false,
        });
        Ok(pid)
    }

    /// Members not killed by us (whether they still run is a check).
    fn survivors(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| !m.killed)
    }

    /// Survivors whose process still runs (a zombie does not).
    fn live_pids(&self) -> Vec<u32> {
        self.survivors()
            .filter(|m| crate::proc::running(m.pid))
            .map(|m| m.pid)
            .collect()
    }

    /// The primary named by `primary.json`, if it runs and is one of ours.
    fn primary(&self) -> Option<PrimaryRecord> {
        let rec = PrimaryRecord::read(self.ws())?;
        let ours = self.survivors().any(|m| m.pid == rec.pid);
        (ours && rec.pid_alive()).then_some(rec)
    }

    /// SIGKILLs a live member of ours.
    fn kill(&mut self, pid: u32) -> Result<(), String> {
        let Some(m) = self.members.iter_mut().find(|m| m.pid == pid && !m.killed) else {
            return Err(format!("pid {pid} is not a live member of this grove"));
        };
        m.killed = true;
        if unsafe { libc::kill(pid as i32, libc::SIGKILL) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(format!("kill -9 {pid}: {e}"));
        }
        Ok(())
    }

    /// Records that a member died by the debug hook: killed, as far as the
    /// checks are concerned.
    fn forget(&mut self, pid: u32) {
        if let Some(m) = self.members.iter_mut().find(|m| m.pid == pid) {
            m.killed = true;
        }
    }

    /// Reaps exited members without forgetting them (their `Child` handles
    /// stay, so that member log file names stay unique and drop is safe).
    fn reap(&mut self) {
        for c in &mut self.lc.members {
            let _ = c.try_wait();
        }
    }

    /// Starts members until `target` run again; returns the new pids.
    fn refill(&mut self) -> Result<Vec<u32>, String> {
        self.reap();
        let mut new = Vec::new();
        while self.live_pids().len() < self.target {
            new.push(self.spawn()?);
        }
        Ok(new)
    }

    /// Waits until each of `pids` is the primary or a secondary registered
    /// with the current primary (its `hello` acknowledged: it can write and
    /// it follows the stream).
    async fn wait_ready(&self, pids: &[u32]) -> Result<(), String> {
        let until = Instant::now() + DEADLINE;
        loop {
            let mut waiting = Vec::new();
            for &pid in pids {
                if !crate::proc::running(pid) {
                    return Err(format!("member pid {pid} exited on its own"));
                }
                if !self.is_ready(pid) {
                    waiting.push(pid);
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(format!(
                    "members {waiting:?} did not become primary or register within {} s",
                    DEADLINE.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Primary, or registered with the current primary's epoch.
    fn is_ready(&self, pid: u32) -> bool {
        let Some(rec) = self.primary() else {
            return false;
        };
        if rec.pid == pid {
            return true;
        }
        Reader::open(&self.ws().db_path())
            .and_then(|r| r.members())
            .is_ok_and(|ms| ms.iter().any(|m| m.pid == pid && m.epoch == rec.epoch))
    }

    /// SIGTERMs the survivors (a graceful handover each) and waits for all
    /// of them; returns the pids that had to be SIGKILLed.
    async fn stop(&mut self) -> Vec<u32> {
        let live = self.live_pids();
        for pid in &live {
            unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
        }
        let until = Instant::now() + DEADLINE;
        while Instant::now() < until && live.iter().any(|p| crate::proc::running(*p)) {
            self.reap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stuck: Vec<u32> = live
            .into_iter()
            .filter(|p| crate::proc::running(*p))
            .collect();
        for c in &mut self.lc.members {
            let _ = c.kill();
            let _ = c.wait();
        }
        stuck
    }
}

/// Whatever way the run ends — checks done, an early error, Ctrl-C — no
/// process of it may outlive it: members first (so that none starts another
/// task), then every process of every recorded run (shims run in sessions of
/// their own and the blocker would otherwise sleep for an hour).
impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.lc.members {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in run_processes(&self.lc.ws) {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Waits until the first member answers as primary.
async fn wait_first_primary(client: &mut Client, clock: &Clock) -> Result<(), String> {
    let until = Instant::now() + DEADLINE;
    loop {
        match crate::client::ping(client).await {
            Ok(info) => {
                clock.say(format!("primary pid {} (epoch {})", info.pid, info.epoch));
                return Ok(());
            }
            Err(e) if Instant::now() > until => return Err(format!("no primary: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

// ---------------------------------------------------------------------------
// The kill loop

/// What the kill loop did.
#[derive(Default)]
struct Tally {
    primary: usize,
    secondary: usize,
    /// New primaries killed while (or right after) promoting.
    promoting: usize,
    /// Primaries that died between COMMIT and reply (the debug hook).
    at_commit: usize,
    /// ... of which before they had published `primary.json`.
    before_record: usize,
    probes: usize,
    /// SIGKILL of a primary → a write acknowledged by a later primary.
    failover_ms: Vec<f64>,
}

impl Tally {
    fn kills(&self) -> usize {
        self.primary + self.secondary + self.promoting + self.at_commit
    }
}

/// How the mid-promotion kill spots the new primary.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// Its `instance.promoted` is committed (epoch bumped; not bound yet).
    Store,
    /// It published `primary.json` (bound, adopting tasks).
    Record,
}

/// Everything the kill loop works with.
struct Chaos {
    cl: Cluster,
    client: Client,
    shared: Arc<Shared>,
    rng: Rng,
    tally: Tally,
    blocker: String,
    clock: Clock,
    kills: usize,
    duration: Option<Duration>,
    keep: bool,
}

impl Chaos {
    /// Rounds until the kill budget or the time is spent; the error of a
    /// round (the cluster stopped doing its job) ends the loop.
    async fn kill_loop(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let remaining = match self.duration {
                Some(d) if started.elapsed() >= d => return Ok(()),
                Some(_) => None,
                None if self.tally.kills() >= self.kills => return Ok(()),
                None => Some(self.kills - self.tally.kills()),
            };
            self.round(remaining).await?;
        }
    }

    /// One round: let some writes through — usually a few dozen, so that
    /// kills come in quick succession; sometimes a few hundred, so that
    /// shell tasks finish and are reported between kills — then kill the
    /// primary (most often), a secondary, or the primary and then its
    /// successor while it promotes.
    async fn round(&mut self, remaining: Option<usize>) -> Result<(), String> {
        let dwell = if self.rng.below(4) == 0 { 400 } else { 40 };
        let writes = 5 + self.rng.below(dwell) as usize;
        self.wait_for_acks(self.shared.acked() + writes).await?;
        let roll = self.rng.below(100);
        let double_fits = remaining.is_none_or(|r| r >= 2);
        if roll < 60 || (roll >= 85 && !double_fits) {
            self.kill_primary().await
        } else if roll < 70 {
            self.kill_at_commit().await
        } else if roll < 85 {
            self.kill_secondary().await
        } else {
            let trigger = if self.rng.below(2) == 0 {
                Trigger::Store
            } else {
                Trigger::Record
            };
            self.kill_promoting(trigger).await
        }
    }

    /// Waits until the clients' acknowledged writes reach `target`: the
    /// grove must keep accepting writes between kills.
    async fn wait_for_acks(&self, target: usize) -> Result<(), String> {
        let until = Instant::now() + DEADLINE;
        while self.shared.acked() < target {
            if Instant::now() > until {
                return Err(format!(
                    "writes stalled: {} of {target} acknowledged after {} s",
                    self.shared.acked(),
                    DEADLINE.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// The primary to kill: it must be a live member of ours, since every
    /// round starts once the grove acknowledged writes again.
    fn current_primary(&self) -> Result<PrimaryRecord, String> {
        self.cl
            .primary()
            .ok_or_else(|| "primary.json names no live member of ours".to_string())
    }

    /// "kill 7/20" or "kill 7-8/20" (without the total for --duration).
    fn kill_label(&self, n: usize) -> String {
        let k = self.tally.kills();
        match (n, self.duration) {
            (1, None) => format!("kill {}/{}", k + 1, self.kills),
            (_, None) => format!("kill {}-{}/{}", k + 1, k + n, self.kills),
            (1, Some(_)) => format!("kill {}", k + 1),
            (_, Some(_)) => format!("kill {}-{}", k + 1, k + n),
        }
    }

    /// The common case: the primary dies; a write must get through soon.
    async fn kill_primary(&mut self) -> Result<(), String> {
        let rec = self.current_primary()?;
        let label = self.kill_label(1);
        self.cl.kill(rec.pid)?;
        let t0 = Instant::now();
        if self.cl.live_pids().is_empty() {
            self.cl.refill()?;
        }
        let epoch = self.probe().await?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        self.tally.failover_ms.push(ms);
        self.tally.primary += 1;
        self.clock.say(format!(
            "{label}: primary pid {} (epoch {}) → a write acknowledged {ms:.1} ms later (epoch {epoch})",
            rec.pid, rec.epoch
        ));
        self.settle().await
    }

    /// The primary dies after committing a write and before answering it —
    /// the one moment where only the ledger prevents a double apply. A
    /// random SIGKILL almost never lands there, so the write itself asks
    /// for it: with `GROVE_DEBUG_HOOKS=1` (set for the members by [`chaos`])
    /// a primary that commits a task with this prompt exits at once. The
    /// client resends the same id to the next primary and must get the
    /// recorded reply; the store must hold one task for it.
    async fn kill_at_commit(&mut self) -> Result<(), String> {
        let rec = self.current_primary()?;
        let label = self.kill_label(1);
        self.tally.probes += 1;
        let id = format!("chaos-probe-{}", self.tally.probes);
        let prompt = crate::store::writer::CRASH_AFTER_COMMIT_PROMPT.to_string();
        let task = tagged(prompt, &id, vec![self.blocker.clone()]);
        let t0 = Instant::now();
        create(&mut self.client, &self.shared, &id, task, Kind::Probe, None).await?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let epoch = self.client.epoch();
        if crate::proc::running(rec.pid) || epoch <= rec.epoch {
            return Err(format!(
                "the crash-after-commit hook did not fire (primary pid {} still runs; reply from epoch {epoch}): are debug hooks off?",
                rec.pid
            ));
        }
        self.cl.forget(rec.pid);
        // Not a failover sample: the clock started before the death.
        self.tally.at_commit += 1;
        self.clock.say(format!(
            "{label}: primary pid {} (epoch {}) died between COMMIT and reply → the resent write acknowledged {ms:.1} ms after it was first sent (epoch {epoch})",
            rec.pid, rec.epoch
        ));
        self.settle().await
    }

    /// A follower dies: the grove must not even notice, beyond its
    /// replacement joining.
    async fn kill_secondary(&mut self) -> Result<(), String> {
        let primary = self.current_primary()?;
        let victims: Vec<u32> = self
            .cl
            .live_pids()
            .into_iter()
            .filter(|p| *p != primary.pid)
            .collect();
        if victims.is_empty() {
            return self.kill_primary().await;
        }
        let victim = victims[self.rng.below(victims.len() as u64) as usize];
        let label = self.kill_label(1);
        self.cl.kill(victim)?;
        self.tally.secondary += 1;
        self.clock.say(format!(
            "{label}: secondary pid {victim} (epoch {})",
            primary.epoch
        ));
        self.settle().await
    }

    /// Kills the primary, then its successor the moment it shows itself
    /// (per `trigger`), while a probe write waits for whoever comes next.
    async fn kill_promoting(&mut self, trigger: Trigger) -> Result<(), String> {
        let rec = self.current_primary()?;
        let label = self.kill_label(2);
        let seq0 = Reader::open(&self.cl.ws().db_path())
            .and_then(|r| r.last_seq())
            .map_err(|e| e.to_string())?;
        self.cl.kill(rec.pid)?;
        let t0 = Instant::now();
        self.tally.probes += 1;
        let probe_id = format!("chaos-probe-{}", self.tally.probes);
        let probe = tagged(
            format!("chaos probe {probe_id}"),
            &probe_id,
            vec![self.blocker.clone()],
        );
        // Disjoint borrows: the probe uses the client, the watcher the cluster.
        let (client, shared, cl) = (&mut self.client, &self.shared, &mut self.cl);
        let (probed, second) = tokio::join!(
            async {
                let r = create(client, shared, &probe_id, probe, Kind::Probe, None).await;
                (r, t0.elapsed().as_secs_f64() * 1000.0, client.epoch())
            },
            kill_successor(cl, rec.epoch, seq0, trigger)
        );
        let (new_pid, new_epoch, early) = second?;
        let (probe_result, ms, epoch) = probed;
        probe_result?;
        self.tally.primary += 1;
        self.tally.promoting += 1;
        self.tally.before_record += early as usize;
        self.tally.failover_ms.push(ms);
        self.clock.say(format!(
            "{label}: primary pid {} (epoch {}), then pid {new_pid} promoting to epoch {new_epoch} \
             ({}) → a write acknowledged {ms:.1} ms after the first kill (epoch {epoch})",
            rec.pid,
            rec.epoch,
            if early {
                "before it published primary.json"
            } else {
                "right after it published primary.json"
            }
        ));
        self.settle().await
    }

    /// The write sent right after a kill: the failover as a client feels it.
    async fn probe(&mut self) -> Result<u64, String> {
        self.tally.probes += 1;
        let id = format!("chaos-probe-{}", self.tally.probes);
        let task = tagged(format!("chaos probe {id}"), &id, vec![self.blocker.clone()]);
        create(&mut self.client, &self.shared, &id, task, Kind::Probe, None).await?;
        Ok(self.client.epoch())
    }

    /// Brings the member count back and waits until every live member —
    /// newcomers and survivors re-registering with a new primary — works.
    async fn settle(&mut self) -> Result<(), String> {
        self.cl.refill()?;
        let live = self.cl.live_pids();
        self.cl.wait_ready(&live).await
    }
}

/// Watches for the primary after `old_epoch` and SIGKILLs it as soon as
/// `trigger` sees it. Starts a replacement at once if that left no member,
/// so that the probe write can succeed. Returns its pid, epoch, and whether
/// it died before publishing `primary.json`.
async fn kill_successor(
    cl: &mut Cluster,
    old_epoch: u64,
    seq0: u64,
    trigger: Trigger,
) -> Result<(u32, u64, bool), String> {
    let until = Instant::now() + DEADLINE;
    let reader = Reader::open(&cl.ws().db_path()).map_err(|e| e.to_string())?;
    loop {
        let found = match trigger {
            Trigger::Store => promoted_after(&reader, seq0, old_epoch)?,
            Trigger::Record => PrimaryRecord::read(cl.ws())
                .filter(|r| r.epoch > old_epoch)
                .map(|r| (r.pid, r.epoch)),
        };
        if let Some((pid, epoch)) = found {
            let early = PrimaryRecord::read(cl.ws()).is_none_or(|r| r.epoch < epoch);
            cl.kill(pid)?;
            if cl.live_pids().is_empty() {
                cl.refill()?;
            }
            return Ok((pid, epoch, early));
        }
        if Instant::now() > until {
            return Err(format!(
                "no member promoted after epoch {old_epoch} within {} s",
                DEADLINE.as_secs()
            ));
        }
        tokio::time::sleep(WATCH_POLL).await;
    }
}

/// The first `instance.promoted` after `seq0` with an epoch above
/// `old_epoch`: committed by the promotion's first transaction, before the
/// new primary binds its sockets.
fn promoted_after(
    reader: &Reader,
    seq0: u64,
    old_epoch: u64,
) -> Result<Option<(u32, u64)>, String> {
    let mut from = seq0 + 1;
    loop {
        let page = reader.events_from(from, 1000).map_err(|e| e.to_string())?;
        let Some(last) = page.last().map(|e| e.seq) else {
            return Ok(None);
        };
        for e in &page {
            if let EventData::Promoted { pid, epoch, .. } = &e.data
                && *epoch > old_epoch
            {
                return Ok(Some((*pid, *epoch)));
            }
        }
        from = last + 1;
    }
}

// ---------------------------------------------------------------------------
// The end: wind down, then verify

/// Cancels the blocker (every pending write then fails with it) and waits
/// until every task is terminal.
async fn wind_down(client: &mut Client, blocker: &str) -> Result<(), String> {
    let cancel = Method::TaskCancel {
        id: blocker.to_string(),
    };
    call_until_acked(client, "chaos-cancel-blocker", cancel, SETTLE)
        .await
        .map_err(|e| format!("cancelling the blocker: {e}"))?;
    Ok(())
}

/// Polls the store until no task is pending, queued, running or paused.
/// Names the open tasks once when that takes long: a slow end is a finding
/// worth a look even when the deadline holds.
async fn wait_terminal(ws: &Workspace, since: Instant, clock: &Clock) -> Result<(), String> {
    let until = since + SETTLE;
    let mut told = false;
    loop {
        let open = open_tasks(ws)?;
        if open.is_empty() {
            return Ok(());
        }
        if !told && since.elapsed() > Duration::from_secs(5) {
            told = true;
            clock.say(format!(
                "{} tasks still open 5 s after the cancel, e.g. {}",
                open.len(),
                examples(&open)
            ));
        }
        if Instant::now() > until {
            return Err(format!(
                "{} tasks still not terminal {} s after the blocker was cancelled, e.g. {}",
                open.len(),
                SETTLE.as_secs(),
                examples(&open)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Tasks not in a final state.
fn open_tasks(ws: &Workspace) -> Result<Vec<TaskRecord>, String> {
    let reader = Reader::open(&ws.db_path()).map_err(|e| e.to_string())?;
    let mut open = Vec::new();
    for status in [
        TaskStatus::Running,
        TaskStatus::Queued,
        TaskStatus::Paused,
        TaskStatus::Pending,
    ] {
        let filter = crate::store::TaskFilter {
            status: Some(status),
            ..Default::default()
        };
        open.extend(reader.tasks(&filter).map_err(|e| e.to_string())?);
    }
    Ok(open)
}

/// The first few open tasks, described.
fn examples(open: &[TaskRecord]) -> String {
    let some: Vec<String> = open.iter().take(3).map(describe).collect();
    some.join("; ")
}

/// One line about a task, for diagnostics.
fn describe(t: &TaskRecord) -> String {
    let age = |ms: Option<u64>| {
        ms.map(|at| {
            format!(
                "{:.1} s",
                crate::protocol::now_ms().saturating_sub(at) as f64 / 1000.0
            )
        })
        .unwrap_or_else(|| "-".into())
    };
    format!(
        "{} {} (started {} ago, updated {} ago, run {}, pid {:?}): {}",
        t.id,
        t.status.as_str(),
        age(t.started_at),
        age(Some(t.updated_at)),
        t.run_id.as_deref().unwrap_or("-"),
        t.pid,
        t.prompt
    )
}

/// What the store says about the acknowledged writes.
#[derive(Default)]
struct WriteFindings {
    acked: usize,
    by_kind: HashMap<&'static str, usize>,
    lost: Vec<String>,
    doubled: Vec<String>,
    wrong_outcome: Vec<String>,
    ran_twice: Vec<String>,
    stuck_running: Vec<String>,
    not_terminal: usize,
    /// Seconds from creation to the final state of each shell task (each
    /// runs 0.2 s): how long failovers delay real work.
    shell_latency: Vec<f64>,
}

fn kind_name(k: Kind) -> &'static str {
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
fn check_writes(ws: &Workspace, reader: &Reader, acks: &[Ack]) -> Result<WriteFindings, String> {
    let tasks = reader
        .tasks(&Default::default())
        .map_err(|e| e.to_string())?;
    let mut by_request: HashMap<&str, Vec<&TaskRecord>> = HashMap::new();
    for t in &tasks {
        for tag in t.tags.iter().filter(|t| t.starts_with("chaos-")) {
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
            f.stuck_running.push(format!("{} ({})", t.id, t.prompt));
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
fn wrong_outcome(ack: &Ack, t: &TaskRecord) -> Option<String> {
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
fn count_runs(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.trim() == RUN_MARK)
        .count()
}

/// Durable event seqs in a member's events log, in arrival order. A line
/// being written right now may be cut short: it is skipped, and read whole
/// on the next poll.
fn read_seqs(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["seq"].as_u64())
        .collect()
}

/// One member's view of the event stream.
struct StreamFinding {
    pid: u32,
    survivor: bool,
    from: u64,
    to: u64,
    missed: usize,
    out_of_order: bool,
}

/// Each member's subscriber starts at the end of the log as its process
/// starts (a member that promotes itself at once starts after its own
/// `instance.promoted`); from there it must deliver every durable event, in
/// order. Survivors must reach the store's last seq (they get a deadline to
/// catch up); a killed member's log must have no hole up to where it died.
async fn check_events(cl: &Cluster, reader: &Reader) -> Result<(u64, Vec<StreamFinding>), String> {
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
fn stream_finding(m: &Member, dead: bool, last: u64) -> StreamFinding {
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

/// Fields 3.. of `/proc/<pid>/stat`: state and session id.
fn state_and_session(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let session = rest.nth(2)?.parse().ok()?;
    Some((state, session))
}

/// Shim pids of every run recorded in `.grove/run/*.run.json`.
fn recorded_shims(ws: &Workspace) -> HashSet<u32> {
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
fn run_processes(ws: &Workspace) -> Vec<u32> {
    let shims = recorded_shims(ws);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            state_and_session(*pid)
                .is_some_and(|(state, session)| state != 'Z' && shims.contains(&session))
        })
        .collect()
}

/// Polls until no run process is left (cancelled agents get `kill_grace_ms`
/// to go); returns whatever is still there at the deadline.
async fn wait_orphans(ws: &Workspace) -> Vec<u32> {
    let until = Instant::now() + DEADLINE;
    loop {
        let left = run_processes(ws);
        if left.is_empty() || Instant::now() > until {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// The run

async fn chaos(args: ChaosArgs) -> Result<bool, String> {
    // The members inherit it: it arms the crash-after-commit hook (see
    // `Chaos::kill_at_commit`).
    // SAFETY: no other thread runs yet (client threads start later, and the
    // CLI runtime is single-threaded), so nothing reads the environment
    // concurrently.
    unsafe { std::env::set_var("GROVE_DEBUG_HOOKS", "1") };
    let seed = args.seed.unwrap_or_else(default_seed);
    let clock = Clock(Instant::now());
    let lc = LocalCluster::with_config(CONFIG)?;
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
    let mut handles = Vec::new();
    for i in 0..=args.writers {
        let (name, load) = if i < args.writers {
            let load = Load::Pending {
                blocker: blocker.clone(),
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
    join_clients(std::mem::take(&mut handles), &shared).await;
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
    run.clock.say("verifying");
    let report = verify(&mut run, loop_result, end_errors).await?;
    Ok(report)
}

/// Runs every check, prints them and the summary line; true if all held.
async fn verify(
    run: &mut Chaos,
    loop_result: Result<(), String>,
    end_errors: Vec<String>,
) -> Result<bool, String> {
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
    let failures = run.shared.failures();

    outln!();
    outln!("checks:");
    let mut failed: Vec<String> = Vec::new();
    let mut check = |passed: bool, what: String, short: String, detail: &[String]| {
        outln!("  [{}] {what}", if passed { "ok" } else { "FAILED" });
        for d in detail.iter().take(10) {
            outln!("         {d}");
        }
        if detail.len() > 10 {
            outln!("         ... and {} more", detail.len() - 10);
        }
        if !passed {
            failed.push(short);
        }
    };
    let t = &run.tally;
    let loop_ok = loop_result.is_ok();
    check(
        loop_ok,
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
        &loop_result.err().into_iter().collect::<Vec<_>>(),
    );
    let mut kinds: Vec<String> = writes
        .by_kind
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    kinds.sort();
    check(
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
    check(
        writes.doubled.is_empty(),
        format!("writes applied twice: {}", writes.doubled.len()),
        format!("{} writes applied twice", writes.doubled.len()),
        &writes.doubled,
    );
    check(
        failures.is_empty(),
        format!(
            "writes refused or never acknowledged (each retried with its id for {} s): {}",
            WRITE_GIVE_UP.as_secs(),
            failures.len()
        ),
        format!("{} writes refused or never acknowledged", failures.len()),
        &failures,
    );
    let missed: usize = streams.iter().map(|s| s.missed).sum();
    let disordered = streams.iter().filter(|s| s.out_of_order).count();
    let survivors = streams.iter().filter(|s| s.survivor).count();
    // Survivors always; killed members only when something is wrong.
    let stream_detail: Vec<String> = streams
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
    check(
        missed == 0 && disordered == 0,
        format!(
            "events missed by subscribers: {missed} ({survivors} survivors up to store seq {last_seq}; {} killed members up to their death)",
            streams.len() - survivors
        ),
        format!("{missed} events missed, {disordered} logs out of order"),
        &stream_detail,
    );
    check(
        integrity == "ok",
        format!("PRAGMA integrity_check: {integrity}"),
        format!("integrity_check: {integrity}"),
        &[],
    );
    check(
        end_errors.is_empty(),
        "end of the run: blocker cancelled, every task terminal".into(),
        "the end of the run failed".into(),
        &end_errors,
    );
    check(
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
    check(
        writes.wrong_outcome.is_empty(),
        format!(
            "tasks with a wrong ending: {} (shell tasks keep their exit code, writes fail with their blocker)",
            writes.wrong_outcome.len()
        ),
        format!("{} tasks with a wrong ending", writes.wrong_outcome.len()),
        &writes.wrong_outcome,
    );
    check(
        writes.ran_twice.is_empty(),
        format!(
            "tasks run more than once (shell tasks, and the blocker adopted by every new primary): {}",
            writes.ran_twice.len()
        ),
        format!("{} tasks ran twice", writes.ran_twice.len()),
        &writes.ran_twice,
    );
    check(
        died.is_empty(),
        format!("members that died without being killed: {}", died.len()),
        format!("{} members died on their own", died.len()),
        &died.iter().map(|p| format!("pid {p}")).collect::<Vec<_>>(),
    );
    let left = orphans.len() + not_stopped.len();
    check(
        left == 0,
        format!(
            "orphan processes left: {} (shims/agents of .grove/run/*.run.json still alive: {:?}; members that ignored SIGTERM: {:?})",
            left, orphans, not_stopped
        ),
        format!("{left} orphan processes"),
        &[],
    );
    let fo = &t.failover_ms;
    outln!(
        "  failover, kill -9 of the primary → a write acknowledged: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} kills)",
        quantile(fo, 0.5),
        quantile(fo, 0.99),
        quantile(fo, 1.0),
        fo.len()
    );
    let sl = &writes.shell_latency;
    outln!(
        "  shell tasks (0.2 s each), created → final state: p50 {:.2} s, p99 {:.2} s, max {:.2} s ({} tasks)",
        quantile(sl, 0.5),
        quantile(sl, 0.99),
        quantile(sl, 1.0),
        sl.len()
    );
    outln!();
    let missed_total = missed;
    let verdict = if failed.is_empty() {
        "all checks passed".to_string()
    } else {
        format!("FAILED: {}", failed.join("; "))
    };
    outln!(
        "chaos: {} kills, {} writes acknowledged, {} lost, {} applied twice, {missed_total} events missed, integrity {integrity}, {} stuck running, {left} orphans, failover p50 {:.1} ms p99 {:.1} ms, {verdict}",
        t.kills(),
        writes.acked,
        writes.lost.len(),
        writes.doubled.len(),
        writes.stuck_running.len(),
        quantile(fo, 0.5),
        quantile(fo, 0.99),
    );
    let ok = failed.is_empty();
    if !ok && run.keep {
        keep_workspace(&mut run.cl);
    }
    Ok(ok)
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
