//! Every process of a run: the agent's process group, and whatever left it
//! (`setsid` daemons, double forks). The shim is a child subreaper, so a
//! process of the task whose parent dies is handed to the shim instead of
//! init; every process of the task therefore stays a descendant of the
//! shim, which is how it finds them.

use super::{RunFiles, RunRecord};
use crate::paths::Workspace;
use std::time::Duration;

/// How long the shim keeps killing what is left before it gives up (a
/// process in uninterruptible sleep, a fork bomb outrunning it).
const KILL_DEADLINE: Duration = Duration::from_secs(5);

pub use crate::proc::kill_group;

fn kill(pid: u32, sig: i32) {
    if pid > 1 {
        unsafe { libc::kill(pid as i32, sig) };
    }
}

/// Orphans of the task come to us instead of init.
pub fn become_subreaper() {
    // SAFETY: prctl with an integer argument.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        errln!(
            "grove shim: cannot become a subreaper ({}); daemons of the task may survive it",
            std::io::Error::last_os_error()
        );
    }
}

/// Sends `sig` to the agent's group (all of it at once: nothing in it can
/// fork its way out), then to every other live descendant.
pub fn signal_all(pgid: u32, sig: i32) {
    kill_group(pgid, sig);
    for p in crate::proc::descendants_but_members(std::process::id()) {
        if p.state != 'Z' && p.pgrp != pgid {
            kill(p.pid, sig);
        }
    }
}

/// Sends `sig` to every live descendant (a run without an agent yet: its
/// worktree's git and hooks, its setup command).
pub fn signal_descendants(sig: i32) {
    for p in crate::proc::descendants_but_members(std::process::id()) {
        if p.state != 'Z' {
            kill(p.pid, sig);
        }
    }
}

/// Kills every descendant and reaps those that are, or become, our
/// children, until none is left. A work list, pass after pass: killing a
/// process hands its children to us, and the next pass sees them. Call it
/// only once the agent itself has been waited for.
pub async fn kill_all() {
    let me = std::process::id();
    let until = tokio::time::Instant::now() + KILL_DEADLINE;
    loop {
        // Every descendant has an ancestor that is our child (orphans are
        // handed to us), so with no child at all there is nothing to kill:
        // the common end of a run, answered without reading every process
        // of the machine from `/proc`.
        if !has_children() {
            return;
        }
        // A grove member the task autostarted is spared, with its tasks:
        // it serves a workspace, not this run.
        let left = crate::proc::descendants_but_members(me);
        if left.is_empty() {
            return;
        }
        for p in &left {
            if p.state != 'Z' {
                kill(p.pid, libc::SIGKILL);
            } else if p.ppid == me {
                // SAFETY: reaps one specific child of ours.
                unsafe { libc::waitpid(p.pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
            }
        }
        if tokio::time::Instant::now() > until {
            let pids: Vec<u32> = left.iter().map(|p| p.pid).collect();
            errln!("grove shim: processes of the task outlived SIGKILL: {pids:?}");
            return;
        }
        tokio::time::sleep(KILL_PASS).await;
    }
}

/// Whether this process has a child, running or a zombie.
fn has_children() -> bool {
    // SAFETY: waitid fills the zeroed siginfo; WNOWAIT reaps nothing.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        // `__WALL`: children that report their end by another signal
        // than SIGCHLD count too.
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT | libc::__WALL;
        // ECHILD: no child at all. Any other error: look in `/proc`.
        libc::waitid(libc::P_ALL, 0, &mut info, flags) == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ECHILD)
    }
}

/// Reaps children that exited, other than the agent (tokio waits for that
/// one): orphans handed to us would otherwise stay zombies until the end.
pub fn reap_orphans(agent: u32) {
    loop {
        // SAFETY: waitid fills the zeroed siginfo; WNOWAIT only peeks.
        let pid = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            if libc::waitid(libc::P_ALL, 0, &mut info, flags) != 0 {
                return;
            }
            info.si_pid() as u32
        };
        // None exited, or the first one is the agent: the rest waits for
        // the next SIGCHLD or for `kill_all`.
        if pid == 0 || pid == agent {
            return;
        }
        // SAFETY: reaps the one child that waitid reported.
        unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
    }
}

/// After a shim died without an exit record (SIGKILL): kills what it left
/// behind — its session (the agent and every descendant that did not start
/// a session of its own) and the agent's process group — and removes its
/// half-written files. Safe against pid reuse: a session or group id is not
/// reused while it has members, so when its leader is gone or is still the
/// process recorded, its members are the run's.
pub fn kill_leftovers(ws: &Workspace, task: &str, run_id: &str, shim_pid: u32) {
    let rec = RunFiles::read_run(ws, task, run_id);
    let (shim_pid, shim_start) = match &rec {
        Some(r) => (r.shim_pid, Some(r.shim_start)),
        None => (shim_pid, None),
    };
    let mut killed = 0;
    if shim_start.is_some() && crate::proc::same_or_gone(shim_pid, shim_start) {
        for p in crate::proc::in_session(shim_pid) {
            kill(p.pid, libc::SIGKILL);
            killed += 1;
        }
    }
    if let Some(RunRecord {
        agent_pid: Some(agent),
        agent_start,
        ..
    }) = rec
        && crate::proc::same_or_gone(agent, agent_start)
    {
        kill_group(agent, libc::SIGKILL);
    }
    if killed > 0 {
        tracing::warn!(task, killed, "killed processes left behind by a dead shim");
    }
    remove_temp_files(ws, task, run_id, shim_pid);
}

/// Records the dead shim was writing when it died (`write_atomic` temp
/// files carry the writer's pid).
fn remove_temp_files(ws: &Workspace, task: &str, run_id: &str, shim_pid: u32) {
    let Ok(entries) = std::fs::read_dir(RunFiles::dir(ws)) else {
        return;
    };
    let prefix = format!("{task}.{run_id}.");
    let suffix = format!(".tmp-{shim_pid}");
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(&suffix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Between two passes of `kill_all`: long enough for killed processes to
/// die and hand their children to us.
const KILL_PASS: Duration = Duration::from_millis(5);
