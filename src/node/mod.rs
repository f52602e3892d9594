//! A member of the grove: `grove serve` (and later `grove acp`).
//!
//! A member starts as whatever the election makes it. As a secondary it
//! follows the primary and keeps one thread blocked on the election lock;
//! when that thread wins, the member promotes itself and runs as primary
//! until it is told to stop (see docs/design.md, Election).

mod idle;
mod primary;
mod secondary;
pub mod state;
mod watchdog;

use crate::config::{Config, LiveConfig};
use crate::election::{self, PrimaryLock};
use crate::paths::{PathError, Workspace};
use crate::protocol::{Event, now_ms};
use crate::store::{Reader, StoreError};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::sync::watch;
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot bind {endpoint}: {message}")]
    Bind { endpoint: String, message: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl NodeError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
        let what = what.into();
        move |source| NodeError::Io { what, source }
    }
}

/// How a member was asked to run.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub ws: Workspace,
    pub config: Config,
    /// `serve` or `acp`: shown by `grove status`.
    pub kind: &'static str,
    /// Append every event this member receives to this file as JSON lines
    /// (used by tests and the chaos tool to prove nothing was missed).
    pub events_log: Option<PathBuf>,
    /// Exit after this long with nothing to do (members started by
    /// autostart); `None`: run until stopped.
    pub idle_exit: Option<std::time::Duration>,
}

/// Who this process is in the grove.
#[derive(Debug, Clone)]
pub struct Identity {
    pub instance_id: String,
    pub pid: u32,
    pub started_at: u64,
    /// Unix ms of the last request this member answered as primary.
    pub last_request: Arc<AtomicU64>,
}

/// Runs a member until SIGTERM/SIGINT/SIGHUP. A primary hands over on the
/// way out: sockets closed, lock released, a secondary takes over at once.
pub async fn serve(opts: NodeOptions) -> Result<(), NodeError> {
    serve_until(opts, shutdown_on_signals()).await
}

/// Runs a member until `shutdown` flips to true (a front end such as
/// `grove acp` decides when: EOF on its stdin).
pub async fn serve_until(
    opts: NodeOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<(), NodeError> {
    opts.ws.ensure_state_dir()?;
    opts.ws.ensure_socket_dir()?;
    let identity = Identity {
        instance_id: uuid::Uuid::new_v4().to_string(),
        pid: std::process::id(),
        started_at: now_ms(),
        last_request: Arc::new(AtomicU64::new(now_ms())),
    };
    let shutdown = match opts.idle_exit {
        Some(after) => idle::stop_when_idle(&opts, &identity, after, shutdown),
        None => shutdown,
    };
    // Instrumented, not entered: a guard held across `.await` would leave
    // the span entered on the thread while other tasks run there.
    let span = tracing::info_span!("member", instance = %&identity.instance_id[..8]);
    follow_or_lead(opts, identity, shutdown)
        .instrument(span)
        .await
}

/// The member's life: the election loop, as primary or secondary, until
/// `shutdown` flips or the workspace is gone.
async fn follow_or_lead(
    opts: NodeOptions,
    identity: Identity,
    shutdown: watch::Receiver<bool>,
) -> Result<(), NodeError> {
    // One view of the config files for the member's whole life: reloaded
    // when they change, reported for `grove config show`.
    let live = std::sync::Arc::new(LiveConfig::new(&opts.ws.state_dir, opts.config.clone()));
    let mut events_task = tokio::spawn(consume_events(opts.clone()).in_current_span());

    let lock_path = opts.ws.lock_path();
    let mut lock = acquire(&lock_path)?;
    let result = loop {
        if *shutdown.borrow() {
            break Ok(());
        }
        let state_gone = match lock.take() {
            // Taken on a lock file that was unlinked meanwhile: promoting
            // on it would make a second primary beside the one that holds
            // the workspace's current lock file.
            Some(held) if !held.is_at(&lock_path) => true,
            Some(held) => {
                match primary::run(&identity, &opts, &live, held, shutdown.clone()).await? {
                    primary::Ended::Stopped => break Ok(()),
                    primary::Ended::Rebind => false,
                    primary::Ended::StateGone => true,
                }
            }
            None => match secondary::run(&identity, &opts, &live, shutdown.clone()).await? {
                secondary::Followed::Promote(held) => {
                    lock = Some(held);
                    continue;
                }
                secondary::Followed::Stopped => break Ok(()),
                secondary::Followed::StateGone => true,
            },
        };
        if state_gone {
            // `.grove` was deleted or replaced. Start over on the new one
            // (recreated if need be, checked like at startup); the member's
            // own event view restarts with the new store. A member whose
            // workspace itself is gone stops here with the error.
            tracing::warn!("the workspace state was deleted or replaced: joining it anew");
            events_task.abort();
            if let Err(e) = opts.ws.ensure_state_dir() {
                break Err(e.into());
            }
            events_task = tokio::spawn(consume_events(opts.clone()).in_current_span());
        }
        if let Err(e) = opts.ws.ensure_socket_dir() {
            break Err(e.into());
        }
        lock = match acquire(&lock_path) {
            Ok(l) => l,
            Err(e) => break Err(e),
        };
    };
    events_task.abort();
    state::MemberReport::remove(&opts.ws, &identity.instance_id);
    result
}

fn acquire(lock_path: &std::path::Path) -> Result<Option<PrimaryLock>, NodeError> {
    election::try_acquire(lock_path).map_err(NodeError::io(format!(
        "cannot open {}",
        lock_path.display()
    )))
}

/// Writes this member's account of its config files (`grove config show`).
fn report(opts: &NodeOptions, me: &Identity, live: &LiveConfig, role: &str) {
    state::MemberReport {
        instance_id: me.instance_id.clone(),
        pid: me.pid,
        proc_start: crate::proc::start_time(me.pid),
        kind: opts.kind.to_string(),
        role: role.to_string(),
        config: live.report(),
    }
    .write(&opts.ws);
}

/// A watch channel that flips to `true` on the first SIGTERM, SIGINT or SIGHUP.
pub fn shutdown_on_signals() -> watch::Receiver<bool> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {}
        }
        tracing::info!("stop requested");
        let _ = tx.send(true);
    });
    rx
}

/// The member's own view of the event stream, across role changes: it
/// starts at the current end of the log and never skips a durable event.
async fn consume_events(opts: NodeOptions) {
    let first = Reader::open(&opts.ws.db_path())
        .and_then(|r| r.last_seq())
        .map(|s| s + 1)
        .unwrap_or(1);
    let mut sub = crate::subscriber::subscribe(&opts.ws, first);
    let mut log = opts.events_log.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| tracing::error!("cannot open events log {}: {e}", p.display()))
            .ok()
    });
    let heartbeat_ms = opts.config.heartbeat_ms;
    let mut reported_unresponsive = false;
    let mut check = tokio::time::interval(opts.config.heartbeat());
    loop {
        tokio::select! {
            event = sub.events.recv() => {
                let Some(event) = event else { return };
                if let Some(f) = log.as_mut() {
                    record_event(f, &event);
                }
            }
            _ = check.tick() => {
                let silent = sub.health.heartbeat_age_ms().is_some_and(|a| a > 4 * heartbeat_ms);
                if silent && !reported_unresponsive {
                    tracing::warn!(
                        "primary unresponsive: no heartbeat for {} ms",
                        sub.health.heartbeat_age_ms().unwrap_or(0)
                    );
                } else if !silent && reported_unresponsive {
                    tracing::info!("primary responsive again");
                }
                reported_unresponsive = silent;
            }
        }
    }
}

fn record_event(f: &mut std::fs::File, event: &Event) {
    if event.seq == 0 {
        return; // transient events are not part of the gap-free stream
    }
    let line = serde_json::json!({
        "seq": event.seq,
        "epoch": event.epoch,
        "topic": event.topic(),
    });
    let _ = writeln!(f, "{line}");
}
