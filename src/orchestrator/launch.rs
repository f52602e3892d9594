//! Starting `grove shim` for one run: the spec file, then one spawn of
//! this binary in a session of its own (`runs::spawn_shim`: one
//! `posix_spawn`, no copy of the primary's memory). Blocking (a PATH scan
//! for the engine, file writes, the spawn): called off the event loop.

use super::engines;
use super::tail::log_end;
use crate::config::Config;
use crate::paths::Workspace;
use crate::protocol::TaskRecord;
use crate::runs::{RunFiles, ShimSpec, WorktreeRun};

/// A shim we started: reaped by us.
pub struct Launched {
    pub pid: u32,
    /// Where the run's live output starts in the task's log.
    pub log_offset: u64,
    /// Wakes the orchestrator when the shim writes its run record (the
    /// agent's pid), so that the pid is recorded at once, not on the tick.
    pub record_watch: crate::fs_watch::FileWatch,
}

/// Writes the run's spec and starts its shim.
pub fn launch(
    config: &Config,
    ws: &Workspace,
    task: &TaskRecord,
    run_id: &str,
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
    };
    let spec_path = RunFiles::spec(ws, &task.id);
    let bytes = serde_json::to_vec(&spec).map_err(|e| e.to_string())?;
    // No fsync: the shim reads the spec right away, and after a power loss
    // no shim runs to read it (the run is then requeued or lost from the
    // store's rows alone).
    crate::paths::write_replace(&spec_path, &bytes)
        .map_err(|e| format!("cannot write {}: {e}", spec_path.display()))?;
    let shim_log = std::fs::File::create(RunFiles::shim_log(ws, &task.id))
        .map_err(|e| format!("cannot create the supervisor's log: {e}"))?;
    let log_offset = log_end(ws, &task.id);
    // Before the shim exists, so that none of its writes is missed.
    let record_watch =
        crate::fs_watch::FileWatch::new(&RunFiles::run(ws, &task.id, run_id), RECORD_FALLBACK);
    let pid = crate::runs::spawn_shim(&self_exe()?, &spec_path, &shim_log)
        .map_err(|e| format!("cannot start the supervisor: {e}"))?;
    tracing::info!(task = %task.id, shim = pid, "started");
    Ok(Launched {
        pid,
        log_offset,
        record_watch,
    })
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
