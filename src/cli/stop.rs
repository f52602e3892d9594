//! `grove stop`: every member of the workspace exits.
//!
//! Secondaries are stopped first and waited for, then the primary: with
//! nobody left waiting on the election lock, its graceful exit hands nothing
//! over (no new primary, no new epoch). Running tasks are not touched: their
//! shims keep them running, and the next member to start adopts them.

use super::{CliError, Context, EXIT_OK, print_json};
use crate::primary_record::PrimaryRecord;
use std::time::{Duration, Instant};

/// How long a member may take to exit after SIGTERM (a primary finishes its
/// queued writes first; that takes milliseconds).
const STOP_WITHIN: Duration = Duration::from_secs(15);

/// One live member process.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Member {
    pid: u32,
}

pub async fn run(ctx: &Context, json: bool) -> Result<i32, CliError> {
    let mut stopped: Vec<u32> = Vec::new();
    // Members that did not exit after SIGTERM (stopped by SIGSTOP, hung):
    // named at the end; the others are stopped all the same.
    let mut hung: Vec<u32> = Vec::new();
    // A member that was starting meanwhile (and was promoted when the
    // primary left) is found by the next round.
    for _round in 0..3 {
        let (primary, mut secondaries) = members(ctx);
        let primary = primary.filter(|p| !hung.contains(&p.pid));
        secondaries.retain(|m| !hung.contains(&m.pid));
        if primary.is_none() && secondaries.is_empty() {
            break;
        }
        let left = terminate(&secondaries).await;
        stopped.extend(
            secondaries
                .iter()
                .map(|m| m.pid)
                .filter(|p| !left.contains(p)),
        );
        hung.extend(left);
        if let Some(p) = primary {
            let left = terminate(&[p]).await;
            if left.is_empty() {
                stopped.push(p.pid);
            }
            hung.extend(left);
        }
    }
    let running = ctx
        .reader()
        .ok()
        .and_then(|r| r.counts().ok())
        .and_then(|c| c.get("running").copied())
        .unwrap_or(0);
    if json {
        print_json(&serde_json::json!({
            "stopped": stopped,
            "did_not_stop": hung,
            "running_tasks": running,
        }));
    } else if stopped.is_empty() && !hung.is_empty() {
        // Said below, as the error.
    } else if stopped.is_empty() {
        outln!("no member was running for {}", ctx.ws.root.display());
    } else {
        let pids: Vec<String> = stopped.iter().map(u32::to_string).collect();
        outln!(
            "stopped {} member{} (pid {})",
            stopped.len(),
            if stopped.len() == 1 { "" } else { "s" },
            pids.join(", ")
        );
        if running > 0 {
            outln!("{running} running task(s) keep running; the next member adopts them");
        }
    }
    if !hung.is_empty() {
        let pids: Vec<String> = hung.iter().map(u32::to_string).collect();
        return Err(CliError::Failed(format!(
            "member pid {} did not stop within {} s after SIGTERM (stopped with SIGSTOP, or hung?); `kill -9 {}` ends it, its tasks keep running",
            pids.join(", "),
            STOP_WITHIN.as_secs(),
            pids.join(" ")
        )));
    }
    Ok(EXIT_OK)
}

/// The primary (from `primary.json`) and the registered secondaries whose
/// process still runs and is still the same member (a pid can be reused).
fn members(ctx: &Context) -> (Option<Member>, Vec<Member>) {
    let primary = PrimaryRecord::read(&ctx.ws)
        .filter(|r| is_member(r.pid, r.started_at, &["serve", "acp"]))
        .map(|r| Member { pid: r.pid });
    let mut secondaries: Vec<Member> = ctx
        .reader()
        .ok()
        .and_then(|r| r.members().ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|m| is_member(m.pid, m.started_at, &[m.kind.as_str()]))
        .map(|m| Member { pid: m.pid })
        .filter(|m| Some(*m) != primary && m.pid != std::process::id())
        .collect();
    secondaries.dedup();
    (primary, secondaries)
}

/// True when `pid` runs a grove member of one of `kinds` that started no
/// later than `started_at` (Unix ms, as the member recorded it): a process
/// that reused the pid of a dead member started after it.
fn is_member(pid: u32, started_at: u64, kinds: &[&str]) -> bool {
    if !crate::proc::running(pid) {
        return false;
    }
    let args = crate::proc::cmdline(pid);
    let kind_ok = args.iter().skip(1).any(|a| kinds.contains(&a.as_str()));
    // The boot time is known to the second: allow for it.
    let same_process =
        crate::proc::started_at_ms(pid).is_some_and(|s| s <= started_at.saturating_add(2_000));
    kind_ok && same_process
}

/// SIGTERM to each, then waits until every one has exited, for
/// [`STOP_WITHIN`] at most: the ones still running then.
async fn terminate(members: &[Member]) -> Vec<u32> {
    for m in members {
        // SAFETY: kill(2) with a plain signal; the pid was just checked to
        // be a member of this workspace.
        unsafe { libc::kill(m.pid as i32, libc::SIGTERM) };
    }
    let until = Instant::now() + STOP_WITHIN;
    loop {
        let left: Vec<u32> = members
            .iter()
            .map(|m| m.pid)
            .filter(|p| crate::proc::running(*p))
            .collect();
        if left.is_empty() || Instant::now() >= until {
            return left;
        }
        tokio::time::sleep(STOP_POLL).await;
    }
}

/// How often `grove stop` looks whether the members it signalled are gone
/// (they are not our children: no exit to wait for).
const STOP_POLL: Duration = Duration::from_millis(20);
