//! The primary's RPC path: each request on the ROUTER answered at once
//! (ping, refusals) or queued on the store thread and answered after
//! COMMIT; the reply task that sends the answers without letting a peer
//! that never reads stall the others.

use crate::protocol::{
    ErrorCode, MAX_REQUEST_ID_LEN, Method, PROTOCOL_VERSION, PrimaryInfo, Reply, ReplyBody,
    Request, WireError, decode_request, encode, encode_reply_from, now_ms, oversized_request_id,
    request_digest,
};
use crate::store::writer::{self, Answer, DirectReply, Job, ReplyTo};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use zeromq::{SocketSend, ZmqMessage};

/// What the RPC loop needs to answer requests.
pub(super) struct Serving {
    pub(super) bad_frames: LogLimiter,
    pub(super) full_queue: LogLimiter,
    /// When the budget's warning was last logged (once a minute at most).
    pub(super) budget_warned: std::cell::Cell<Option<Instant>>,
    pub(super) info: PrimaryInfo,
    pub(super) ws: crate::paths::Workspace,
    pub(super) started: Instant,
    pub(super) last_seq: Arc<AtomicU64>,
    pub(super) jobs: std::sync::mpsc::Sender<Job>,
    /// Bounded: when a flood outruns the reply path, immediate answers
    /// (errors, pings) are dropped rather than buffered without limit.
    pub(super) replies: mpsc::Sender<Outgoing>,
    /// When the last request arrived (an idle member exits; see `idle.rs`).
    pub(super) last_request: Arc<AtomicU64>,
    /// Bytes of requests taken off the ROUTER whose writes are not yet
    /// answered may not pass [`WRITE_BUDGET`] (see [`Serving::room_for`]).
    pub(super) budget: Arc<tokio::sync::Semaphore>,
    /// Each peer's part of the budget (see [`PEER_SHARE`]).
    pub(super) peers: PeerShares,
}

/// The most request bytes, with [`JOB_OVERHEAD`] each, the primary holds
/// for writes that the store thread has not answered yet. A client that
/// pipelines writes without reading the replies (a runaway script, a
/// hostile peer) held them all in memory: 200,000 4 kB `task.create`s from
/// one socket took the primary to 1 GB of RSS. Past this budget the event
/// loop stops taking requests until answers free room, so the flood waits
/// in the kernel's socket buffer and the sender's queue instead, and every
/// write still gets applied. Far above what 16 busy windows keep in flight.
pub(super) const WRITE_BUDGET: usize = 32 << 20;
/// What a queued write costs beyond its frame: the decoded method, the
/// job, its envelope and reply path.
const JOB_OVERHEAD: usize = 512;
/// The least a request costs of the budget, so that at most 4,096 writes
/// wait for the store: tiny writes at 512 bytes each let one pipelining
/// client put ~55,000 of them ahead of everyone else's next write (a CLI
/// write went from 10 ms to over a second while they drained).
const LEAST_COST: usize = WRITE_BUDGET / 4096;
/// The most of [`WRITE_BUDGET`] one peer's unanswered writes hold before
/// the event loop stops taking that peer's requests (they wait in its
/// connection; the other peers are served). Without it one client
/// pipelining writes filled the whole budget: up to 4,096 of its writes
/// went ahead of another window's next one, and pings waited meanwhile.
/// A quarter: one flooding client leaves three quarters to everyone else,
/// and still keeps 1,024 writes and more in flight.
const PEER_SHARE: usize = WRITE_BUDGET / 4;
/// A paused peer is taken again once its unanswered writes are down to
/// this (half its share: not paused and resumed at every answer).
const PEER_RESUME: usize = PEER_SHARE / 2;
/// A flood that keeps the budget full is told once a minute, not per write.
const BUDGET_WARN_EVERY: Duration = Duration::from_secs(60);

impl Serving {
    /// Answers one ROUTER message: `[identity, payload]`, or
    /// `[identity, "", payload]` from a REQ socket. Never fails the loop.
    /// Waits until the write budget has room for `msg`: the permit is held
    /// until its answer is handed to the reply task (`write`), or dropped at
    /// once for a request answered on the loop. Ends early, with `None`,
    /// when `stop` does.
    pub(super) async fn room_for(
        &self,
        msg: &ZmqMessage,
        stop: impl std::future::Future<Output = ()>,
    ) -> Option<Room> {
        let bytes: usize = msg.iter().map(|f| f.len()).sum();
        let cost = (bytes + JOB_OVERHEAD).clamp(LEAST_COST, WRITE_BUDGET);
        let identity = msg.get(0).cloned().unwrap_or_default();
        let permit = self.permit(cost as u32, stop).await?;
        Some(self.peers.hold(identity, cost, permit))
    }

    async fn permit(
        &self,
        cost: u32,
        stop: impl std::future::Future<Output = ()>,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(permit) = self.budget.clone().try_acquire_many_owned(cost) {
            return Some(permit);
        }
        if self
            .budget_warned
            .get()
            .is_none_or(|at| at.elapsed() >= BUDGET_WARN_EVERY)
        {
            self.budget_warned.set(Some(Instant::now()));
            tracing::warn!(
                "{} MiB of writes wait for the store; taking no more requests until they are answered",
                WRITE_BUDGET >> 20
            );
        }
        tokio::select! {
            permit = self.budget.clone().acquire_many_owned(cost) => permit.ok(),
            _ = stop => None,
        }
    }

    pub(super) fn handle(&self, msg: ZmqMessage, permit: Room) {
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
        let request = match self.admit(&frames) {
            Ok(request) => request,
            Err(refusal) => return self.send(envelope, *refusal),
        };
        let id = request.id;
        // Of the request as sent (before the default engine is filled in),
        // so that a retry of the same request matches its ledger row.
        let digest = if request.method.is_local() {
            0
        } else {
            request_digest(&request.method)
        };
        match request.method {
            Method::Ping {} => {
                let pong = ReplyBody::Pong(self.pong());
                self.send(envelope, Reply::ok(id, self.info.epoch, pong));
            }
            #[cfg(feature = "test-hooks")]
            Method::DebugStall { ms } => {
                crate::test_hooks::stall(ms);
                self.send(envelope, Reply::ok(id, self.info.epoch, ReplyBody::Done {}));
            }
            method => self.write(envelope, id, (request.from, method, digest), permit),
        }
    }

    /// The request in `frames` (after the identity), decoded and checked in
    /// the contract's order; a refusal is the reply to send instead.
    fn admit(&self, frames: &[Bytes]) -> Result<Request, Box<Reply>> {
        let payload = match frames {
            [p] => p,
            [empty, p] if empty.is_empty() => p,
            _ => {
                if self.bad_frames.allow() {
                    tracing::warn!(frames = frames.len(), "request of the wrong shape");
                }
                let msg = format!(
                    "a request is exactly one frame, got {} frames",
                    frames.len()
                );
                return Err(Box::new(self.error(
                    String::new(),
                    ErrorCode::BadRequest,
                    msg,
                )));
            }
        };
        let request = match decode_request(payload) {
            Ok(r) => r,
            Err((mut id, e)) => {
                if e.code() == ErrorCode::TooLarge {
                    // The transport has already buffered the whole frame;
                    // reading its id lets the caller get this answer at once
                    // instead of waiting out its timeout.
                    id = oversized_request_id(payload);
                }
                if self.bad_frames.allow() {
                    tracing::warn!("refusing a request: {e}");
                }
                return Err(Box::new(self.error(id, e.code(), e.to_string())));
            }
        };
        let id = &request.id;
        if request.v != PROTOCOL_VERSION {
            let msg = format!(
                "protocol version {} is not supported (this primary speaks {PROTOCOL_VERSION})",
                request.v
            );
            return Err(Box::new(self.error(
                id.clone(),
                ErrorCode::UnsupportedVersion,
                msg,
            )));
        }
        if id.is_empty() || id.len() > MAX_REQUEST_ID_LEN {
            let msg = format!("the request id must be 1..={MAX_REQUEST_ID_LEN} bytes");
            return Err(Box::new(self.error(id.clone(), ErrorCode::BadRequest, msg)));
        }
        if request.epoch_seen > self.info.epoch {
            let msg = format!(
                "this primary has epoch {}, older than the epoch {} you have seen; it is stale",
                self.info.epoch, request.epoch_seen
            );
            return Err(Box::new(self.error(id.clone(), ErrorCode::StaleEpoch, msg)));
        }
        Ok(request)
    }

    /// Who we are, with the live counters.
    fn pong(&self) -> PrimaryInfo {
        let mut info = self.info.clone();
        info.uptime_ms = self.started.elapsed().as_millis() as u64;
        info.last_seq = self.last_seq.load(Ordering::Relaxed);
        info.longest_poll_us = crate::loop_watch::longest_poll().as_micros() as u64;
        let counts = writer::commit_counts();
        (info.commits, info.writes_committed) = (counts.commits, counts.writes);
        info.wal_pages = counts.wal_pages;
        info.wal_syncs = counts.wal_syncs;
        info
    }

    /// Queues a write on the store thread; the reply goes out after COMMIT.
    /// The store thread hands the answer to the reply task itself: a write
    /// costs the event loop no task of its own (see docs/design.md, Serving as primary).
    /// `permit` is the write's share of the budget, given back with its
    /// answer.
    fn write(
        &self,
        envelope: Vec<Bytes>,
        id: String,
        (from, method, digest): (String, Method, u64),
        permit: Room,
    ) {
        let reply = match &method {
            // Purge removes the task's files once its row is gone.
            Method::TaskPurge { id: task } => {
                self.after_purge(task.clone(), envelope, id.clone(), permit)
            }
            _ => {
                let (replies, id) = (self.replies.clone(), id.clone());
                ReplyTo::Direct(DirectReply::new(move |answer| {
                    let _permit = permit;
                    let answer = Outgoing::Answer {
                        envelope,
                        id,
                        answer,
                    };
                    if tokio::runtime::Handle::try_current().is_ok() {
                        // Dropped unanswered on the event loop (the store
                        // had stopped): it must not block there.
                        let _ = replies.try_send(answer);
                    } else {
                        // The store thread waits while the reply queue is
                        // full: the reply task drains it on its own (a peer
                        // that does not read is given up on after
                        // `REPLY_SEND_TIMEOUT`), and the answer reports a
                        // commit, so it is not dropped.
                        let _ = replies.blocking_send(answer);
                    }
                }))
            }
        };
        let job = Job::Write {
            request_id: id.clone(),
            from,
            method,
            digest,
            reply,
        };
        // A job the stopped store thread refuses is dropped here, which
        // answers its caller "unavailable" (see `DirectReply`).
        let _ = self.jobs.send(job);
    }

    /// The answer to a purge, sent once the purged task's files are gone.
    fn after_purge(&self, task: String, envelope: Vec<Bytes>, id: String, permit: Room) -> ReplyTo {
        let (tx, rx) = oneshot::channel();
        let replies = self.replies.clone();
        let ws = self.ws.clone();
        crate::loop_watch::spawn("purge reply", async move {
            let _permit = permit;
            let result = rx.await.unwrap_or_else(|_| {
                Err(WireError::new(
                    ErrorCode::Unavailable,
                    "the store stopped; retry",
                ))
            });
            if result.is_ok() {
                crate::runs::RunFiles::remove_all(&ws, &task);
            }
            let _ = replies
                .send(Outgoing::Answer {
                    envelope,
                    id,
                    answer: Answer::Value(result),
                })
                .await;
        });
        ReplyTo::Waiter(tx)
    }

    fn error(&self, id: String, code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply::err(id, self.info.epoch, WireError::new(code, message))
    }

    fn send(&self, envelope: Vec<Bytes>, reply: Reply) {
        if self
            .replies
            .try_send(Outgoing::Ready {
                envelope,
                payload: encode(&reply),
            })
            .is_err()
            && self.full_queue.allow()
        {
            tracing::warn!("reply queue full: dropping an immediate answer");
        }
    }
}

/// What the reply task sends: an answer encoded already, or a write's
/// result as the store thread handed it over (encoded by the reply task,
/// off the store thread).
pub(super) enum Outgoing {
    Ready {
        envelope: Vec<Bytes>,
        payload: Vec<u8>,
    },
    Answer {
        envelope: Vec<Bytes>,
        id: String,
        answer: Answer,
    },
}

/// A write's reply: written around the result the ledger encoded, or
/// encoded whole.
fn encode_answer(id: String, epoch: u64, answer: Answer) -> Vec<u8> {
    let result = match answer {
        Answer::Encoded(bytes) => match encode_reply_from(&id, epoch, &bytes) {
            Some(reply) => return reply,
            None => crate::protocol::decode::<writer::WriteResult>(&bytes).unwrap_or_else(|e| {
                let msg = format!("recorded reply unreadable: {e}");
                Err(WireError::new(ErrorCode::Internal, msg))
            }),
        },
        Answer::Value(result) => result,
    };
    let reply = match result {
        Ok(body) => Reply::ok(id, epoch, body),
        Err(e) => Reply::err(id, epoch, e),
    };
    encode(&reply)
}

/// Replies waiting for the reply task.
pub(super) const REPLY_QUEUE: usize = 4096;
/// How long one reply may wait for room in its peer's queue. The transport
/// queues up to 1,000 messages per peer and then blocks the sender: a
/// client that never reads must not stall the answers to everyone else.
const REPLY_SEND_TIMEOUT: Duration = Duration::from_millis(20);
/// A peer whose queue was full gets its replies dropped for this long.
const STALLED_PEER_PENALTY: Duration = Duration::from_secs(1);

pub(super) async fn reply_loop(
    mut router: zeromq::RouterSendHalf,
    mut rx: mpsc::Receiver<Outgoing>,
    epoch: u64,
) {
    let mut peers = Peers::default();
    while let Some(out) = rx.recv().await {
        let (envelope, payload) = match out {
            Outgoing::Ready { envelope, payload } => (envelope, payload),
            Outgoing::Answer {
                envelope,
                id,
                answer,
            } => (envelope, encode_answer(id, epoch, answer)),
        };
        peers.send(&mut router, envelope, payload).await;
    }
}

/// Reply bytes the transport may hold for one peer, not yet written to
/// its socket. Its queue is bounded at 1,000 messages, but a
/// `task.create`'s answer carries the prompt: four clients that pipelined
/// 1,000 replays of a 100 KiB create each and read nothing grew the
/// primary by 394 MiB. A reply past this is dropped as one to a stalled
/// peer is (the client resends with the same id and gets it from the
/// ledger).
const PEER_REPLY_BYTES: usize = 4 << 20;
/// The same for all peers together: many connections that do not read
/// would otherwise hold 4 MiB each. Past it a reply is dropped the same
/// way, but only to a peer that holds unread replies itself: a client
/// that reads its answers is never cut off by others that do not.
const ALL_REPLY_BYTES: usize = 64 << 20;

/// What the reply task knows of each peer: whether it stalled (then its
/// replies are dropped for a while instead of stalling everyone else's)
/// and how many reply bytes the transport holds for it.
#[derive(Default)]
struct Peers {
    stalled: std::collections::HashMap<Bytes, Instant>,
    dropped: u64,
    /// Bytes of replies in each peer's transport queue (see [`Queued`]).
    queued: std::collections::HashMap<Bytes, Arc<AtomicUsize>>,
    /// `queued` and `stalled` are swept of drained peers and expired
    /// penalties when together they grow past this.
    sweep_at: usize,
    /// Every peer's reply bytes together.
    all: Arc<AtomicUsize>,
}

/// A reply's payload while the transport holds it: counted in its peer's
/// [`Peers::queued`] until the transport drops it, written or not.
struct Queued {
    bytes: Vec<u8>,
    peer: Arc<AtomicUsize>,
    all: Arc<AtomicUsize>,
}

impl AsRef<[u8]> for Queued {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.peer.fetch_sub(self.bytes.len(), Ordering::Relaxed);
        self.all.fetch_sub(self.bytes.len(), Ordering::Relaxed);
    }
}

impl Peers {
    /// The reply framed, its payload counted against its peer's reply
    /// bytes and everyone's; `None` when the peer holds unread replies and
    /// it or everyone holds too many already.
    fn account(
        &mut self,
        peer: &Bytes,
        mut envelope: Vec<Bytes>,
        payload: Vec<u8>,
    ) -> Option<ZmqMessage> {
        if self.queued.len() + self.stalled.len() > self.sweep_at {
            // Identities are per connection: without a sweep, every client
            // that ever connected would keep an entry.
            let now = Instant::now();
            self.queued.retain(|_, n| n.load(Ordering::Relaxed) > 0);
            self.stalled.retain(|_, until| *until > now);
            self.sweep_at = (2 * (self.queued.len() + self.stalled.len())).max(1024);
        }
        let counter = match self.queued.get(peer) {
            Some(counter) => counter.clone(),
            None => self.queued.entry(peer.clone()).or_default().clone(),
        };
        let (held, all) = (
            counter.load(Ordering::Relaxed),
            self.all.load(Ordering::Relaxed),
        );
        let over = |more: usize, most: usize| held > 0 && more + payload.len() > most;
        if over(held, PEER_REPLY_BYTES) || over(all, ALL_REPLY_BYTES) {
            return None;
        }
        counter.fetch_add(payload.len(), Ordering::Relaxed);
        self.all.fetch_add(payload.len(), Ordering::Relaxed);
        envelope.push(Bytes::from_owner(Queued {
            bytes: payload,
            peer: counter,
            all: self.all.clone(),
        }));
        ZmqMessage::try_from(envelope).ok()
    }

    async fn send(
        &mut self,
        router: &mut zeromq::RouterSendHalf,
        envelope: Vec<Bytes>,
        payload: Vec<u8>,
    ) {
        let peer = envelope.first().cloned().unwrap_or_default();
        if let Some(until) = self.stalled.get(&peer) {
            if Instant::now() < *until {
                self.dropped += 1;
                return;
            }
            self.stalled.remove(&peer);
            if self.dropped > 0 {
                let dropped = self.dropped;
                tracing::warn!("dropped {dropped} replies to a client that does not read them");
                self.dropped = 0;
            }
        }
        let Some(msg) = self.account(&peer, envelope, payload) else {
            tracing::warn!("a client does not read its replies; dropping them for a while");
            self.stalled
                .insert(peer, Instant::now() + STALLED_PEER_PENALTY);
            self.dropped += 1;
            return;
        };
        match tokio::time::timeout(REPLY_SEND_TIMEOUT, router.send(msg)).await {
            Ok(Ok(())) => {}
            // The client left before its answer: it will retry elsewhere.
            Ok(Err(e)) => tracing::debug!("cannot deliver a reply: {e}"),
            Err(_) => {
                tracing::warn!("a client does not read its replies; dropping them for a while");
                self.stalled
                    .insert(peer, Instant::now() + STALLED_PEER_PENALTY);
            }
        }
    }
}

/// Rate-limits warnings about bad frames: a flood of garbage must not turn
/// into a flood of log lines.
pub(super) struct LogLimiter {
    window: std::cell::Cell<Instant>,
    count: std::cell::Cell<u64>,
}

impl LogLimiter {
    const PER_SECOND: u64 = 10;
    /// The window `PER_SECOND` counts in.
    const WINDOW: Duration = Duration::from_secs(1);

    pub(super) fn new() -> Self {
        LogLimiter {
            window: std::cell::Cell::new(Instant::now()),
            count: std::cell::Cell::new(0),
        }
    }

    /// True when this event may be logged; reports what was suppressed.
    fn allow(&self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window.get()) >= Self::WINDOW {
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

/// Each peer's unanswered writes, in bytes of the budget, and the gate
/// that stops taking a peer's requests past [`PEER_SHARE`]. Only the event
/// loop adds; a [`Room`] gives back wherever its answer is handed over
/// (the store thread, mostly).
pub(super) struct PeerShares {
    gate: zeromq::PeerGate,
    shares: std::cell::RefCell<std::collections::HashMap<Bytes, Arc<PeerShare>>>,
    /// The map is swept of idle peers when it grows to this.
    sweep_at: std::cell::Cell<usize>,
    /// When a pause was last logged (once a minute at most).
    warned: std::cell::Cell<Option<Instant>>,
}

#[derive(Default)]
struct PeerShare {
    bytes: AtomicUsize,
    paused: std::sync::atomic::AtomicBool,
}

/// The map of peers is swept of those with nothing unanswered when it
/// holds this many (and then twice as many as it kept).
const PEERS_SWEPT_AT: usize = 1024;

impl PeerShares {
    pub(super) fn new(gate: zeromq::PeerGate) -> Self {
        PeerShares {
            gate,
            shares: Default::default(),
            sweep_at: std::cell::Cell::new(PEERS_SWEPT_AT),
            warned: Default::default(),
        }
    }

    /// Counts `cost` to `identity`'s share, pausing the peer when that
    /// passes [`PEER_SHARE`]; the returned [`Room`] gives both back.
    fn hold(
        &self,
        identity: Bytes,
        cost: usize,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Room {
        let share = self.share_of(&identity);
        let held = share.bytes.fetch_add(cost, Ordering::AcqRel) + cost;
        if held > PEER_SHARE && !share.paused.load(Ordering::Acquire) {
            // Paused first, then flagged: an answer that sees the flag
            // finds the gate closed, and resumes it (see `Room::drop`).
            self.gate.pause(&identity);
            share.paused.store(true, Ordering::Release);
            if (self.warned.get()).is_none_or(|at| at.elapsed() >= BUDGET_WARN_EVERY) {
                self.warned.set(Some(Instant::now()));
                tracing::warn!(
                    "{} MiB of one client's writes wait for the store; taking no more of its requests until they are answered",
                    PEER_SHARE >> 20
                );
            }
            // The answers may have drained it meanwhile, before the flag.
            if share.bytes.load(Ordering::Acquire) <= PEER_RESUME
                && share.paused.swap(false, Ordering::AcqRel)
            {
                self.gate.resume(&identity);
            }
        }
        Room {
            _permit: permit,
            share,
            cost,
            identity,
            gate: self.gate.clone(),
        }
    }

    fn share_of(&self, identity: &Bytes) -> Arc<PeerShare> {
        let mut shares = self.shares.borrow_mut();
        if let Some(share) = shares.get(identity) {
            return share.clone();
        }
        if shares.len() >= self.sweep_at.get() {
            // A peer with no unanswered write has no `Room` holding it.
            shares.retain(|_, s| Arc::strong_count(s) > 1);
            self.sweep_at.set((shares.len() * 2).max(PEERS_SWEPT_AT));
        }
        let share = Arc::new(PeerShare::default());
        shares.insert(identity.clone(), share.clone());
        share
    }
}

/// A request's hold on the write budget and on its peer's share of it,
/// given back when dropped: with the answer handed to the reply task, or
/// at once for a request answered on the loop.
pub(super) struct Room {
    _permit: tokio::sync::OwnedSemaphorePermit,
    share: Arc<PeerShare>,
    cost: usize,
    identity: Bytes,
    gate: zeromq::PeerGate,
}

impl Drop for Room {
    fn drop(&mut self) {
        let left = self.share.bytes.fetch_sub(self.cost, Ordering::AcqRel) - self.cost;
        if left <= PEER_RESUME && self.share.paused.swap(false, Ordering::AcqRel) {
            self.gate.resume(&self.identity);
        }
    }
}
