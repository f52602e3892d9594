//! The WAL-gathering VFS (`store::wal_vfs`) against the bundled SQLite:
//! every commit is in the WAL file, checksums and all, by the time it
//! returns — seen by a reader of another connection at once, and by a
//! recovery from the files alone (a crash) — including commits whose
//! frames SQLite rewrote in place, spilled before the commit.

use crate::store::wal_vfs;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;

fn writer(path: &Path) -> Connection {
    crate::store::process_settings();
    assert!(wal_vfs::register(), "the VFS registers");
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
    let conn = Connection::open_with_flags_and_vfs(path, flags, wal_vfs::NAME).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("WAL");
    conn.pragma_update(None, "synchronous", "NORMAL")
        .expect("NORMAL");
    // Keep SQLite's own checkpoints out: the WAL holds every commit.
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .expect("no checkpoints");
    conn
}

fn count(conn: &Connection) -> i64 {
    conn.query_row("SELECT COUNT(*), SUM(length(b)) FROM t", [], |r| r.get(0))
        .expect("count")
}

/// What a crash leaves: the database and WAL files, no shared memory, so
/// that SQLite rebuilds its index from the WAL's frames and checksums.
fn recovered(from: &Path, dir: &Path) -> Connection {
    let to = dir.join("copy.db");
    std::fs::copy(from, &to).expect("copy the database");
    let wal =
        |p: &Path| p.with_file_name(format!("{}-wal", p.file_name().unwrap().to_string_lossy()));
    std::fs::copy(wal(from), wal(&to)).expect("copy the WAL");
    let conn = Connection::open(&to).expect("open the copy");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity check");
    assert_eq!(check, "ok");
    conn
}

#[test]
fn every_commit_is_in_the_wal_when_it_returns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("w.db");
    let w = writer(&path);
    w.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB NOT NULL)")
        .expect("table");
    let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("a reader on SQLite's own VFS");
    let mut rows = 0;
    for commit in 0..200 {
        // From one small row to many pages a commit.
        let n = 1 + (commit % 13) * 7;
        let tx = w.unchecked_transaction().expect("begin");
        for _ in 0..n {
            tx.execute("INSERT INTO t (b) VALUES (randomblob(700))", [])
                .expect("insert");
        }
        tx.commit().expect("commit");
        rows += n as i64;
        assert_eq!(count(&reader), rows, "commit {commit} seen by a reader");
    }
    let copy_dir = tempfile::tempdir().expect("temp dir");
    assert_eq!(count(&recovered(&path, copy_dir.path())), rows);
}

/// A transaction bigger than the page cache spills frames before its
/// commit, and SQLite then writes a spilled page again in place and
/// rewrites the checksums of the frames after it at the commit: writes
/// that do not append, which must reach the file before the commit is
/// published.
#[test]
fn frames_rewritten_in_place_reach_the_file_with_their_commit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("w.db");
    let w = writer(&path);
    w.pragma_update(None, "cache_size", 10)
        .expect("a tiny cache");
    w.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB NOT NULL)")
        .expect("table");
    let reader =
        Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("a reader");
    for round in 0..5 {
        let tx = w.unchecked_transaction().expect("begin");
        for _ in 0..400 {
            tx.execute("INSERT INTO t (b) VALUES (randomblob(900))", [])
                .expect("insert");
        }
        // Pages spilled above are changed again: rewritten in place.
        tx.execute(
            "UPDATE t SET b = randomblob(900) WHERE id % 3 = ?1",
            [round % 3],
        )
        .expect("update");
        tx.commit().expect("commit");
        assert_eq!(count(&reader), 400 * (round + 1));
        let copy_dir = tempfile::tempdir().expect("temp dir");
        let copy = recovered(&path, copy_dir.path());
        assert_eq!(
            count(&copy),
            400 * (round + 1),
            "round {round} after a crash"
        );
        let same: i64 = copy
            .query_row("SELECT total(length(b)) FROM t", [], |r| r.get(0))
            .map(|t: f64| t as i64)
            .expect("sum");
        assert_eq!(same, 900 * 400 * (round + 1));
    }
}
