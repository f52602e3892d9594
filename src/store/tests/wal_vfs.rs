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

/// The gathered bytes are written in pieces of at most a MiB: a commit of
/// ~250 frames reaches that bound, and where it fell between the commit
/// frame's header and its page, the page stayed gathered after the commit
/// returned. Another connection (grove's checkpointer) then copied what
/// the file held at that frame into the database: a page of an older WAL
/// generation under the commit page's number, and a store SQLite called
/// malformed (`cascade` on CI). Commits of every size around the bound,
/// each read back at once through SQLite's own VFS.
#[test]
fn a_commit_reaching_the_gathering_bound_is_written_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("w.db");
    let w = writer(&path);
    let reader =
        Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("a reader");
    let wal = path.with_file_name("w.db-wal");
    let mut sizes = std::collections::BTreeSet::new();
    for n in 236..=256 {
        // A new table each round: the commit is one frame per row (a row
        // fills a page) and the same few others every time, so that the
        // commits' sizes cover every frame count around the bound.
        w.execute_batch(&format!(
            "CREATE TABLE t{n} (id INTEGER PRIMARY KEY, b BLOB NOT NULL)"
        ))
        .expect("table");
        let before = std::fs::metadata(&wal).expect("the WAL").len();
        let tx = w.unchecked_transaction().expect("begin");
        for _ in 0..n {
            tx.execute(
                &format!("INSERT INTO t{n} (b) VALUES (randomblob(3900))"),
                [],
            )
            .expect("insert");
        }
        tx.commit().expect("commit");
        let after = std::fs::metadata(&wal).expect("the WAL").len();
        sizes.insert((after - before) / (24 + 4096));
        let (count, bytes): (i64, f64) = reader
            .query_row(
                &format!("SELECT COUNT(*), total(length(b)) FROM t{n}"),
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap_or_else(|e| panic!("a commit of {n} rows read back: {e}"));
        assert_eq!((count, bytes as i64), (n, n * 3900), "a commit of {n} rows");
    }
    // The bound falls on frame 247 of a commit (`wal_vfs::GATHERED_AT_MOST`).
    assert!(
        sizes.contains(&247),
        "the commits' frame counts cover the bound: {sizes:?}"
    );
}

/// A commit frame's header that does not append goes through at once, and
/// its page, which does append, must still be written with it. That is
/// the first frame of a commit after SQLite rewrote checksums at the end of
/// a spilled transaction, or after a spilled transaction rolled back; in a
/// commit of one frame the header is the commit's. Such a page once
/// stayed gathered past its commit, until the next call on the file.
#[test]
fn a_one_frame_commit_after_a_write_elsewhere_is_written_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("w.db");
    let w = writer(&path);
    w.pragma_update(None, "cache_size", 10)
        .expect("a tiny cache");
    w.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, b BLOB NOT NULL)")
        .expect("table");
    let reader =
        Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("a reader");
    // The frames committed, from the WAL index's header in shared memory
    // (`WalIndexHdr::mxFrame`, native-endian at byte 16).
    let shm = path.with_file_name("w.db-shm");
    let frames = || {
        let head = std::fs::read(&shm).expect("the WAL index");
        u32::from_ne_bytes(head[16..20].try_into().expect("four bytes"))
    };
    let mut n = 0;
    let mut bump = |after: &str| {
        let before = frames();
        w.execute("UPDATE t SET n = n + 1 WHERE id = 1", [])
            .expect("update");
        assert_eq!(frames(), before + 1, "one frame after {after}");
        n += 1;
        let seen: i64 = reader
            .query_row("SELECT n FROM t WHERE id = 1", [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("the one frame after {after} read back: {e}"));
        assert_eq!(seen, n, "the one frame after {after}");
    };
    for round in 0..3 {
        // Spilled, then rewritten in place: checksums rewritten at commit.
        let tx = w.unchecked_transaction().expect("begin");
        for _ in 0..400 {
            tx.execute("INSERT INTO t (n, b) VALUES (0, randomblob(900))", [])
                .expect("insert");
        }
        tx.execute(
            "UPDATE t SET b = randomblob(900) WHERE id % 3 = ?1",
            [round],
        )
        .expect("update");
        tx.commit().expect("commit");
        bump("a spilled commit");
        // Spilled, then rolled back.
        let tx = w.unchecked_transaction().expect("begin");
        for _ in 0..400 {
            tx.execute("INSERT INTO t (n, b) VALUES (0, randomblob(900))", [])
                .expect("insert");
        }
        tx.rollback().expect("rollback");
        bump("a spilled rollback");
    }
}

/// Fault injection for the test below: SQLite's unix VFS's `pwrite`
/// (`xSetSystemCall`), failing once with ENOSPC while armed, for a write
/// longer than one frame to one file: a gathered write of the WAL VFS
/// (SQLite's own writes to a WAL are at most a page or a header).
mod enospc {
    use rusqlite::ffi;
    use std::ffi::{c_int, c_void};
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    pub static ARMED: AtomicBool = AtomicBool::new(false);
    pub static FAILED: AtomicUsize = AtomicUsize::new(0);
    pub static TARGET: Mutex<Option<PathBuf>> = Mutex::new(None);

    unsafe extern "C" fn pwrite(
        fd: c_int,
        buf: *const c_void,
        n: usize,
        off: libc::off_t,
    ) -> isize {
        if n > 24 + 4096 && ARMED.load(Ordering::SeqCst) {
            let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok();
            if link.is_some() && link == *TARGET.lock().unwrap() {
                ARMED.store(false, Ordering::SeqCst);
                FAILED.fetch_add(1, Ordering::SeqCst);
                unsafe { *libc::__errno_location() = libc::ENOSPC };
                return -1;
            }
        }
        unsafe { libc::pwrite(fd, buf, n, off) }
    }

    /// SQLite's own `pwrite` again (a null pointer restores the default).
    pub fn uninstall() {
        unsafe {
            let unix = ffi::sqlite3_vfs_find(c"unix".as_ptr());
            let set = (*unix)
                .xSetSystemCall
                .expect("the unix VFS sets system calls");
            set(unix, c"pwrite".as_ptr(), None);
        }
    }

    pub fn install(wal: PathBuf) {
        *TARGET.lock().unwrap() = Some(wal);
        unsafe {
            let unix = ffi::sqlite3_vfs_find(c"unix".as_ptr());
            assert!(!unix.is_null());
            let set = (*unix)
                .xSetSystemCall
                .expect("the unix VFS sets system calls");
            type Pwrite = unsafe extern "C" fn(c_int, *const c_void, usize, libc::off_t) -> isize;
            // SQLite's system call slot is typed `void (*)(void)`; it calls
            // the pointer as `pwrite` again.
            let f = std::mem::transmute::<Pwrite, unsafe extern "C" fn()>(pwrite);
            let rc = set(unix, c"pwrite".as_ptr(), Some(f));
            assert_eq!(rc, ffi::SQLITE_OK, "pwrite overridden");
        }
    }
}

/// A gathered write that fails is reported to the call that wrote it out:
/// here a read, in the middle of a statement. SQLite takes a failed read
/// as no loss of what was written before: with SQLITE_FULL and a
/// statement journal it rolls back only the statement, and the
/// transaction goes on. The frames spilled (and acknowledged) before that
/// read were dropped with the failed write, yet the commit publishes them:
/// a reader (or the checkpointer) then reads whatever the file held there.
#[test]
fn a_gathered_write_failing_under_a_read_is_not_lost_to_the_commit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("w.db");
    let w = writer(&path);
    w.pragma_update(None, "cache_size", 10)
        .expect("a tiny cache");
    w.execute_batch(
        "CREATE TABLE a (id INTEGER PRIMARY KEY, b BLOB NOT NULL);
         CREATE TABLE c (id INTEGER PRIMARY KEY, v INTEGER NOT NULL);",
    )
    .expect("tables");
    let reader =
        Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("a reader");
    let wal = std::fs::canonicalize(path.with_file_name("w.db-wal")).expect("the WAL");
    enospc::install(wal);
    w.execute_batch("BEGIN IMMEDIATE").expect("begin");
    for _ in 0..100 {
        // A page a row, appended: old leaves spill, gathered, unread.
        w.execute("INSERT INTO a (b) VALUES (randomblob(3900))", [])
            .expect("insert");
    }
    // A statement with a statement journal (INSERT … SELECT, NOT NULL)
    // that reads a spilled page: the read writes what was gathered first.
    enospc::ARMED.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = w.execute("INSERT INTO c (v) SELECT id FROM a WHERE id <= 3", []);
    enospc::ARMED.store(false, std::sync::atomic::Ordering::SeqCst);
    enospc::uninstall();
    assert_eq!(
        enospc::FAILED.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the gathered write failed under the read: {failed:?}"
    );
    assert!(failed.is_err());
    // SQLite rolled back the statement only: the transaction goes on, and
    // commits.
    assert!(!w.is_autocommit(), "the transaction is still open");
    let committed = w.execute_batch("COMMIT");
    if committed.is_err() {
        return; // the failure doomed the transaction: nothing lost
    }
    // Committed: every row must be there, whole, for another connection.
    let check: String = reader
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap_or_else(|e| format!("error: {e}"));
    let rows = reader.query_row("SELECT COUNT(*), total(length(b)) FROM a", [], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)? as i64))
    });
    assert_eq!(
        check, "ok",
        "the committed store, read by another connection (rows: {rows:?})"
    );
    assert_eq!(rows.expect("rows"), (100, 390_000));
}
