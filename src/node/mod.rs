//! A member of the grove: `grove serve` (and later `grove acp`).
//!
//! A member starts as whatever the election makes it. As a secondary it
//! follows the primary and keeps one thread blocked on the election lock;
//! when that thread wins, the member promotes itself and runs as primary
//! until it is told to stop (see docs/design.md, Election).

mod idle;
mod primary;
mod publisher;
mod secondary;
mod serving;
pub mod state;
mod watchdog;

use crate::config::{Config, LiveConfig};
use crate::election::{self, PrimaryLock};
use crate::paths::{PathError, Workspace};
use crate::protocol::{Event, now_ms};
use crate::store::{Reader, StoreError};
use crate::subscriber::Interest;
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
    /// The last primary heartbeat this member's event stream delivered:
    /// on promotion, how long before winning the lock the old primary
    /// was last heard from.
    pub heard: Heard,
}

pub type Heard = Arc<std::sync::Mutex<Option<crate::store::promotions::Heard>>>;

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
    opts.ws.refuse_committed_state()?;
    opts.ws.ensure_socket_dir()?;
    // So that other workspaces' tasks can delegate here by name; a
    // registry grove cannot write costs only that.
    if let Err(e) = crate::projects::register(&opts.ws, opts.config.name.as_deref()) {
        tracing::warn!("not registered in the projects registry: {e}");
    }
    let identity = Identity {
        instance_id: uuid::Uuid::new_v4().to_string(),
        pid: std::process::id(),
        started_at: now_ms(),
        last_request: Arc::new(AtomicU64::new(now_ms())),
        heard: Heard::default(),
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
    let events = consume_events(opts.clone(), live.clone(), identity.heard.clone());
    let mut events_task = crate::loop_watch::spawn("events", events.in_current_span());

    let lock_path = opts.ws.lock_path();
    let mut lock = acquire(&lock_path)?.map(primary::Held::taken);
    let mut rebuild = Rebuild::default();
    let result = loop {
        if *shutdown.borrow() {
            break Ok(());
        }
        rebuild.begin(&opts.ws);
        let ran = match lock.take() {
            // Taken on a lock file that was unlinked meanwhile: promoting
            // on it would make a second primary beside the one that holds
            // the workspace's current lock file.
            Some(held) if !held.lock.is_at(&lock_path) => Ok(true),
            Some(held) => match primary::run(&identity, &opts, &live, held, shutdown.clone()).await
            {
                Ok(primary::Ended::Stopped) => break Ok(()),
                Ok(primary::Ended::Rebind) => Ok(false),
                Ok(primary::Ended::StateGone) => Ok(true),
                Err(e) => Err(e),
            },
            None => match secondary::run(&identity, &opts, &live, shutdown.clone()).await {
                Ok(secondary::Followed::Promote(held)) => {
                    lock = Some(held);
                    continue;
                }
                Ok(secondary::Followed::Stopped) => break Ok(()),
                Ok(secondary::Followed::StateGone) => Ok(true),
                Err(e) => Err(e),
            },
        };
        let state_gone = match ran {
            Ok(gone) => {
                rebuild.failures = 0;
                gone
            }
            Err(e) => match rebuild.retry(&opts.ws, e).await {
                Ok(()) => true,
                Err(e) => break Err(e),
            },
        };
        if *shutdown.borrow() {
            break Ok(());
        }
        rebuild.begin(&opts.ws);
        lock = match rejoin(&opts, &live, &identity, state_gone, &mut events_task) {
            Ok(l) => l.map(primary::Held::taken),
            Err(e) => match rebuild.retry(&opts.ws, e).await {
                Ok(()) => None,
                Err(e) => break Err(e),
            },
        };
    };
    events_task.abort();
    state::MemberReport::remove(&opts.ws, &identity.instance_id);
    result
}

/// Before the next election: after `.grove` was deleted or replaced, start
/// over on the new one (recreated if need be, checked like at startup; the
/// member's own event view restarts with the new store). A member whose
/// workspace itself is gone stops with the error.
fn rejoin(
    opts: &NodeOptions,
    live: &Arc<LiveConfig>,
    me: &Identity,
    state_gone: bool,
    events_task: &mut tokio::task::JoinHandle<()>,
) -> Result<Option<PrimaryLock>, NodeError> {
    if state_gone {
        tracing::warn!("the workspace state was deleted or replaced: joining it anew");
        events_task.abort();
        opts.ws.ensure_state_dir()?;
        let events = consume_events(opts.clone(), live.clone(), me.heard.clone());
        *events_task = crate::loop_watch::spawn("events", events.in_current_span());
    }
    opts.ws.ensure_socket_dir()?;
    acquire(&opts.ws.lock_path())
}

/// Rebuilding a deleted `.grove` can race with the deletion itself (an
/// `rm -rf` still running removes what we just recreated): a step of the
/// rebuild then fails for a moment. Such failures are retried, a bounded
/// number of times in a row; any other error stops the member.
#[derive(Default)]
struct Rebuild {
    failures: u32,
    /// The state dir as it was when the current step began, held open: a
    /// directory deleted and made again at once may get the same inode
    /// number (ext4 hands a freed inode out again), and would then pass for
    /// the same one. An open directory's inode is not freed.
    state_dir: Option<(std::fs::File, election::FileId)>,
    /// The lock file the step began with, held open for the same reason.
    lock: Option<(std::fs::File, election::FileId)>,
    /// The store the step began with, by id only: a second descriptor of
    /// the store in this process would drop SQLite's POSIX locks on it
    /// when closed.
    store: Option<election::FileId>,
}

impl Rebuild {
    const TRIES: u32 = 50;
    const PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

    /// Notes the state dir a step starts on.
    fn begin(&mut self, ws: &Workspace) {
        let held = |path: &std::path::Path| {
            std::fs::File::open(path)
                .ok()
                .and_then(|f| election::open_file_id(&f).map(|id| (f, id)))
        };
        self.state_dir = held(&ws.state_dir);
        self.lock = held(&ws.lock_path());
        self.store = election::file_id(&ws.db_path());
    }

    /// True when the step's state dir, or a file in it the step began with
    /// (lock, store), is no longer what its path names: the deletion raced
    /// the step. `rm -rf` unlinks the entries before the directory, and
    /// fails to remove a directory we put new entries in meanwhile, so the
    /// directory may be the same one while the files under the step are
    /// gone; SQLite then fails with a bare "disk I/O error" (it `stat`s the
    /// store to create its WAL).
    fn raced(&self, ws: &Workspace) -> bool {
        let moved = |began: Option<election::FileId>, path: &std::path::Path| {
            began.is_some() && election::file_id(path) != began
        };
        let began_on = self.state_dir.as_ref().map(|(_, id)| *id);
        began_on.is_none()
            || election::file_id(&ws.state_dir) != began_on
            || moved(self.lock.as_ref().map(|(_, id)| *id), &ws.lock_path())
            || moved(self.store, &ws.db_path())
    }

    async fn retry(&mut self, ws: &Workspace, e: NodeError) -> Result<(), NodeError> {
        // Deleted or replaced during the step, in a workspace that is still
        // there: the failure is the race, not a lasting problem. Or a file
        // the step made was lost in a directory that is still the same one
        // (`vanished`).
        let raced = self.raced(ws) || vanished(&e);
        if !ws.root.is_dir() || !raced || self.failures >= Self::TRIES {
            return Err(e);
        }
        self.failures += 1;
        tracing::warn!("{e}; the state dir is being replaced: trying again");
        tokio::time::sleep(Self::PAUSE).await;
        Ok(())
    }
}

/// True when `e` comes of a file that was not there: in a rebuild's
/// steps, which make every file they use, that is a file deleted under it.
fn vanished(e: &NodeError) -> bool {
    if let NodeError::Store(StoreError::Missing(_) | StoreError::Vanished(_)) = e {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::NotFound
        {
            return true;
        }
        cause = c.source();
    }
    false
}

fn acquire(lock_path: &std::path::Path) -> Result<Option<PrimaryLock>, NodeError> {
    election::try_acquire(lock_path).map_err(NodeError::io(format!(
        "cannot open {}",
        lock_path.display()
    )))
}

/// Writes this member's account of its config files (`grove config show`).
fn report(opts: &NodeOptions, me: &Identity, live: &LiveConfig, role: &str) {
    // One writer at a time (the primary writes its first report on a
    // blocking thread): both use one temp file, and the later one must
    // write the configuration as it is then.
    static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = WRITING.lock().unwrap_or_else(|p| p.into_inner());
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
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        crate::runs::signals::stop_requested().await;
        tracing::info!("stop requested");
        let _ = tx.send(true);
    });
    rx
}

/// The member's own view of the event stream, across role changes: it
/// starts at the current end of the log and never skips a durable event.
async fn consume_events(opts: NodeOptions, live: Arc<LiveConfig>, heard: Heard) {
    // Without an events log only the heartbeats matter here: the primary's
    // PUB socket then sends this member nothing else (each event would
    // cost every member a decode, and the primary a send per member).
    let mut sub = match &opts.events_log {
        None => crate::subscriber::subscribe_to(&opts.ws, 1, Interest::Heartbeats),
        Some(_) => {
            let first = Reader::open(&opts.ws.db_path())
                .and_then(|r| r.last_seq())
                .map(|s| s + 1)
                .unwrap_or(1);
            crate::subscriber::subscribe(&opts.ws, first)
        }
    };
    let mut log = opts.events_log.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| tracing::error!("cannot open events log {}: {e}", p.display()))
            .ok()
    });
    // Silence is noticed by a timer pushed back by every heartbeat, so a
    // healthy primary's heartbeats are the only thing that wakes us. It is
    // replaced, not `reset`: tokio extends a later deadline lazily, waking
    // at the old one to re-file the timer — once a second for nothing.
    // The heartbeat period as configured now: the config files may change
    // (or be recreated with `.grove`) while the member runs, and a silence
    // measured against an older, shorter period cries "unresponsive" at
    // every healthy heartbeat.
    let silence = || 4 * live.latest().heartbeat();
    let mut reported_unresponsive = false;
    let alarm = tokio::time::sleep(silence());
    tokio::pin!(alarm);
    loop {
        tokio::select! {
            event = sub.events.recv() => {
                let Some(event) = event else { return };
                if let Some(f) = log.as_mut() {
                    record_event(f, &event);
                }
                if let crate::protocol::EventData::Heartbeat { instance_id, .. } = &event.data {
                    let last = crate::store::promotions::Heard {
                        instance_id: instance_id.clone(),
                        epoch: event.epoch,
                        at: event.at,
                    };
                    *heard.lock().unwrap_or_else(|p| p.into_inner()) = Some(last);
                    if reported_unresponsive {
                        tracing::info!("primary responsive again");
                        reported_unresponsive = false;
                    }
                    alarm.set(tokio::time::sleep(silence()));
                }
            }
            _ = &mut alarm => {
                let age = sub.health.heartbeat_age_ms().map(std::time::Duration::from_millis);
                let silence = silence();
                match age {
                    Some(age) if age > silence => {
                        tracing::warn!(
                            "primary unresponsive: no heartbeat for {} ms",
                            age.as_millis()
                        );
                        reported_unresponsive = true;
                        // Said once; the next heartbeat re-arms the alarm.
                        alarm.set(tokio::time::sleep(FOREVER));
                    }
                    // Not subscribed yet, or heard from lately.
                    Some(age) => alarm.set(tokio::time::sleep(silence - age)),
                    None => alarm.set(tokio::time::sleep(silence)),
                }
            }
        }
    }
}

/// "Never", for a timer that something else re-arms.
const FOREVER: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The store and lock file unlinked under a step, in a state dir that
    /// is still the same one (what `rm -rf` leaves when it cannot remove
    /// the directory), tell the step's failure is the deletion's doing.
    #[test]
    fn a_step_whose_files_were_unlinked_raced_a_deletion() {
        let root = tempfile::tempdir().unwrap();
        let ws = Workspace::resolve(root.path()).unwrap();
        ws.ensure_state_dir().unwrap();
        let begun = |files: &[std::path::PathBuf]| {
            for f in files {
                std::fs::write(f, b"x").unwrap();
            }
            let mut r = Rebuild::default();
            r.begin(&ws);
            r
        };
        let all = [ws.lock_path(), ws.db_path()];
        assert!(!begun(&all).raced(&ws), "nothing changed");
        for file in &all {
            let r = begun(&all);
            let stale = file.with_extension("stale");
            std::fs::rename(file, &stale).unwrap();
            assert!(r.raced(&ws), "{} unlinked", file.display());
            std::fs::write(file, b"new").unwrap();
            assert!(r.raced(&ws), "{} replaced", file.display());
            std::fs::remove_file(stale).unwrap();
        }
        // A file the step made itself is no sign of a race.
        std::fs::remove_file(ws.db_path()).unwrap();
        let r = begun(&[ws.lock_path()]);
        std::fs::write(ws.db_path(), b"made by the step").unwrap();
        assert!(!r.raced(&ws));
    }

    #[test]
    fn a_file_gone_under_a_step_is_told_from_other_failures() {
        let gone = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let store_lost_its_file = NodeError::Store(StoreError::Create {
            path: "grove.db".into(),
            source: gone(),
        });
        assert!(vanished(&store_lost_its_file));
        assert!(vanished(&NodeError::Io {
            what: "cannot write primary.json".into(),
            source: gone(),
        }));
        assert!(vanished(&NodeError::Store(StoreError::Missing(
            "grove.db".into()
        ))));
        assert!(vanished(&NodeError::Store(StoreError::Vanished(
            "grove.db".into()
        ))));
        let refused = NodeError::Io {
            what: "cannot open primary.lock".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert!(!vanished(&refused));
        assert!(!vanished(&NodeError::Store(StoreError::Emptied {
            path: "grove.db".into(),
            why: "truncated".into(),
        })));
    }
}
