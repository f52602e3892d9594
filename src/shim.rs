//! `grove shim SPEC`: the supervisor of one run of one task (DESIGN §5).
//!
//! The primary starts it in a session of its own, so it outlives the
//! primary. It starts the agent in a new process group with stdout and
//! stderr going straight into the task's log file (no pipe to drain, no
//! line-length limit, no memory growth with output), enforces the timeout,
//! kills the whole group on cancel (TERM, grace, KILL), writes the exit
//! status atomically beside the log, and reports it to whichever instance is
//! primary by then.

use crate::config::Config;
use crate::paths::{Workspace, write_atomic};
use crate::protocol::{ExitOutcome, Method, TaskExit, now_ms};
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

/// Written by the shim when it starts (`.grove/run/<task>.run.json`): how a
/// new primary recognises a live run — pid *and* start time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub shim_pid: u32,
    pub shim_start: u64,
    pub agent_pid: Option<u32>,
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
        let _ = std::fs::remove_file(RunFiles::run(&ws, &spec.task_id, &spec.run_id));
        return 0;
    }
    let exit = supervise(&ws, &spec, &mut record).await;
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

/// Runs the agent to its end and says how it ended.
async fn supervise(ws: &Workspace, spec: &ShimSpec, record: &mut RunRecord) -> ExitRecord {
    let finish = |outcome, exit_code, signal, message: Option<String>| ExitRecord {
        run_id: spec.run_id.clone(),
        outcome,
        exit_code,
        signal,
        message,
        finished_at: now_ms(),
    };
    let log = match open_log(&RunFiles::log(ws, &spec.task_id)) {
        Ok(f) => f,
        Err(e) => {
            let m = format!("cannot open the log file: {e}");
            return finish(ExitOutcome::SpawnError, None, None, Some(m));
        }
    };
    let (Ok(out), Ok(err)) = (log.try_clone(), log.try_clone()) else {
        let m = "cannot duplicate the log file descriptor".to_string();
        return finish(ExitOutcome::SpawnError, None, None, Some(m));
    };
    let Some((program, args)) = spec.argv.split_first() else {
        return finish(
            ExitOutcome::SpawnError,
            None,
            None,
            Some("empty command".into()),
        );
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(&spec.work_dir)
        .envs(&spec.env)
        .env("GROVE_TASK_ID", &spec.task_id)
        .env("GROVE_WORKSPACE", &ws.root)
        .stdout(out)
        .stderr(err)
        .stdin(if spec.stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        // A process group of its own, so that cancel reaches grandchildren.
        .process_group(0)
        .kill_on_drop(false);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let m = format!("cannot start {program}: {e}");
            return finish(ExitOutcome::SpawnError, None, None, Some(m));
        }
    };
    let Some(pgid) = child.id() else {
        return finish(
            ExitOutcome::SpawnError,
            None,
            None,
            Some("agent vanished".into()),
        );
    };
    record.agent_pid = Some(pgid);
    let _ = write_json(&RunFiles::run(ws, &spec.task_id, &spec.run_id), &record);
    if let (Some(text), Some(mut stdin)) = (spec.stdin.clone(), child.stdin.take()) {
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(text.as_bytes()).await;
        });
    }

    let timeout = async {
        match spec.timeout_ms {
            Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            None => std::future::pending().await,
        }
    };
    let grace = Duration::from_millis(spec.grace_ms);
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        kill_group(pgid, libc::SIGKILL);
        return finish(
            ExitOutcome::SpawnError,
            None,
            None,
            Some("no signal handlers".into()),
        );
    };
    let outcome = tokio::select! {
        status = child.wait() => {
            // The leader is gone; nothing of its group may outlive the task.
            kill_group(pgid, libc::SIGKILL);
            return match status {
                Ok(st) => {
                    use std::os::unix::process::ExitStatusExt;
                    finish(ExitOutcome::Exited, st.code(), st.signal(), None)
                }
                Err(e) => finish(ExitOutcome::Exited, None, None, Some(format!("wait failed: {e}"))),
            };
        }
        _ = timeout => ExitOutcome::Timeout,
        _ = term.recv() => ExitOutcome::Cancelled,
        _ = int.recv() => ExitOutcome::Cancelled,
        _ = hup.recv() => ExitOutcome::Cancelled,
    };
    let status = terminate_group(&mut child, pgid, grace).await;
    use std::os::unix::process::ExitStatusExt;
    let message = match outcome {
        ExitOutcome::Timeout => Some(format!(
            "timed out after {} ms",
            spec.timeout_ms.unwrap_or(0)
        )),
        _ => Some("cancelled".to_string()),
    };
    finish(
        outcome,
        status.as_ref().and_then(|s| s.code()),
        status.as_ref().and_then(|s| s.signal()),
        message,
    )
}

/// TERM to the whole group (CONT too, in case it is paused), up to `grace`
/// for it to go, then KILL to whatever is left.
async fn terminate_group(
    child: &mut tokio::process::Child,
    pgid: u32,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    kill_group(pgid, libc::SIGTERM);
    kill_group(pgid, libc::SIGCONT);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            kill_group(pgid, libc::SIGKILL);
            child.wait().await.ok()
        }
    };
    // The leader may have left children behind in its group.
    kill_group(pgid, libc::SIGKILL);
    status
}

pub fn kill_group(pgid: u32, sig: i32) {
    if pgid > 1 {
        unsafe { libc::kill(-(pgid as i32), sig) };
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
