//! Running as secondary: follow the primary, register with it, and keep one
//! thread blocked on the election lock — the crash detector (see docs/design.md, Election).

use super::state;
use super::{Identity, NodeError, NodeOptions};
use crate::client::Client;
use crate::config::LiveConfig;
use crate::election::{self, PrimaryLock};
use crate::primary_record::PrimaryWatch;
use crate::protocol::{MemberInfo, Method, ReplyBody};
use std::time::Duration;
use tokio::sync::watch;

/// How following the primary ended.
pub enum Followed {
    /// This member won the lock: it must promote (the promotion's first
    /// step already began on the lock waiter's thread).
    Promote(super::primary::Held),
    /// Asked to stop.
    Stopped,
    /// The lock file waited on is no longer the workspace's (`.grove` was
    /// deleted or replaced): run the election again on the new one.
    StateGone,
}

pub async fn run(
    me: &Identity,
    opts: &NodeOptions,
    live: &LiveConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Followed, NodeError> {
    let lock_path = opts.ws.lock_path();
    // Made now, while nothing waits: a promotion only fills it in.
    let mut record_slot = crate::primary_record::RecordSlot::prepare(&opts.ws, &me.instance_id);
    let (floor_tx, floor) = tokio::sync::oneshot::channel();
    let (wanted, still_wanted) = super::primary::Wanted::new();
    let mut wanted = Some(wanted);
    let (mut lock_rx, waited_on) =
        election::wait_in_thread(&lock_path, begin(me, opts, floor_tx, still_wanted))
            .map_err(NodeError::io("cannot start the lock waiter"))?;
    let mut reported = live.generation();
    super::report(opts, me, live, "secondary");
    // The lock file and the configuration are watched, not polled.
    let mut watches = state::watches(
        std::slice::from_ref(&lock_path),
        live,
        state::SECONDARY_CHECK,
    );
    let mut client = Client::new(&opts.ws, &opts.config, &me.instance_id);
    let mut watch = PrimaryWatch::new(&opts.ws);
    let mut registered_epoch = 0u64;
    // When this member first saw the current epoch's record (CLOCK_MONOTONIC
    // ns), logged with the registration for `grove bench failover`.
    let mut noticed: (u64, u64) = (0, 0);
    let hello = Method::Hello(MemberInfo {
        instance_id: me.instance_id.clone(),
        pid: me.pid,
        kind: opts.kind.to_string(),
        started_at: me.started_at,
    });
    tracing::info!("secondary: waiting on the election lock");
    let mut wal_index = None;
    loop {
        if wal_index.is_none() {
            wal_index = hold_wal_index(&opts.ws);
        }
        watch.poll();
        let current_epoch = watch.current().map(|r| r.epoch).unwrap_or(0);
        let need_hello = current_epoch != 0 && current_epoch != registered_epoch;
        if need_hello && noticed.0 != current_epoch {
            noticed = (current_epoch, crate::stats::monotonic_ns());
        }
        tokio::select! {
            biased;
            lock = &mut lock_rx => {
                return match lock {
                    Ok(won) => {
                        tracing::info!("won the election lock: promoting");
                        Ok(Followed::Promote(super::primary::Held {
                            lock: won.lock,
                            wal_index: wal_index.take(),
                            begun: wanted.take().map(|wanted| super::primary::Begun {
                                floor,
                                done: won.then,
                                wanted,
                            }),
                            record_slot: record_slot.take(),
                        }))
                    }
                    Err(_) => Err(NodeError::Io {
                        what: "the lock waiter died".into(),
                        source: std::io::Error::other("waiter thread ended"),
                    }),
                };
            }
            _ = shutdown.changed() => return Ok(Followed::Stopped),
            _ = crate::fs_watch::any(&mut watches) => {
                if election::file_id(&lock_path) != waited_on {
                    tracing::warn!("{} was deleted or replaced: electing again", lock_path.display());
                    return Ok(Followed::StateGone);
                }
                let generation = live.generation();
                if generation != reported {
                    reported = generation;
                    super::report(opts, me, live, "secondary");
                }
            }
            result = async {
                if need_hello {
                    if registered_epoch != 0 {
                        tokio::time::sleep(crate::primary_record::survivor_delay()).await;
                    }
                    // One id per epoch: the other branches may cancel this
                    // call mid-flight, and its retry must not register twice.
                    let id = format!("hello-{}-{current_epoch}", me.instance_id);
                    Some(client.call_with_id(&id, hello.clone()).await)
                } else {
                    // Idle: asleep until a new primary renames its record
                    // into place (or the lock waiter wins, or a signal).
                    watch.next_change().await;
                    None
                }
            } => {
                if let Some(epoch) = registered(result, noticed.1).await {
                    registered_epoch = epoch;
                }
            }
        }
    }
}

/// What the lock waiter does the moment it wins, still holding the lock:
/// the promotion's first step (see `primary::begin_promotion`), unless the
/// lock file is no longer the workspace's (the member elects again then).
fn begin(
    me: &Identity,
    opts: &NodeOptions,
    floor_tx: tokio::sync::oneshot::Sender<u64>,
    still_wanted: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> impl FnOnce(&PrimaryLock) -> Option<super::primary::Started> + Send + 'static {
    let (ws, instance, pid, heard) = (
        opts.ws.clone(),
        me.instance_id.clone(),
        me.pid,
        me.heard.clone(),
    );
    move |held| {
        let won_ns = crate::stats::monotonic_ns();
        let lock_path = ws.lock_path();
        if !held.is_at(&lock_path) {
            return None;
        }
        // Read before the event loop raises it (see `primary::Begun`); a
        // loop that is gone has given the win up.
        let floor = state::epoch_mark(&ws);
        if floor_tx.send(floor).is_err() {
            return None;
        }
        // Asked again inside the promotion's transaction, just before it
        // commits: the member may have stopped meanwhile, or `.grove` been
        // replaced under the lock.
        let proceed =
            || still_wanted.load(std::sync::atomic::Ordering::SeqCst) && held.is_at(&lock_path);
        let started =
            super::primary::begin_promotion(&ws, &instance, pid, &heard, (won_ns, floor), &proceed);
        Some(started)
    }
}

/// A read-only connection that has read the store once, kept open while
/// this member waits, and handed to the promotion, which drops it once its
/// read-write connection is open. While any connection is open, SQLite
/// keeps the shared WAL index (`grove.db-shm`); when the primary is killed
/// and nobody has it open, the next opener (the new primary, on the
/// failover's critical path) rebuilds it by reading the whole WAL, up to
/// 4,000 frames (see docs/design.md, Promotion). It holds no transaction,
/// so it never holds back a checkpoint. `None` while there is no store.
fn hold_wal_index(ws: &crate::paths::Workspace) -> Option<crate::store::Reader> {
    let reader = crate::store::Reader::open(&ws.db_path()).ok()?;
    reader.map_wal_index().ok()?;
    Some(reader)
}

/// The epoch this member is registered with after a `hello` reply (`None`
/// while not registered: no call was made, or it failed and was waited out).
async fn registered(
    result: Option<Result<ReplyBody, crate::client::ClientError>>,
    noticed_ns: u64,
) -> Option<u64> {
    match result? {
        Ok(ReplyBody::Welcome { epoch, .. }) => {
            let registered_ns = crate::stats::monotonic_ns();
            tracing::info!(
                epoch,
                noticed_ns,
                registered_ns,
                "following the primary (registered {:.2} ms after noticing its record)",
                registered_ns.saturating_sub(noticed_ns) as f64 / 1e6
            );
            Some(epoch)
        }
        Ok(other) => {
            tracing::warn!("unexpected reply to hello: {other:?}");
            None
        }
        Err(e) => {
            tracing::warn!("cannot register with the primary: {e}");
            tokio::time::sleep(HELLO_RETRY).await;
            None
        }
    }
}

/// After a refused `hello`, how long before trying again: the primary is
/// busy or going away; retrying at once would only add to its load.
const HELLO_RETRY: Duration = Duration::from_millis(100);
