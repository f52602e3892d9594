//! What the store thread does between batches, off the commit path:
//! WAL checkpoints and pruning old history (see docs/design.md, Store).

use crate::protocol::now_ms;
use rusqlite::Connection;
use std::sync::atomic::Ordering;

/// How much history the store keeps (see docs/design.md, Store). The event log is
/// what subscribers repair gaps from, so it keeps many more events than any
/// live subscriber can fall behind; the ledger keeps request ids long enough
/// for any client retry (clients give up after seconds, not days).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub events: u64,
    pub ledger_ms: u64,
}

/// Prunes at most this often, outside the hot path of a commit.
pub(super) const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Deletes events beyond the retention, but those of a live task's
/// conversation (its transcript is replayed whole; a deleted task's go with
/// it). `floor`: below it only such kept events remain, so each prune
/// scans only what aged since the last one.
pub(super) fn prune(
    conn: &Connection,
    retention: Retention,
    floor: &mut i64,
) -> rusqlite::Result<(usize, usize)> {
    let last: i64 = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
    let cutoff = last - retention.events as i64;
    let events = conn.execute(
        "DELETE FROM events WHERE seq > ?1 AND seq <= ?2 \
         AND (task_id IS NULL OR task_id NOT IN (SELECT id FROM tasks))",
        [*floor, cutoff],
    )?;
    *floor = (*floor).max(cutoff);
    let cutoff = now_ms().saturating_sub(retention.ledger_ms) as i64;
    let ledger = conn.execute("DELETE FROM ledger WHERE at < ?1", [cutoff])?;
    Ok((events, ledger))
}

/// WAL checkpoints, run beside the store thread rather than by SQLite
/// inside a `COMMIT`. SQLite's automatic checkpoint runs in the commit that
/// crosses its threshold: that batch's callers waited for it (copying pages
/// and two `fsync`s, the longest step of the hot path), and its keys stayed
/// marked in flight (see `crash_guard`) for all of it, so a `kill -9` during
/// a checkpoint counted a crash against writes that were already committed.
///
/// Here the bulk of a checkpoint runs on a thread of its own with a
/// connection of its own (started at the first one due, so that a promotion
/// and an idle primary pay nothing for it): in WAL mode a checkpoint copies
/// committed frames while the writer keeps appending, so the store thread
/// goes on with the next batches on the other core. But a WAL starts over
/// at its beginning only when a checkpoint copied every frame in it, which
/// one that runs beside a busy writer never does: the WAL would grow for as
/// long as the writes keep coming. So once the checkpointer is done, it
/// is handed another pass for what was appended meanwhile, while that is
/// more than [`CATCH_UP_FRAMES`], up to [`MAX_PASSES`]; then the store
/// thread copies the rest itself, between batches — usually a few hundred
/// pages and two small `fsync`s instead of the whole WAL, but after the
/// last pass whatever a writer faster than the checkpointer left — and its
/// next commit starts the WAL over. Should the thread or its connection
/// fail, the store thread checkpoints alone, as before.
pub(super) struct Checkpoints {
    /// Frames in the WAL after the last commit (SQLite's WAL hook).
    frames: std::sync::Arc<std::sync::atomic::AtomicI32>,
    /// The store's file, for the checkpointer's connection.
    path: Option<std::path::PathBuf>,
    checkpointer: Option<Checkpointer>,
}

/// The checkpoint thread, woken through `due`.
struct Checkpointer {
    due: std::sync::mpsc::SyncSender<()>,
    /// Checkpoints the thread has run.
    ran: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Handed a pass whose end the store thread has not seen yet.
    busy: Option<Pass>,
    thread: std::thread::JoinHandle<()>,
}

/// WAL frames (pages) that start a checkpoint: four times SQLite's default.
/// Each checkpoint costs two `fsync`s and a writeback of every page it
/// copies, and the same hot pages (index roots, the tables' last leaves)
/// are in the WAL many times over: copying them once per 4000 frames
/// instead of once per 1000 took most of the checkpoints' cost off a
/// write. The WAL then peaks near 16 MiB (4 KiB pages) plus what a busy
/// writer appends during the passes (~1,000–2,000 frames during the
/// first), which readers find pages in through the shared index without
/// reading it.
const CHECKPOINT_FRAMES: i32 = 4000;

/// Frames appended during a checkpointer's pass that the store thread
/// copies itself, between batches, to let the WAL start over; more are
/// handed to the checkpointer for another pass. A checkpoint's `fsync`s
/// take time in proportion to what it copied (~6 µs a page on the
/// development machine, ~0.1 ms at the least): the ~1,000–2,000 frames a
/// busy writer appends during a 4,000-frame pass held every write of the
/// workspace for milliseconds, while 256 take under two.
const CATCH_UP_FRAMES: i32 = 256;

/// Passes after which the store thread catches up whatever is left: a
/// writer that appends faster than the checkpointer copies would otherwise
/// never let the WAL start over.
const MAX_PASSES: u32 = 4;

impl Checkpoints {
    /// Turns SQLite's automatic checkpoints off on `conn` and counts the
    /// WAL's frames instead. Without the hook, SQLite keeps checkpointing.
    pub(super) fn take_over(conn: &mut Connection) -> Checkpoints {
        let frames = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
        let seen = frames.clone();
        // Frames after the previous commit; -1 until the first: the WAL may
        // hold frames of earlier primaries, so the first commit only sets
        // the count that the next ones are measured from.
        let last = std::sync::atomic::AtomicI32::new(-1);
        let hooked = conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages| {
            seen.store(pages, Ordering::Relaxed);
            let before = last.swap(pages, Ordering::Relaxed);
            // Fewer frames than last time: the WAL restarted at its start.
            let appended = match before {
                -1 => 0,
                b if pages >= b => pages - b,
                _ => pages,
            };
            super::writer::WAL_PAGES.fetch_add(appended as u64, Ordering::Relaxed);
            Ok(())
        }));
        if let Err(e) = hooked {
            tracing::warn!("WAL checkpoints stay inside commits: {e}");
        }
        let path = (conn.path())
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from);
        Checkpoints {
            frames,
            path,
            checkpointer: None,
        }
    }

    /// Between batches: hands a checkpoint to the checkpointer when the
    /// WAL has grown past [`CHECKPOINT_FRAMES`], and finishes it here once
    /// the checkpointer is done (see [`Checkpoints`]).
    pub(super) fn checkpoint_if_due(&mut self, conn: &Connection) {
        if let Some(c) = &mut self.checkpointer
            && let Some(pass) = c.busy
        {
            if c.ran.load(Ordering::Acquire) > pass.ran_before {
                // What the writer appended while that pass ran: another
                // pass copies it, beside the writer again, while it is
                // more than a small catch-up (see [`CATCH_UP_FRAMES`]).
                let now = self.frames.load(Ordering::Relaxed);
                if now - pass.wal_frames > CATCH_UP_FRAMES
                    && pass.number < MAX_PASSES
                    && c.hand(now, pass.number + 1)
                {
                    return;
                }
                c.busy = None;
                checkpoint(conn);
            } else if c.thread.is_finished() {
                // It could not open the store: this thread checkpoints.
                self.stop_checkpointer();
                checkpoint(conn);
            }
            return;
        }
        let wal_frames = self.frames.load(Ordering::Relaxed);
        if wal_frames < CHECKPOINT_FRAMES {
            return;
        }
        self.frames.store(0, Ordering::Relaxed);
        if self.checkpointer.is_none() {
            self.checkpointer = self.path.as_deref().and_then(Checkpointer::start);
        }
        let handed = (self.checkpointer.as_mut()).is_some_and(|c| c.hand(wal_frames, 1));
        if !handed {
            // No checkpointer (it could not start or open the store):
            // nobody else copies the WAL back, so this thread does.
            self.stop_checkpointer();
            checkpoint(conn);
        }
    }

    /// Stops the checkpointer, for good: this thread checkpoints from now on.
    fn stop_checkpointer(&mut self) {
        self.path = None;
        if let Some(c) = self.checkpointer.take() {
            drop(c.due);
            let _ = c.thread.join();
        }
    }
}

impl Drop for Checkpoints {
    /// The checkpointer stops with the store thread (its connection closed
    /// before the store thread's: the last one to close removes the WAL).
    fn drop(&mut self) {
        self.stop_checkpointer();
    }
}

/// A checkpoint pass handed to the checkpointer.
#[derive(Clone, Copy)]
struct Pass {
    /// `Checkpointer::ran` when it was handed: the pass has ended once
    /// `ran` is past it.
    ran_before: u64,
    /// Frames in the WAL when it was handed. A `PASSIVE` pass copies what
    /// was there when it started (less only if a reader still needs older
    /// pages), so counting what was appended after these overstates what
    /// is left: at worst one more pass than needed, never a frame missed.
    wal_frames: i32,
    /// 1 for the pass a full WAL started, then 2, 3, ...
    number: u32,
}

impl Checkpointer {
    /// Hands it pass `number`; false when it still has one queued.
    fn hand(&mut self, wal_frames: i32, number: u32) -> bool {
        let ran_before = self.ran.load(Ordering::Acquire);
        self.busy = self.due.try_send(()).is_ok().then_some(Pass {
            ran_before,
            wal_frames,
            number,
        });
        self.busy.is_some()
    }

    fn start(path: &std::path::Path) -> Option<Checkpointer> {
        let (due, asked) = std::sync::mpsc::sync_channel::<()>(1);
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = ran.clone();
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("grove-checkpoint".into())
            .spawn(move || {
                // Read-write, never created: the store thread's file, which
                // exists while it runs. It writes nothing but the copied
                // pages; the store thread is still the only writer of rows.
                let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW;
                let conn = match Connection::open_with_flags(&path, flags) {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!("the checkpointer cannot open the store: {e}");
                        return;
                    }
                };
                while asked.recv().is_ok() {
                    checkpoint(&conn);
                    counted.fetch_add(1, Ordering::Release);
                }
            });
        match thread {
            Ok(thread) => Some(Checkpointer {
                due,
                ran,
                busy: None,
                thread,
            }),
            Err(e) => {
                tracing::warn!("cannot start the checkpointer: {e}");
                None
            }
        }
    }
}

/// One passive checkpoint: it never waits for a reader (or the writer);
/// what a reader still needs is copied by a later one.
fn checkpoint(conn: &Connection) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        tracing::warn!("WAL checkpoint failed: {e}");
    }
}

/// Old events, ledger rows and crash suspects, outside any batch.
pub(super) fn prune_history(conn: &Connection, retention: Retention, floor: &mut i64) {
    let cutoff = now_ms().saturating_sub(retention.ledger_ms);
    if let Err(e) = super::crash_guard::prune(conn, cutoff) {
        tracing::warn!("pruning suspects failed: {e}");
    }
    match prune(conn, retention, floor) {
        Ok((0, 0)) => {}
        Ok((e, l)) => tracing::info!("pruned {e} old events and {l} ledger entries"),
        Err(e) => tracing::warn!("pruning failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::{CATCH_UP_FRAMES, CHECKPOINT_FRAMES, Checkpoints, MAX_PASSES};
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    /// A store whose WAL has just grown past [`CHECKPOINT_FRAMES`], its
    /// checkpoints taken over, nothing handed yet.
    fn wal_due_for_a_checkpoint() -> (tempfile::TempDir, rusqlite::Connection, Checkpoints) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut conn =
            crate::store::open_read_write(&dir.path().join("grove.db"), 0).expect("store");
        conn.execute_batch("CREATE TABLE filler (b BLOB)")
            .expect("table");
        let checkpoints = Checkpoints::take_over(&mut conn);
        while checkpoints.frames.load(Ordering::Relaxed) < CHECKPOINT_FRAMES {
            commit(&conn);
        }
        (dir, conn, checkpoints)
    }

    /// One commit of about three WAL frames (a leaf, an overflow page,
    /// their parent).
    fn commit(conn: &rusqlite::Connection) {
        conn.execute("INSERT INTO filler VALUES (zeroblob(8000))", [])
            .expect("commit");
    }

    /// One more commit after a checkpoint that copied everything: the WAL
    /// starts over at its beginning.
    fn assert_the_wal_starts_over(conn: &rusqlite::Connection, checkpoints: &Checkpoints) {
        let full = checkpoints.frames.load(Ordering::Relaxed);
        commit(conn);
        let after = checkpoints.frames.load(Ordering::Relaxed);
        assert!(
            after < full / 2,
            "the WAL did not start over: {full} frames, then {after}"
        );
    }

    /// A due checkpoint is handed to the checkpointer thread, which copies
    /// the WAL back while the writer goes on: the writer's WAL then starts
    /// over at its beginning instead of growing.
    #[test]
    fn a_due_checkpoint_runs_beside_the_writer_and_the_wal_starts_over() {
        let (_dir, conn, mut checkpoints) = wal_due_for_a_checkpoint();
        let peak = checkpoints.frames.load(Ordering::Relaxed);
        checkpoints.checkpoint_if_due(&conn);
        assert!(
            checkpoints.checkpointer.is_some(),
            "the checkpoint was not handed to the checkpointer"
        );
        let ran = checkpoints.checkpointer.as_ref().map(|c| c.ran.clone());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            commit(&conn);
            checkpoints.checkpoint_if_due(&conn);
            if checkpoints.frames.load(Ordering::Relaxed) < peak / 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the WAL never started over: the checkpoint did not run"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let ran = ran.map_or(0, |r| r.load(Ordering::Acquire));
        assert!(ran >= 1, "the checkpointer thread ran no checkpoint");
        drop(checkpoints);
    }

    /// More appended during a pass than a small catch-up: the checkpointer
    /// is handed another pass for it rather than the store thread copying
    /// it, and once that pass is done with nothing appended since, the
    /// store thread's own checkpoint lets the WAL start over.
    #[test]
    fn what_a_busy_writer_appended_during_a_pass_goes_to_another_pass() {
        let (_dir, conn, mut checkpoints) = wal_due_for_a_checkpoint();
        let appended_from = checkpoints.frames.load(Ordering::Relaxed);
        checkpoints.checkpoint_if_due(&conn);
        let handed = |c: &Checkpoints| c.checkpointer.as_ref().and_then(|c| c.busy);
        let first = handed(&checkpoints).expect("the first pass was not handed");
        assert_eq!(first.number, 1);
        // The writer goes on while the pass runs: more than a catch-up.
        while checkpoints.frames.load(Ordering::Relaxed) <= appended_from + CATCH_UP_FRAMES {
            commit(&conn);
        }
        let ran = checkpoints.checkpointer.as_ref().map(|c| c.ran.clone());
        let ran = ran.expect("a checkpointer");
        let passes_ended = |n: u64| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while ran.load(Ordering::Acquire) < n {
                assert!(Instant::now() < deadline, "pass {n} never ended");
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        passes_ended(1);
        checkpoints.checkpoint_if_due(&conn);
        let second = handed(&checkpoints).expect("no second pass: the store thread copied it all");
        assert_eq!(second.number, 2);
        passes_ended(2);
        // Nothing appended during the second pass: caught up here.
        checkpoints.checkpoint_if_due(&conn);
        assert!(handed(&checkpoints).is_none(), "a third pass for nothing");
        assert_the_wal_starts_over(&conn, &checkpoints);
    }

    /// A writer that appends more than a catch-up during every pass gets
    /// [`MAX_PASSES`] of them and no more: then the store thread copies
    /// what is left itself, and the WAL starts over all the same.
    #[test]
    fn a_writer_that_outruns_every_pass_still_lets_the_wal_start_over() {
        let (_dir, conn, mut checkpoints) = wal_due_for_a_checkpoint();
        checkpoints.checkpoint_if_due(&conn);
        let handed = |c: &Checkpoints| c.checkpointer.as_ref().and_then(|c| c.busy);
        let ran = (checkpoints.checkpointer.as_ref())
            .map(|c| c.ran.clone())
            .expect("a checkpointer");
        for number in 1..=MAX_PASSES {
            let pass = handed(&checkpoints).expect("a pass handed");
            assert_eq!(pass.number, number);
            while checkpoints.frames.load(Ordering::Relaxed) <= pass.wal_frames + CATCH_UP_FRAMES {
                commit(&conn);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while ran.load(Ordering::Acquire) < u64::from(number) {
                assert!(Instant::now() < deadline, "pass {number} never ended");
                std::thread::sleep(Duration::from_millis(2));
            }
            checkpoints.checkpoint_if_due(&conn);
        }
        assert!(
            handed(&checkpoints).is_none(),
            "a pass beyond the last: the store thread should have caught up"
        );
        assert_eq!(ran.load(Ordering::Acquire), u64::from(MAX_PASSES));
        assert_the_wal_starts_over(&conn, &checkpoints);
    }
}
