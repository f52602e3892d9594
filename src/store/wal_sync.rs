//! Run ends made durable in groups, off every run's path (see
//! docs/design.md, Durable run ends).
//!
//! The store commits with `synchronous = NORMAL`: a commit is in the WAL in
//! the page cache and reaches the disk with the next checkpoint, so a power
//! loss may take back the last commits. For most writes that is the price
//! of speed; a run's end is the one whose loss is dear: its shim is gone,
//! and without the outcome the run would be `lost` after the reboot,
//! however long it ran. Its shim used to `fdatasync` the exit record before
//! exiting, which held the run's slot for a journal commit — a quarter of
//! a trivial task's throughput on ext4. Now, after a batch that recorded a
//! run's end, the store thread asks this thread to `fdatasync` the WAL: one
//! sync covers every commit before it, and the requests made while one
//! runs share the next, so a burst of ends costs a few syncs, and no run
//! waits for any.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Syncs of the WAL this process made for run ends (reported by `ping`,
/// so `grove bench tasks` can show how many run ends each one covered).
static WAL_SYNCS: AtomicU64 = AtomicU64::new(0);

/// The WAL syncs made so far by this process.
pub fn syncs() -> u64 {
    WAL_SYNCS.load(Ordering::Relaxed)
}

/// The store thread's handle on the syncing thread, which starts with the
/// first request (an idle primary, or one that only creates tasks, has
/// none). Dropping it waits for the sync still owed.
pub(super) struct WalSync {
    wal: PathBuf,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// Requests so far; the thread syncs until it has covered them all.
    requested: u64,
    /// Requests covered by a finished sync.
    covered: u64,
    stop: bool,
}

impl WalSync {
    /// For the store at `db` (its WAL is `db` with `-wal` appended).
    pub(super) fn new(db: &Path) -> WalSync {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        WalSync {
            wal: wal.into(),
            shared: Arc::default(),
            thread: None,
        }
    }

    /// Asks for a sync of everything committed so far. Called after the
    /// COMMIT of a batch that recorded a run's end, so the sync that
    /// answers it starts after that commit's frames were written.
    pub(super) fn request(&mut self) {
        self.lock().requested += 1;
        self.shared.wake.notify_one();
        if self.thread.is_some() {
            return;
        }
        let (wal, shared) = (self.wal.clone(), self.shared.clone());
        match std::thread::Builder::new()
            .name("grove-walsync".into())
            .spawn(move || sync_loop(&wal, &shared))
        {
            Ok(thread) => self.thread = Some(thread),
            // No thread to be had: the store thread syncs this one itself,
            // and tries again next time.
            Err(e) => {
                tracing::warn!("cannot start the WAL sync thread: {e}; syncing inline");
                sync(&self.wal);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for WalSync {
    fn drop(&mut self) {
        self.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Syncs until every request is covered, then waits for the next; on
/// `stop`, returns once the requests made before it are covered.
fn sync_loop(wal: &Path, shared: &Shared) {
    let lock = || shared.state.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let target = {
            let mut state = lock();
            while state.requested == state.covered && !state.stop {
                state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.requested == state.covered {
                return;
            }
            state.requested
        };
        sync(wal);
        lock().covered = target;
    }
}

/// One `fdatasync` of the WAL, through a descriptor of its own: a sync
/// flushes the file's pages whoever wrote them. A WAL that is gone was
/// checkpointed into the store (which SQLite synced) and removed by the
/// last connection to close: nothing is owed.
fn sync(wal: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let synced = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(wal)
        .and_then(|file| file.sync_data());
    match synced {
        Ok(()) => {
            WAL_SYNCS.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            static FAILED: AtomicU64 = AtomicU64::new(0);
            // The first failure and then every thousandth: a disk that
            // fails every sync must not also flood the log.
            if FAILED.fetch_add(1, Ordering::Relaxed).is_multiple_of(1000) {
                tracing::warn!(
                    "cannot sync the store's WAL ({}): {e}; run ends since the last checkpoint may not survive a power loss",
                    wal.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_wal() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("grove.db-wal"), b"frames").expect("a WAL");
        let db = dir.path().join("grove.db");
        (dir, db)
    }

    fn covered(shared: &Shared) -> (u64, u64) {
        let state = shared.state.lock().expect("not poisoned");
        (state.requested, state.covered)
    }

    #[test]
    fn every_request_is_covered_by_a_sync_that_started_after_it() {
        let (_dir, db) = store_with_wal();
        let mut wal = WalSync::new(&db);
        assert!(wal.thread.is_none(), "no thread before the first request");
        let shared = wal.shared.clone();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for round in 1..=3 {
            wal.request();
            while covered(&shared).1 < round {
                assert!(
                    std::time::Instant::now() < deadline,
                    "request {round} never synced"
                );
                std::thread::yield_now();
            }
        }
        assert_eq!(covered(&shared), (3, 3));
    }

    #[test]
    fn the_sync_owed_when_the_store_thread_ends_is_made_before_drop_returns() {
        let (_dir, db) = store_with_wal();
        let mut wal = WalSync::new(&db);
        let shared = wal.shared.clone();
        for _ in 0..5 {
            wal.request();
        }
        drop(wal);
        assert_eq!(covered(&shared), (5, 5), "nothing owed is dropped");
    }

    #[test]
    fn a_missing_wal_owes_nothing_and_stops_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut wal = WalSync::new(&dir.path().join("grove.db"));
        let shared = wal.shared.clone();
        wal.request();
        drop(wal);
        assert_eq!(covered(&shared), (1, 1));
    }
}
