//! Poison requests: a write that crashes the primary must not crash every
//! successor.
//!
//! A client resends an unanswered request, with the same id, to whichever
//! member is primary next (that is what makes writes exactly-once across a
//! failover). If applying the request itself kills the primary — a bug in
//! grove, such as the dependency cascade that once overflowed the store
//! thread's stack — the resend kills the next primary too, and so on until
//! no member is left. Worse, an orchestrator operation that crashes is
//! repeated by every new primary at adoption, so no member could ever start.
//!
//! The store thread therefore writes the keys of the batch it is applying
//! to `.grove/inflight` before it applies the batch and marks it empty
//! once the batch is committed: a plain `pwrite`, no fsync, because it only
//! has to survive the crash of our own process, and the page cache does.
//! The next primary reads what was in flight when its predecessor died and
//! counts a crash against each key in `suspect_requests`. One crash proves
//! nothing (a `kill -9` can land during any batch); a key that was in flight
//! at **two** crashes is poison: a write gets a recorded refusal in the
//! ledger, so the client's next resend is answered from the ledger without
//! being applied, and an orchestrator operation is refused from then on.
//! A suspect whose batch later commits is acquitted (its row deleted in
//! that commit): it was applied without a crash, so an unrelated crash
//! while it is in flight again — a task's start is retried under the same
//! key by every new primary — starts its count afresh instead of poisoning
//! it.

use crate::protocol::{ErrorCode, WireError, encode, now_ms};
use rusqlite::{Connection, params};
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Crashes while in flight after which a key is refused.
pub const POISON_AFTER_CRASHES: i64 = 2;

/// Prefix of the keys of orchestrator operations (they have no request id).
pub const INTERNAL_PREFIX: &str = "internal:";

/// The file that names the batch being applied.
pub fn inflight_path(db_path: &Path) -> PathBuf {
    db_path.with_file_name("inflight")
}

/// The store thread's handle on `.grove/inflight`.
pub struct InFlight {
    file: Option<File>,
}

impl InFlight {
    /// Opens (creates, 0600) the marker. Without it the store still works,
    /// only without this protection: a warning, not a refusal to serve.
    pub fn open(db_path: &Path) -> InFlight {
        let path = inflight_path(db_path);
        let file = crate::paths::open_private(&path)
            .map_err(|e| tracing::warn!("cannot open {}: {e}", path.display()))
            .ok();
        InFlight { file }
    }

    /// Names the keys about to be applied: one `pwrite` over the start of
    /// the file, never a truncation. ext4 treats truncating a file it has
    /// written as a "replace" and starts writing its pages back to disk at
    /// once, which cost the store thread more than the commit itself; what
    /// lies past the JSON array is a longer marker's stale tail, which
    /// [`read_marker`] ignores.
    pub fn mark(&mut self, keys: &[String]) {
        let Some(file) = &self.file else { return };
        let Ok(bytes) = serde_json::to_vec(keys) else {
            return;
        };
        if let Err(e) = file.write_all_at(&bytes, 0) {
            tracing::warn!("cannot write the in-flight marker: {e}");
        }
    }

    /// The batch is committed (or refused as a whole): nothing in flight.
    pub fn clear(&mut self) {
        if let Some(file) = &self.file {
            let _ = file.write_all_at(EMPTY, 0);
        }
    }
}

/// The marker of an empty batch.
const EMPTY: &[u8] = b"[]";

/// The keys a marker names: its first JSON value (a stale tail follows it
/// when a shorter marker was written over a longer one). A marker torn by
/// a crash in the middle of its write names nothing: that crash counts
/// against no key, as if it had landed between two batches.
fn read_marker(bytes: &[u8]) -> Vec<String> {
    serde_json::Deserializer::from_slice(bytes)
        .into_iter::<Vec<String>>()
        .next()
        .and_then(Result::ok)
        .unwrap_or_default()
}

/// What a new primary learns from its predecessor's crash.
#[derive(Debug, Default)]
pub struct CrashReport {
    /// Keys in flight when the previous primary died.
    pub in_flight: usize,
    /// Orchestrator operations to refuse from now on.
    pub poisoned_internal: HashSet<String>,
    /// Keys with one crash against them: acquitted when their batch
    /// commits (see [`acquit`]).
    pub suspects: HashSet<String>,
}

/// Counts a crash against every key the previous primary had in flight, in
/// the promotion's transaction; records a refusal for the poisoned writes.
pub fn record_crash(tx: &Connection, db_path: &Path) -> rusqlite::Result<CrashReport> {
    let keys = std::fs::read(inflight_path(db_path))
        .map(|b| read_marker(&b))
        .unwrap_or_default();
    let now = now_ms() as i64;
    for key in &keys {
        tx.prepare_cached(
            "INSERT INTO suspect_requests (request_id, crashes, at) VALUES (?1, 1, ?2)
             ON CONFLICT (request_id) DO UPDATE SET crashes = crashes + 1, at = excluded.at",
        )?
        .execute(params![key, now])?;
        let crashes: i64 = tx
            .prepare_cached("SELECT crashes FROM suspect_requests WHERE request_id = ?1")?
            .query_row([key], |r| r.get(0))?;
        if crashes >= POISON_AFTER_CRASHES && !key.starts_with(INTERNAL_PREFIX) {
            tracing::error!(request = %key, "refusing a request that crashed {crashes} primaries");
            let refusal: Result<(), WireError> = Err(poison_error(key, crashes));
            tx.prepare_cached(
                "INSERT OR IGNORE INTO ledger (request_id, from_instance, method, at, reply)
                 VALUES (?1, 'grove', 'poisoned', ?2, ?3)",
            )?
            .execute(params![key, now, encode(&refusal)])?;
        }
    }
    let mut poisoned_internal = HashSet::new();
    let mut stmt = tx.prepare_cached(
        "SELECT request_id FROM suspect_requests WHERE crashes >= ?1 AND request_id LIKE 'internal:%'",
    )?;
    for key in stmt.query_map([POISON_AFTER_CRASHES], |r| r.get::<_, String>(0))? {
        poisoned_internal.insert(key?);
    }
    let mut suspects = HashSet::new();
    let mut stmt =
        tx.prepare_cached("SELECT request_id FROM suspect_requests WHERE crashes < ?1")?;
    for key in stmt.query_map([POISON_AFTER_CRASHES], |r| r.get::<_, String>(0))? {
        suspects.insert(key?);
    }
    Ok(CrashReport {
        in_flight: keys.len(),
        poisoned_internal,
        suspects,
    })
}

/// A suspect was applied in a batch that commits (call it inside that
/// batch's transaction): it did not crash the primary, so it is no longer
/// suspect.
pub fn acquit(tx: &Connection, key: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM suspect_requests WHERE request_id = ?1 AND crashes < ?2")?
        .execute(params![key, POISON_AFTER_CRASHES])?;
    Ok(())
}

/// The refusal a poisoned key gets.
pub fn poison_error(key: &str, crashes: i64) -> WireError {
    WireError::new(
        ErrorCode::Internal,
        format!(
            "request {key} was being applied when {crashes} {POISON_MARK} rather than allowed \
             to crash the next one (this is a bug in grove: please report it with the \
             members' logs); nothing of it was applied"
        ),
    )
}

/// What every [`poison_error`] says, and nothing else does.
const POISON_MARK: &str = "primaries crashed, so it is refused";

/// Whether `e` is the crash guard's refusal of a request it found in
/// flight at two crashes: final, like any refusal the ledger recorded.
pub fn is_poison_refusal(e: &WireError) -> bool {
    e.code == ErrorCode::Internal && e.message.contains(POISON_MARK)
}

/// Forgets suspects as old as the ledger's retention.
pub fn prune(conn: &Connection, cutoff_ms: u64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM suspect_requests WHERE at < ?1",
        [cutoff_ms as i64],
    )
}
