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
//! and appends the exit status (one line, synced) to the run's file, where
//! whichever instance is primary by then reads it when the shim ends. A worktree
//! task's worktree is made (and set up) first, by the shim, as part of the
//! run (`worktree`).

mod acp;
mod supervise;
mod worktree;
pub mod zygote;

pub use acp::host::{HostArgs, run as agent_host};

use crate::runs::{ExitRecord, RunFiles, RunRecord, ShimSpec, conclusion, signals};

use crate::config::Config;
use crate::paths::Workspace;
use crate::protocol::{ExitOutcome, Method};
use std::path::Path;
use std::time::Duration;

/// Entry point of `grove shim SPEC`, where SPEC is `-` (the spec on stdin,
/// as the primary starts every shim) or a file. Returns the process exit
/// code.
pub async fn run(spec_path: &Path) -> i32 {
    signals::block_control();
    signals::default_the_ignored();
    let from_stdin = spec_path == Path::new("-");
    let read = if from_stdin {
        read_stdin()
    } else {
        std::fs::read(spec_path)
    };
    let spec: ShimSpec = match read
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            errln!(
                "grove shim: cannot read the spec from {}: {e}",
                spec_path.display()
            );
            return 2;
        }
    };
    // Every shim of the workspace logs to one file: name our lines.
    crate::output::set_stderr_prefix(format!("[task {} run {}] ", spec.task_id, spec.run_id));
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
    if let Err(e) = RunFiles::append_run(&ws, &spec.task_id, &spec.run_id, &record) {
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
            conclusion: None,
            warm: None,
        };
        let _ = RunFiles::append_exit(&ws, &spec.task_id, &spec.run_id, &exit, true);
        return 0;
    }
    // This run's output starts where the log ends now (a relaunch or a
    // rerun appends to the same log).
    let log = RunFiles::log(&ws, &spec.task_id);
    let log_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let prepared = match &spec.worktree {
        Some(run) => worktree::prepare(&ws, &spec, run).await,
        None => Ok(()),
    };
    let mut exit = match (prepared, &spec.acp) {
        (Err(exit), _) => exit,
        (Ok(()), Some(acp)) => acp::supervise(&ws, &spec, acp, &mut record).await,
        (Ok(()), None) => supervise::supervise(&ws, &spec, &mut record).await,
    };
    // Read here, where the run ends, so that the primary's store thread
    // never reads a log. An ACP run concludes from its agent's last message
    // (`acp::supervise`), never from its log, which is grove's transcript:
    // without one, the store concludes from how the run ended.
    if spec.conclusion && exit.conclusion.is_none() && spec.acp.is_none() {
        let tail = conclusion::read_tail(&log, log_start);
        exit.conclusion = Some(conclusion::from_output(&tail, exit.outcome, exit.exit_code));
    }
    // The exit record is the report: whichever primary supervises the run
    // is woken by this process's end (a pidfd) and commits the run's end
    // from the record, and a primary that takes over later finds it too.
    // Only without a record does the shim tell the primary itself.
    let serving =
        crate::primary_record::PrimaryRecord::read(&ws).map(|r| (r.epoch, r.same_process_runs()));
    let sync = exit_needs_sync(spec.epoch, serving);
    if let Err(e) = RunFiles::append_exit(&ws, &spec.task_id, &spec.run_id, &exit, sync) {
        errln!("grove shim: cannot write the exit record: {e}; reporting instead");
        report(&ws, &spec, &exit).await;
    }
    0
}

/// Whether the exit record must reach the disk before the shim exits.
/// Not while the primary that started the run still serves (`serving`:
/// the epoch `primary.json` names, and whether the process that wrote it
/// still runs): woken by this shim's end, it commits the run's end within
/// milliseconds and the store syncs its WAL right after, off every run's
/// path (see docs/design.md, Durable run ends) — a sync here held the run's
/// slot for a journal commit. Otherwise (a run adopted after a failover, no
/// primary running) the record may be the only trace of the outcome for as
/// long as nobody reads it. What is left unsynced: a power loss in the
/// milliseconds before that WAL sync, or while that primary cannot record
/// the end (it is stopping, or hung) until a successor does or the kernel
/// writes the record back (up to ~30 s) — as if the run had ended just
/// after the power went.
fn exit_needs_sync(starter_epoch: u64, serving: Option<(u64, bool)>) -> bool {
    starter_epoch == 0 || serving != Some((starter_epoch, true))
}

/// The spec from stdin, to its end; then stdin is `/dev/null`, so that
/// nothing the shim starts inherits the pipe.
fn read_stdin() -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::io::stdin().lock().read_to_end(&mut bytes)?;
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: dup2 of an fd we hold onto fd 0, which nothing else uses now.
    if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(bytes)
}

/// Whether this run is still its task's, asked after the run record is
/// written. While `primary.json` still names the epoch that started us,
/// the answer is yes without reading the store: only a later primary
/// requeues a run it found without a record, and it reads the records
/// after writing its own `primary.json`, so it will find ours (written
/// before this look). A change the starting primary makes itself (a
/// cancel) reaches us as a signal, handled once the agent runs. Reading
/// the store here (an SQLite open and its schema) was a tenth of a
/// trivial task's start.
fn still_wanted(ws: &Workspace, spec: &ShimSpec) -> bool {
    use crate::protocol::TaskStatus;
    let starter_serves = spec.epoch != 0
        && crate::primary_record::PrimaryRecord::read(ws).is_some_and(|r| r.epoch == spec.epoch);
    if starter_serves {
        return true;
    }
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
    let config = Config::load_client_settings(&ws.state_dir).unwrap_or_default();
    let mut client = crate::client::Client::new(ws, &config, &format!("shim-{}", spec.task_id));
    let request_id = crate::protocol::finished_request_id(&spec.run_id);
    let deadline = tokio::time::Instant::now() + REPORT_FOR;
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
            Err(_) => tokio::time::sleep(REPORT_RETRY).await,
        }
    }
}

/// How long a shim keeps trying to report its run's end across failovers;
/// after that the exit record on disk is the report.
const REPORT_FOR: Duration = Duration::from_secs(120);
/// Between two attempts to report.
const REPORT_RETRY: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::exit_needs_sync;

    #[test]
    fn the_exit_record_is_synced_unless_its_starter_serves_and_runs() {
        // The starter (epoch 4) serves and its process runs: it records the
        // end and syncs the WAL itself.
        assert!(!exit_needs_sync(4, Some((4, true))));
        // Its record names a dead process, a later primary adopted the run,
        // or no primary has written a record: the shim syncs.
        assert!(exit_needs_sync(4, Some((4, false))));
        assert!(exit_needs_sync(4, Some((5, true))));
        assert!(exit_needs_sync(4, None));
        // A spec without a starting epoch (an older primary's) syncs.
        assert!(exit_needs_sync(0, Some((0, true))));
    }
}
