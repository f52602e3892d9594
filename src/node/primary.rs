//! Running as primary: promotion (in the order docs/design.md, Promotion,
//! gives and explains), then serving until the role ends, then a graceful
//! handover. The RPC path is `serving.rs`, the publisher `publisher.rs`.

use super::publisher::{EVENT_QUEUE, Heartbeat, publish_loop};
use super::serving::{LogLimiter, REPLY_QUEUE, Serving, reply_loop};
use super::state::{self, StateGuard};
use super::watchdog::Watchdog;
use super::{Identity, NodeError, NodeOptions};
use crate::config::{Config, LiveConfig};
use crate::election::PrimaryLock;
use crate::primary_record::PrimaryRecord;
use crate::protocol::{ErrorCode, Method, PrimaryInfo, WireError};
use crate::stats::monotonic_ns;
use crate::store::writer::{self, Job, Promotion};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;
use zeromq::{Socket, SocketRecv};

/// The lock this member holds, with what came with it: a secondary's open
/// store connection (kept until the promotion has its own, see
/// `secondary::hold_wal_index`) and the promotion its lock waiter began.
pub struct Held {
    pub lock: PrimaryLock,
    pub wal_index: Option<crate::store::Reader>,
    pub begun: Option<Begun>,
    /// The file made ahead for our `primary.json` (see `RecordSlot`).
    pub record_slot: Option<crate::primary_record::RecordSlot>,
}

impl Held {
    /// A lock taken by a try at startup or after a rebuild, with nothing
    /// begun yet.
    pub fn taken(lock: PrimaryLock) -> Held {
        Held {
            lock,
            wal_index: None,
            begun: None,
            record_slot: None,
        }
    }
}

/// Step 1 of a promotion, under way on another thread.
pub struct Begun {
    /// The epoch mark the promotion reads before it opens the store: the
    /// sockets are bound under it + 1 and the mark then raised, which must
    /// not happen before the promotion has read it (it would take one
    /// epoch more than the sockets are named by). Closed when the
    /// promotion did not begin.
    pub floor: oneshot::Receiver<u64>,
    pub done: oneshot::Receiver<Option<Started>>,
    /// Dropped with the win when the member gives it up (it stops, or the
    /// lock file turned out not to be the workspace's): the promotion,
    /// which asks just before it commits, then rolls back.
    pub wanted: Wanted,
}

/// See [`Begun::wanted`]: set to false when dropped.
pub struct Wanted(Arc<std::sync::atomic::AtomicBool>);

impl Wanted {
    pub fn new() -> (Wanted, Arc<std::sync::atomic::AtomicBool>) {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(true));
        (Wanted(flag.clone()), flag)
    }
}

impl Drop for Wanted {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Step 1 of a promotion, done: when the lock was won (CLOCK_MONOTONIC
/// ns) and what opening the store read-write and committing the new epoch
/// gave.
pub struct Started {
    won_ns: u64,
    result: Result<Promotion, crate::store::StoreError>,
}

/// Step 1 of the promotion (see `promote_and_serve`): run by the thread
/// that holds the lock, right after winning it. `won_ns` is when it did.
pub fn begin_promotion(
    ws: &crate::paths::Workspace,
    instance_id: &str,
    pid: u32,
    heard: &super::Heard,
    (won_ns, floor): (u64, u64),
    proceed: &dyn Fn() -> bool,
) -> Started {
    // The same instant on the wall clock, kept with the epoch: the board's
    // failover history compares it with the old primary's last heartbeat.
    let won = crate::store::promotions::LockWon {
        at: crate::protocol::now_ms(),
        heard: heard.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    };
    Started {
        won_ns,
        result: writer::promote(&ws.db_path(), instance_id, pid, floor, &won, proceed),
    }
}

pub async fn run(
    me: &Identity,
    opts: &NodeOptions,
    live: &Arc<LiveConfig>,
    held: Held,
    shutdown: watch::Receiver<bool>,
) -> Result<Ended, NodeError> {
    // Instrumented, not entered (a guard must not be held across `.await`);
    // the epoch is recorded once the promotion has taken it.
    let span = tracing::info_span!("primary", epoch = tracing::field::Empty);
    promote_and_serve(me, opts, live, held, shutdown)
        .instrument(span)
        .await
}

/// The promotion, step by step; each step's reason is at the step.
async fn promote_and_serve(
    me: &Identity,
    opts: &NodeOptions,
    live: &Arc<LiveConfig>,
    held: Held,
    shutdown: watch::Receiver<bool>,
) -> Result<Ended, NodeError> {
    let ws = &opts.ws;
    let Held {
        lock,
        wal_index,
        begun,
        record_slot,
    } = held;
    let promoted_at = Instant::now();
    // Each phase is stamped on CLOCK_MONOTONIC so that `grove bench
    // failover` can set them beside the kill's own stamp.
    let mut phases = Phases::default();
    // The files as they are now, not as they were when this member started.
    let config = live.current();

    // 1. Read-write store, migrations, epoch + 1 (one transaction), above
    //    every epoch this workspace had, even in a deleted `.grove`. On a
    //    thread of its own, begun by the secondary's lock waiter the moment
    //    it won (else here): meanwhile this one binds the sockets (3. + 4.).
    // Kept until the promotion is in: dropped earlier (this returns on an
    // error), it makes a promotion still under way roll back.
    let mut begun = begun;
    let told = match begun.as_mut() {
        Some(b) => (&mut b.floor).await.ok(),
        None => None,
    };
    let mut wanted = None;
    let (floor, store) = match (told, begun) {
        (Some(floor), Some(b)) => {
            wanted = Some(b.wanted);
            (floor, b.done)
        }
        // Not begun by a waiter (or it could not begin it): ours to run.
        _ => {
            let floor = state::epoch_mark(ws);
            (floor, promote_in_thread(me, ws, floor)?)
        }
    };

    // 2. Running tasks are not reconciled here: the orchestrator adopts them
    //    once it starts, after `primary.json` (see docs/design.md, Promotion).

    // 3. + 4. Stale sockets gone, ours bound, named by the epoch the store
    //    is committing: the last one recorded plus one, unless the store
    //    holds a higher one (the mark was lost), when they are bound again.
    let predicted = floor + 1;
    let bound = bind_sockets(ws, predicted).await;
    phases.bound = monotonic_ns();

    // Awaited, not joined: the loop does not block while the store commits.
    // A waiter that could not begin it (no second descriptor; the lock file
    // no longer the workspace's when it won) leaves it to a thread of ours.
    let started = match store.await {
        Ok(Some(started)) => started,
        _ => promote_in_thread(me, ws, floor)?
            .await
            .ok()
            .flatten()
            .ok_or_else(|| {
                NodeError::io("cannot promote")(std::io::Error::other(
                    "the promotion thread panicked",
                ))
            })?,
    };
    drop(wanted);
    if started.result.is_err() && !lock.is_at(&ws.lock_path()) {
        // Given up because the lock file was replaced meanwhile (the loop
        // checked it just before): elect again on the new one.
        return Ok(Ended::StateGone);
    }
    phases.lock = started.won_ns;
    let promotion = started.result?;
    phases.store = monotonic_ns();
    // Open until ours is: the WAL index was not rebuilt (`secondary`).
    drop(wal_index);
    let epoch = promotion.epoch;
    let guard = StateGuard::new(ws, &lock);
    tracing::Span::current().record("epoch", epoch);
    let sockets = match bound {
        Ok(sockets) if epoch == predicted => sockets,
        _ => {
            let sockets = bind_sockets(ws, epoch).await?;
            phases.bound = monotonic_ns();
            sockets
        }
    };

    // 5. primary.json, so that everyone finds us.
    publish_record(me, ws, epoch, &sockets, record_slot)?;
    phases.record = monotonic_ns();

    // 6. Publisher, store thread, orchestrator.
    let Sockets {
        router,
        publisher,
        rpc_endpoint,
        pub_endpoint,
    } = sockets;
    let parts = start_parts(me, opts, live, &config, &guard, promotion, publisher)?;
    phases.serving = monotonic_ns();
    tracing::info!(
        pid = me.pid,
        "promoted to primary in {:.1} ms; rpc {rpc_endpoint}",
        promoted_at.elapsed().as_secs_f64() * 1000.0
    );
    phases.log(epoch);
    // Kept with the epoch's promotion record: the failover history shows
    // this measured takeover, not a gap between stored events.
    let takeover_us = phases.serving.saturating_sub(phases.lock) / 1000;
    let _ = parts.store.jobs.send(Job::Served { epoch, takeover_us });

    // 7. The RPC loop, until the role ends. The member report (what
    //    `grove config show` lists) is written on a blocking thread: a new file
    //    and a rename, ~0.5 ms on a disk where creating a file searches
    //    for a free inode, during which a reconnecting client's handshake
    //    waited (`perf sched` of a failover). Awaited before the member
    //    can remove it; writes of the report never interleave (`report`).
    let first_report = report_off_loop(opts, me, live, "primary");
    let (router_send, router_recv) = router.split();
    let (replies_tx, replies_rx) = mpsc::channel(REPLY_QUEUE);
    let reply_task = crate::loop_watch::spawn(
        "replies",
        reply_loop(router_send, replies_rx, epoch).in_current_span(),
    );
    let serving = serving(
        me,
        ws,
        epoch,
        (pub_endpoint, rpc_endpoint),
        &parts,
        replies_tx,
        router_recv.gate(),
    );
    let ended = serve(me, opts, live, &guard, &serving, router_recv, shutdown).await;
    let _ = first_report.await;

    // 8. Graceful handover.
    hand_over(me, ws, epoch, serving, parts, reply_task).await;
    drop(lock);
    tracing::info!("handed over");
    Ok(ended)
}

/// What the RPC path needs: who we are (for `ping`) and where writes go.
fn serving(
    me: &Identity,
    ws: &crate::paths::Workspace,
    epoch: u64,
    (pub_endpoint, rpc_endpoint): (String, String),
    parts: &Parts,
    replies: mpsc::Sender<super::serving::Outgoing>,
    gate: zeromq::PeerGate,
) -> Serving {
    let info = PrimaryInfo {
        instance_id: me.instance_id.clone(),
        pid: me.pid,
        epoch,
        started_at: me.started_at,
        uptime_ms: 0,
        pub_endpoint,
        rpc_endpoint,
        last_seq: 0,
        longest_poll_us: 0,
        commits: 0,
        writes_committed: 0,
        wal_pages: 0,
        wal_syncs: 0,
    };
    Serving {
        bad_frames: LogLimiter::new(),
        full_queue: LogLimiter::new(),
        budget_warned: Default::default(),
        ws: ws.clone(),
        info,
        started: Instant::now(),
        last_seq: parts.last_seq.clone(),
        jobs: parts.store.jobs.clone(),
        replies,
        last_request: me.last_request.clone(),
        budget: Arc::new(tokio::sync::Semaphore::new(super::serving::WRITE_BUDGET)),
        peers: super::serving::PeerShares::new(gate),
    }
}

/// When each step of a promotion ended, in CLOCK_MONOTONIC nanoseconds
/// (comparable across processes): logged once per promotion, read by
/// `grove bench failover` to break a failover down.
#[derive(Default)]
struct Phases {
    /// The election lock won (promotion starts).
    lock: u64,
    /// The store opened read-write, migrated, the new epoch committed.
    store: u64,
    /// Stale sockets removed, ours bound.
    bound: u64,
    /// `primary.json` written: clients can find us.
    record: u64,
    /// Store thread, publisher and orchestrator started: writes are served.
    serving: u64,
}

impl Phases {
    fn log(&self, epoch: u64) {
        let ms = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e6;
        tracing::info!(
            epoch,
            lock_ns = self.lock,
            store_ns = self.store,
            bound_ns = self.bound,
            record_ns = self.record,
            serving_ns = self.serving,
            "promotion phases: store {:.2} ms beside binding {:.2} ms, primary.json {:.2} ms, start {:.2} ms",
            ms(self.lock, self.store),
            ms(self.lock, self.bound),
            ms(self.store.max(self.bound), self.record),
            ms(self.record, self.serving),
        );
    }
}

/// Writes this member's report on a blocking thread (see step 7 of
/// `promote_and_serve`).
fn report_off_loop(
    opts: &NodeOptions,
    me: &Identity,
    live: &Arc<LiveConfig>,
    role: &'static str,
) -> tokio::task::JoinHandle<()> {
    let (opts, me, live) = (opts.clone(), me.clone(), live.clone());
    tokio::task::spawn_blocking(move || super::report(&opts, &me, &live, role))
}

/// Writes `primary.json` (atomically): from now on clients find us.
fn publish_record(
    me: &Identity,
    ws: &crate::paths::Workspace,
    epoch: u64,
    sockets: &Sockets,
    slot: Option<crate::primary_record::RecordSlot>,
) -> Result<(), NodeError> {
    let record = PrimaryRecord {
        instance_id: me.instance_id.clone(),
        pid: me.pid,
        epoch,
        pub_endpoint: sockets.pub_endpoint.clone(),
        rpc_endpoint: sockets.rpc_endpoint.clone(),
        started_at: me.started_at,
    };
    record
        .write_into(ws, slot)
        .map_err(NodeError::io("cannot write primary.json"))
}

/// The ROUTER and PUB sockets of this epoch.
struct Sockets {
    router: zeromq::RouterSocket,
    publisher: zeromq::PubSocket,
    rpc_endpoint: String,
    pub_endpoint: String,
}

/// Unlinks the sockets of earlier epochs (only the lock holder may), then
/// binds ROUTER and PUB on this epoch's paths.
async fn bind_sockets(ws: &crate::paths::Workspace, epoch: u64) -> Result<Sockets, NodeError> {
    ws.ensure_socket_dir()?;
    state::record_epoch(ws, epoch);
    remove_stale_sockets(&ws.socket_dir);
    let rpc_endpoint = format!("ipc://{}", ws.rpc_socket(epoch).display());
    let pub_endpoint = format!("ipc://{}", ws.pub_socket(epoch).display());
    let mut router = zeromq::RouterSocket::new();
    bind(&mut router, &rpc_endpoint).await?;
    let mut publisher = zeromq::PubSocket::new();
    bind(&mut publisher, &pub_endpoint).await?;
    restrict_socket_files(ws, epoch);
    Ok(Sockets {
        router,
        publisher,
        rpc_endpoint,
        pub_endpoint,
    })
}

/// Step 1 of the promotion on a thread of its own, for a lock won here
/// rather than by a secondary's waiter (it blocks for a millisecond or so:
/// opening, migrating, committing the epoch), so that the event loop binds
/// the sockets meanwhile. The thread is spawned when the lock is won, not
/// kept waiting: an idle member keeps no thread for it. The result comes
/// through a channel, so the loop awaits it instead of blocking in a join;
/// a panic closes it.
fn promote_in_thread(
    me: &Identity,
    ws: &crate::paths::Workspace,
    floor: u64,
) -> Result<oneshot::Receiver<Option<Started>>, NodeError> {
    let won_ns = monotonic_ns();
    let (ws, instance, pid, heard) = (ws.clone(), me.instance_id.clone(), me.pid, me.heard.clone());
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("grove-promote".into())
        .spawn(move || {
            let started = begin_promotion(&ws, &instance, pid, &heard, (won_ns, floor), &|| true);
            let _ = tx.send(Some(started));
        })
        .map_err(NodeError::io("cannot start the promotion"))?;
    Ok(rx)
}

/// What runs beside the RPC loop while we are primary.
struct Parts {
    store: writer::StoreThread,
    publish_task: tokio::task::JoinHandle<()>,
    orchestrator_task: tokio::task::JoinHandle<()>,
    /// The web board (when turned on) and the notifications: they run
    /// where the primary runs, and stop with its role.
    board_tasks: [tokio::task::JoinHandle<()>; 2],
    watchdog: Watchdog,
    last_seq: Arc<AtomicU64>,
}

/// Starts the publisher (fed by the store thread in commit order; its first
/// event is `instance.promoted`), the store thread and the orchestrator,
/// which adopts running tasks (see docs/design.md, Orchestrator) and then
/// keeps the processes in line with the store.
fn start_parts(
    me: &Identity,
    opts: &NodeOptions,
    live: &Arc<LiveConfig>,
    config: &Config,
    guard: &StateGuard,
    promotion: Promotion,
    publisher: zeromq::PubSocket,
) -> Result<Parts, NodeError> {
    let epoch = promotion.epoch;
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let last_seq = Arc::new(AtomicU64::new(promotion.promoted.seq));
    let _ = events_tx.try_send(promotion.promoted.clone());
    let changed = Arc::new(crate::orchestrator::Wake::default());
    // The heartbeat ticks the watchdog: every member runs its loop on one
    // thread, so a heartbeat that went out proves the loop is not stuck,
    // and an idle primary needs no timer of its own.
    let watchdog = Watchdog::start(config.watchdog_timeout())
        .map_err(NodeError::io("cannot start the watchdog"))?;
    let heartbeat = Heartbeat {
        every: config.heartbeat(),
        instance_id: me.instance_id.clone(),
        epoch,
        watchdog: watchdog.clone(),
    };
    let (notify_tx, notify_rx) = mpsc::channel(crate::web::notify::QUEUE);
    let publish = publish_loop(
        publisher,
        events_rx,
        heartbeat,
        last_seq.clone(),
        changed.clone(),
        notify_tx,
    );
    let publish_task = crate::loop_watch::spawn("publisher", publish.in_current_span());
    let retention = writer::Retention {
        events: config.event_retention,
        ledger_ms: config.ledger_retention_hours * 3_600_000,
    };
    let store_guard = guard.clone();
    let still_current = Box::new(move || store_guard.intact());
    let store = writer::spawn(
        promotion,
        events_tx.clone(),
        retention,
        still_current,
        admission(live.clone(), opts.ws.root.clone()),
    )
    .map_err(NodeError::io("cannot start the store thread"))?;
    let orchestrator = crate::orchestrator::Orchestrator::new(
        opts.ws.clone(),
        live.clone(),
        store.jobs.clone(),
        events_tx,
        epoch,
    );
    let orchestrator_task =
        crate::loop_watch::spawn("orchestrator", orchestrator.run(changed).in_current_span());
    // Heard from a primary within a few heartbeats: a failover or a
    // handover, and the board's open tabs keep their login.
    let heartbeat_ms = live.current().heartbeat_ms;
    let took_over = (me.heard.lock().unwrap_or_else(|p| p.into_inner()).as_ref())
        .is_some_and(|h| crate::protocol::now_ms().saturating_sub(h.at) <= 3 * heartbeat_ms + 1000);
    let board = crate::web::run(crate::web::BoardOptions {
        ws: opts.ws.clone(),
        live: live.clone(),
        last_request: me.last_request.clone(),
        took_over,
    });
    let notify = crate::web::notify::run(opts.ws.clone(), live.clone(), notify_rx);
    let board_tasks = [
        crate::loop_watch::spawn("web board", board.in_current_span()),
        crate::loop_watch::spawn("notify", notify.in_current_span()),
    ];
    Ok(Parts {
        store,
        publish_task,
        orchestrator_task,
        board_tasks,
        watchdog,
        last_seq,
    })
}

/// Answers requests until asked to stop or until our files vanish. Watched,
/// not polled, so that an idle primary sleeps: the socket files (deleted:
/// rebind), the lock and the store (`.grove` deleted or replaced: hand
/// over), the config files and our member report.
/// Requests the RPC loop takes in a row before it lets the loop's other
/// tasks (replies, heartbeats) run.
const YIELD_EVERY: u32 = 64;

async fn serve(
    me: &Identity,
    opts: &NodeOptions,
    live: &Arc<LiveConfig>,
    guard: &StateGuard,
    serving: &Serving,
    mut router_recv: zeromq::RouterRecvHalf,
    mut shutdown: watch::Receiver<bool>,
) -> Ended {
    let ws = &opts.ws;
    let epoch = serving.info.epoch;
    let mut reported = live.generation();
    let mut watches = state::watches(
        &[
            ws.rpc_socket(epoch),
            ws.pub_socket(epoch),
            ws.lock_path(),
            ws.db_path(),
            ws.member_report(&me.instance_id),
        ],
        live,
        PRIMARY_CHECK,
    );
    let mut handled = 0u32;
    loop {
        tokio::select! {
            msg = router_recv.recv() => match msg {
                Ok(msg) => {
                    let stop = async {
                        let _ = shutdown.changed().await;
                    };
                    match serving.room_for(&msg, stop).await {
                        Some(permit) => serving.handle(msg, permit),
                        None => return Ended::Stopped,
                    }
                    // The ROUTER's recv is ready at once while requests are
                    // buffered, and it does not take part in tokio's
                    // cooperative budget: without a yield, a backlog of
                    // tens of thousands held the loop for 674 ms, the
                    // replies and heartbeats with it.
                    handled = handled.wrapping_add(1);
                    if handled.is_multiple_of(YIELD_EVERY) {
                        tokio::task::yield_now().await;
                    }
                }
                Err(e) => tracing::warn!("rpc receive error: {e}"),
            },
            _ = crate::fs_watch::any(&mut watches) => {
                if let Some(ended) = files_changed(ws, epoch, guard) {
                    return ended;
                }
                // Off the loop: a reload may ask git (a committed config).
                let reload = live.clone();
                let generation = tokio::task::spawn_blocking(move || reload.generation())
                    .await
                    .unwrap_or(reported);
                if generation != reported || !ws.member_report(&me.instance_id).exists() {
                    reported = generation;
                    super::report(opts, me, live, "primary");
                }
            }
            _ = shutdown.changed() => return Ended::Stopped,
        }
    }
}

/// Why a watched file's change ends the role, if it does.
fn files_changed(ws: &crate::paths::Workspace, epoch: u64, guard: &StateGuard) -> Option<Ended> {
    // `.grove` deleted or replaced: our lock and store are unlinked files
    // nobody else sees. Stop serving them. Checked first: the primary of
    // the new state dir removes our socket files as stale, and a member
    // that took that for a mere rebind would keep its view of the old
    // store open.
    if !guard.intact() {
        tracing::warn!("the state dir was deleted or replaced; handing over");
        return Some(Ended::StateGone);
    }
    // Someone deleted our socket files (a tmp cleaner, a user): nobody new
    // can reach us. Hand over and rebind under a new epoch rather than
    // serve a bus that cannot be found.
    if !ws.rpc_socket(epoch).exists() || !ws.pub_socket(epoch).exists() {
        tracing::warn!("the socket files vanished; handing over to rebind them");
        return Some(Ended::Rebind);
    }
    None
}

/// Stops taking requests, finishes the queued writes, records and
/// publishes `instance.shutdown`, closes the sockets; the caller releases
/// the lock only then. Running tasks keep running under their shims; the
/// next primary adopts them.
async fn hand_over(
    me: &Identity,
    ws: &crate::paths::Workspace,
    epoch: u64,
    serving: Serving,
    parts: Parts,
    reply_task: tokio::task::JoinHandle<()>,
) {
    tracing::info!("handing over");
    parts.orchestrator_task.abort();
    let _ = parts.orchestrator_task.await;
    // The board's port is free for the next primary before the lock is.
    for task in parts.board_tasks {
        task.abort();
        let _ = task.await;
    }
    let (done_tx, done_rx) = oneshot::channel();
    let _ = serving.jobs.send(Job::Shutdown {
        instance_id: me.instance_id.clone(),
        done: done_tx,
    });
    let _ = done_rx.await;
    drop(serving);
    let store = parts.store;
    let _ = tokio::task::spawn_blocking(move || store.join()).await;
    // Replies in flight are flushed once every sender is gone.
    let _ = tokio::time::timeout(FLUSH_WAIT, reply_task).await;
    let _ = tokio::time::timeout(FLUSH_WAIT, parts.publish_task).await;
    parts.watchdog.stop();
    let _ = std::fs::remove_file(ws.rpc_socket(epoch));
    let _ = std::fs::remove_file(ws.pub_socket(epoch));
}

/// Checks a new `task.create`, and the changes of a resume or relaunch,
/// before the store applies them: the default engine filled in, the
/// engine, its binary, the model and the persona validated, as the task
/// would run. Runs on the store thread (see `writer::Admission`).
fn admission(live: Arc<LiveConfig>, root: std::path::PathBuf) -> writer::Admission {
    use crate::orchestrator::engines::{FsChecks, RunSpec, validate_with};
    // The configuration as read for the current batch (its files are
    // checked once per batch, not once per write), and what validation
    // asked the file system (see `FsChecks`).
    let read = std::cell::RefCell::new(None::<(u64, Arc<Config>)>);
    let checks = std::cell::RefCell::new(FsChecks::default());
    Box::new(move |method, tx| {
        let batch = writer::batch_number();
        let mut read = read.borrow_mut();
        let mut checks = checks.borrow_mut();
        let checks = &mut *checks;
        let (_, config) = match &mut *read {
            Some(current) if current.0 == batch => current,
            stale => {
                checks.next_batch();
                stale.insert((batch, live.current()))
            }
        };
        let config = config.clone();
        let limits = writer::Limits {
            max_depth: config.max_delegation_depth,
            max_children: config.max_children,
            retry_notice: config.retry_notice,
        };
        let invalid = |msg: String| WireError::new(ErrorCode::InvalidParams, msg);
        let (id, changes, words) = match method {
            Method::TaskCreate(new) => {
                admit_new(&config, &root, new, checks)?;
                return Ok(limits);
            }
            Method::GoalCreate(goal) => {
                // Iterations are the turns of one kept session on an ACP
                // engine, successive runs on any other.
                let engine =
                    (goal.task.engine).get_or_insert_with(|| config.default_engine.clone());
                let code =
                    (config.engines.get(engine.as_str())).is_some_and(|e| e.runs_prompt_as_shell());
                if engine == "shell" || code {
                    return Err(WireError::new(
                        ErrorCode::InvalidParams,
                        format!(
                            "a goal needs an agent: engine '{engine}' runs its prompt as a shell command and cannot follow a goal's brief (choose an acp or cli engine with -e; see grove engines)"
                        ),
                    ));
                }
                let kind = config.engines.get(engine.as_str()).map(|e| e.kind);
                goal.task.keep_session = kind == Some(crate::config::EngineKind::Acp);
                admit_new(&config, &root, &mut goal.task, checks)?;
                return Ok(limits);
            }
            Method::TaskRelaunch {
                id,
                changes,
                instructions,
            }
            | Method::TaskResume {
                id,
                changes,
                instructions,
            } => {
                let words = instructions
                    .as_deref()
                    .is_some_and(|s| !s.trim().is_empty());
                (id, changes, words)
            }
            Method::TaskAwait(spec) => {
                awaitable(&config, tx, &spec.parent_id)?;
                return Ok(limits);
            }
            _ => return Ok(limits),
        };
        if changes.is_empty() && !words {
            return Ok(limits);
        }
        // The task as the rerun would run it, read once. A missing task is
        // the store's to refuse.
        let Some(mut task) = crate::store::read_task(tx, id).map_err(unreadable)? else {
            return Ok(limits);
        };
        changes.apply(&mut task.spec);
        if words {
            refuse_words_for_shell_prompt(&config, &task)?;
        }
        if !changes.is_empty() {
            validate_with(&config, &root, &RunSpec::of_task(&task), checks)
                .map_err(|e| invalid(e.to_string()))?;
        }
        Ok(limits)
    })
}

/// Instructions are appended to the prompt for an agent to read: an
/// engine that hands its prompt to a shell as code (`bash -c {prompt}`,
/// see `EngineConfig::runs_prompt_as_shell`) would run them as commands.
/// The built-in `shell` engine is refused by the store itself
/// (`store::tasks::lineage`); this is the configured engines' check, which
/// needs the configuration. `task` is as the rerun would run it (its
/// changes applied).
fn refuse_words_for_shell_prompt(
    config: &crate::config::Config,
    task: &crate::protocol::TaskRecord,
) -> Result<(), WireError> {
    let (id, engine) = (&task.id, &task.spec.engine);
    match config.engines.get(engine) {
        // The store's refusal says it for `shell`, whatever it is set to.
        _ if engine == "shell" => Ok(()),
        Some(e) if e.runs_prompt_as_shell() => Err(WireError::new(
            ErrorCode::InvalidParams,
            format!(
                "task {id} runs engine '{engine}', which hands its prompt to a shell as code ({}): instructions added to it would run as commands; give it a new prompt instead (`grove relaunch {id} --prompt '...'` once it has ended)",
                e.command.join(" ")
            ),
        )),
        _ => Ok(()),
    }
}

/// A new task as it would run: the default engine filled in, the engine,
/// its binary, the model and the persona validated, its worktree decided.
fn admit_new(
    config: &crate::config::Config,
    root: &std::path::Path,
    new: &mut crate::protocol::NewTask,
    checks: &mut crate::orchestrator::engines::FsChecks,
) -> Result<(), WireError> {
    use crate::orchestrator::engines::{RunSpec, validate_with};
    let engine = new
        .engine
        .get_or_insert_with(|| config.default_engine.clone())
        .clone();
    let spec = RunSpec::of_new(new, &engine);
    validate_with(config, root, &spec, checks)
        .map_err(|e| WireError::new(ErrorCode::InvalidParams, e.to_string()))?;
    decide_worktree(config, root, &engine, &mut new.worktree)
}

/// A task the admission could not read: this write fails, said as it is
/// (and if SQLite rolled the batch back meanwhile, the store thread fails
/// the whole batch, see `store::writer`).
fn unreadable(e: impl std::fmt::Display) -> WireError {
    WireError::new(
        ErrorCode::Internal,
        format!("the store could not read the task: {e}"),
    )
}

/// A task may await its children only if its agent session can be
/// resumed with their results: an ACP engine's (the shim keeps the session
/// open while the await is pending). A missing task is the store's to
/// refuse.
fn awaitable(
    config: &crate::config::Config,
    tx: &rusqlite::Connection,
    parent: &str,
) -> Result<(), WireError> {
    let Some(task) = crate::store::read_task(tx, parent).map_err(unreadable)? else {
        return Ok(());
    };
    let kind = config.engines.get(&task.spec.engine).map(|e| e.kind);
    if kind == Some(crate::config::EngineKind::Acp) {
        return Ok(());
    }
    Err(WireError::new(
        ErrorCode::Conflict,
        format!(
            "task {parent} runs on engine '{}', which is not an acp engine: its agent cannot be resumed with results after its turn; use wait (blocking) instead of await",
            task.spec.engine
        ),
    ))
}

/// Whether a new task gets a worktree (what it asked, else the `worktree`
/// setting for its engine), and if so its base resolved to a commit id
/// now, so that every run and `grove diff` start from the same commit.
fn decide_worktree(
    config: &crate::config::Config,
    root: &std::path::Path,
    engine: &str,
    ask: &mut Option<crate::protocol::WorktreeAsk>,
) -> Result<(), WireError> {
    let wanted = ask.get_or_insert_with(|| crate::protocol::WorktreeAsk {
        enabled: config.worktree.applies_to(engine),
        base: None,
    });
    if !wanted.enabled {
        return Ok(());
    }
    let base = crate::worktree::resolve_base(root, wanted.base.as_deref())
        .map_err(|e| WireError::new(ErrorCode::InvalidParams, e.to_string()))?;
    wanted.base = Some(base);
    Ok(())
}

/// How long a handover waits for the replies and events in flight to go
/// out: they normally take microseconds; a peer that stopped reading must
/// not hold the lock (and so the next primary) back for long.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Why the primary role ended.
pub enum Ended {
    /// Asked to stop (signal, or the front end closed).
    Stopped,
    /// The socket files disappeared: run the election again.
    Rebind,
    /// The lock file or the store was unlinked: join the workspace anew.
    StateGone,
}

/// Where the kernel cannot notify us, how often the primary checks its
/// socket files, state dir and configuration.
const PRIMARY_CHECK: Duration = Duration::from_secs(1);

async fn bind<S: Socket>(socket: &mut S, endpoint: &str) -> Result<(), NodeError> {
    socket
        .bind(endpoint)
        .await
        .map(|_| ())
        .map_err(|e| NodeError::Bind {
            endpoint: endpoint.to_string(),
            message: e.to_string(),
        })
}

/// Removes socket files left by earlier primaries (crashed ones leave them).
fn remove_stale_sockets(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours =
            (name.starts_with("pub-") || name.starts_with("rpc-")) && name.ends_with(".sock");
        if ours && let Err(e) = std::fs::remove_file(entry.path()) {
            tracing::warn!("cannot remove stale socket {name}: {e}");
        }
    }
}

/// The socket dir is 0700 already; make the files private as well.
fn restrict_socket_files(ws: &crate::paths::Workspace, epoch: u64) {
    use std::os::unix::fs::PermissionsExt;
    for p in [ws.rpc_socket(epoch), ws.pub_socket(epoch)] {
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
    }
}
