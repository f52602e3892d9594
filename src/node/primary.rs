//! Running as primary: promotion (in the order docs/design.md, Promotion,
//! gives and explains), the RPC loop on the ROUTER, the publisher on the
//! PUB, and a graceful handover.

use super::state::{self, StateGuard};
use super::watchdog::Watchdog;
use super::{Identity, NodeError, NodeOptions};
use crate::config::LiveConfig;
use crate::election::PrimaryLock;
use crate::primary_record::PrimaryRecord;
use crate::protocol::{
    ErrorCode, Event, EventData, MAX_REQUEST_ID_LEN, Method, PROTOCOL_VERSION, PrimaryInfo, Reply,
    ReplyBody, WireError, decode_request, encode, now_ms, oversized_request_id, request_digest,
};
use crate::store::writer::{self, Job};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

/// What the RPC loop needs to answer requests.
struct Serving {
    bad_frames: LogLimiter,
    full_queue: LogLimiter,
    info: PrimaryInfo,
    ws: crate::paths::Workspace,
    started: Instant,
    last_seq: Arc<AtomicU64>,
    jobs: std::sync::mpsc::Sender<Job>,
    /// Bounded: when a flood outruns the reply path, immediate answers
    /// (errors, pings) are dropped rather than buffered without limit.
    replies: mpsc::Sender<ZmqMessage>,
    /// When the last request arrived (an idle member exits; see `idle.rs`).
    last_request: Arc<AtomicU64>,
}

pub async fn run(
    me: &Identity,
    opts: &NodeOptions,
    live: &Arc<LiveConfig>,
    lock: PrimaryLock,
    shutdown: watch::Receiver<bool>,
) -> Result<Ended, NodeError> {
    // Instrumented, not entered (a guard must not be held across `.await`);
    // the epoch is recorded once the promotion has taken it.
    let span = tracing::info_span!("primary", epoch = tracing::field::Empty);
    promote_and_serve(me, opts, live, lock, shutdown)
        .instrument(span)
        .await
}

async fn promote_and_serve(
    me: &Identity,
    opts: &NodeOptions,
    live: &Arc<LiveConfig>,
    lock: PrimaryLock,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Ended, NodeError> {
    let ws = &opts.ws;
    let promoted_at = Instant::now();
    // The files as they are now, not as they were when this member started.
    let config = live.current();

    // 1. Read-write store, migrations, epoch + 1 (one transaction), above
    //    every epoch this workspace had, even in a deleted `.grove`.
    let floor = state::epoch_mark(ws);
    let promotion = writer::promote(&ws.db_path(), &me.instance_id, me.pid, floor)?;
    let epoch = promotion.epoch;
    let guard = StateGuard::new(ws, &lock);
    tracing::Span::current().record("epoch", epoch);

    // 2. Running tasks are not reconciled here: the orchestrator adopts them
    //    once it starts, after `primary.json` (see docs/design.md, Promotion).

    // 3. Stale sockets of earlier epochs: only the lock holder unlinks them.
    ws.ensure_socket_dir()?;
    state::record_epoch(ws, epoch);
    remove_stale_sockets(&ws.socket_dir);

    // 4. Bind ROUTER and PUB on this epoch's paths.
    let rpc_endpoint = format!("ipc://{}", ws.rpc_socket(epoch).display());
    let pub_endpoint = format!("ipc://{}", ws.pub_socket(epoch).display());
    let mut router = zeromq::RouterSocket::new();
    bind(&mut router, &rpc_endpoint).await?;
    let mut publisher = zeromq::PubSocket::new();
    bind(&mut publisher, &pub_endpoint).await?;
    restrict_socket_files(ws, epoch);

    // 5. primary.json, so that everyone finds us.
    let record = PrimaryRecord {
        instance_id: me.instance_id.clone(),
        pid: me.pid,
        epoch,
        pub_endpoint: pub_endpoint.clone(),
        rpc_endpoint: rpc_endpoint.clone(),
        started_at: me.started_at,
    };
    record
        .write(ws)
        .map_err(NodeError::io("cannot write primary.json"))?;

    // 6. The publisher, fed by the store thread in commit order; its first
    //    event is `instance.promoted`.
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let last_seq = Arc::new(AtomicU64::new(promotion.promoted.seq));
    let _ = events_tx.try_send(promotion.promoted.clone());
    let changed = Arc::new(tokio::sync::Notify::new());
    // The heartbeat ticks the watchdog: every member runs its loop on one
    // thread, so a heartbeat that went out proves the loop is not stuck,
    // and an idle primary needs no timer of its own.
    let watchdog = Watchdog::start(config.watchdog_timeout())
        .map_err(NodeError::io("cannot start the watchdog"))?;
    let publish_task = crate::loop_watch::spawn(
        "publisher",
        publish_loop(
            publisher,
            events_rx,
            Heartbeat {
                every: config.heartbeat(),
                instance_id: me.instance_id.clone(),
                epoch,
                watchdog: watchdog.clone(),
            },
            last_seq.clone(),
            changed.clone(),
        )
        .in_current_span(),
    );
    let retention = writer::Retention {
        events: config.event_retention,
        ledger_ms: config.ledger_retention_hours * 3_600_000,
    };
    let store_guard = guard.clone();
    let still_current = Box::new(move || store_guard.intact());
    let store = writer::spawn(
        promotion,
        &ws.db_path(),
        events_tx.clone(),
        retention,
        still_current,
        admission(live.clone(), ws.root.clone()),
    )
    .map_err(NodeError::io("cannot start the store thread"))?;

    // The orchestrator: adopts running tasks (see docs/design.md,
    // Orchestrator), then keeps the processes in line with the store.
    let orchestrator = crate::orchestrator::Orchestrator::new(
        ws.clone(),
        live.clone(),
        store.jobs.clone(),
        events_tx,
        epoch,
    );
    let orchestrator_task =
        crate::loop_watch::spawn("orchestrator", orchestrator.run(changed).in_current_span());
    tracing::info!(
        pid = me.pid,
        "promoted to primary in {:.1} ms; rpc {rpc_endpoint}",
        promoted_at.elapsed().as_secs_f64() * 1000.0
    );

    let mut reported = live.generation();
    super::report(opts, me, live, "primary");
    let (router_send, mut router_recv) = router.split();
    let (replies_tx, replies_rx) = mpsc::channel(REPLY_QUEUE);
    let reply_task = crate::loop_watch::spawn(
        "replies",
        reply_loop(router_send, replies_rx).in_current_span(),
    );
    let serving = Serving {
        bad_frames: LogLimiter::new(),
        full_queue: LogLimiter::new(),
        ws: ws.clone(),
        info: PrimaryInfo {
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
        },
        started: Instant::now(),
        last_seq,
        jobs: store.jobs.clone(),
        replies: replies_tx,
        last_request: me.last_request.clone(),
    };

    // Watched, not polled, so that an idle primary sleeps: the socket files
    // (deleted: rebind), the lock and the store (`.grove` deleted or
    // replaced: hand over), the config files and our member report.
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
    let ended = loop {
        tokio::select! {
            msg = router_recv.recv() => match msg {
                Ok(msg) => serving.handle(msg),
                Err(e) => tracing::warn!("rpc receive error: {e}"),
            },
            _ = crate::fs_watch::any(&mut watches) => {
                // Someone deleted our socket files (a tmp cleaner, a user):
                // nobody new can reach us. Hand over and rebind under a new
                // epoch rather than serve a bus that cannot be found.
                if !ws.rpc_socket(epoch).exists() || !ws.pub_socket(epoch).exists() {
                    tracing::warn!("the socket files vanished; handing over to rebind them");
                    break Ended::Rebind;
                }
                // `.grove` deleted or replaced: our lock and store are
                // unlinked files nobody else sees. Stop serving them.
                if !guard.intact() {
                    tracing::warn!("the state dir was deleted or replaced; handing over");
                    break Ended::StateGone;
                }
                let generation = live.generation();
                if generation != reported || !ws.member_report(&me.instance_id).exists() {
                    reported = generation;
                    super::report(opts, me, live, "primary");
                }
            }
            _ = shutdown.changed() => break Ended::Stopped,
        }
    };

    // Graceful handover: stop taking requests, finish the queued writes,
    // record and publish `instance.shutdown`, close the sockets, and only
    // then release the lock.
    tracing::info!("handing over");
    drop(router_recv);
    // Running tasks keep running under their shims; the next primary
    // adopts them.
    orchestrator_task.abort();
    let _ = orchestrator_task.await;
    let (done_tx, done_rx) = oneshot::channel();
    let _ = serving.jobs.send(Job::Shutdown {
        instance_id: me.instance_id.clone(),
        done: done_tx,
    });
    let _ = done_rx.await;
    drop(serving);
    let _ = tokio::task::spawn_blocking(move || store.join()).await;
    // Replies in flight are flushed once every sender is gone.
    let _ = tokio::time::timeout(Duration::from_secs(2), reply_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), publish_task).await;
    watchdog.stop();
    let _ = std::fs::remove_file(ws.rpc_socket(epoch));
    let _ = std::fs::remove_file(ws.pub_socket(epoch));
    drop(lock);
    tracing::info!("handed over");
    Ok(ended)
}

/// Why the primary role ended.
pub enum Ended {
    /// Asked to stop (signal, or the front end closed).
    Stopped,
    /// The socket files disappeared: run the election again.
    Rebind,
    /// The lock file or the store was unlinked: join the workspace anew.
    StateGone,
}

impl Serving {
    /// Answers one ROUTER message: `[identity, payload]`, or
    /// `[identity, "", payload]` from a REQ socket. Never fails the loop.
    fn handle(&self, msg: ZmqMessage) {
        let mut frames = msg.into_vec();
        if frames.is_empty() {
            return;
        }
        self.last_request.store(now_ms(), Ordering::Relaxed);
        let identity = frames.remove(0);
        let req_style = frames.len() == 2 && frames[0].is_empty();
        let envelope = if req_style {
            vec![identity, Bytes::new()]
        } else {
            vec![identity]
        };
        let payload = match frames.as_slice() {
            [p] => p.clone(),
            [empty, p] if empty.is_empty() => p.clone(),
            _ => {
                if self.bad_frames.allow() {
                    tracing::warn!(frames = frames.len(), "request of the wrong shape");
                }
                self.send(
                    envelope,
                    self.error(
                        String::new(),
                        ErrorCode::BadRequest,
                        format!(
                            "a request is exactly one frame, got {} frames",
                            frames.len()
                        ),
                    ),
                );
                return;
            }
        };
        let request = match decode_request(&payload) {
            Ok(r) => r,
            Err((mut id, e)) => {
                if e.code() == ErrorCode::TooLarge {
                    // The transport has already buffered the whole frame;
                    // reading its id lets the caller get this answer at once
                    // instead of waiting out its timeout.
                    id = oversized_request_id(&payload);
                }
                if self.bad_frames.allow() {
                    tracing::warn!("refusing a request: {e}");
                }
                self.send(envelope, self.error(id, e.code(), e.to_string()));
                return;
            }
        };
        let id = request.id;
        if request.v != PROTOCOL_VERSION {
            let msg = format!(
                "protocol version {} is not supported (this primary speaks {PROTOCOL_VERSION})",
                request.v
            );
            return self.send(envelope, self.error(id, ErrorCode::UnsupportedVersion, msg));
        }
        if id.is_empty() || id.len() > MAX_REQUEST_ID_LEN {
            let msg = format!("the request id must be 1..={MAX_REQUEST_ID_LEN} bytes");
            return self.send(envelope, self.error(id, ErrorCode::BadRequest, msg));
        }
        if request.epoch_seen > self.info.epoch {
            let msg = format!(
                "this primary has epoch {}, older than the epoch {} you have seen; it is stale",
                self.info.epoch, request.epoch_seen
            );
            return self.send(envelope, self.error(id, ErrorCode::StaleEpoch, msg));
        }
        // Of the request as sent (before the default engine is filled in),
        // so that a retry of the same request matches its ledger row.
        let digest = if request.method.is_local() {
            0
        } else {
            request_digest(&request.method)
        };
        match request.method {
            Method::Ping {} => {
                let mut info = self.info.clone();
                info.uptime_ms = self.started.elapsed().as_millis() as u64;
                info.last_seq = self.last_seq.load(Ordering::Relaxed);
                info.longest_poll_us = crate::loop_watch::longest_poll().as_micros() as u64;
                (info.commits, info.writes_committed) = writer::commit_counts();
                self.send(
                    envelope,
                    Reply::ok(id, self.info.epoch, ReplyBody::Pong(info)),
                );
            }
            #[cfg(feature = "test-hooks")]
            Method::DebugStall { ms } => {
                crate::test_hooks::stall(ms);
                self.send(envelope, Reply::ok(id, self.info.epoch, ReplyBody::Done {}));
            }
            method => self.write(envelope, id, request.from, method, digest),
        }
    }

    /// Queues a write on the store thread; the reply goes out after COMMIT.
    fn write(&self, envelope: Vec<Bytes>, id: String, from: String, method: Method, digest: u64) {
        // Purge removes the task's files once its row is gone.
        let purged = match &method {
            Method::TaskPurge { id } => Some(id.clone()),
            _ => None,
        };
        let (tx, rx) = oneshot::channel();
        let job = Job::Write {
            request_id: id.clone(),
            from,
            method,
            digest,
            reply: tx,
        };
        if self.jobs.send(job).is_err() {
            let msg = "the primary is shutting down; retry with the same id";
            return self.send(envelope, self.error(id, ErrorCode::Unavailable, msg));
        }
        let epoch = self.info.epoch;
        let replies = self.replies.clone();
        let ws = self.ws.clone();
        crate::loop_watch::spawn("write reply", async move {
            let result = rx.await;
            if let (Some(task), Ok(Ok(_))) = (&purged, &result) {
                crate::runs::RunFiles::remove_all(&ws, task);
            }
            let reply = match result {
                Ok(Ok(body)) => Reply::ok(id, epoch, body),
                Ok(Err(e)) => Reply::err(id, epoch, e),
                Err(_) => Reply::err(
                    id,
                    epoch,
                    WireError::new(ErrorCode::Unavailable, "the store stopped; retry"),
                ),
            };
            // A write's answer waits for room: it reports a commit.
            let _ = replies.send(frame(envelope, encode(&reply))).await;
        });
    }

    fn error(&self, id: String, code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply::err(id, self.info.epoch, WireError::new(code, message))
    }

    fn send(&self, envelope: Vec<Bytes>, reply: Reply) {
        if self
            .replies
            .try_send(frame(envelope, encode(&reply)))
            .is_err()
            && self.full_queue.allow()
        {
            tracing::warn!("reply queue full: dropping an immediate answer");
        }
    }
}

/// Checks a new `task.create` before the store applies it: the default
/// engine filled in, the engine, its binary, the model and the persona
/// validated. Runs on the store thread (see `writer::Admission`).
fn admission(live: Arc<LiveConfig>, root: std::path::PathBuf) -> writer::Admission {
    Box::new(move |method| {
        let Method::TaskCreate(new) = method else {
            return Ok(());
        };
        let config = live.current();
        let engine = new
            .engine
            .get_or_insert_with(|| config.default_engine.clone())
            .clone();
        let spec = crate::orchestrator::engines::RunSpec::of_new(new, &engine);
        crate::orchestrator::engines::validate(&config, &root, &spec)
            .map_err(|msg| WireError::new(ErrorCode::InvalidParams, msg))
    })
}

fn frame(mut envelope: Vec<Bytes>, payload: Vec<u8>) -> ZmqMessage {
    envelope.push(Bytes::from(payload));
    ZmqMessage::try_from(envelope).expect("a reply has at least two frames")
}

/// How long one reply may wait for room in its peer's queue. The transport
/// queues up to 100,000 messages per peer and then blocks the sender: a
/// client that never reads must not stall the answers to everyone else.
/// Replies waiting for the reply task.
const REPLY_QUEUE: usize = 4096;
const REPLY_SEND_TIMEOUT: Duration = Duration::from_millis(20);
/// A peer whose queue was full gets its replies dropped for this long.
const STALLED_PEER_PENALTY: Duration = Duration::from_secs(1);

async fn reply_loop(mut router: zeromq::RouterSendHalf, mut rx: mpsc::Receiver<ZmqMessage>) {
    let mut stalled: std::collections::HashMap<Bytes, Instant> = Default::default();
    let mut dropped = 0u64;
    while let Some(msg) = rx.recv().await {
        let peer = msg.get(0).cloned().unwrap_or_default();
        if let Some(until) = stalled.get(&peer) {
            if Instant::now() < *until {
                dropped += 1;
                continue;
            }
            stalled.remove(&peer);
            if dropped > 0 {
                tracing::warn!("dropped {dropped} replies to a client that does not read them");
                dropped = 0;
            }
        }
        match tokio::time::timeout(REPLY_SEND_TIMEOUT, router.send(msg)).await {
            Ok(Ok(())) => {}
            // The client left before its answer: it will retry elsewhere.
            Ok(Err(e)) => tracing::debug!("cannot deliver a reply: {e}"),
            Err(_) => {
                tracing::warn!("a client does not read its replies; dropping them for a while");
                stalled.insert(peer, Instant::now() + STALLED_PEER_PENALTY);
            }
        }
    }
}

/// Rate-limits warnings about bad frames: a flood of garbage must not turn
/// into a flood of log lines.
struct LogLimiter {
    window: std::cell::Cell<Instant>,
    count: std::cell::Cell<u64>,
}

impl LogLimiter {
    const PER_SECOND: u64 = 10;

    fn new() -> Self {
        LogLimiter {
            window: std::cell::Cell::new(Instant::now()),
            count: std::cell::Cell::new(0),
        }
    }

    /// True when this event may be logged; reports what was suppressed.
    fn allow(&self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window.get()) >= Duration::from_secs(1) {
            let suppressed = self.count.get().saturating_sub(Self::PER_SECOND);
            if suppressed > 0 {
                tracing::warn!("{suppressed} more bad requests in the last second (not logged)");
            }
            self.window.set(now);
            self.count.set(0);
        }
        self.count.set(self.count.get() + 1);
        self.count.get() <= Self::PER_SECOND
    }
}

/// Events on their way from the store thread (and the orchestrator's output
/// tail) to the PUB socket. Bounded like every queue: the store thread waits
/// for room (it never drops a durable event before publishing it), the
/// orchestrator drops output chunks when it is full (the log file is the
/// durable output). The publisher only hands each event to the socket,
/// whose per-subscriber queues drop at their own bound, so this queue is
/// normally near empty.
const EVENT_QUEUE: usize = 4096;

/// What the publisher needs for its heartbeats.
struct Heartbeat {
    every: Duration,
    instance_id: String,
    epoch: u64,
    watchdog: Watchdog,
}

/// Publishes committed events in order, plus heartbeats.
async fn publish_loop(
    mut publisher: zeromq::PubSocket,
    mut events: mpsc::Receiver<Event>,
    heartbeat: Heartbeat,
    last_seq: Arc<AtomicU64>,
    changed: Arc<tokio::sync::Notify>,
) {
    let started = Instant::now();
    let mut last_trim = Instant::now();
    let mut beat = crate::ticker::Ticker::new(heartbeat.every);
    loop {
        let event = tokio::select! {
            e = events.recv() => match e {
                Some(e) => e,
                None => break,
            },
            _ = beat.tick() => {
                release_freed_memory(&mut last_trim);
                heartbeat.watchdog.tick();
                Event {
                    seq: 0,
                    epoch: heartbeat.epoch,
                    at: now_ms(),
                    data: EventData::Heartbeat {
                        instance_id: heartbeat.instance_id.clone(),
                        last_seq: last_seq.load(Ordering::Relaxed),
                        uptime_ms: started.elapsed().as_millis() as u64,
                    },
                }
            }
        };
        if event.seq > 0 {
            last_seq.store(event.seq, Ordering::Relaxed);
            // Wake the orchestrator only for what it acts on; a pending task
            // or a joining member needs no process work.
            let relevant = match &event.data {
                EventData::TaskCreated { task } => {
                    task.status == crate::protocol::TaskStatus::Queued
                }
                EventData::TaskUpdated { .. } | EventData::TaskDeleted { .. } => true,
                _ => false,
            };
            if relevant {
                changed.notify_one();
            }
        }
        let mut msg = ZmqMessage::from(event.topic());
        msg.push_back(Bytes::from(encode(&event)));
        if let Err(e) = publisher.send(msg).await {
            tracing::debug!("publish failed: {e}");
        }
    }
}

/// Where the kernel cannot notify us, how often the primary checks its
/// socket files, state dir and configuration.
const PRIMARY_CHECK: Duration = Duration::from_secs(1);

/// How often an idle-or-not primary hands freed heap back to the kernel.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Returns freed heap pages to the kernel. glibc keeps what a burst of
/// messages (a stopped subscriber's full queue, a big cascade) freed, so
/// without this the primary stays at its high-water mark for good.
fn release_freed_memory(last: &mut Instant) {
    if last.elapsed() < TRIM_EVERY {
        return;
    }
    *last = Instant::now();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

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
