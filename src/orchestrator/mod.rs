//! The task orchestrator (see docs/design.md, Orchestrator). It runs on the primary only.
//!
//! The store is the desired state; this module makes the processes match
//! it. After every committed change (and on a short tick) it:
//! 1. checks each run it supervises: a run whose shim is gone is finalized
//!    from its exit record, or failed as `lost` when there is none;
//! 2. makes live runs match their task: kill runs of cancelled, deleted or
//!    superseded tasks; tell the shims of paused and resumed ones (SIGUSR1:
//!    the shim reads the row, stops or continues its agent and its timeout
//!    clock);
//! 3. tails the logs of live runs into transient `task.output` events;
//! 4. starts queued tasks, priority first then FIFO, while fewer than
//!    `max_parallel` hold a slot (running, or paused with a live run). The
//!    store thread refuses a start beyond the limit, so two completions at
//!    once can never start one task twice.
//!
//! On promotion, `adopt` reconciles every `running` task: adopted when its
//! shim is alive (pid *and* start time match), finalized from its exit
//! record when the shim finished meanwhile, `failed: lost` otherwise (and
//! whatever the dead shim left running is killed).

pub mod engines;

use crate::config::{Config, LiveConfig};
use crate::paths::Workspace;
use crate::protocol::{
    Event, EventData, ExitOutcome, Method, TaskExit, TaskRecord, TaskStatus, now_ms,
};
use crate::runs::{RunFiles, ShimSpec, kill_group, kill_leftovers};
use crate::store::tasks::InternalOp;
use crate::store::writer::{Job, WriteResult};
use crate::store::{Reader, TaskFilter};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};

const TICK: Duration = Duration::from_millis(100);
/// Largest `task.output` chunk. Small, because the bus bounds each
/// subscriber's queue in messages, not bytes: 1,000 chunks of 16 KiB is
/// what a stopped subscriber can cost the primary.
const MAX_CHUNK: usize = 16 * 1024;
/// Most output published per run per look: a task that writes faster is
/// skipped ahead with a note (its log file stays complete; `grove logs`
/// reads the file). Live output is for watching, not for archiving.
const MAX_PER_LOOK: u64 = 4 * MAX_CHUNK as u64;
/// How long a new primary waits for the supervisor of a run that its
/// predecessor recorded as started but may never have spawned.
const START_GRACE: Duration = Duration::from_secs(2);

struct Run {
    run_id: String,
    shim_pid: u32,
    shim_start: Option<u64>,
    /// Our own child when we started it (reaped here); `None` if adopted.
    child: Option<std::process::Child>,
    /// Whether the shim was last told to pause (`None` when adopted: it is
    /// told once, whatever the row says, in case the old primary died
    /// between committing a pause and signalling it).
    told_paused: Option<bool>,
    kill_sent: bool,
    log_offset: u64,
}

pub struct Orchestrator {
    ws: Workspace,
    /// The configuration of this scheduling pass, from `live`.
    config: Arc<Config>,
    live: Arc<LiveConfig>,
    jobs: std::sync::mpsc::Sender<Job>,
    output: mpsc::Sender<Event>,
    epoch: u64,
    runs: HashMap<String, Run>,
    /// Runs recorded as started whose supervisor has not shown itself yet
    /// (task id → run id, give-up time): adopted if it appears, requeued if
    /// not — the old primary may have died before spawning it.
    unconfirmed: HashMap<String, (String, tokio::time::Instant)>,
    /// Read-only view of the committed state. In a mutex only so that the
    /// orchestrator future is `Send` (a connection is not `Sync`).
    reader: std::sync::Mutex<Option<Reader>>,
    /// A start failed for a reason other than a full house: try again on
    /// the tick rather than wait for the next change.
    reschedule: bool,
}

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
            config: live.current(),
            live,
            jobs,
            output,
            epoch,
            runs: HashMap::new(),
            unconfirmed: HashMap::new(),
            reader: std::sync::Mutex::new(None),
            reschedule: false,
        }
    }

    /// Runs until the task is aborted (on shutdown).
    pub async fn run(mut self, changed: Arc<Notify>) {
        if let Err(e) = std::fs::create_dir_all(RunFiles::dir(&self.ws))
            .and_then(|_| std::fs::create_dir_all(self.ws.logs_dir()))
        {
            tracing::error!("cannot create the run/log dirs: {e}");
        }
        self.adopt().await;
        loop {
            // Runs are watched (shim alive? new output?) on a short tick;
            // with none, only a committed change can give us work, so an
            // idle primary sleeps until one arrives.
            if self.runs.is_empty() && self.unconfirmed.is_empty() && !self.reschedule {
                changed.notified().await;
            } else {
                tokio::select! {
                    _ = changed.notified() => {}
                    _ = tokio::time::sleep(TICK) => {}
                }
            }
            self.sync().await;
        }
    }

    /// Runs `f` on the reader, reopening it after an error.
    fn read<T>(&self, f: impl FnOnce(&Reader) -> Result<T, crate::store::StoreError>) -> Option<T> {
        let mut guard = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Reader::open(&self.ws.db_path())
                .map_err(|e| tracing::error!("orchestrator cannot read the store: {e}"))
                .ok();
        }
        let result = f(guard.as_ref()?);
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!("reading the store failed: {e}");
                *guard = None;
                None
            }
        }
    }

    fn tasks(&self, status: TaskStatus) -> Vec<TaskRecord> {
        self.try_tasks(status).unwrap_or_default()
    }

    /// `None` when the store could not be read.
    fn try_tasks(&self, status: TaskStatus) -> Option<Vec<TaskRecord>> {
        let filter = TaskFilter {
            status: Some(status),
            ..Default::default()
        };
        self.read(|r| r.tasks(&filter))
    }

    /// Reconciles every started task after a promotion.
    async fn adopt(&mut self) {
        let mut started = self.tasks(TaskStatus::Running);
        started.extend(
            self.tasks(TaskStatus::Paused)
                .into_iter()
                .filter(|t| t.run_id.is_some()),
        );
        for task in started {
            let Some(run_id) = task.run_id.clone() else {
                continue;
            };
            if !self.try_adopt(&task.id, &run_id).await {
                // Counted from the recorded start, not from this takeover:
                // otherwise back-to-back failovers would restart the clock
                // and the task would hold a slot with no process.
                let age =
                    Duration::from_millis(now_ms().saturating_sub(task.started_at.unwrap_or(0)));
                let give_up = tokio::time::Instant::now() + START_GRACE.saturating_sub(age);
                self.unconfirmed.insert(task.id.clone(), (run_id, give_up));
            }
        }
    }

    /// Adopts a live run, or finalizes an ended one. Returns false when the
    /// run left no trace yet (no run record, no exit record).
    async fn try_adopt(&mut self, task_id: &str, run_id: &str) -> bool {
        match RunFiles::read_run(&self.ws, task_id, run_id) {
            Some(rec)
                if crate::proc::running(rec.shim_pid)
                    && crate::proc::start_time(rec.shim_pid) == Some(rec.shim_start) =>
            {
                tracing::info!(task = %task_id, shim = rec.shim_pid, "adopted a running task");
                let log_offset = file_len(&RunFiles::log(&self.ws, task_id));
                self.runs.insert(
                    task_id.to_string(),
                    Run {
                        run_id: run_id.to_string(),
                        shim_pid: rec.shim_pid,
                        shim_start: Some(rec.shim_start),
                        child: None,
                        told_paused: None,
                        kill_sent: false,
                        log_offset,
                    },
                );
                true
            }
            Some(rec) => {
                self.finalize(task_id, run_id, rec.shim_pid).await;
                true
            }
            None if RunFiles::read_exit(&self.ws, task_id, run_id).is_some() => {
                self.finalize(task_id, run_id, 0).await;
                true
            }
            None => false,
        }
    }

    /// Runs that never showed up within the grace period never started.
    async fn check_unconfirmed(&mut self) {
        let pending: Vec<(String, String, tokio::time::Instant)> = self
            .unconfirmed
            .iter()
            .map(|(t, (r, d))| (t.clone(), r.clone(), *d))
            .collect();
        for (task_id, run_id, give_up) in pending {
            if self.try_adopt(&task_id, &run_id).await {
                self.unconfirmed.remove(&task_id);
            } else if tokio::time::Instant::now() >= give_up {
                self.unconfirmed.remove(&task_id);
                tracing::warn!(task = %task_id, "its supervisor never started: requeued");
                let op = InternalOp::Requeue {
                    id: task_id.clone(),
                    run_id,
                };
                if let Err(e) = self.internal(op).await {
                    tracing::warn!(task = %task_id, "requeue failed: {e}");
                }
            }
        }
    }

    /// Records the end of a run whose shim is gone: from its exit record,
    /// or as `lost` — then nothing killed what the run had started, so it
    /// is killed here.
    async fn finalize(&mut self, task_id: &str, run_id: &str, shim_pid: u32) {
        let result = match RunFiles::read_exit(&self.ws, task_id, run_id) {
            Some(exit) => {
                tracing::info!(task = %task_id, "finalizing a run from its exit record");
                // Same request id as the shim's own report: applied once.
                self.write(
                    crate::protocol::finished_request_id(run_id),
                    Method::TaskFinished(exit.to_exit(task_id)),
                )
                .await
            }
            None => {
                tracing::warn!(task = %task_id, "run lost: no shim, no exit record");
                kill_leftovers(&self.ws, task_id, run_id, shim_pid);
                self.internal(InternalOp::Lost {
                    id: task_id.to_string(),
                    run_id: run_id.to_string(),
                })
                .await
            }
        };
        if let Err(e) = result {
            tracing::debug!(task = %task_id, "finalize: {e}");
        }
    }

    async fn sync(&mut self) {
        self.check_unconfirmed().await;
        self.check_runs().await;
        self.enforce().await;
        self.tail_logs();
        self.schedule().await;
    }

    async fn check_runs(&mut self) {
        let mut ended = Vec::new();
        for (task_id, run) in self.runs.iter_mut() {
            if let Some(child) = run.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                run.child = None;
                ended.push((task_id.clone(), run.run_id.clone(), run.shim_pid));
                continue;
            }
            let alive = crate::proc::running(run.shim_pid)
                && run
                    .shim_start
                    .is_none_or(|s| crate::proc::start_time(run.shim_pid) == Some(s));
            if !alive {
                ended.push((task_id.clone(), run.run_id.clone(), run.shim_pid));
            }
        }
        for (task_id, run_id, shim_pid) in ended {
            self.flush_log(&task_id);
            self.runs.remove(&task_id);
            self.finalize(&task_id, &run_id, shim_pid).await;
        }
    }

    /// Makes each live run match its task's row.
    async fn enforce(&mut self) {
        let ids: Vec<String> = self.runs.keys().cloned().collect();
        let mut pids = Vec::new();
        for id in ids {
            let task = self.read(|r| r.task(&id)).flatten();
            let Some(run) = self.runs.get_mut(&id) else {
                continue;
            };
            let record = RunFiles::read_run(&self.ws, &id, &run.run_id);
            let agent = record.as_ref().and_then(|r| r.agent_pid);
            let pauses_itself = record.is_some_and(|r| r.pauses_itself);
            let current = task
                .as_ref()
                .is_some_and(|t| t.run_id.as_deref() == Some(run.run_id.as_str()));
            if let (true, Some(pid), Some(t)) = (current, agent, task.as_ref())
                && t.pid != Some(pid)
                && !t.status.is_terminal()
            {
                pids.push(InternalOp::SetPid {
                    id: id.clone(),
                    run_id: run.run_id.clone(),
                    pid,
                });
            }
            match task.map(|t| t.status) {
                Some(s @ (TaskStatus::Running | TaskStatus::Paused)) if current => {
                    let pause = s == TaskStatus::Paused;
                    if run.told_paused != Some(pause)
                        && tell_paused(run, pause, pauses_itself, agent)
                    {
                        run.told_paused = Some(pause);
                    }
                }
                // Ended by itself: the shim is on its way out already.
                Some(TaskStatus::Completed | TaskStatus::Failed) if current => {}
                _ => {
                    // Cancelled, deleted, or superseded by a newer run: the
                    // shim kills every process of it (TERM, grace, KILL).
                    if !run.kill_sent {
                        tracing::info!(task = %id, "stopping a run that is no longer wanted");
                        unsafe { libc::kill(run.shim_pid as i32, libc::SIGTERM) };
                        run.kill_sent = true;
                    }
                }
            }
        }
        for op in pids {
            let _ = self.internal(op).await;
        }
    }

    async fn schedule(&mut self) {
        // An edited grove.toml applies to the next task started.
        self.config = self.live.current();
        // Unreadable store: retry on the tick (nothing else may wake us).
        self.reschedule = true;
        // A paused task with a live run keeps its slot: resuming it must
        // not exceed the limit.
        let (Some(running), Some(paused)) = (
            self.try_tasks(TaskStatus::Running),
            self.try_tasks(TaskStatus::Paused),
        ) else {
            return;
        };
        let running = running.len() + paused.iter().filter(|t| t.run_id.is_some()).count();
        if running >= self.config.max_parallel {
            self.reschedule = false;
            return;
        }
        let Some(mut queued) = self.try_tasks(TaskStatus::Queued) else {
            return;
        };
        self.reschedule = false;
        // Priority first, then FIFO (the list comes in creation order and the
        // sort is stable).
        queued.sort_by_key(|t| std::cmp::Reverse(t.spec.priority));
        for task in queued.into_iter().take(self.config.max_parallel - running) {
            let run_id = uuid::Uuid::new_v4().simple().to_string();
            let started = self
                .internal(InternalOp::Start {
                    id: task.id.clone(),
                    run_id: run_id.clone(),
                    max_parallel: self.config.max_parallel,
                })
                .await;
            let task = match started {
                Ok(crate::protocol::ReplyBody::Task(t)) => *t,
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(task = %task.id, "not started: {e}");
                    self.reschedule = true;
                    break;
                }
            };
            if let Err(message) = self.launch(&task, &run_id) {
                tracing::warn!(task = %task.id, "spawn failed: {message}");
                let exit = TaskExit {
                    id: task.id.clone(),
                    run_id: run_id.clone(),
                    outcome: ExitOutcome::SpawnError,
                    exit_code: None,
                    signal: None,
                    message: Some(message),
                };
                let _ = self
                    .write(
                        crate::protocol::finished_request_id(&run_id),
                        Method::TaskFinished(exit),
                    )
                    .await;
            }
        }
    }

    /// Starts `grove shim` for one run, in a session of its own.
    fn launch(&mut self, task: &TaskRecord, run_id: &str) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let launch = engines::launch(&self.config, &self.ws.root, task)?;
        let spec = ShimSpec {
            task_id: task.id.clone(),
            run_id: run_id.to_string(),
            workspace: self.ws.root.clone(),
            argv: launch.argv,
            env: launch.env,
            work_dir: launch.work_dir,
            stdin: launch.stdin,
            timeout_ms: task.spec.timeout_ms,
            grace_ms: self.config.kill_grace_ms,
        };
        let spec_path = RunFiles::spec(&self.ws, &task.id);
        let bytes = serde_json::to_vec(&spec).map_err(|e| e.to_string())?;
        crate::paths::write_atomic(&spec_path, &bytes)
            .map_err(|e| format!("cannot write {}: {e}", spec_path.display()))?;
        let exe = self_exe()?;
        let shim_log = std::fs::File::create(RunFiles::shim_log(&self.ws, &task.id))
            .map_err(|e| e.to_string())?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("shim")
            .arg(&spec_path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(shim_log);
        // SAFETY: setsid and pthread_sigmask are async-signal-safe. A new
        // session detaches the shim from the primary's terminal and process
        // group, so it survives the primary's death; its control signals
        // stay blocked until it handles them (a cancel right after the
        // start must not kill it before it can kill its agent).
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                crate::runs::block_control_in_child()
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the supervisor: {e}"))?;
        let shim_pid = child.id();
        tracing::info!(task = %task.id, shim = shim_pid, "started");
        self.runs.insert(
            task.id.clone(),
            Run {
                run_id: run_id.to_string(),
                shim_pid,
                shim_start: None,
                child: Some(child),
                told_paused: Some(false),
                kill_sent: false,
                log_offset: file_len(&RunFiles::log(&self.ws, &task.id)),
            },
        );
        Ok(())
    }

    fn tail_logs(&mut self) {
        let ids: Vec<String> = self.runs.keys().cloned().collect();
        for id in ids {
            self.flush_log(&id);
        }
    }

    /// Publishes what the task wrote since the last look.
    fn flush_log(&mut self, id: &str) {
        let path = RunFiles::log(&self.ws, id);
        let Some(run) = self.runs.get_mut(id) else {
            return;
        };
        let len = file_len(&path);
        if len <= run.log_offset {
            return;
        }
        let publish = |chunk: String| {
            // Dropped when the publisher is behind: output is transient.
            let _ = self.output.try_send(Event {
                seq: 0,
                epoch: self.epoch,
                at: now_ms(),
                data: EventData::TaskOutput {
                    id: id.to_string(),
                    chunk,
                },
            });
        };
        if len - run.log_offset > MAX_PER_LOOK {
            let skipped = len - MAX_PER_LOOK - run.log_offset;
            publish(format!("[grove: {skipped} bytes skipped; see the log]\n"));
            run.log_offset = len - MAX_PER_LOOK;
        }
        let Ok(mut f) = std::fs::File::open(&path) else {
            return;
        };
        let mut buf = vec![0; MAX_CHUNK];
        while run.log_offset < len {
            if f.seek(SeekFrom::Start(run.log_offset)).is_err() {
                return;
            }
            let n = match f.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            run.log_offset += n as u64;
            publish(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }

    async fn internal(&self, op: InternalOp) -> WriteResult {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Internal { op, reply: tx }, rx).await
    }

    async fn write(&self, request_id: String, method: Method) -> WriteResult {
        let (tx, rx) = oneshot::channel();
        let job = Job::Write {
            request_id,
            from: "orchestrator".into(),
            digest: crate::protocol::request_digest(&method),
            method,
            reply: tx,
        };
        self.send(job, rx).await
    }

    async fn send(&self, job: Job, rx: oneshot::Receiver<WriteResult>) -> WriteResult {
        let gone = || {
            crate::protocol::WireError::new(
                crate::protocol::ErrorCode::Unavailable,
                "the store thread stopped",
            )
        };
        self.jobs.send(job).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// Tells a run's shim to pause or resume; false when it cannot be told yet
/// (an older shim whose agent has not started).
fn tell_paused(run: &Run, pause: bool, pauses_itself: bool, agent: Option<u32>) -> bool {
    if pauses_itself {
        // The shim reads the row itself, so a signal that coalesces with
        // an earlier one still ends in the latest state.
        unsafe { libc::kill(run.shim_pid as i32, crate::runs::SYNC_SIGNAL) };
        return true;
    }
    let Some(pgid) = agent else {
        return false;
    };
    kill_group(pgid, if pause { libc::SIGSTOP } else { libc::SIGCONT });
    true
}

/// This binary, even if the file was replaced (rebuilt, upgraded) since we
/// started: `/proc/self/exe` still names the running image.
pub fn self_exe() -> Result<std::path::PathBuf, String> {
    let proc_exe = std::path::PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        return Ok(proc_exe);
    }
    std::env::current_exe().map_err(|e| e.to_string())
}

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}
