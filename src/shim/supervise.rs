//! The run itself: start the agent, then wait for its exit, the timeout, a
//! cancel, or a pause/resume of the task, and leave no process behind.

use super::open_log;
use crate::paths::Workspace;
use crate::protocol::{ExitOutcome, TaskStatus, now_ms};
use crate::runs::signals::{self, Control, Signals};
use crate::runs::tree::{self, kill_group};
use crate::runs::{ExitRecord, RunFiles, RunRecord, ShimSpec};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;
use tokio::time::Instant;

/// How soon the shim reads the task's row again when the store could not
/// be read after a pause/resume signal.
const SYNC_RETRY: Duration = Duration::from_millis(200);

/// Runs the agent to its end and says how it ended.
pub(super) async fn supervise(
    ws: &Workspace,
    spec: &ShimSpec,
    record: &mut RunRecord,
) -> ExitRecord {
    let finish = |outcome, status: Option<std::process::ExitStatus>, message| ExitRecord {
        run_id: spec.run_id.clone(),
        outcome,
        exit_code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        message,
        finished_at: now_ms(),
        conclusion: None,
        warm: None,
    };
    let spawn_error = |m: String| finish(ExitOutcome::SpawnError, None, Some(m));
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => return spawn_error(format!("cannot install signal handlers: {e}")),
    };
    tree::become_subreaper();
    let mut cmd = match command(ws, spec, false) {
        Ok(c) => c,
        Err(m) => return spawn_error(m),
    };
    if signals::cancel_pending() {
        return finish(
            ExitOutcome::Cancelled,
            None,
            Some("cancelled before the agent started".into()),
        );
    }
    // From here on a cancel reaches the handlers; one that arrived since
    // the check above is delivered now and seen by `watch`. Before the
    // spawn: the agent starts with this thread's mask (std keeps it).
    signals::unblock_control();
    let spawned = cmd.spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return spawn_error(format!("cannot start {}: {e}", spec.argv[0])),
    };
    let Some(pgid) = child.id() else {
        return spawn_error("agent vanished".into());
    };
    record.agent_pid = Some(pgid);
    record.agent_start = crate::proc::start_time(pgid);
    let _ = RunFiles::append_run(ws, &spec.task_id, &spec.run_id, record);
    if let (Some(text), Some(mut stdin)) = (spec.stdin.clone(), child.stdin.take()) {
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(text.as_bytes()).await;
        });
    }
    let outcome = match watch(&mut child, pgid, ws, spec, &mut signals).await {
        Ok(status) => {
            // The leader is gone; nothing of the task may outlive it.
            kill_group(pgid, libc::SIGKILL);
            tree::kill_all().await;
            return match status {
                Ok(st) => finish(ExitOutcome::Exited, Some(st), None),
                Err(e) => finish(ExitOutcome::Exited, None, Some(format!("wait failed: {e}"))),
            };
        }
        Err(outcome) => outcome,
    };
    let grace = Duration::from_millis(spec.grace_ms);
    let status = terminate(&mut child, pgid, grace).await;
    let message = match outcome {
        ExitOutcome::Timeout => format!(
            "timed out after {} ms of running (time paused not counted)",
            spec.timeout_ms.unwrap_or(0)
        ),
        _ => "cancelled".to_string(),
    };
    finish(outcome, status, Some(message))
}

/// For an agent in a worktree of its own, git's search for a repository
/// stops at `.grove/worktrees`: a git command in its worktree's directory
/// after that worktree was removed (discarded, or its task deleted while
/// the agent was being stopped), and recreated by the agent's own
/// `mkdir -p`, would otherwise walk up to the workspace's repository and
/// commit the user's uncommitted work onto their branch. Any ceiling the
/// agent's environment already had is kept.
fn git_ceiling(ws: &Workspace, spec: &ShimSpec) -> Option<std::ffi::OsString> {
    let worktrees = ws.state_dir.join("worktrees");
    if !spec.work_dir.starts_with(&worktrees) {
        return None;
    }
    let mut ceiling = worktrees.into_os_string();
    let had = (spec
        .env
        .get("GIT_CEILING_DIRECTORIES")
        .cloned()
        .map(Into::into))
    .or_else(|| std::env::var_os("GIT_CEILING_DIRECTORIES"))
    .filter(|v: &std::ffi::OsString| !v.is_empty());
    if let Some(had) = had {
        ceiling.push(":");
        ceiling.push(had);
    }
    Some(ceiling)
}

/// The agent's command: its own process group (so that signals reach its
/// children at once), output straight into the log file — except an ACP
/// agent's stdin and stdout, which are the protocol's pipes (`acp`).
pub(super) fn command(
    ws: &Workspace,
    spec: &ShimSpec,
    acp: bool,
) -> Result<tokio::process::Command, String> {
    let log = open_log(&RunFiles::log(ws, &spec.task_id))
        .map_err(|e| format!("cannot open the log file: {e}"))?;
    let (Ok(out), Ok(err)) = (log.try_clone(), log.try_clone()) else {
        return Err("cannot duplicate the log file descriptor".into());
    };
    let Some((program, args)) = spec.argv.split_first() else {
        return Err("empty command".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(&spec.work_dir)
        .envs(&spec.env)
        .env("GROVE_TASK_ID", &spec.task_id)
        .env("GROVE_RUN_ID", &spec.run_id)
        .env("GROVE_WORKSPACE", &ws.root)
        .stderr(err)
        .stdin(if spec.stdin.is_some() || acp {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .process_group(0)
        .kill_on_drop(false);
    if let Some(ceiling) = git_ceiling(ws, spec) {
        cmd.env("GIT_CEILING_DIRECTORIES", ceiling);
    }
    // No `pre_exec`: the shim has no signal ignored
    // (`signals::default_the_ignored`) and none blocked when it spawns the
    // agent, so std can `posix_spawn` it instead of forking the shim.
    if acp {
        cmd.stdout(std::process::Stdio::piped());
    } else {
        cmd.stdout(out);
    }
    Ok(cmd)
}

/// The timeout budget: it runs only while the task is not paused.
pub(super) struct Clock {
    pub(super) left: Option<Duration>,
    /// When the current stretch of running began; `None` while paused.
    pub(super) since: Option<Instant>,
}

impl Clock {
    pub(super) fn expiry(&self) -> Option<Instant> {
        Some(self.since? + self.left?)
    }
    pub(super) fn pause(&mut self) {
        if let (Some(since), Some(left)) = (self.since.take(), self.left) {
            self.left = Some(left.saturating_sub(since.elapsed()));
        }
    }
    pub(super) fn resume(&mut self) {
        self.since.get_or_insert_with(Instant::now);
    }
}

pub(super) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits for the agent's exit (`Ok`) or for the reason to end it (`Err`:
/// timeout or cancel); pauses and resumes it on the way.
async fn watch(
    child: &mut tokio::process::Child,
    pgid: u32,
    ws: &Workspace,
    spec: &ShimSpec,
    signals: &mut Signals,
) -> Result<std::io::Result<std::process::ExitStatus>, ExitOutcome> {
    let mut clock = Clock {
        left: spec.timeout_ms.map(Duration::from_millis),
        since: Some(Instant::now()),
    };
    let mut paused = false;
    let mut retry: Option<Instant> = None;
    loop {
        let sync = tokio::select! {
            status = child.wait() => return Ok(status),
            _ = sleep_until(clock.expiry()) => return Err(ExitOutcome::Timeout),
            _ = sleep_until(retry) => true,
            control = signals.next() => match control {
                Control::Cancel => return Err(ExitOutcome::Cancelled),
                Control::Sync => true,
                Control::Child => {
                    tree::reap_orphans(pgid);
                    false
                }
            },
        };
        if !sync {
            continue;
        }
        retry = None;
        match wants_paused(ws, spec) {
            Ok(Some(want)) if want != paused => {
                paused = want;
                if want {
                    tree::signal_all(pgid, libc::SIGSTOP);
                    clock.pause();
                } else {
                    tree::signal_all(pgid, libc::SIGCONT);
                    clock.resume();
                }
            }
            Ok(_) => {}
            Err(e) => {
                errln!("grove shim: cannot read the task to pause or resume it: {e}");
                retry = Some(Instant::now() + SYNC_RETRY);
            }
        }
    }
}

/// Whether the task's row says this run is paused (`None`: the row is not
/// about this run any more; the primary will cancel it).
pub(super) fn wants_paused(ws: &Workspace, spec: &ShimSpec) -> Result<Option<bool>, String> {
    let reader = crate::store::Reader::open(&ws.db_path()).map_err(|e| e.to_string())?;
    let task = reader.task(&spec.task_id).map_err(|e| e.to_string())?;
    Ok(task
        .filter(|t| t.run_id.as_deref() == Some(spec.run_id.as_str()))
        .and_then(|t| match t.status {
            TaskStatus::Paused => Some(true),
            TaskStatus::Running => Some(false),
            _ => None,
        }))
}

/// TERM to every process of the task (CONT too, in case it is paused), up
/// to `grace` for the agent to go, then KILL to whatever is left.
pub(super) async fn terminate(
    child: &mut tokio::process::Child,
    pgid: u32,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    tree::signal_all(pgid, libc::SIGTERM);
    tree::signal_all(pgid, libc::SIGCONT);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            kill_group(pgid, libc::SIGKILL);
            child.wait().await.ok()
        }
    };
    kill_group(pgid, libc::SIGKILL);
    tree::kill_all().await;
    status
}
