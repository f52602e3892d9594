//! `grove shim SPEC`: the supervisor of one run of one task (see
//! docs/design.md, Shim).
//!
//! The primary starts it in a session of its own, so it outlives the
//! primary, with its control signals blocked until it can handle them
//! (`signals`). It starts the agent in a new process group with stdout and
//! stderr going straight into the task's log file (no pipe to drain, no
//! line-length limit, no memory growth with output), enforces the timeout
//! (which stops while the task is paused), pauses and resumes the agent,
//! kills every process of the task on cancel, timeout or exit (`tree`:
//! TERM, grace, KILL; daemons included, the shim being their subreaper),
//! writes the exit status atomically beside the log, and reports it to
//! whichever instance is primary by then.

mod signals;
mod supervise;
mod tree;

pub use signals::{SYNC as SYNC_SIGNAL, block_control_in_child};
pub use tree::{kill_group, kill_leftovers};

use crate::config::Config;
use crate::paths::{Workspace, write_atomic};
use crate::protocol::{ExitOutcome, Method, TaskExit};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the primary asks the shim to run (`.grove/run/<task>.spec.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimSpec {
    pub task_id: String,
    pub run_id: String,
    pub workspace: PathBuf,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub work_dir: PathBuf,
    pub stdin: Option<String>,
    pub timeout_ms: Option<u64>,
    pub grace_ms: u64,
}

/// Written by the shim when it starts (`.grove/run/<task>.<run>.run.json`):
/// how a new primary recognises a live run — pid *and* start time — and
/// what to kill if the shim dies without finishing the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub shim_pid: u32,
    pub shim_start: u64,
    pub agent_pid: Option<u32>,
    /// The agent's start time, so that its process group is only killed
    /// while its pid still names it (or nothing).
    #[serde(default)]
    pub agent_start: Option<u64>,
    /// The shim pauses and resumes its agent itself on SIGUSR1 (after
    /// reading the task's row), so that time paused does not count towards
    /// the timeout. Absent in records of older shims: those are paused by
    /// SIGSTOP to the agent's group.
    #[serde(default)]
    pub pauses_itself: bool,
}

/// Written atomically when the run ends (`.grove/run/<task>.<run>.exit.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub run_id: String,
    pub outcome: ExitOutcome,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: Option<String>,
    pub finished_at: u64,
}

impl ExitRecord {
    pub fn to_exit(&self, task_id: &str) -> TaskExit {
        TaskExit {
            id: task_id.to_string(),
            run_id: self.run_id.clone(),
            outcome: self.outcome,
            exit_code: self.exit_code,
            signal: self.signal,
            message: self.message.clone(),
        }
    }
}

/// File locations of a task's runs.
pub struct RunFiles;

impl RunFiles {
    pub fn dir(ws: &Workspace) -> PathBuf {
        ws.state_dir.join("run")
    }
    pub fn spec(ws: &Workspace, task: &str) -> PathBuf {
        Self::dir(ws).join(format!("{task}.spec.json"))
    }
    pub fn run(ws: &Workspace, task: &str, run_id: &str) -> PathBuf {
        Self::dir(ws).join(format!("{task}.{run_id}.run.json"))
    }
    pub fn exit(ws: &Workspace, task: &str, run_id: &str) -> PathBuf {
        Self::dir(ws).join(format!("{task}.{run_id}.exit.json"))
    }
    pub fn log(ws: &Workspace, task: &str) -> PathBuf {
        ws.logs_dir().join(format!("{task}.log"))
    }
    pub fn shim_log(ws: &Workspace, task: &str) -> PathBuf {
        Self::dir(ws).join(format!("{task}.shim.log"))
    }

    pub fn read_run(ws: &Workspace, task: &str, run_id: &str) -> Option<RunRecord> {
        serde_json::from_slice(&std::fs::read(Self::run(ws, task, run_id)).ok()?).ok()
    }
    pub fn read_exit(ws: &Workspace, task: &str, run_id: &str) -> Option<ExitRecord> {
        serde_json::from_slice(&std::fs::read(Self::exit(ws, task, run_id)).ok()?).ok()
    }

    /// Task ids are generated hex; anything else must never reach a path.
    pub fn is_safe_id(task: &str) -> bool {
        !task.is_empty() && task.len() <= 64 && task.chars().all(|c| c.is_ascii_alphanumeric())
    }

    /// Removes every file of a task (purge). Missing files are fine.
    pub fn remove_all(ws: &Workspace, task: &str) {
        if !Self::is_safe_id(task) {
            return;
        }
        let _ = std::fs::remove_file(Self::log(ws, task));
        let _ = std::fs::remove_file(Self::spec(ws, task));
        let _ = std::fs::remove_file(Self::shim_log(ws, task));
        if let Ok(entries) = std::fs::read_dir(Self::dir(ws)) {
            let prefix = format!("{task}.");
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    write_atomic(path, &bytes)
}

/// Entry point of `grove shim SPEC`. Returns the process exit code.
pub async fn run(spec_path: &Path) -> i32 {
    signals::block_control();
    let spec: ShimSpec = match std::fs::read(spec_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            errln!("grove shim: cannot read {}: {e}", spec_path.display());
            return 2;
        }
    };
    let ws = match Workspace::resolve(&spec.workspace) {
        Ok(w) => w,
        Err(e) => {
            errln!("grove shim: {e}");
            return 2;
        }
    };
    let me = std::process::id();
    let mut record = RunRecord {
        run_id: spec.run_id.clone(),
        shim_pid: me,
        shim_start: crate::proc::start_time(me).unwrap_or(0),
        agent_pid: None,
        agent_start: None,
        pauses_itself: true,
    };
    if let Err(e) = write_json(&RunFiles::run(&ws, &spec.task_id, &spec.run_id), &record) {
        errln!("grove shim: cannot write the run record: {e}");
    }
    // If the primary that started us died before we wrote the record, a new
    // primary may have requeued the task: then this run is not wanted.
    if !still_wanted(&ws, &spec) {
        errln!(
            "grove shim: run {} is no longer the task's run; not starting",
            spec.run_id
        );
        // An exit record all the same: whoever finalizes the run then knows
        // it ended and does not take it for lost.
        let exit = ExitRecord {
            run_id: spec.run_id.clone(),
            outcome: ExitOutcome::Cancelled,
            exit_code: None,
            signal: None,
            message: Some("not started: no longer the task's run".into()),
            finished_at: crate::protocol::now_ms(),
        };
        let _ = write_json(&RunFiles::exit(&ws, &spec.task_id, &spec.run_id), &exit);
        let _ = std::fs::remove_file(RunFiles::run(&ws, &spec.task_id, &spec.run_id));
        return 0;
    }
    let exit = supervise::supervise(&ws, &spec, &mut record).await;
    if let Err(e) = write_json(&RunFiles::exit(&ws, &spec.task_id, &spec.run_id), &exit) {
        errln!("grove shim: cannot write the exit record: {e}");
    }
    report(&ws, &spec, &exit).await;
    0
}

fn still_wanted(ws: &Workspace, spec: &ShimSpec) -> bool {
    use crate::protocol::TaskStatus;
    match crate::store::Reader::open(&ws.db_path()).and_then(|r| r.task(&spec.task_id)) {
        Ok(Some(t)) => {
            t.run_id.as_deref() == Some(spec.run_id.as_str())
                && matches!(t.status, TaskStatus::Running | TaskStatus::Paused)
        }
        Ok(None) => false,
        // Cannot tell: run rather than lose the work.
        Err(_) => true,
    }
}

fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Tells the current primary, retrying across failovers with the same
/// request id. If nobody answers in time, the next primary reads the exit
/// record instead.
async fn report(ws: &Workspace, spec: &ShimSpec, exit: &ExitRecord) {
    let config = Config::load(&ws.state_dir).unwrap_or_default();
    let mut client = crate::client::Client::new(ws, &config, &format!("shim-{}", spec.task_id));
    let request_id = format!("finished-{}", spec.run_id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let method = Method::TaskFinished(exit.to_exit(&spec.task_id));
        match client.call_with_id(&request_id, method).await {
            Ok(_) => return,
            Err(crate::client::ClientError::Refused(e)) => {
                errln!("grove shim: the primary refused the exit report: {e}");
                return;
            }
            // No member runs at all: the next primary reads the exit record.
            Err(e @ crate::client::ClientError::NoPrimary { .. }) => {
                errln!("grove shim: {e}; the exit record stays on disk");
                return;
            }
            Err(e) if tokio::time::Instant::now() > deadline => {
                errln!("grove shim: giving up reporting ({e}); the exit record stays on disk");
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
