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

/// WAL checkpoints, run by the store thread itself between batches rather
/// than by SQLite inside a `COMMIT`. SQLite's automatic checkpoint runs in
/// the commit that crosses its threshold: that batch's callers waited for
/// it (copying pages and two `fsync`s, the longest step of the hot path),
/// and its keys stayed marked in flight (see `crash_guard`) for all of it,
/// so a `kill -9` during a checkpoint counted a crash against writes that
/// were already committed. Here it runs after the batch is answered and its
/// marker cleared. Same thread, same connection: no other writer exists.
pub(super) struct Checkpoints {
    /// Frames in the WAL after the last commit (SQLite's WAL hook).
    frames: std::sync::Arc<std::sync::atomic::AtomicI32>,
}

/// WAL frames (pages) that start a checkpoint: four times SQLite's default.
/// Each checkpoint costs two `fsync`s and a writeback of every page it
/// copies, and the same hot pages (index roots, the tables' last leaves)
/// are in the WAL many times over: copying them once per 4000 frames
/// instead of once per 1000 took most of the checkpoints' cost off a
/// write. The WAL then peaks near 16 MiB (4 KiB pages), which readers
/// find pages in through the shared index without reading it.
const CHECKPOINT_FRAMES: i32 = 4000;

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
        Checkpoints { frames }
    }

    pub(super) fn checkpoint_if_due(&self, conn: &Connection) {
        if self.frames.load(Ordering::Relaxed) < CHECKPOINT_FRAMES {
            return;
        }
        self.frames.store(0, Ordering::Relaxed);
        // PASSIVE: never waits for a reader; what a reader still needs is
        // copied by a later checkpoint.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!("WAL checkpoint failed: {e}");
        }
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
