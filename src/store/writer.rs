//! The primary's store thread: the only writer (see docs/design.md, Store).
//!
//! Requests queue on a channel. The thread takes whatever is queued (up to
//! [`MAX_BATCH`]) and group-commits it: one `BEGIN IMMEDIATE`, a savepoint per
//! write so that one failing write does not abort its neighbours, one
//! `COMMIT`. Only after the commit are the callers answered and the events
//! handed to the publisher, in `seq` order (answers first, see `hand_out`).
//!
//! Each write records `request id → reply` in the ledger inside its own
//! savepoint, so a retried request (same id, to this or a later primary) gets
//! the recorded reply and is never applied twice.

use super::StoreError;
use crate::protocol::{
    ErrorCode, Event, EventData, MemberInfo, Method, ReplyBody, Route, WireError, encode, now_ms,
};
use rusqlite::{Connection, OptionalExtension, params};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use tokio::sync::oneshot;

/// Most writes committed in one transaction.
pub const MAX_BATCH: usize = 512;

/// Commits made by this process's store thread, the client writes they
/// carried and the pages they wrote to the WAL (reported by `ping`, so
/// `grove bench` can show batch sizes and what a write costs in pages).
static COMMITS: AtomicU64 = AtomicU64::new(0);
static WRITES_COMMITTED: AtomicU64 = AtomicU64::new(0);
pub(super) static WAL_PAGES: AtomicU64 = AtomicU64::new(0);

/// What this process's store thread has committed so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommitCounts {
    pub commits: u64,
    pub writes: u64,
    /// Pages (WAL frames) the commits appended to the WAL.
    pub wal_pages: u64,
    /// Syncs of the WAL made for the run ends those commits recorded.
    pub wal_syncs: u64,
}

pub fn commit_counts() -> CommitCounts {
    CommitCounts {
        commits: COMMITS.load(Ordering::Relaxed),
        writes: WRITES_COMMITTED.load(Ordering::Relaxed),
        wal_pages: WAL_PAGES.load(Ordering::Relaxed),
        wal_syncs: super::wal_sync::syncs(),
    }
}

pub use super::txn::WriteResult;
use super::txn::{Applied, Immediate, Savepoint, append_event, refused};
pub use super::upkeep::Retention;
use super::upkeep::{Checkpoints, PRUNE_EVERY, prune_history};
use super::wal_sync::WalSync;

// Jobs are moved once through a channel; boxing the big variant buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Job {
    Write {
        request_id: String,
        from: String,
        method: Method,
        /// `protocol::request_digest` of the method as the client sent it.
        digest: u64,
        reply: ReplyTo,
    },
    /// An orchestrator operation: applied without the ledger.
    Internal {
        op: super::tasks::InternalOp,
        reply: ReplyTo,
    },
    /// The promotion of `epoch` serves: its measured takeover is recorded
    /// (see `promotions`).
    Served { epoch: u64, takeover_us: u64 },
    /// Records `instance.shutdown`, then the thread exits.
    Shutdown {
        instance_id: String,
        done: oneshot::Sender<()>,
    },
}

impl Job {
    /// Records how a run ended (its shim's exit record or report): the
    /// WAL is synced after its commit (see docs/design.md, Durable run ends).
    fn ends_a_run(&self) -> bool {
        matches!(
            self,
            Job::Write {
                method: Method::TaskFinished(_),
                ..
            }
        )
    }
}

/// Where a write's answer goes once its batch has committed.
pub enum ReplyTo {
    /// A task awaiting it (the orchestrator, tests).
    Waiter(oneshot::Sender<WriteResult>),
    /// Handed by the store thread straight to the caller's reply path: no
    /// task is spawned or woken per write (see docs/design.md, Serving as primary).
    Direct(DirectReply),
}

impl ReplyTo {
    /// `encoded` is `result` as the ledger recorded it, when it was.
    fn answer(self, result: WriteResult, encoded: Option<Vec<u8>>) {
        match self {
            ReplyTo::Waiter(tx) => {
                let _ = tx.send(result);
            }
            ReplyTo::Direct(d) => d.answer(match encoded {
                Some(bytes) => Answer::Encoded(bytes),
                None => Answer::Value(result),
            }),
        }
    }
}

/// A write's result as handed to a [`DirectReply`]: encoded already when
/// the ledger recorded it (the reply is written around those bytes instead
/// of encoding the result again; see `protocol::encode_reply_from`).
pub enum Answer {
    Value(WriteResult),
    /// `encode(&result)`.
    Encoded(Vec<u8>),
}

/// An answer to deliver, exactly once: one dropped unanswered (the store
/// thread stopped with the write queued) answers "unavailable", as a
/// waiter would learn from its closed channel, so the caller retries at
/// once instead of waiting out its timeout.
pub struct DirectReply(Option<Box<dyn FnOnce(Answer) + Send>>);

impl DirectReply {
    pub fn new(deliver: impl FnOnce(Answer) + Send + 'static) -> Self {
        DirectReply(Some(Box::new(deliver)))
    }

    fn answer(mut self, answer: Answer) {
        if let Some(deliver) = self.0.take() {
            deliver(answer);
        }
    }
}

impl Drop for DirectReply {
    fn drop(&mut self) {
        if let Some(deliver) = self.0.take() {
            deliver(Answer::Value(Err(WireError::new(
                ErrorCode::Unavailable,
                "the store stopped; retry",
            ))));
        }
    }
}

/// Handle to the running store thread.
pub struct StoreThread {
    pub jobs: mpsc::Sender<Job>,
    thread: std::thread::JoinHandle<()>,
}

impl StoreThread {
    /// Waits for the thread to finish its queue (after `Shutdown` or after
    /// every sender is dropped).
    pub fn join(self) {
        drop(self.jobs);
        let _ = self.thread.join();
    }
}

/// The outcome of taking over the store as a new primary.
pub struct Promotion {
    pub conn: Connection,
    pub epoch: u64,
    pub promoted: Event,
    pub crash: super::crash_guard::CrashReport,
    /// The in-flight marker, emptied once the crash was counted and kept
    /// open for the store thread: closing a file opened for writing wakes
    /// every member watching `.grove` (inotify's `IN_CLOSE_WRITE`), in the
    /// middle of a failover.
    pub in_flight: super::crash_guard::InFlight,
}

/// First steps of a promotion (see docs/design.md, Promotion): open read-write, migrate, then
/// `epoch += 1` and append `instance.promoted` in one transaction. The new
/// epoch is also above `epoch_floor`, the highest epoch recorded for the
/// workspace outside the store, so that epochs never repeat even when the
/// store was deleted and recreated.
///
/// `proceed` is asked first, and last inside the transaction: when it says
/// no (the member gave the win up, or the lock is no longer the
/// workspace's), the transaction is rolled back and nothing of the
/// promotion stays.
pub fn promote(
    path: &std::path::Path,
    instance_id: &str,
    pid: u32,
    epoch_floor: u64,
    won: &super::promotions::LockWon,
    proceed: &dyn Fn() -> bool,
) -> Result<Promotion, StoreError> {
    // Given up already (the lock file was replaced, the member stopped):
    // then it must not even create a store, which a promotion on the new
    // lock file may be creating at the same moment (see `create`).
    if !proceed() {
        return Err(given_up());
    }
    let mut conn = super::open_read_write(path, epoch_floor)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let stored: i64 = tx.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
        r.get(0)
    })?;
    let epoch = (stored as u64).max(epoch_floor) + 1;
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'epoch'",
        [epoch as i64],
    )?;
    let crash = super::crash_guard::record_crash(&tx, path)?;
    let promoted = append_event(
        &tx,
        epoch,
        EventData::Promoted {
            instance_id: instance_id.to_string(),
            pid,
            epoch,
        },
    )?;
    super::promotions::record(&tx, epoch, epoch - 1, instance_id, won)?;
    if !proceed() {
        // Dropping the transaction rolls it back.
        return Err(given_up());
    }
    tx.commit()?;
    // Counted once: a primary that dies before its first batch must not
    // make its successor count the same crash again.
    let mut in_flight = super::crash_guard::InFlight::open(path);
    in_flight.clear();
    if crash.in_flight > 0 {
        tracing::warn!(
            "the previous primary died with {} writes in flight; each is suspect",
            crash.in_flight
        );
    }
    Ok(Promotion {
        conn,
        epoch,
        promoted,
        crash,
        in_flight,
    })
}

fn given_up() -> StoreError {
    StoreError::Unavailable("the promotion was given up before it committed".into())
}

/// Tells the store thread whether the database it holds is still the
/// workspace's (it is not once `.grove` was deleted).
pub type StillCurrent = Box<dyn Fn() -> bool + Send>;

thread_local! {
    /// Counts the batches of this thread (see [`batch_number`]).
    static BATCH: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The first three hex digits of the ids of the tasks created in the batch
/// the store thread is applying now; `None` outside one. A random id per
/// task put each new entry of the id index on a leaf page of its own, one
/// more WAL page per write that no batch shared; ids that share their start
/// within a batch (and differ in the other 116 random bits) put a batch's
/// entries on one page (see docs/design.md, Store).
pub fn batch_id_prefix() -> Option<u16> {
    thread_local! {
        static SALT: u64 = uuid::Uuid::new_v4().as_u128() as u64;
    }
    let batch = batch_number();
    // Batch 0: no batch (a store used directly, as by tests and tools).
    (batch != 0).then(|| {
        let mixed = SALT.with(|salt| (batch ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        (mixed >> 52) as u16
    })
}

/// The batch the store thread is applying now: an [`Admission`] may keep
/// what it read (the configuration) for as long as this stays the same,
/// instead of checking the files again for each write of the batch.
pub fn batch_number() -> u64 {
    BATCH.with(|b| b.get())
}

/// Checks (and may complete, e.g. fill in a default) a write that the ledger
/// has not seen, before it is applied; an `Err` refuses it without recording
/// it, so a retry after the user fixed the cause can succeed. It runs here,
/// on the store thread, because the checks read files (an engine's binary on
/// `PATH`, a persona) and the ledger look-up that must come first is a query:
/// neither may block the primary's event loop. A retry of a recorded write
/// gets its recorded reply without being checked again. It reads the task a
/// resume or relaunch changes through the write's transaction, and answers
/// with the configured [`Limits`] the write is applied under.
pub type Admission = Box<dyn Fn(&mut Method, &Connection) -> Result<Limits, WireError> + Send>;

pub use super::tasks::Limits;

/// Starts the store thread. Committed events go to `published`, in order.
pub fn spawn(
    promotion: Promotion,
    published: tokio::sync::mpsc::Sender<Event>,
    retention: Retention,
    still_current: StillCurrent,
    admission: Admission,
) -> std::io::Result<StoreThread> {
    let (jobs, rx) = mpsc::channel();
    let guard = Guard {
        in_flight: promotion.in_flight,
        poisoned: promotion.crash.poisoned_internal,
        suspects: promotion.crash.suspects,
        admission,
    };
    let (conn, epoch) = (promotion.conn, promotion.epoch);
    let thread = std::thread::Builder::new()
        .name("grove-store".into())
        .spawn(move || run(conn, epoch, rx, published, retention, guard, still_current))?;
    Ok(StoreThread { jobs, thread })
}

/// The store thread's crash guard (see `crash_guard`).
struct Guard {
    in_flight: super::crash_guard::InFlight,
    /// Orchestrator operations that crashed two primaries.
    poisoned: std::collections::HashSet<String>,
    /// Keys with one crash against them, acquitted when a batch carrying
    /// them commits. Usually empty: the hot path only looks them up.
    suspects: std::collections::HashSet<String>,
    admission: Admission,
}

impl Guard {
    fn keys(batch: &[Job]) -> Vec<String> {
        batch
            .iter()
            .filter_map(|job| match job {
                Job::Write { request_id, .. } => Some(request_id.clone()),
                Job::Internal { op, .. } => Some(op.key()),
                Job::Served { .. } | Job::Shutdown { .. } => None,
            })
            .collect()
    }
}

struct Done {
    reply: ReplyTo,
    result: WriteResult,
    /// `result` as the ledger recorded it (writes from clients only).
    encoded: Option<Vec<u8>>,
}

fn run(
    mut conn: Connection,
    epoch: u64,
    rx: mpsc::Receiver<Job>,
    published: tokio::sync::mpsc::Sender<Event>,
    retention: Retention,
    mut guard: Guard,
    still_current: StillCurrent,
) {
    rehearse(&mut conn, epoch);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut last_prune = std::time::Instant::now() - PRUNE_EVERY;
    let mut prune_floor = 0;
    let mut wal = Checkpoints::take_over(&mut conn);
    let mut run_ends_sync = (conn.path())
        .filter(|p| !p.is_empty())
        .map(|p| WalSync::new(std::path::Path::new(p)));
    while let Ok(first) = rx.recv() {
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = std::time::Instant::now();
            prune_history(&conn, retention, &mut prune_floor);
        }
        BATCH.with(|b| b.set(b.get() + 1));
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut shutdown = None;
        let ends_a_run = batch.iter().any(Job::ends_a_run);
        // A write committed to an unlinked store would be acknowledged and
        // lost: refuse it, and the client retries with the next primary.
        let committed = if still_current() {
            let keys = Guard::keys(&batch);
            guard.in_flight.mark(&keys);
            let acquit: Vec<String> = (keys.into_iter())
                .filter(|k| guard.suspects.contains(k))
                .collect();
            let committed =
                commit_batch(&mut conn, epoch, &mut batch, &mut shutdown, &guard, &acquit);
            guard.in_flight.clear();
            if committed.is_ok() {
                for key in &acquit {
                    guard.suspects.remove(key);
                }
            }
            committed
        } else {
            Err(StoreError::Unavailable(
                "the workspace's .grove was deleted or replaced; a new primary takes over".into(),
            ))
        };
        match committed {
            Ok((done, events)) => {
                // Before the answers: the sync starts as early as it can,
                // and nobody waits for it (see docs/design.md, Durable run ends).
                if ends_a_run && let Some(sync) = &mut run_ends_sync {
                    sync.request();
                }
                hand_out(done, events, &published)
            }
            Err(e) => fail_batch(&mut batch, e),
        }
        wal.checkpoint_if_due(&conn);
        if let Some(done) = shutdown {
            let _ = done.send(());
            return;
        }
    }
}

/// A new primary's first write would prepare every statement it runs and
/// read every page it touches, after a failover with a user waiting on it.
/// The store thread rehearses one `task.create` at its start instead, in a
/// transaction it rolls back, while the event loop is still starting up
/// (see docs/design.md, Promotion). Nothing of it stays: no row, no event
/// (`seq` is the rowid, so the next event takes the same number), no
/// ledger entry, and nobody is answered.
fn rehearse(conn: &mut Connection, epoch: u64) {
    let Ok(tx) = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) else {
        return;
    };
    let mut method = Method::TaskCreate(crate::protocol::NewTask {
        prompt: "grove: a rehearsal, rolled back".into(),
        engine: Some("shell".into()),
        ..Default::default()
    });
    let request_id = uuid::Uuid::new_v4().to_string();
    let key = LedgerKey {
        request_id: &request_id,
        from: "grove-store",
        digest: 0,
    };
    let admit_all: Admission = Box::new(|_, _| Ok(Limits::default()));
    let _ = apply_idempotent(&tx, epoch, &key, &mut method, &admit_all, &mut Vec::new());
    if let Err(e) = tx.rollback() {
        tracing::warn!("rolling back the store's rehearsal failed: {e}");
    }
}

/// After COMMIT: the answers, then the events to the publisher (in order).
/// Answers first because the caller waits for its answer and nobody waits
/// for the bus: the primary's event loop runs woken tasks in the order they
/// were woken, so events handed over first would be sent to every
/// subscriber before any reply. Either order is correct: both are sent
/// only after COMMIT, and a subscriber that sees a reply before its event
/// gets the event next (or repairs it from the store).
fn hand_out(done: Vec<Done>, events: Vec<Event>, published: &tokio::sync::mpsc::Sender<Event>) {
    #[cfg(feature = "test-hooks")]
    crate::test_hooks::after_commit(&events);
    for d in done {
        d.reply.answer(d.result, d.encoded);
    }
    for e in events {
        // Waits while the publisher's queue is full: a durable event is
        // never dropped before it is published.
        let _ = published.blocking_send(e);
    }
}

/// The whole transaction failed (disk full, I/O error): nothing was
/// applied, so every caller gets an error and may retry.
fn fail_batch(batch: &mut Vec<Job>, e: StoreError) {
    tracing::error!("group commit failed: {e}");
    let code = match e {
        StoreError::Unavailable(_) => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    for job in batch.drain(..) {
        if let Job::Write { reply, .. } | Job::Internal { reply, .. } = job {
            let error = WireError::new(code, format!("the store could not commit: {e}"));
            reply.answer(Err(error), None);
        }
    }
}

/// Applies every job of `batch` in one transaction. Returns the answers and
/// the events to publish; answers are only sent by the caller after COMMIT.
fn commit_batch(
    conn: &mut Connection,
    epoch: u64,
    batch: &mut Vec<Job>,
    shutdown: &mut Option<oneshot::Sender<()>>,
    guard: &Guard,
    acquit: &[String],
) -> Result<(Vec<Done>, Vec<Event>), StoreError> {
    let batch_tx = Immediate::begin(conn)?;
    let tx = batch_tx.conn();
    let mut done = Vec::with_capacity(batch.len());
    let mut events = Vec::new();
    // On error we must hand the jobs back to the caller untouched, so work
    // on them in place and only drain after the commit succeeded.
    let mut results = Vec::with_capacity(batch.len());
    for job in batch.iter_mut() {
        match job {
            Job::Write {
                request_id,
                from,
                method,
                digest,
                ..
            } => {
                let request = LedgerKey {
                    request_id,
                    from,
                    digest: *digest,
                };
                let admission = &guard.admission;
                let (result, encoded) =
                    apply_idempotent(tx, epoch, &request, method, admission, &mut events)?;
                results.push(Some((result, encoded)));
            }
            Job::Internal { op, .. } if guard.poisoned.contains(&op.key()) => {
                let poisoned = super::crash_guard::poison_error(
                    &op.key(),
                    super::crash_guard::POISON_AFTER_CRASHES,
                );
                results.push(Some((Err(poisoned), None)));
            }
            Job::Internal { op, .. } => {
                results.push(Some((apply_internal(tx, epoch, op, &mut events)?, None)));
            }
            Job::Served { epoch, takeover_us } => {
                super::promotions::served(tx, *epoch, *takeover_us)?;
                results.push(None);
            }
            Job::Shutdown { instance_id, .. } => {
                events.push(append_event(
                    tx,
                    epoch,
                    EventData::Shutdown {
                        instance_id: instance_id.clone(),
                        epoch,
                    },
                )?);
                results.push(None);
            }
        }
    }
    // Applied without a crash: no longer suspect (in this commit, so a
    // crash before it leaves them suspect).
    for key in acquit {
        super::crash_guard::acquit(tx, key)?;
    }
    batch_tx.commit()?;
    let writes = batch
        .iter()
        .filter(|j| matches!(j, Job::Write { .. }))
        .count();
    COMMITS.fetch_add(1, Ordering::Relaxed);
    WRITES_COMMITTED.fetch_add(writes as u64, Ordering::Relaxed);
    for (job, result) in batch.drain(..).zip(results) {
        match (job, result) {
            (Job::Write { reply, .. } | Job::Internal { reply, .. }, Some((result, encoded))) => {
                done.push(Done {
                    reply,
                    result,
                    encoded,
                })
            }
            (Job::Shutdown { done: d, .. }, _) => *shutdown = Some(d),
            (Job::Served { .. }, _) => {}
            (Job::Write { .. } | Job::Internal { .. }, None) => {
                unreachable!("every write has a result")
            }
        }
    }
    Ok((done, events))
}

/// An orchestrator operation under its own savepoint: a refusal rolls back
/// only its own effects. A returned `Err` dooms the whole transaction.
fn apply_internal(
    tx: &Connection,
    epoch: u64,
    op: &super::tasks::InternalOp,
    events: &mut Vec<Event>,
) -> Result<WriteResult, StoreError> {
    let sp = Savepoint::begin(tx)?;
    let mut own_events = Vec::new();
    let mut ctx = super::tasks::Ctx {
        tx: sp.conn(),
        epoch,
        events: &mut own_events,
        limits: Limits::default(),
        id_prefix: batch_id_prefix(),
    };
    let result = match super::tasks::apply_internal(&mut ctx, op) {
        Ok(r) => r,
        Err(Applied::Refused(e)) => Err(e),
        Err(Applied::Sqlite(e)) => return Err(e.into()),
    };
    if result.is_ok() {
        sp.release()?;
        events.extend(own_events);
    } // else: dropping the savepoint rolls it back
    Ok(result)
}

/// Who asked for a write, as the ledger records it.
struct LedgerKey<'a> {
    request_id: &'a str,
    from: &'a str,
    digest: u64,
}

/// Looks the request up in the ledger; applies it under a savepoint if new.
/// A returned `Err` is an SQLite failure that dooms the whole transaction;
/// an `Ok((Err(..), _))` is this request's own error reply. Beside the
/// result, its encoding as the ledger holds it, when it does.
fn apply_idempotent(
    tx: &Connection,
    epoch: u64,
    key: &LedgerKey<'_>,
    method: &mut Method,
    admission: &Admission,
    events: &mut Vec<Event>,
) -> Result<(WriteResult, Option<Vec<u8>>), StoreError> {
    let request_id = key.request_id;
    let recorded: Option<(Vec<u8>, Option<i64>)> = tx
        .prepare_cached("SELECT reply, digest FROM ledger WHERE request_id = ?1")?
        .query_row([request_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if let Some((bytes, digest)) = recorded {
        // Rows written before digests were recorded have none: trust them.
        if digest.is_some_and(|d| d as u64 != key.digest) {
            return Ok((
                Err(WireError::new(
                    ErrorCode::IdempotencyConflict,
                    format!(
                        "request id {request_id} was already used for a different request; use a new id for a new request (reuse an id only to retry the same request)"
                    ),
                )),
                None,
            ));
        }
        return Ok(
            match crate::protocol::decode_stored::<WriteResult>(&bytes) {
                Ok(result) => (result, Some(bytes)),
                Err(e) => {
                    let msg = format!("recorded reply unreadable: {e}");
                    (Err(WireError::new(ErrorCode::Internal, msg)), None)
                }
            },
        );
    }
    let admitted = admission(method, tx);
    // A read of the admission's that failed (a full disk, an I/O error)
    // may have made SQLite roll back the whole transaction. The batch is
    // then doomed, not this write alone: it would otherwise go on outside
    // any transaction, each write's savepoint committing on its own.
    if tx.is_autocommit() {
        return Err(StoreError::Unavailable(
            "SQLite rolled back the batch's transaction while a write was checked".into(),
        ));
    }
    let limits = match admitted {
        Ok(limits) => limits,
        Err(e) => return Ok((Err(e), None)),
    };
    #[cfg(feature = "test-hooks")]
    crate::test_hooks::while_applying(method);
    let mut sp = Savepoint::begin(tx)?;
    let mut own_events = Vec::new();
    let result = match apply(sp.conn(), epoch, limits, method, &mut own_events) {
        Ok(r) => r,
        Err(Applied::Refused(e)) => Err(e),
        Err(Applied::Sqlite(e)) => return Err(e.into()),
    };
    if result.is_err() {
        // Undo partial effects of a refused write but keep the savepoint
        // open so the ledger row below is still recorded.
        sp.rollback()?;
        own_events.clear();
    }
    let encoded = encode(&result);
    sp.conn()
        .prepare_cached(
            "INSERT INTO ledger (request_id, from_instance, method, at, reply, digest)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            request_id,
            key.from,
            method.name(),
            now_ms() as i64,
            &encoded,
            key.digest as i64
        ])?;
    sp.release()?;
    events.extend(own_events);
    Ok((result, Some(encoded)))
}

/// A method the event loop answers itself reached the store thread.
fn not_a_write() -> Applied {
    refused(
        ErrorCode::Internal,
        "not a write: answered by the event loop",
    )
}

fn apply(
    tx: &Connection,
    epoch: u64,
    limits: Limits,
    method: &Method,
    events: &mut Vec<Event>,
) -> Result<WriteResult, Applied> {
    let mut ctx = super::tasks::Ctx {
        tx,
        epoch,
        events,
        limits,
        id_prefix: batch_id_prefix(),
    };
    match method.route() {
        Route::Member(member) => hello(tx, epoch, member, ctx.events),
        Route::Session { id, cwd } => session(tx, epoch, id, cwd, ctx.events),
        Route::Task(op) => super::tasks::apply(&mut ctx, op),
        Route::Agent(op) => super::agent::apply(&mut ctx, op),
        Route::Await(op) => super::tasks::apply_await(&mut ctx, op),
        Route::Goal(spec) => super::tasks::apply_goal(&mut ctx, spec),
        // Routed to the event loop, which never queues it here.
        Route::Local(_) => Err(not_a_write()),
    }
}

fn session(
    tx: &Connection,
    epoch: u64,
    id: &str,
    cwd: &str,
    events: &mut Vec<Event>,
) -> Result<WriteResult, Applied> {
    if id.is_empty() || id.len() > 128 || !std::path::Path::new(cwd).is_absolute() {
        return Err(refused(
            ErrorCode::InvalidParams,
            "a session needs an id (1-128 bytes) and an absolute cwd",
        ));
    }
    let added = tx
        .prepare_cached(
            "INSERT INTO sessions (id, cwd, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![id, cwd, now_ms() as i64])?;
    if added > 0 {
        events.push(append_event(
            tx,
            epoch,
            EventData::SessionCreated {
                id: id.to_string(),
                cwd: cwd.to_string(),
            },
        )?);
    }
    Ok(Ok(ReplyBody::Done {}))
}

fn hello(
    tx: &Connection,
    epoch: u64,
    member: &MemberInfo,
    events: &mut Vec<Event>,
) -> Result<WriteResult, Applied> {
    if member.instance_id.is_empty() || member.kind.is_empty() {
        return Err(refused(
            ErrorCode::InvalidParams,
            "hello needs instance_id and kind",
        ));
    }
    tx.execute(
        "INSERT INTO members (instance_id, pid, kind, started_at, joined_at, epoch)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (instance_id) DO UPDATE SET
           pid = excluded.pid, kind = excluded.kind, joined_at = excluded.joined_at,
           epoch = excluded.epoch",
        params![
            member.instance_id,
            member.pid,
            member.kind,
            member.started_at as i64,
            now_ms() as i64,
            epoch as i64
        ],
    )?;
    let e = append_event(
        tx,
        epoch,
        EventData::InstanceJoined {
            member: member.clone(),
            epoch,
        },
    )?;
    let last_seq = e.seq;
    events.push(e);
    Ok(Ok(ReplyBody::Welcome { epoch, last_seq }))
}

#[cfg(test)]
#[path = "tests/writer.rs"]
mod tests;
