//! The task orchestrator (see docs/design.md, Orchestrator). It runs on the
//! primary only.
//!
//! The store is the desired state; this module makes the processes match
//! it, in passes, each woken by a committed change (a queued task, a freed
//! slot, a cancel: at once, no tick in between) or, while runs exist, by a
//! short tick. A pass is three steps:
//! 1. `observe`: look at the rows, `/proc`, the run and exit records and
//!    the logs — all blocking, so on a blocking thread, never on the
//!    primary's single event-loop thread;
//! 2. `decide`: a pure function from those facts to actions — finalize a
//!    run whose shim is gone (from its exit record, else `lost`), adopt or
//!    requeue an unconfirmed run, kill a run that is no longer wanted, tell
//!    a shim its task was paused or resumed, record an agent's pid, start
//!    queued tasks (priority first, then FIFO) while fewer than
//!    `max_parallel` hold a slot (running, or paused with a run);
//! 3. carry them out here: store writes through the store thread (which
//!    refuses a start beyond the limit, so two completions at once can
//!    never start one task twice), signals, and shims started off the
//!    event loop (`launch`).
//!
//! On promotion every started task is unconfirmed: adopted when its shim
//! is alive (pid *and* start time match), finalized from its exit record
//! when the shim finished meanwhile, `failed: lost` otherwise (and whatever
//! the dead shim left running is killed), requeued when nothing shows
//! within `START_GRACE`.

mod decide;
pub mod engines;
mod launch;
mod observe;
mod tail;
#[cfg(test)]
mod tests;

use crate::config::{Config, LiveConfig};
use crate::fs_watch::FileWatch;
use crate::paths::Workspace;
use crate::protocol::{
    Event, EventData, ExitOutcome, Method, ReplyBody, TaskExit, TaskRecord, now_ms,
};
use crate::runs::{RunFiles, kill_group, kill_leftovers};
use crate::store::Reader;
use crate::store::tasks::InternalOp;
use crate::store::writer::{Job, ReplyTo, WriteResult};
use decide::{Action, Decision};
use observe::{Look, RunState};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, oneshot};

/// How often live runs are looked at without a change: how soon new output
/// goes out and a shim that died without reporting is noticed. Idle (no
/// runs) the orchestrator does not tick at all.
const TICK: Duration = Duration::from_millis(100);
/// How long a new primary waits for the supervisor of a run that its
/// predecessor recorded as started but may never have spawned.
const START_GRACE: Duration = Duration::from_secs(2);

/// How the orchestrator is woken: by a committed change it may act on,
/// and with the tasks whose shims have a new control to read (each woken
/// once per pass, however many controls were written).
#[derive(Default)]
pub struct Wake {
    notify: Notify,
    controlled: Mutex<std::collections::HashSet<String>>,
}

impl Wake {
    pub fn changed(&self) {
        self.notify.notify_one();
    }

    /// Task `id` has a new control. The set holds existing tasks only (a
    /// control for an unknown task is refused before it is an event), and
    /// is drained by every pass.
    pub fn controlled(&self, id: &str) {
        self.controlled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string());
        self.notify.notify_one();
    }

    fn take_controlled(&self) -> std::collections::HashSet<String> {
        std::mem::take(&mut *self.controlled.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

struct Run {
    run_id: String,
    shim_pid: u32,
    shim_start: Option<u64>,
    /// Our own child (we started it, and reap it); false if adopted.
    own: bool,
    /// Our child exited and was reaped: its pid may name another process.
    reaped: bool,
    /// Wakes a pass the moment the shim ends: its exit record is then
    /// read and committed at once, which frees the slot (the shim itself
    /// sends no report when its exit record is on disk).
    exit_watch: crate::proc::ExitWatch,
    /// Whether the shim was last told to pause (`None` when adopted: it is
    /// told once, whatever the row says, in case the old primary died
    /// between committing a pause and signalling it).
    told_paused: Option<bool>,
    kill_sent: bool,
    log_offset: u64,
    /// Until the agent's pid is recorded: the run record's watch.
    record_watch: Option<FileWatch>,
    /// The run record, once it names the agent (it does not change then).
    record: Option<crate::runs::RunRecord>,
}

pub struct Orchestrator {
    ws: Workspace,
    live: Arc<LiveConfig>,
    jobs: std::sync::mpsc::Sender<Job>,
    output: mpsc::Sender<Event>,
    epoch: u64,
    runs: HashMap<String, Run>,
    /// Runs recorded as started whose supervisor has not shown itself to
    /// this primary (task id → run id, give-up time): adopted if it
    /// appears, requeued if not — the old primary may have died before
    /// spawning it.
    unconfirmed: HashMap<String, (String, Instant)>,
    /// Read-only view of the committed state, used on blocking threads.
    reader: Arc<Mutex<Option<Reader>>>,
    /// Look again on the tick even without a change (the store was
    /// unreadable, or a start failed for a reason other than a full house).
    reschedule: bool,
    /// The earliest deadline of a pending await (Unix ms), as last seen.
    await_deadline: Option<u64>,
    /// Settle the awaits once after taking over: their deadlines may have
    /// passed while no primary ran.
    settle_on_takeover: bool,
    /// The started runs of the store were read after taking over. Until
    /// then every pass tries again: a run no primary knows of would never
    /// be finalized (its shim leaves its end on disk only).
    adopted: bool,
    /// Tasks whose run's end could not be saved (a full disk, a store
    /// locked by someone else): confirmed again from what their run left
    /// on disk, each pass until it is saved, and warned about once.
    unsaved_ends: std::collections::HashSet<String>,
    /// The end of the shims' fork server, watched to reap it (see
    /// `runs::zygote::server_pid`).
    fork_server: Option<(u32, crate::proc::ExitWatch)>,
}

/// A store write of a run's end, and what to confirm again if it fails
/// (task id, run id): the run is no longer supervised by then, and only
/// its row, still running, would say it ever was.
type EndWrite = (String, Pending, Option<(String, String)>);

impl Orchestrator {
    pub fn new(
        ws: Workspace,
        live: Arc<LiveConfig>,
        jobs: std::sync::mpsc::Sender<Job>,
        output: mpsc::Sender<Event>,
        epoch: u64,
    ) -> Self {
        Orchestrator {
            ws,
            live,
            jobs,
            output,
            epoch,
            runs: HashMap::new(),
            unconfirmed: HashMap::new(),
            reader: Arc::new(Mutex::new(None)),
            reschedule: false,
            await_deadline: None,
            settle_on_takeover: true,
            adopted: false,
            unsaved_ends: std::collections::HashSet::new(),
            fork_server: None,
        }
    }

    /// Runs until the task is aborted (on shutdown).
    pub async fn run(mut self, wake: Arc<Wake>) {
        let changed = &wake.notify;
        loop {
            self.wake_controlled(wake.take_controlled());
            self.pass().await;
            // With no run, only a committed change (or an await's deadline)
            // can give us work, so an idle primary sleeps until one arrives.
            self.watch_fork_server();
            let server = self.fork_server.as_ref().map(|(_, watch)| watch);
            let mut fork_server_ended = false;
            if self.runs.is_empty() && self.unconfirmed.is_empty() && !self.reschedule {
                tokio::select! {
                    _ = changed.notified() => {}
                    _ = until_ms(self.await_deadline) => {}
                    _ = exited(server) => fork_server_ended = true,
                }
            } else {
                let (mut records, mut exits) = (Vec::new(), Vec::new());
                for run in self.runs.values_mut() {
                    records.extend(run.record_watch.as_mut());
                    exits.push(&run.exit_watch);
                }
                tokio::select! {
                    _ = changed.notified() => {}
                    _ = crate::fs_watch::any(records) => {}
                    _ = any_exit(exits.into_iter()) => {}
                    _ = tokio::time::sleep(TICK) => {}
                    _ = until_ms(self.await_deadline) => {}
                    _ = exited(server) => fork_server_ended = true,
                }
            }
            if fork_server_ended {
                crate::runs::zygote::reap_if_exited();
                // Watched afresh: an ended process's pidfd stays ready, and
                // its pid may already name the next server.
                self.fork_server = None;
            }
        }
    }

    /// The fork server's end, to await: the server exits when idle and is
    /// this process's child to reap.
    fn watch_fork_server(&mut self) {
        let Some(pid) = crate::runs::zygote::server_pid() else {
            return; // a start holds it: the watch stays as it is
        };
        if self.fork_server.as_ref().map(|(p, _)| *p) != pid {
            self.fork_server = pid.map(|p| (p, crate::proc::ExitWatch::new(p, FORK_SERVER_LOOK)));
        }
    }

    /// Wakes the shims of tasks with a new control (a permission answer, a
    /// follow-up, a close): they read their controls from the store. A
    /// task whose run is not known here yet is woken when adopted (every
    /// adopted shim is synced once).
    fn wake_controlled(&self, tasks: std::collections::HashSet<String>) {
        for id in tasks {
            if let Some(run) = self.runs.get(&id)
                && !run.reaped
            {
                unsafe { libc::kill(run.shim_pid as i32, crate::runs::SYNC_SIGNAL) };
            }
        }
    }

    /// After a promotion: every started task's run is unconfirmed until a
    /// pass has seen its trace.
    async fn adopt(&mut self) {
        let (ws, reader) = (self.ws.clone(), self.reader.clone());
        let started = blocking(move || {
            for dir in [RunFiles::dir(&ws), ws.logs_dir()] {
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    tracing::error!("cannot create {}: {e}", dir.display());
                }
            }
            observe::started_runs(&ws, &reader)
        })
        .await
        .flatten();
        let Some(started) = started else {
            tracing::warn!("cannot read the started tasks yet; trying again");
            self.reschedule = true;
            return;
        };
        self.adopted = true;
        let now = Instant::now();
        // On a retry, runs this primary started meanwhile are its own.
        let started = started
            .into_iter()
            .filter(|(task_id, ..)| !self.runs.contains_key(task_id));
        for (task_id, run_id, started_at) in started {
            // Counted from the recorded start, not from this takeover:
            // otherwise back-to-back failovers would restart the clock and
            // the task would hold a slot with no process.
            let age = Duration::from_millis(now_ms().saturating_sub(started_at.unwrap_or(0)));
            let give_up = now + START_GRACE.saturating_sub(age);
            self.unconfirmed.insert(task_id, (run_id, give_up));
        }
    }

    /// One pass: observe (off the event loop), decide, act.
    async fn pass(&mut self) {
        if !self.adopted {
            self.adopt().await;
        }
        self.reap_children();
        let look = self.look();
        let Some(seen) = blocking(move || observe::look(look)).await else {
            self.reschedule = true;
            return;
        };
        for (task_id, tail) in seen.tails {
            self.publish_output(&task_id, tail);
        }
        for facts in &seen.facts.runs {
            if let Some(run) = self.runs.get_mut(&facts.task_id)
                && run.record.is_none()
                && facts.record.as_ref().is_some_and(|r| r.agent_pid.is_some())
            {
                run.record = facts.record.clone();
            }
        }
        let decision = decide::decide(&seen.facts);
        self.execute(decision, &seen.config).await;
        self.settle_awaits(seen.await_deadline).await;
    }

    /// Fires the awaits whose deadline passed (and, once after a takeover,
    /// any that are satisfied): a child's end fires its parent's await in
    /// its own commit, so only time and a takeover need a pass.
    async fn settle_awaits(&mut self, deadline: Option<u64>) {
        let takeover = std::mem::take(&mut self.settle_on_takeover);
        self.await_deadline = deadline;
        let now = now_ms();
        if deadline.is_none_or(|d| d > now && !takeover) {
            return;
        }
        let rx = self.queue_internal(InternalOp::SettleAwaits { now });
        if let Err(e) = reply(rx).await {
            tracing::warn!("settling awaits: {e}");
        }
        // A deadline not due yet (a takeover's settle) still stands; the
        // next one after a fired await is read by the next pass, soon.
        self.await_deadline = deadline.filter(|d| *d > now);
        self.reschedule = true;
    }

    /// Reaps shims of ours that exited (`waitpid` with `WNOHANG`).
    fn reap_children(&mut self) {
        for run in self.runs.values_mut() {
            reap(run);
        }
    }

    /// Stops supervising a run whose shim is gone, reaping it if it is
    /// ours (it may have ended after this pass's reaping).
    fn forget(&mut self, task_id: &str) {
        if let Some(mut run) = self.runs.remove(task_id) {
            reap(&mut run);
        }
    }

    fn look(&self) -> Look {
        Look {
            ws: self.ws.clone(),
            live: self.live.clone(),
            reader: self.reader.clone(),
            runs: self
                .runs
                .iter()
                .map(|(task_id, r)| RunState {
                    task_id: task_id.clone(),
                    run_id: r.run_id.clone(),
                    shim_pid: r.shim_pid,
                    shim_start: r.shim_start,
                    reaped: r.reaped,
                    told_paused: r.told_paused,
                    kill_sent: r.kill_sent,
                    log_offset: r.log_offset,
                    record: r.record.clone(),
                })
                .collect(),
            unconfirmed: self
                .unconfirmed
                .iter()
                .map(|(t, (r, at))| (t.clone(), r.clone(), *at))
                .collect(),
        }
    }

    /// Publishes a run's new output as transient `task.output` events.
    fn publish_output(&mut self, task_id: &str, tail: tail::Tail) {
        if let Some(run) = self.runs.get_mut(task_id) {
            run.log_offset = tail.offset;
        }
        for chunk in tail.chunks {
            // Dropped when the publisher is behind: output is transient.
            let _ = self.output.try_send(Event::new(
                0,
                self.epoch,
                now_ms(),
                EventData::TaskOutput {
                    id: task_id.to_string(),
                    chunk,
                },
            ));
        }
    }

    /// Carries out a decision. Store writes are queued at once and awaited
    /// together (the store thread applies them in order, often in one
    /// commit); starts come last, so a slot freed in this pass is free by
    /// the time a start asks for it.
    async fn execute(&mut self, decision: Decision, config: &Arc<Config>) {
        let keep: std::collections::HashSet<String> =
            decision.still_unconfirmed.into_iter().collect();
        self.unconfirmed.retain(|task, _| keep.contains(task));
        self.reschedule = decision.retry || !self.adopted;
        let mut writes = Vec::new();
        let mut starts = Vec::new();
        for action in decision.actions {
            if let Action::Start { task_id } = action {
                starts.push(task_id);
            } else if let Some(write) = self.act(action).await {
                writes.push(write);
            }
        }
        let started = self.start(starts, config.max_parallel);
        for (what, rx, end) in writes {
            let result = reply(rx).await;
            let Some((task_id, run_id)) = end else {
                if let Err(e) = result {
                    tracing::debug!("{what}: {e}");
                }
                continue;
            };
            match result {
                // The store could not commit (a full disk, its lock held
                // past the busy timeout). The run is forgotten: confirmed
                // again next pass from its exit record (or its absence),
                // with the same key. A refusal (the task deleted meanwhile)
                // is final, as before.
                Err(e) if e.code == crate::protocol::ErrorCode::Internal => {
                    if self.unsaved_ends.insert(task_id.clone()) {
                        tracing::warn!(task = %task_id, "{what}: {e}; trying again until it is saved");
                    }
                    self.unconfirmed.insert(task_id, (run_id, Instant::now()));
                    self.reschedule = true;
                }
                result => {
                    let was_unsaved = self.unsaved_ends.remove(&task_id);
                    match result {
                        Ok(_) if was_unsaved => {
                            tracing::info!(task = %task_id, "the run's end is saved at last ({what})");
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!("{what}: {e}"),
                    }
                }
            }
        }
        let (started, refused) = started.await;
        // Refused for a reason other than a full house: try again on the
        // tick rather than wait for the next change.
        self.reschedule |= refused;
        self.launch_all(started, config).await;
    }

    /// Carries out one action other than a start; returns the store write
    /// it queued, if any.
    async fn act(&mut self, action: Action) -> Option<EndWrite> {
        match action {
            Action::Adopt {
                task_id,
                run_id,
                shim_pid,
                shim_start,
            } => {
                tracing::info!(task = %task_id, shim = shim_pid, "adopted a running task");
                // Its pid and start time were just seen to match: should
                // the pid be reused before the watch opens, the pass that
                // it wakes checks the start time again.
                let exit_watch = crate::proc::ExitWatch::new(shim_pid, TICK);
                self.runs.insert(
                    task_id,
                    Run {
                        run_id,
                        shim_pid,
                        shim_start: Some(shim_start),
                        own: false,
                        reaped: false,
                        exit_watch,
                        told_paused: None,
                        kill_sent: false,
                        log_offset: tail::AT_END,
                        record_watch: None,
                        record: None,
                    },
                );
                None
            }
            Action::Finish { task_id, exit } => {
                tracing::debug!(task = %task_id, "finalizing a run from its exit record");
                self.forget(&task_id);
                let key = crate::protocol::finished_request_id(&exit.run_id);
                let end = Some((task_id.clone(), exit.run_id.clone()));
                Some((
                    format!("finish {task_id}"),
                    self.queue_write(key, exit),
                    end,
                ))
            }
            Action::Lost {
                task_id,
                run_id,
                shim_pid,
            } => {
                tracing::warn!(task = %task_id, "run lost: no shim, no exit record");
                self.forget(&task_id);
                // Nothing killed what the run had started: kill it here
                // (`/proc` walks: off the event loop).
                let (ws, t, r) = (self.ws.clone(), task_id.clone(), run_id.clone());
                blocking(move || kill_leftovers(&ws, &t, &r, shim_pid)).await;
                let op = InternalOp::Lost {
                    id: task_id.clone(),
                    run_id: run_id.clone(),
                };
                let end = Some((task_id.clone(), run_id));
                Some((format!("lost {task_id}"), self.queue_internal(op), end))
            }
            Action::Requeue { task_id, run_id } => {
                tracing::warn!(task = %task_id, "its supervisor never started: requeued");
                let op = InternalOp::Requeue {
                    id: task_id.clone(),
                    run_id: run_id.clone(),
                };
                let end = Some((task_id.clone(), run_id));
                Some((format!("requeue {task_id}"), self.queue_internal(op), end))
            }
            Action::SetPid {
                task_id,
                run_id,
                pid,
            } => {
                if let Some(run) = self.runs.get_mut(&task_id) {
                    run.record_watch = None;
                }
                let op = InternalOp::SetPid {
                    id: task_id.clone(),
                    run_id,
                    pid,
                };
                Some((
                    format!("set pid of {task_id}"),
                    self.queue_internal(op),
                    None,
                ))
            }
            action => {
                self.signal(action);
                None
            }
        }
    }

    /// Signals a shim or an agent's group, and remembers it was told.
    fn signal(&mut self, action: Action) {
        match action {
            Action::Sync { task_id, pause } => {
                if let Some(run) = self.runs.get_mut(&task_id) {
                    unsafe { libc::kill(run.shim_pid as i32, crate::runs::SYNC_SIGNAL) };
                    run.told_paused = Some(pause);
                }
            }
            Action::SignalAgent {
                task_id,
                pgid,
                pause,
            } => {
                kill_group(pgid, if pause { libc::SIGSTOP } else { libc::SIGCONT });
                if let Some(run) = self.runs.get_mut(&task_id) {
                    run.told_paused = Some(pause);
                }
            }
            Action::Kill { task_id, shim_pid } => {
                // The shim kills every process of the run (TERM, grace, KILL).
                tracing::info!(task = %task_id, "stopping a run that is no longer wanted");
                unsafe { libc::kill(shim_pid as i32, libc::SIGTERM) };
                if let Some(run) = self.runs.get_mut(&task_id) {
                    run.kill_sent = true;
                }
            }
            other => tracing::error!("not a signal: {other:?}"),
        }
    }

    /// Queues the starts (each refused by the store thread beyond the
    /// limit) and resolves to the tasks that did start, with their run ids,
    /// and whether any was refused.
    fn start(
        &self,
        tasks: Vec<String>,
        max_parallel: usize,
    ) -> impl std::future::Future<Output = (Vec<(TaskRecord, String)>, bool)> + use<> {
        let pending: Vec<(String, String, Pending)> = tasks
            .into_iter()
            .map(|id| {
                let run_id = uuid::Uuid::new_v4().simple().to_string();
                let op = InternalOp::Start {
                    id: id.clone(),
                    run_id: run_id.clone(),
                    max_parallel,
                };
                (id, run_id, self.queue_internal(op))
            })
            .collect();
        async move {
            let mut started = Vec::new();
            let mut refused = false;
            for (id, run_id, rx) in pending {
                match reply(rx).await {
                    Ok(ReplyBody::Task(t)) => started.push((*t, run_id)),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(task = %id, "not started: {e}");
                        refused = true;
                    }
                }
            }
            (started, refused)
        }
    }

    /// Starts the shims of the runs the store recorded as started (off the
    /// event loop); a run whose shim cannot start ends as `spawn_error`.
    async fn launch_all(&mut self, started: Vec<(TaskRecord, String)>, config: &Arc<Config>) {
        if started.is_empty() {
            return;
        }
        let (ws, cfg, epoch) = (self.ws.clone(), config.clone(), self.epoch);
        let Some(results) = blocking(move || {
            started
                .into_iter()
                .map(|(task, run_id)| {
                    let result = launch::launch(&cfg, &ws, &task, &run_id, epoch);
                    (task.id, run_id, result)
                })
                .collect::<Vec<_>>()
        })
        .await
        else {
            return;
        };
        let mut failed = Vec::new();
        for (task_id, run_id, result) in results {
            match result {
                Ok(mut l) => {
                    let (own, shim_start, pidfd) = match l.forked.take() {
                        Some(f) => (false, f.start, f.pidfd),
                        None => (true, None, crate::proc::pidfd(l.pid)),
                    };
                    let run = Run {
                        run_id,
                        shim_pid: l.pid,
                        // Forked by the fork server, which reaps it: its
                        // start time pins the pid, as for an adopted run.
                        shim_start,
                        own,
                        reaped: false,
                        // Our unreaped child (its pid cannot name another
                        // process yet), or the server's, whose pidfd was
                        // opened before the server could reap it.
                        exit_watch: crate::proc::ExitWatch::with_pidfd(l.pid, pidfd, TICK),
                        told_paused: Some(false),
                        kill_sent: false,
                        log_offset: l.log_offset,
                        record_watch: Some(l.record_watch),
                        record: None,
                    };
                    self.runs.insert(task_id, run);
                }
                Err(message) => {
                    tracing::warn!(task = %task_id, "spawn failed: {message}");
                    let exit = TaskExit {
                        id: task_id,
                        run_id: run_id.clone(),
                        outcome: ExitOutcome::SpawnError,
                        exit_code: None,
                        signal: None,
                        message: Some(message),
                        conclusion: None,
                        warm: None,
                    };
                    failed.push(
                        self.queue_write(crate::protocol::finished_request_id(&run_id), exit),
                    );
                }
            }
        }
        for rx in failed {
            let _ = reply(rx).await;
        }
    }

    fn queue_internal(&self, op: InternalOp) -> Pending {
        let (tx, rx) = oneshot::channel();
        let reply = ReplyTo::Waiter(tx);
        self.queue(Job::Internal { op, reply }, rx)
    }

    /// `TaskFinished` under the request id the shim reports with.
    fn queue_write(&self, request_id: String, exit: TaskExit) -> Pending {
        let method = Method::TaskFinished(exit);
        let (tx, rx) = oneshot::channel();
        let job = Job::Write {
            request_id,
            from: "orchestrator".into(),
            digest: crate::protocol::request_digest(&method),
            method,
            reply: ReplyTo::Waiter(tx),
        };
        self.queue(job, rx)
    }

    fn queue(&self, job: Job, rx: oneshot::Receiver<WriteResult>) -> Pending {
        // A closed store thread drops the job and with it the sender.
        let _ = self.jobs.send(job);
        rx
    }
}

/// A store write on its way: its reply comes after COMMIT.
type Pending = oneshot::Receiver<WriteResult>;

/// Reaps `run`'s shim if it is our child and has exited.
fn reap(run: &mut Run) {
    if run.own && !run.reaped {
        // SAFETY: waits for one specific child of ours, without blocking.
        let rc = unsafe { libc::waitpid(run.shim_pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
        // ECHILD too: nothing left to reap under this pid.
        if rc == run.shim_pid as i32 || rc < 0 {
            run.reaped = true;
        }
    }
}

/// Resolves when any of the shims ends (never, with none).
async fn any_exit<'a>(watches: impl Iterator<Item = &'a crate::proc::ExitWatch>) {
    use std::future::Future;
    use std::pin::Pin;
    let mut waits: Vec<Pin<Box<dyn Future<Output = ()> + Send + 'a>>> = watches
        .map(|w| Box::pin(w.exited()) as Pin<Box<dyn Future<Output = ()> + Send + 'a>>)
        .collect();
    std::future::poll_fn(|cx| {
        for w in waits.iter_mut() {
            if w.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Sleeps until the Unix-ms time `at` (forever when `None`).
async fn until_ms(at: Option<u64>) {
    match at {
        Some(at) => tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await,
        None => std::future::pending().await,
    }
}

/// How often the fork server's end is looked for where no pidfd tells it.
const FORK_SERVER_LOOK: Duration = Duration::from_secs(5);

async fn exited(watch: Option<&crate::proc::ExitWatch>) {
    match watch {
        Some(w) => w.exited().await,
        None => std::future::pending().await,
    }
}

async fn reply(rx: Pending) -> WriteResult {
    rx.await.map_err(|_| {
        crate::protocol::WireError::new(
            crate::protocol::ErrorCode::Unavailable,
            "the store thread stopped",
        )
    })?
}

/// Runs blocking work (SQLite, `/proc`, files, fork) on tokio's blocking
/// pool: the primary's runtime has one thread, and a blocking call there
/// would delay every request. `None` if the work panicked.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!("orchestrator work failed: {e}");
            None
        }
    }
}
