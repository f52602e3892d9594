//! Before the agent of a worktree task starts: its worktree made (or found
//! made: a requeued, relaunched or adopted run reuses it), and in a new one
//! the `[setup]` step — files copied from the workspace, then a command —
//! with everything it says going into the task's log.
//!
//! The shim does this, not the primary, so that it is part of the run: a
//! primary that dies meanwhile loses nothing (the shim outlives it and is
//! adopted), and a shim that dies leaves a half-made worktree that the
//! next run's `worktree::ensure` repairs.

use super::open_log;
use super::supervise::sleep_until;
use crate::paths::Workspace;
use crate::protocol::{ExitOutcome, now_ms};
use crate::runs::{ExitRecord, RunFiles, ShimSpec, WorktreeRun, signals, tree};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// How often a running setup command looks for a cancel (the control
/// signals stay blocked until the agent runs, so a cancel waits pending).
const CANCEL_CHECK: Duration = Duration::from_millis(100);

/// Makes the worktree ready; the exit record of the run when it cannot be.
///
/// Every step is bounded by the task's own limits (docs/design.md,
/// Worktrees): a cancel ends it, and so does the task's timeout, counted
/// from the start of the preparation and apart from the agent's own. A git
/// hook or a setup command that hangs would otherwise hold the task's slot
/// (and the worktree lock of every other task) forever.
pub(super) async fn prepare(
    ws: &Workspace,
    spec: &ShimSpec,
    run: &WorktreeRun,
) -> Result<(), ExitRecord> {
    // From here on, what a hook or the setup puts in the background
    // (`daemon &`, `setsid`) is handed to us, not to init: killed when the
    // preparation fails, or with the rest of the task when the run ends.
    tree::become_subreaper();
    let prepared = make_ready(ws, spec, run).await;
    if prepared.is_err() {
        tree::kill_all().await;
    }
    prepared
}

async fn make_ready(ws: &Workspace, spec: &ShimSpec, run: &WorktreeRun) -> Result<(), ExitRecord> {
    let end = |outcome, message: String| ExitRecord {
        run_id: spec.run_id.clone(),
        outcome,
        exit_code: None,
        signal: None,
        message: Some(message),
        finished_at: now_ms(),
        conclusion: None,
        warm: None,
    };
    let log = open_log(&RunFiles::log(ws, &spec.task_id))
        .map_err(|e| end(ExitOutcome::SpawnError, format!("cannot open the log: {e}")))?;
    let deadline = spec
        .timeout_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let ended = |(outcome, message): (ExitOutcome, String)| {
        let _ = writeln!(&log, "grove: {message}");
        end(outcome, message)
    };
    let (root, w, files) = (
        ws.root.clone(),
        run.worktree.clone(),
        run.setup.copy.clone(),
    );
    let mut made_log = log.try_clone().map_err(|e| {
        end(
            ExitOutcome::SpawnError,
            format!("cannot duplicate the log: {e}"),
        )
    })?;
    // The worktree made and the files copied off the async thread: git
    // (and any hook of the repository's) may take long, and so may a copy.
    let stop = Arc::new(AtomicBool::new(false));
    let given_up = stop.clone();
    let made =
        tokio::task::spawn_blocking(move || make(&root, &w, &files, &mut made_log, &given_up));
    let needs_setup = match bounded(spec, deadline, "making the worktree", made, &stop).await {
        Ok(Ok(Ok(needs_setup))) => needs_setup,
        Ok(Ok(Err(e))) => return Err(ended((ExitOutcome::SpawnError, e))),
        Ok(Err(e)) => return Err(ended((ExitOutcome::SpawnError, e.to_string()))),
        Err(stopped) => return Err(ended(stopped)),
    };
    if !needs_setup {
        return Ok(());
    }
    let tree = crate::worktree::path_of(&ws.root, &run.worktree);
    if let Some(command) = &run.setup.run {
        let _ = writeln!(&log, "grove: setup: {command}");
        run_setup(ws, spec, &tree, command, &log, deadline)
            .await
            .map_err(ended)?;
    }
    if let Some(m) = setup_marker(&tree) {
        let _ = std::fs::write(m, b"");
    }
    Ok(())
}

/// `worktree::ensure`, then the setup's files copied into a new worktree;
/// whether the setup is still to run (false: it ran for this worktree).
/// `stop`: the run was given up, start nothing more.
fn make(
    root: &Path,
    w: &crate::protocol::Worktree,
    files: &[String],
    log: &mut std::fs::File,
    stop: &AtomicBool,
) -> Result<bool, String> {
    let made = crate::worktree::ensure(root, w, stop)?;
    let _ = writeln!(log, "grove: {made}");
    let tree = crate::worktree::path_of(root, w);
    if setup_marker(&tree).is_some_and(|m| m.exists()) {
        return Ok(false);
    }
    if stop.load(Ordering::SeqCst) {
        return Err("given up before the setup's files were copied".into());
    }
    copy_files(root, &tree, files, log)?;
    Ok(true)
}

/// `work` unless a cancel or the deadline comes first. Then `stop` is set,
/// so that the work starts no other process, and what it started (git, a
/// hook) is sent TERM, then, after the grace, killed until the work has
/// ended, or for `GIVE_UP_WAIT` at most: work still waiting then (for the
/// worktree lock, which another task's run holds) starts nothing once it
/// has it, and ends with the shim, whose runtime does not wait for it
/// (`cli::shim_main`).
async fn bounded<T>(
    spec: &ShimSpec,
    deadline: Option<Instant>,
    what: &str,
    work: impl std::future::Future<Output = T>,
    stop: &AtomicBool,
) -> Result<T, (ExitOutcome, String)> {
    let mut check = tokio::time::interval(CANCEL_CHECK);
    tokio::pin!(work);
    let stopped = loop {
        tokio::select! {
            done = &mut work => return Ok(done),
            _ = sleep_until(deadline) => break timed_out(spec, what),
            _ = check.tick() => if signals::cancel_pending() {
                break (ExitOutcome::Cancelled, format!("cancelled while {what}"));
            },
        }
    };
    stop.store(true, Ordering::SeqCst);
    // TERM first, as for an agent: git removes its lock files (a branch's
    // `.lock`, the index's) on TERM, and left behind they would fail every
    // later run of this worktree.
    tree::signal_descendants(libc::SIGTERM);
    let grace = tokio::time::sleep(Duration::from_millis(spec.grace_ms));
    tokio::select! {
        _ = &mut work => return Err(stopped),
        _ = grace => {}
    }
    let until = Instant::now() + GIVE_UP_WAIT;
    loop {
        tree::kill_all().await;
        tokio::select! {
            _ = &mut work => break,
            _ = tokio::time::sleep(CANCEL_CHECK) => {}
        }
        if Instant::now() > until {
            break;
        }
    }
    Err(stopped)
}

/// How long a preparation that was given up is waited for, killing what
/// it starts meanwhile.
const GIVE_UP_WAIT: Duration = Duration::from_secs(5);

fn timed_out(spec: &ShimSpec, what: &str) -> (ExitOutcome, String) {
    let ms = spec.timeout_ms.unwrap_or(0);
    (
        ExitOutcome::Timeout,
        format!("timed out after {ms} ms while {what}; the agent was not started"),
    )
}

/// Where a worktree records that its setup ran: in its own git admin dir
/// (`.git/worktrees/<id>/`), which goes when the worktree goes, so a
/// worktree made again is set up again.
fn setup_marker(tree: &Path) -> Option<PathBuf> {
    let dir = crate::worktree::git_dir(tree)?;
    Some(dir.join("grove-setup-done"))
}

/// Copies the setup's files from the workspace into the worktree. A file
/// missing from the workspace is skipped; any other failure fails the setup
/// (and so the task), as a destination that is or passes through a symlink
/// does.
fn copy_files(
    root: &Path,
    tree: &Path,
    files: &[String],
    log: &mut std::fs::File,
) -> Result<(), String> {
    for file in files {
        let from = root.join(file);
        if !from.is_file() {
            let _ = writeln!(
                log,
                "grove: setup: {file} is not in the workspace; not copied"
            );
            continue;
        }
        copy_into(&from, tree, Path::new(file))
            .map_err(|why| format!("setup: not copying {file}: {why}"))?;
        let _ = writeln!(log, "grove: setup: copied {file}");
    }
    Ok(())
}

/// Copies `from` to `tree/file` without ever writing outside the worktree:
/// the worktree holds what the task's base committed, and a committed
/// symlink (`.env -> /home/me/.ssh/config`, or a directory on the way)
/// would turn the copy into a write wherever it points (docs/design.md,
/// Worktrees). So no component below `tree` may be a symlink, the file is
/// opened with `O_NOFOLLOW`, and never truncated when it is the source
/// itself (a hard link, or the same file reached another way).
fn copy_into(from: &Path, tree: &Path, file: &Path) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let to = tree.join(file);
    no_symlink_below(tree, file)?;
    let mut src = std::fs::File::open(from).map_err(|e| format!("cannot open it: {e}"))?;
    let meta = src.metadata().map_err(|e| format!("cannot stat it: {e}"))?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(meta.mode() & 0o7777)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&to)
        .map_err(|e| format!("cannot open {}: {e}", to.display()))?;
    let out = dst
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", to.display()))?;
    if (out.dev(), out.ino()) == (meta.dev(), meta.ino()) {
        return Err(format!("{} is the workspace's file itself", to.display()));
    }
    // Truncated only now: opening it was no write to the source.
    dst.set_len(0)
        .and_then(|()| std::io::copy(&mut src, &mut dst))
        .map(|_| ())
        .map_err(|e| format!("cannot write {}: {e}", to.display()))
}

/// Every component of `file` below `tree`, made a directory where missing
/// (one at a time, so none is made through a symlink), and none a symlink.
fn no_symlink_below(tree: &Path, file: &Path) -> Result<(), String> {
    let mut at = tree.to_path_buf();
    let parts: Vec<_> = file.components().collect();
    for (i, part) in parts.iter().enumerate() {
        at.push(part);
        let last = i + 1 == parts.len();
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!("{} is a symlink", at.display()));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !last => {
                std::fs::create_dir(&at)
                    .map_err(|e| format!("cannot create {}: {e}", at.display()))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot stat {}: {e}", at.display())),
        }
    }
    Ok(())
}

/// Runs the setup command in its own process group, output into the log;
/// a cancel that arrives meanwhile ends it (TERM, grace, KILL).
async fn run_setup(
    ws: &Workspace,
    spec: &ShimSpec,
    tree: &Path,
    command: &str,
    log: &std::fs::File,
    deadline: Option<Instant>,
) -> Result<(), (ExitOutcome, String)> {
    let failed = |m: String| (ExitOutcome::SpawnError, m);
    let (out, err) = match (log.try_clone(), log.try_clone()) {
        (Ok(o), Ok(e)) => (o, e),
        _ => return Err(failed("cannot duplicate the log file descriptor".into())),
    };
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(tree)
        .env("GROVE_TASK_ID", &spec.task_id)
        .env("GROVE_WORKSPACE", &ws.root)
        .env("GROVE_WORKTREE", tree)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(false);
    // SAFETY: as for the agent: nothing blocked or ignored in the child.
    unsafe {
        cmd.pre_exec(signals::reset_all_in_child);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| failed(format!("setup: cannot start sh: {e}")))?;
    let pgid = child.id().unwrap_or(0);
    let mut check = tokio::time::interval(CANCEL_CHECK);
    let stopped = loop {
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(s) if s.success() => Ok(()),
                    Ok(s) => Err(failed(format!("setup command failed ({s}); the agent was not started"))),
                    Err(e) => Err(failed(format!("setup: wait failed: {e}"))),
                };
            }
            _ = sleep_until(deadline) => break timed_out(spec, "running the setup command"),
            _ = check.tick() => if signals::cancel_pending() {
                break (ExitOutcome::Cancelled, "cancelled during the worktree setup".into());
            },
        }
    };
    tree::kill_group(pgid, libc::SIGTERM);
    let grace = Duration::from_millis(spec.grace_ms);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tree::kill_group(pgid, libc::SIGKILL);
        let _ = child.wait().await;
    }
    tree::kill_group(pgid, libc::SIGKILL);
    Err(stopped)
}
