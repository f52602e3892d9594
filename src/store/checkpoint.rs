//! WAL checkpoints off the store thread.
//!
//! SQLite's automatic checkpoint runs inside the `COMMIT` that crosses
//! 1,000 WAL pages: that commit copies every page into the database and
//! fsyncs the WAL and the database before its callers are answered (a
//! `task.create` writes about 12 pages, so every ~80th write waited for two
//! fsyncs). Here the store thread's connection only signals, from SQLite's
//! WAL hook, and a thread of its own runs the same `PASSIVE` checkpoint on
//! a second connection while the store thread goes on committing; the two
//! are serialized by SQLite's own locks, as any two connections are. The
//! checkpointer never writes a row: the store thread stays the only writer.
//! Durability is unchanged (a commit is durable once it is in the WAL).

use rusqlite::Connection;
use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

/// New WAL pages after which the thread is asked for a checkpoint
/// (SQLite's default automatic checkpoint threshold).
const CHECKPOINT_PAGES: c_int = 1000;
/// WAL pages at which the store thread checkpoints inline (16 MiB).
const INLINE_PAGES: c_int = 4 * CHECKPOINT_PAGES;

/// What the hook reaches: the checkpoint thread, or, once it could not
/// open its connection or is gone, the word to checkpoint inline as
/// SQLite itself would.
struct Hook {
    wake: SyncSender<()>,
    inline: Arc<AtomicBool>,
    /// The WAL's length when the thread was last asked (only the store
    /// thread touches it).
    asked_at: Cell<c_int>,
}

/// The store thread's side: the hook is registered on its connection for
/// as long as this lives.
pub struct Checkpointer {
    /// Boxed so the hook's pointer to it stays valid while this moves;
    /// dropped (ending the thread) after `Drop` unregistered the hook.
    _hook: Box<Hook>,
    db: *mut rusqlite::ffi::sqlite3,
}

impl Checkpointer {
    /// Starts the checkpoint thread for the store at `path` and points
    /// `conn`'s WAL hook at it. The thread opens its own connection, so a
    /// promotion does not wait for it; until it has one (or if it never
    /// gets one) the hook checkpoints inline, as SQLite would have.
    pub fn start(conn: &Connection, path: &Path) -> Checkpointer {
        let (wake, woken) = sync_channel(1);
        let inline = Arc::new(AtomicBool::new(false));
        let (path, failed) = (path.to_path_buf(), inline.clone());
        let spawned = std::thread::Builder::new()
            .name("grove-checkpoint".into())
            .spawn(move || run(&path, woken, &failed));
        if let Err(e) = spawned {
            tracing::warn!("checkpoints stay on the store thread: {e}");
            inline.store(true, Ordering::Relaxed);
        }
        let hook = Box::new(Hook {
            wake,
            inline,
            asked_at: Cell::new(0),
        });
        // SAFETY: the connection's handle is valid while `conn` lives; the
        // hook's argument points into `hook`'s box, which outlives the
        // registration: `Drop` unregisters the hook before the box is freed,
        // and the store thread drops this before its connection.
        let db = unsafe { conn.handle() };
        unsafe {
            rusqlite::ffi::sqlite3_wal_hook(
                db,
                Some(on_commit),
                &*hook as *const Hook as *mut c_void,
            );
        }
        Checkpointer { _hook: hook, db }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // SAFETY: see `start`; afterwards nothing refers to the hook. The
        // checkpoint thread ends when its sender is dropped.
        unsafe {
            rusqlite::ffi::sqlite3_wal_hook(self.db, None, std::ptr::null_mut());
        }
    }
}

/// Called by SQLite on the store thread after each commit, with the WAL's
/// length in pages. Asks the thread once per `CHECKPOINT_PAGES` new pages,
/// never waiting for it. A checkpoint that runs beside the writer cannot
/// reset the WAL while commits keep coming (the writer starts it over only
/// when every frame was copied), so under a sustained load the WAL grows:
/// at `INLINE_PAGES` this commit checkpoints inline, as SQLite's automatic
/// checkpoint would every 1,000 pages, which lets the next one start the
/// WAL over. Most pages were copied by the thread by then.
extern "C" fn on_commit(
    arg: *mut c_void,
    db: *mut rusqlite::ffi::sqlite3,
    name: *const c_char,
    pages: c_int,
) -> c_int {
    // SAFETY: `arg` is the `Hook` registered in `start`, alive while the
    // hook is registered, used on the store thread only.
    let hook = unsafe { &*(arg as *const Hook) };
    if pages < hook.asked_at.get() {
        hook.asked_at.set(0); // the WAL was started over
    }
    let inline =
        pages >= INLINE_PAGES || hook.inline.load(Ordering::Relaxed) && pages >= CHECKPOINT_PAGES;
    if inline {
        hook.asked_at.set(pages);
        // SAFETY: `db` and `name` are what SQLite called us with.
        unsafe { rusqlite::ffi::sqlite3_wal_checkpoint(db, name) };
    } else if pages - hook.asked_at.get() >= CHECKPOINT_PAGES {
        hook.asked_at.set(pages);
        if let Err(TrySendError::Disconnected(())) = hook.wake.try_send(()) {
            hook.inline.store(true, Ordering::Relaxed);
        }
    }
    rusqlite::ffi::SQLITE_OK
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_millis(100))?;
    // The WAL is shrunk back by whichever connection resets it.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    Ok(conn)
}

fn run(path: &Path, woken: Receiver<()>, failed: &AtomicBool) {
    let conn = match open(path) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!("checkpoints stay on the store thread: {e}");
            failed.store(true, Ordering::Relaxed);
            return;
        }
    };
    while woken.recv().is_ok() {
        // PASSIVE: copies what no reader still needs, waits for nobody.
        // What it cannot copy now is copied by the next one.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!("checkpoint failed (the next one retries): {e}");
        }
    }
}
