//! Starting `grove shim` for one run: a fork of the shims' fork server
//! (`runs::zygote`), or where that cannot be had one spawn of this binary
//! in a session of its own (`runs::spawn_shim`: one `posix_spawn`, no copy
//! of the primary's memory), its spec written to its stdin. No file is
//! created per start: on ext4 an inode allocation, serialised on the run
//! directory, was the largest cost of a task start. Blocking (a PATH scan
//! for the engine, the spawn, the pipe): called off the event loop.

use super::engines;
use super::tail::log_end;
use crate::config::Config;
use crate::paths::Workspace;
use crate::protocol::TaskRecord;
use crate::runs::{RunFiles, ShimSpec, WorktreeRun};

/// A shim we started.
pub struct Launched {
    pub pid: u32,
    /// Forked by the shims' fork server, which reaps it (its start time
    /// and pidfd); `None`: spawned by us, our child to reap.
    pub forked: Option<crate::runs::zygote::Forked>,
    /// Where the run's live output starts in the task's log.
    pub log_offset: u64,
    /// Wakes the orchestrator when the shim writes its run record (the
    /// agent's pid), so that the pid is recorded at once, not on the tick.
    pub record_watch: crate::fs_watch::FileWatch,
}

/// Starts the run's shim and hands it its spec.
pub fn launch(
    config: &Config,
    ws: &Workspace,
    task: &TaskRecord,
    run_id: &str,
    epoch: u64,
) -> Result<Launched, String> {
    let launch = engines::launch(config, &ws.root, task).map_err(|e| e.to_string())?;
    let spec = ShimSpec {
        task_id: task.id.clone(),
        run_id: run_id.to_string(),
        workspace: ws.root.clone(),
        argv: launch.argv,
        env: launch.env,
        work_dir: launch.work_dir,
        stdin: launch.stdin,
        acp: launch.acp,
        worktree: (task.spec.worktree.clone()).map(|worktree| WorktreeRun {
            worktree,
            setup: config.setup.clone(),
        }),
        conclusion: task.spec.want_conclusion || task.spec.parent_id.is_some(),
        timeout_ms: task.spec.timeout_ms,
        grace_ms: config.kill_grace_ms,
        epoch,
    };
    let bytes = serde_json::to_vec(&spec).map_err(|e| e.to_string())?;
    let shim_log = RunFiles::open_shim_log(ws).map_err(|e| {
        format!(
            "cannot open the supervisors' log {}: {e}",
            RunFiles::shim_log(ws).display()
        )
    })?;
    let log_offset = log_end(ws, &task.id);
    // Before the shim exists, so that none of its writes is missed.
    // With its writes: the shim appends the agent's pid to the file it
    // created (and closes it each time).
    let record_watch = crate::fs_watch::FileWatch::with_writes(
        &RunFiles::run(ws, &task.id, run_id),
        RECORD_FALLBACK,
    );
    let pipe = || {
        let (spec_out, spec_in) =
            std::io::pipe().map_err(|e| format!("cannot make the supervisor's pipe: {e}"))?;
        make_room(&spec_in, bytes.len());
        Ok::<_, String>((spec_out, spec_in))
    };
    let (mut spec_out, mut spec_in) = pipe()?;
    let exe = self_exe()?;
    let (pid, forked) = match crate::runs::zygote::start_shim(&exe, &spec_out, &shim_log) {
        Some(f) => (f.pid, Some(f)),
        None => {
            // A pipe of its own (see `start_shim`).
            (spec_out, spec_in) = pipe()?;
            let pid = crate::runs::spawn_shim(&exe, &spec_out, &shim_log)
                .map_err(|e| format!("cannot start the supervisor: {e}"))?;
            (pid, None)
        }
    };
    drop(spec_out);
    // Into the pipe's buffer (see `make_room`); only a spec larger than
    // Linux lets a pipe grow waits for the shim to read it, which it does
    // first. A shim that died before reading breaks the pipe: the run then
    // ends like any shim that left no record (see `observe`).
    if let Err(e) = std::io::Write::write_all(&mut spec_in, &bytes) {
        tracing::warn!(task = %task.id, shim = pid, "cannot hand the supervisor its spec: {e}");
    }
    drop(spec_in);
    tracing::info!(task = %task.id, shim = pid, "started");
    Ok(Launched {
        pid,
        forked,
        log_offset,
        record_watch,
    })
}

/// Grows the pipe's buffer to hold `len` bytes (64 KiB by default; Linux
/// allows up to `/proc/sys/fs/pipe-max-size`, 1 MiB unless changed, about
/// the most one request carries), so that handing a spec over never waits
/// for its shim: the launches of a pass run one after another, and a shim
/// stopped before it read its spec would otherwise hold up every later
/// start. Best effort: a pipe that cannot grow is written as it is.
fn make_room(pipe: &std::io::PipeWriter, len: usize) {
    const DEFAULT_PIPE: usize = 64 * 1024;
    if len <= DEFAULT_PIPE {
        return;
    }
    let len = libc::c_int::try_from(len).unwrap_or(libc::c_int::MAX);
    // SAFETY: F_SETPIPE_SZ on a pipe fd we hold; failure changes nothing.
    unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(pipe),
            libc::F_SETPIPE_SZ,
            len,
        )
    };
}

/// Without inotify, how often a run record is looked for (the pass's own
/// tick looks as often).
const RECORD_FALLBACK: std::time::Duration = std::time::Duration::from_millis(100);

/// This binary, even if the file was replaced (rebuilt, upgraded) since we
/// started: `/proc/self/exe` still names the running image.
fn self_exe() -> Result<std::path::PathBuf, String> {
    let proc_exe = std::path::PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        return Ok(proc_exe);
    }
    std::env::current_exe().map_err(|e| e.to_string())
}
