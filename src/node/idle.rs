//! Idle exit, for members that autostart started (`serve --exit-when-idle`).
//!
//! Such a member was started on behalf of one command, by nobody who will
//! stop it; it must not stay on a laptop all week. It exits (gracefully,
//! like on SIGTERM) once, for `autostart_idle_exit_ms`, it has answered no
//! request, no task has been running or queued, and no ACP session (a
//! `grove acp` member) has been alive. Followers such as `events --follow`
//! or `wait` do not keep it: they wait for the next member, which the next
//! command that writes starts. Running tasks never depend on a member:
//! their shims keep them running and the next primary adopts them.

use super::{Identity, NodeOptions};
use crate::paths::Workspace;
use crate::protocol::now_ms;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;

/// A stop signal that fires on `outer` or once the member has been idle
/// for `after`.
pub fn stop_when_idle(
    opts: &NodeOptions,
    me: &Identity,
    after: Duration,
    outer: watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(*outer.borrow());
    tokio::spawn(watch_idle(opts.ws.clone(), me.clone(), after, outer, tx));
    rx
}

async fn watch_idle(
    ws: Workspace,
    me: Identity,
    after: Duration,
    mut outer: watch::Receiver<bool>,
    tx: watch::Sender<bool>,
) {
    // A few looks per period, and never more than one every 30 s: an idle
    // member must cost next to nothing.
    let mut tick = tokio::time::interval((after / 4).clamp(LOOK_MIN, LOOK_MAX));
    let mut busy_at = now_ms();
    let mut outer_open = true;
    loop {
        tokio::select! {
            changed = outer.changed(), if outer_open => {
                if changed.is_err() {
                    outer_open = false; // nobody else will ask us to stop
                } else if *outer.borrow() {
                    let _ = tx.send(true);
                    return;
                }
            }
            _ = tick.tick() => {
                if needed(&ws, &me) {
                    busy_at = now_ms();
                }
                let last = busy_at.max(me.last_request.load(Ordering::Relaxed));
                let idle = now_ms().saturating_sub(last);
                if idle >= after.as_millis() as u64 {
                    tracing::info!(
                        "idle for {:.1} s (no request, no running or queued task, no ACP session): exiting",
                        idle as f64 / 1000.0
                    );
                    let _ = tx.send(true);
                    return;
                }
            }
        }
    }
}

/// Whether the workspace still has work for a member: a task running or
/// queued, or a live ACP session. When the store cannot tell, stay.
fn needed(ws: &Workspace, me: &Identity) -> bool {
    let Ok(reader) = crate::store::Reader::open(&ws.db_path()) else {
        return true;
    };
    let busy = match reader.counts() {
        Ok(c) => c.get("running").copied().unwrap_or(0) + c.get("queued").copied().unwrap_or(0) > 0,
        Err(_) => true,
    };
    let sessions = match reader.members() {
        Ok(members) => members.iter().any(|m| {
            m.kind == "acp" && m.instance_id != me.instance_id && crate::proc::running(m.pid)
        }),
        Err(_) => true,
    };
    busy || sessions
}

/// Bounds of the idle check's period: often enough that a short idle limit
/// (tests use a few hundred ms) is kept, rarely enough that an idle member
/// costs next to nothing.
const LOOK_MIN: Duration = Duration::from_millis(100);
const LOOK_MAX: Duration = Duration::from_secs(30);
