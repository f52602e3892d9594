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

/// How the thread syncs a WAL: [`sync`], but for tests that hold a sync
/// open to see what arrives meanwhile.
type SyncFn = Arc<dyn Fn(&Path) + Send + Sync>;

/// The store thread's handle on the syncing thread, which starts with the
/// first request (an idle primary, or one that only creates tasks, has
/// none). Dropping it waits for the sync still owed: a handover may wait
/// for one `fdatasync` when a run ended just before it, and then the ends
/// it recorded are on disk before the next primary takes over.
pub(super) struct WalSync {
    wal: PathBuf,
    shared: Arc<Shared>,
    sync: SyncFn,
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
    /// Requests made before the start of the last finished sync.
    covered: u64,
    stop: bool,
}

impl WalSync {
    /// For the store at `db` (its WAL is `db` with `-wal` appended).
    pub(super) fn new(db: &Path) -> WalSync {
        Self::syncing_with(db, Arc::new(sync))
    }

    fn syncing_with(db: &Path, sync: SyncFn) -> WalSync {
        WalSync {
            wal: wal_of(db),
            shared: Arc::default(),
            sync,
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
        let (wal, shared, sync) = (self.wal.clone(), self.shared.clone(), self.sync.clone());
        match std::thread::Builder::new()
            .name("grove-walsync".into())
            .spawn(move || sync_loop(&wal, &shared, &*sync))
        {
            Ok(thread) => self.thread = Some(thread),
            // No thread to be had (the process is at its limit): this one
            // sync is made here, on the store thread, and the next request
            // tries again.
            Err(e) => {
                if rarely() {
                    tracing::warn!("cannot start the WAL sync thread: {e}; syncing inline");
                }
                (self.sync)(&self.wal);
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

/// The WAL of the store at `db`: SQLite names it `db` with `-wal` appended.
fn wal_of(db: &Path) -> PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    wal.into()
}

/// Syncs until every request is covered, then waits for the next; on
/// `stop`, returns once the requests made before it are covered. A sync
/// covers the requests made before it starts (`target`, read first): one
/// that comes while it runs gets the next.
fn sync_loop(wal: &Path, shared: &Shared, sync: &(dyn Fn(&Path) + Send + Sync)) {
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

/// True the first time and then every thousandth: a failure that repeats
/// on every run's end must not also flood the log.
fn rarely() -> bool {
    static TIMES: AtomicU64 = AtomicU64::new(0);
    TIMES.fetch_add(1, Ordering::Relaxed).is_multiple_of(1000)
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
            #[cfg(test)]
            tests::synced(wal);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            if rarely() {
                tracing::warn!(
                    "cannot sync the store's WAL ({}): {e}; run ends since the last checkpoint may not survive a power loss",
                    wal.display()
                );
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// The WALs this test process synced, each time (the count of
    /// [`syncs`] is shared by every test running beside).
    static SYNCED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    pub(super) fn synced(wal: &Path) {
        SYNCED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(wal.to_path_buf());
    }

    /// How often the WAL of the store at `db` was synced so far.
    pub(in crate::store) fn syncs_of(db: &Path) -> usize {
        let wal = wal_of(db);
        let synced = SYNCED.lock().unwrap_or_else(|p| p.into_inner());
        synced.iter().filter(|w| **w == wal).count()
    }

    fn store_with_wal() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("grove.db-wal"), b"frames").expect("a WAL");
        let db = dir.path().join("grove.db");
        (dir, db)
    }

    fn counters(shared: &Shared) -> (u64, u64) {
        let state = shared.state.lock().expect("not poisoned");
        (state.requested, state.covered)
    }

    /// How long a test waits for the sync thread before failing.
    const WAIT: Duration = Duration::from_secs(10);

    fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn every_request_is_synced_by_the_real_thread() {
        let (_dir, db) = store_with_wal();
        let mut wal = WalSync::new(&db);
        assert!(wal.thread.is_none(), "no thread before the first request");
        let shared = wal.shared.clone();
        for round in 1..=3 {
            wal.request();
            until(&format!("request {round} never synced"), || {
                counters(&shared).1 >= round
            });
        }
        assert_eq!(counters(&shared), (3, 3));
        assert!(syncs_of(&db) >= 1, "the WAL itself was synced");
    }

    /// A request that comes while a sync runs is not taken as covered by
    /// it (the sync may have flushed before its commit): a second sync
    /// starts after it.
    #[test]
    fn a_request_made_during_a_sync_gets_a_sync_of_its_own() {
        let (_dir, db) = store_with_wal();
        let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Mutex::new(released);
        let started = Arc::new(AtomicU64::new(0));
        let count = started.clone();
        let slow: SyncFn = Arc::new(move |_| {
            count.fetch_add(1, Ordering::SeqCst);
            let _ = entered_tx.send(());
            // Bounded, so that a failing test never hangs in `drop(wal)`.
            let _ = (released.lock().expect("one sync at a time")).recv_timeout(WAIT);
        });
        let mut wal = WalSync::syncing_with(&db, slow);
        let shared = wal.shared.clone();
        wal.request();
        entered.recv_timeout(WAIT).expect("the first sync started");
        wal.request();
        release.send(()).expect("the first sync ends");
        entered
            .recv_timeout(WAIT)
            .expect("a second sync started for the request made meanwhile");
        release.send(()).expect("the second sync ends");
        until("the second request never covered", || {
            counters(&shared) == (2, 2)
        });
        drop(wal);
        assert_eq!(started.load(Ordering::SeqCst), 2);
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
        assert_eq!(counters(&shared), (5, 5), "nothing owed is dropped");
    }

    #[test]
    fn a_missing_wal_owes_nothing_and_stops_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut wal = WalSync::new(&dir.path().join("grove.db"));
        let shared = wal.shared.clone();
        wal.request();
        drop(wal);
        assert_eq!(counters(&shared), (1, 1));
    }
}
