//! The crash guard: a key in flight at one crash is a suspect, at two it is
//! poison (a write gets a recorded refusal, an orchestrator operation is
//! refused from then on); a crash is counted once.

use crate::protocol::{ErrorCode, WireError, decode};
use crate::store::crash_guard::{
    CrashReport, InFlight, acquit, inflight_path, prune, record_crash,
};
use rusqlite::{Connection, OptionalExtension};
use std::path::PathBuf;

struct Fixture {
    _dir: tempfile::TempDir,
    db_path: PathBuf,
    conn: Connection,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        // The store itself stays in memory: the guard only uses the path to
        // find `inflight` beside it.
        let db_path = dir.path().join("grove.db");
        let mut conn = Connection::open_in_memory().expect("in-memory database");
        crate::store::schema::migrate(&mut conn).expect("migrations");
        Fixture {
            _dir: dir,
            db_path,
            conn,
        }
    }

    /// A primary dies while applying a batch of `keys`; the next one is
    /// promoted (counts the crash, then forgets the marker).
    fn crash_with(&self, keys: &[&str]) -> CrashReport {
        let mut marker = InFlight::open(&self.db_path);
        marker.mark(&keys.iter().map(|k| k.to_string()).collect::<Vec<_>>());
        drop(marker); // the process died: nothing cleared it
        self.promote()
    }

    fn promote(&self) -> CrashReport {
        let report = record_crash(&self.conn, &self.db_path).expect("record crash");
        // As `writer::promote` does: the marker emptied through the handle
        // the store thread goes on with.
        InFlight::open(&self.db_path).clear();
        report
    }

    fn crashes(&self, key: &str) -> Option<i64> {
        self.conn
            .query_row(
                "SELECT crashes FROM suspect_requests WHERE request_id = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()
            .expect("read suspects")
    }

    fn recorded_reply(&self, key: &str) -> Option<Result<(), WireError>> {
        let bytes: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT reply FROM ledger WHERE request_id = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()
            .expect("read ledger");
        bytes.map(|b| decode(&b).expect("a recorded refusal"))
    }
}

const WRITE: &str = "req-1";
const OP: &str = "internal:start:t1";

#[test]
fn a_first_promotion_finds_nothing_in_flight() {
    let f = Fixture::new();
    let report = f.promote();
    assert_eq!(report.in_flight, 0);
    assert!(report.poisoned_internal.is_empty());
}

#[test]
fn one_crash_makes_suspects_but_refuses_nothing() {
    let f = Fixture::new();
    let report = f.crash_with(&[WRITE, OP]);
    assert_eq!(report.in_flight, 2);
    assert!(report.poisoned_internal.is_empty());
    assert_eq!(f.crashes(WRITE), Some(1));
    assert_eq!(f.crashes(OP), Some(1));
    assert_eq!(f.recorded_reply(WRITE), None);
}

#[test]
fn a_key_in_flight_at_two_crashes_is_poison() {
    let f = Fixture::new();
    f.crash_with(&[WRITE, OP, "req-2"]);
    let report = f.crash_with(&[WRITE, OP]);
    assert_eq!(f.crashes(WRITE), Some(2));
    assert_eq!(f.crashes("req-2"), Some(1), "in flight at one crash only");
    // The write's resend is answered from the ledger, refused.
    match f.recorded_reply(WRITE) {
        Some(Err(e)) => assert_eq!(e.code, ErrorCode::Internal),
        other => panic!("expected a recorded refusal, got {other:?}"),
    }
    assert_eq!(f.recorded_reply("req-2"), None);
    // The orchestrator operation is refused by the store thread instead
    // (it has no request id, so no ledger row).
    assert!(report.poisoned_internal.contains(OP));
    assert_eq!(report.poisoned_internal.len(), 1);
    assert_eq!(f.recorded_reply(OP), None);
}

#[test]
fn a_crash_is_counted_once() {
    let f = Fixture::new();
    f.crash_with(&[WRITE]);
    // The promoted primary dies before its first batch: its successor must
    // not count the same crash again (the marker was forgotten).
    let report = f.promote();
    assert_eq!(report.in_flight, 0);
    assert_eq!(f.crashes(WRITE), Some(1));
}

#[test]
fn a_committed_batch_leaves_nothing_in_flight() {
    let f = Fixture::new();
    let mut marker = InFlight::open(&f.db_path);
    marker.mark(&[WRITE.to_string()]);
    marker.clear();
    drop(marker);
    assert_eq!(f.promote().in_flight, 0);
    assert_eq!(f.crashes(WRITE), None);
}

#[test]
fn an_unreadable_marker_counts_no_crash() {
    let f = Fixture::new();
    std::fs::write(inflight_path(&f.db_path), b"not json").unwrap();
    assert_eq!(f.promote().in_flight, 0);
}

#[test]
fn old_suspects_are_pruned() {
    let f = Fixture::new();
    f.crash_with(&[WRITE]);
    assert_eq!(prune(&f.conn, 0).unwrap(), 0, "nothing is older than 0");
    assert_eq!(prune(&f.conn, u64::MAX >> 1).unwrap(), 1);
    assert_eq!(f.crashes(WRITE), None);
}

#[test]
fn a_suspect_applied_since_is_acquitted_and_not_poisoned_by_an_unrelated_crash() {
    let f = Fixture::new();
    let report = f.crash_with(&[OP, WRITE]);
    assert!(report.suspects.contains(OP) && report.suspects.contains(WRITE));
    // Its batch committed on the next primary: it did not crash anything.
    acquit(&f.conn, OP).unwrap();
    assert_eq!(f.crashes(OP), None);
    // Another crash with it in flight again (a task's start is retried
    // under the same key): one crash against it, not two.
    let report = f.crash_with(&[OP, WRITE]);
    assert!(!report.poisoned_internal.contains(OP), "{report:?}");
    assert_eq!(f.crashes(OP), Some(1));
    // The one never applied in between is poison, as before.
    assert_eq!(f.crashes(WRITE), Some(2));
    assert!(f.recorded_reply(WRITE).is_some_and(|r| r.is_err()));
    // A poisoned key is never acquitted.
    acquit(&f.conn, WRITE).unwrap();
    assert_eq!(f.crashes(WRITE), Some(2));
}

#[test]
fn a_short_marker_over_a_longer_one_names_only_its_own_keys() {
    let f = Fixture::new();
    let mut marker = InFlight::open(&f.db_path);
    let long: Vec<String> = (0..20).map(|i| format!("req-long-{i}")).collect();
    marker.mark(&long);
    marker.clear();
    marker.mark(&[WRITE.to_string()]);
    drop(marker); // died while applying the short batch
    let report = f.promote();
    assert_eq!(report.in_flight, 1);
    assert_eq!(f.crashes(WRITE), Some(1));
    assert_eq!(f.crashes("req-long-0"), None);
    // Cleared over the long one: nothing in flight at all.
    let mut marker = InFlight::open(&f.db_path);
    marker.mark(&long);
    marker.clear();
    drop(marker);
    assert_eq!(f.promote().in_flight, 0);
}

/// A client can tell the guard's refusal from any other internal error
/// (it is final: the ledger answers every resend with it).
#[test]
fn the_guards_refusal_is_recognised_and_nothing_else_is() {
    use crate::store::crash_guard::{is_poison_refusal, poison_error};
    assert!(is_poison_refusal(&poison_error("req-1", 2)));
    assert!(!is_poison_refusal(&WireError::new(
        ErrorCode::Internal,
        "the store could not commit: disk I/O error"
    )));
    let mut other_code = poison_error("req-1", 2);
    other_code.code = ErrorCode::InvalidParams;
    assert!(!is_poison_refusal(&other_code));
}
