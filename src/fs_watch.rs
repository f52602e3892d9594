//! Waking up when a file is created, replaced or removed — without polling.
//!
//! Members follow `primary.json` all day; polling it (a `stat` every few
//! milliseconds) kept every idle member's core awake. Instead, one inotify
//! instance per process watches the directories of interest for entry
//! changes only (create, rename in or out, delete — never writes, so the
//! store's WAL next to `primary.json` wakes nobody), and one thread blocked
//! in `read` on it wakes exactly the watchers of the file that changed.
//!
//! One instance per process, not per watcher: the kernel allows a user only
//! `fs.inotify.max_user_instances` (often 128) of them, and a workspace may
//! have a hundred members. When inotify is unavailable (that limit reached,
//! a file system without it) a watch falls back to a timer of the caller's
//! choosing, and says so once in the log.
//!
//! A path whose directory does not exist yet (`~/.config/grove/grove.toml`
//! on most machines, `.grove` after someone deleted it) is watched through
//! its nearest existing ancestor: the creation of the next directory down
//! wakes the watch, which then moves closer.

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// Directory-entry changes (creating, renaming, removing files, the
/// directory itself going away) — never writes (`IN_MODIFY`), so the
/// store's WAL next to `primary.json` wakes nobody.
///
/// Nor closes after writing (`IN_CLOSE_WRITE`): on a directory that event
/// comes for every file in it, and `.grove` holds the store, its WAL, the
/// election lock and the logs, which every member and command opens for
/// writing and closes. A failover's dying primary closed a dozen of them
/// while its successor was promoting, and each close woke every member's
/// reader thread (`perf sched`: ~40 wake-ups in the 1.5 ms after the lock
/// was released, with 8 secondaries). A file written in place that some
/// watcher cares about (`grove.toml`) is watched on its own: `FILE_MASK`.
const DIR_MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR;

/// The watch on a file itself, for those who want in-place writes: its
/// closes after writing. Replaced or removed, the file's watch ends
/// (`IN_IGNORED`); the directory's entry event then adds one on the new
/// file.
const FILE_MASK: u32 = libc::IN_CLOSE_WRITE;

/// Notices changes of one path's directory entry.
pub struct FileWatch {
    path: PathBuf,
    /// `None` while not registered (inotify unavailable): then `changed`
    /// waits `fallback` and reports a change.
    rx: Option<watch::Receiver<u64>>,
    /// Where `rx` is registered: the directory's descriptor and the name.
    at: Option<(libc::c_int, OsString)>,
    /// Registered on an ancestor because a directory on the way is missing.
    proxy: bool,
    /// Also woken when the file, written in place, is closed.
    writes: bool,
    fallback: Duration,
}

impl FileWatch {
    /// Starts watching `path` at once: a change made after `new` returns is
    /// reported by the next `changed`, even if nobody awaited it meanwhile.
    pub fn new(path: &Path, fallback: Duration) -> FileWatch {
        Self::start(path, fallback, false)
    }

    /// Like `new`, and also woken when the file is written in place and
    /// closed (an editor saving a config file). Not for files that others
    /// open for writing without changing them (the election lock).
    pub fn with_writes(path: &Path, fallback: Duration) -> FileWatch {
        Self::start(path, fallback, true)
    }

    fn start(path: &Path, fallback: Duration, writes: bool) -> FileWatch {
        let mut w = FileWatch {
            path: path.to_path_buf(),
            rx: None,
            at: None,
            proxy: false,
            writes,
            fallback,
        };
        w.register();
        w
    }

    /// Watches the path's directory, or the nearest ancestor that exists
    /// for the creation of the next directory down.
    fn register(&mut self) {
        self.release();
        let mut target = self.path.as_path();
        loop {
            let dir = match target.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if dir.is_dir() {
                // On an ancestor only the creation of the next directory
                // down matters.
                let writes = self.writes && target == self.path;
                if let Some((rx, at)) = register(dir, target, writes) {
                    self.rx = Some(rx);
                    self.at = Some(at);
                }
                self.proxy = target != self.path;
                return;
            }
            if dir == Path::new(".") || dir.parent().is_none() {
                self.rx = None;
                return;
            }
            target = dir;
        }
    }

    /// Ends this watch's registration; the last watcher of a name takes
    /// its entry and its file watch with it. Without this, each run's
    /// record (watched until its agent's pid is in) left a kernel watch
    /// behind, held against the user's `fs.inotify.max_user_watches` until
    /// the record was deleted.
    fn release(&mut self) {
        self.rx = None;
        let (Some((dir_wd, name)), Some(w)) = (self.at.take(), watcher()) else {
            return;
        };
        let mut dirs = w.dirs.lock().unwrap_or_else(|p| p.into_inner());
        // The directory's entry is gone when the directory was (its files'
        // watches may outlive it, moved away with it): theirs go too.
        if let Some(dir) = dirs.by_wd.get_mut(&dir_wd) {
            if (dir.files.get(&name)).is_some_and(|w| w.sender.receiver_count() > 0) {
                return; // others still watch it
            }
            dir.files.remove(&name);
        }
        let dirs = &mut *dirs;
        dirs.files_by_wd.retain(|&wd, (d, n)| {
            let ours = *d == dir_wd && *n == name;
            if ours {
                unsafe { libc::inotify_rm_watch(w.fd, wd) };
            }
            !ours
        });
    }

    /// Whether the kernel notifies this watch (false: it polls).
    #[cfg(test)]
    fn is_notified(&self) -> bool {
        self.rx.is_some()
    }

    /// Resolves when the path may have changed since the last call (or since
    /// `new`). It can resolve spuriously: callers re-check the file.
    pub async fn changed(&mut self) {
        if let Some(rx) = self.rx.as_mut() {
            // Err: the directory went away (or the watcher thread failed).
            // Either way, or when a missing directory on the way appeared,
            // watch again and let the caller look at what is there now.
            if rx.changed().await.is_err() || self.proxy {
                self.register();
            }
            return;
        }
        tokio::time::sleep(self.fallback).await;
        self.register();
    }

    /// False only when the kernel has reported nothing about the path since
    /// the last call (or since `new`), so that it is as it was then; takes
    /// the report. True without inotify, or on an ancestor's watch: look.
    /// Spares a caller that checks before every step a `stat` per step.
    pub fn take_change(&mut self) -> bool {
        match self.rx.as_mut() {
            Some(rx) if !self.proxy => match rx.has_changed() {
                Ok(false) => false,
                Ok(true) => {
                    rx.borrow_and_update();
                    true
                }
                // The directory went away: watch again, and look.
                Err(_) => {
                    self.register();
                    true
                }
            },
            _ => true,
        }
    }
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.release();
    }
}

/// The descriptor of the process's inotify instance (started if need be),
/// `None` without inotify. See `election` for why the election lock cares.
pub fn instance_fd() -> Option<libc::c_int> {
    watcher().map(|w| w.fd)
}

/// The process-wide inotify instance and who waits on what.
struct Watcher {
    fd: libc::c_int,
    dirs: Mutex<Dirs>,
}

#[derive(Default)]
struct Dirs {
    by_wd: HashMap<libc::c_int, Dir>,
    /// The watches on files themselves (`FILE_MASK`): the directory's
    /// descriptor and the file's name in it.
    files_by_wd: HashMap<libc::c_int, (libc::c_int, OsString)>,
    /// Set when the reader thread stopped: every watch then polls.
    broken: bool,
}

/// The watchers of one file name.
struct Watched {
    sender: watch::Sender<u64>,
    /// Some watcher wants in-place writes too (`IN_CLOSE_WRITE`).
    writes: bool,
}

struct Dir {
    path: PathBuf,
    /// File name → its watchers (a generation counter).
    files: HashMap<OsString, Watched>,
    /// Events the reader thread woke for, in this directory (tests).
    #[cfg(test)]
    events: u64,
}

fn watcher() -> Option<&'static Watcher> {
    static WATCHER: OnceLock<Option<Watcher>> = OnceLock::new();
    WATCHER
        .get_or_init(|| match start() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    "inotify is unavailable ({e}); watching files by polling instead \
                     (raise fs.inotify.max_user_instances if the limit was reached)"
                );
                None
            }
        })
        .as_ref()
}

fn start() -> std::io::Result<Watcher> {
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    std::thread::Builder::new()
        .name("grove-fs-watch".into())
        .stack_size(256 * 1024)
        .spawn(move || read_loop(fd))
        .inspect_err(|_| unsafe {
            libc::close(fd);
        })?;
    Ok(Watcher {
        fd,
        dirs: Mutex::new(Dirs::default()),
    })
}

/// Resolves when any of `watches` reports a change (see `FileWatch::changed`;
/// cancel-safe like it).
/// With no watch at all it never resolves.
pub async fn any<'a>(watches: impl IntoIterator<Item = &'a mut FileWatch>) {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;
    let mut waits: Vec<Pin<Box<dyn Future<Output = ()> + Send + 'a>>> = watches
        .into_iter()
        .map(|w| Box::pin(w.changed()) as Pin<Box<dyn Future<Output = ()> + Send + 'a>>)
        .collect();
    std::future::poll_fn(|cx| {
        for w in waits.iter_mut() {
            if w.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    })
    .await
}

/// Adds `dir` to the instance (once per directory) and returns a receiver
/// that sees every change of `path`'s entry in it from now on, and where
/// it is registered.
fn register(
    dir: &Path,
    path: &Path,
    writes: bool,
) -> Option<(watch::Receiver<u64>, (libc::c_int, OsString))> {
    let w = watcher()?;
    let name = path.file_name()?.to_os_string();
    let c_dir = CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut dirs = w.dirs.lock().unwrap_or_else(|p| p.into_inner());
    if dirs.broken {
        return None;
    }
    // The same directory (inode) always yields the same descriptor, so two
    // watchers of one directory share its entry.
    let wd = unsafe { libc::inotify_add_watch(w.fd, c_dir.as_ptr(), DIR_MASK) };
    if wd < 0 {
        tracing::debug!(
            "cannot watch {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        return None;
    }
    let entry = dirs.by_wd.entry(wd).or_insert_with(|| Dir {
        path: dir.to_path_buf(),
        files: HashMap::new(),
        #[cfg(test)]
        events: 0,
    });
    let watched = entry.files.entry(name.clone()).or_insert_with(|| Watched {
        sender: watch::channel(0).0,
        writes: false,
    });
    watched.writes |= writes;
    let rx = watched.sender.subscribe();
    if writes {
        watch_file(w.fd, &mut dirs, wd, &name);
    }
    Some((rx, (wd, name)))
}

/// Adds the watch on the file `name` of the directory `dir_wd` itself (its
/// closes after writing), when the file exists. True when added.
fn watch_file(fd: libc::c_int, dirs: &mut Dirs, dir_wd: libc::c_int, name: &OsString) -> bool {
    let Some(dir) = dirs.by_wd.get(&dir_wd) else {
        return false;
    };
    let Ok(c_file) = CString::new(dir.path.join(name).into_os_string().into_vec()) else {
        return false;
    };
    // Added to whatever mask the inode is watched with, never in place of
    // it: when the name leads to a directory we watch (below), replacing
    // its mask until it is put back would lose that directory's entry
    // events in between (a `primary.json` renamed into place unseen; this
    // happened once in CI, the reader thread adding a watch for a link's
    // creation while a test renamed a file beside it).
    let wd = unsafe { libc::inotify_add_watch(fd, c_file.as_ptr(), FILE_MASK | libc::IN_MASK_ADD) };
    if wd < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::NotFound {
            // Its in-place saves go unseen (a rename over it still wakes
            // the watch): say why, once per attempt.
            tracing::warn!(
                "cannot watch {} for in-place writes: {e}",
                dir.path.join(name).display()
            );
        }
        return false; // not there (yet): its creation adds it
    }
    if let Some(dir) = dirs.by_wd.get(&wd) {
        // The name leads to a directory we watch (a link to it, or a
        // directory made where a file was expected): the add widened that
        // directory's mask. Put it back; there are no writes to watch.
        if let Ok(c_dir) = CString::new(dir.path.as_os_str().as_bytes()) {
            unsafe { libc::inotify_add_watch(fd, c_dir.as_ptr(), DIR_MASK) };
        }
        return false;
    }
    dirs.files_by_wd.insert(wd, (dir_wd, name.clone()));
    true
}

fn read_loop(fd: libc::c_int) {
    // u64 elements: aligned for `inotify_event`; room for many events.
    let mut buf = vec![0u64; 1024];
    loop {
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len() * 8) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("the inotify reader failed ({e}); watching files by polling instead");
            if let Some(w) = watcher() {
                let mut dirs = w.dirs.lock().unwrap_or_else(|p| p.into_inner());
                dirs.broken = true;
                dirs.by_wd.clear(); // dropping the senders wakes every watch
            }
            return;
        }
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
        dispatch(bytes);
    }
}

/// Wakes the watchers named by a buffer of `inotify_event`s.
fn dispatch(mut bytes: &[u8]) {
    let Some(w) = watcher() else { return };
    let fd = w.fd;
    let mut dirs = w.dirs.lock().unwrap_or_else(|p| p.into_inner());
    let header = std::mem::size_of::<libc::inotify_event>();
    while bytes.len() >= header {
        let event: libc::inotify_event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let len = event.len as usize;
        let Some(raw_name) = bytes.get(header..header + len) else {
            break;
        };
        bytes = &bytes[header + len..];
        let name_len = raw_name.iter().position(|&b| b == 0).unwrap_or(len);
        let name = OsString::from_vec(raw_name[..name_len].to_vec());
        if event.mask & libc::IN_Q_OVERFLOW != 0 {
            // Events were lost: anyone may have missed theirs, and a file
            // replaced meanwhile its watch on in-place writes.
            let mut rewatch = Vec::new();
            for (&dir_wd, dir) in &dirs.by_wd {
                for (name, w) in &dir.files {
                    bump(&w.sender);
                    if w.writes && w.sender.receiver_count() > 0 {
                        rewatch.push((dir_wd, name.clone()));
                    }
                }
            }
            for (dir_wd, name) in rewatch {
                watch_file(fd, &mut dirs, dir_wd, &name);
            }
            continue;
        }
        if event.mask & libc::IN_IGNORED != 0 {
            // A watched file was replaced or removed: its directory's entry
            // event says so. The directory is gone (or unmounted): wake its
            // watchers by dropping their senders; they register again.
            if dirs.files_by_wd.remove(&event.wd).is_none()
                && let Some(dir) = dirs.by_wd.remove(&event.wd)
            {
                tracing::debug!("stopped watching {}", dir.path.display());
            }
            continue;
        }
        #[cfg(test)]
        {
            let dir_wd = dirs.files_by_wd.get(&event.wd).map_or(event.wd, |f| f.0);
            if let Some(dir) = dirs.by_wd.get_mut(&dir_wd) {
                dir.events += 1;
            }
        }
        if let Some((dir_wd, file)) = dirs.files_by_wd.get(&event.wd) {
            // A file written in place was closed.
            if let Some(w) = dirs.by_wd.get(dir_wd).and_then(|d| d.files.get(file)) {
                bump(&w.sender);
            }
            continue;
        }
        let Some(dir) = dirs.by_wd.get(&event.wd) else {
            continue;
        };
        if name.is_empty() {
            // The directory itself moved or was deleted.
            dir.files.values().for_each(|w| bump(&w.sender));
        } else if let Some(watched) = dir.files.get(&name) {
            bump(&watched.sender);
            let appeared = event.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0;
            let wanted = watched.writes && watched.sender.receiver_count() > 0;
            if wanted && appeared && watch_file(fd, &mut dirs, event.wd, &name) {
                // Closed before its watch was added, the file's writes would
                // go unseen: wake the watchers again, after the add, so that
                // they read it as it is now (or its close wakes them).
                let dir = dirs.by_wd.get(&event.wd);
                if let Some(watched) = dir.and_then(|d| d.files.get(&name)) {
                    bump(&watched.sender);
                }
            }
        }
    }
}

fn bump(sender: &watch::Sender<u64>) {
    sender.send_modify(|g| *g = g.wrapping_add(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rename_onto_the_file_wakes_its_watch_only() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("primary.json");
        let mut watch = FileWatch::new(&target, Duration::from_secs(3600));
        assert!(watch.is_notified(), "inotify should work in tests");
        let mut other = FileWatch::new(&dir.path().join("other"), Duration::from_secs(3600));
        std::fs::write(dir.path().join("tmp"), b"x").unwrap();
        std::fs::rename(dir.path().join("tmp"), &target).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("the rename was noticed");
        let quiet = tokio::time::timeout(Duration::from_millis(100), other.changed()).await;
        assert!(quiet.is_err(), "another file's watch stayed asleep");
        // Opened for writing and closed, as the election lock is by every
        // member: not a change of the entry.
        drop(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&target)
                .unwrap(),
        );
        let quiet = tokio::time::timeout(Duration::from_millis(100), watch.changed()).await;
        assert!(
            quiet.is_err(),
            "a close after writing does not wake an entry watch"
        );
        std::fs::remove_file(&target).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("the removal was noticed");
    }

    /// `take_change` says "as it was" until the kernel reports the path,
    /// then "look" once per report, and never hides a report from
    /// `changed` that it did not take.
    #[tokio::test]
    async fn take_change_reports_each_change_once() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("primary.json");
        let mut watch = FileWatch::new(&target, Duration::from_secs(3600));
        assert!(watch.is_notified(), "inotify should work in tests");
        assert!(!watch.take_change(), "nothing happened yet");
        std::fs::write(dir.path().join("tmp"), b"x").unwrap();
        std::fs::rename(dir.path().join("tmp"), &target).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !watch.take_change() {
            assert!(
                std::time::Instant::now() < deadline,
                "the rename was never reported"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(!watch.take_change(), "one report, taken once");
        // A report not taken is still there for `changed`.
        std::fs::remove_file(&target).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("the removal was noticed");
        // Without inotify (or a directory missing on the way): always look.
        let mut missing =
            FileWatch::new(&dir.path().join("no/such/file"), Duration::from_secs(3600));
        assert!(missing.take_change());
    }

    /// Events the reader thread read for `dir`.
    fn events_in(dir: &Path) -> u64 {
        let dirs = watcher().unwrap().dirs.lock().unwrap();
        dirs.by_wd
            .values()
            .filter(|d| d.path == dir)
            .map(|d| d.events)
            .sum()
    }

    #[tokio::test]
    async fn only_the_file_whose_writes_are_wanted_wakes_the_reader_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("grove.toml");
        std::fs::write(&config, b"a = 1\n").unwrap();
        let forever = Duration::from_secs(3600);
        let mut watch = FileWatch::with_writes(&config, forever);
        let _lock = FileWatch::new(&dir.path().join("primary.lock"), forever);
        // Others open, write and close their files here all day (the store,
        // the lock, logs): the reader thread is not even woken for those.
        let before = events_in(dir.path());
        for name in ["grove.db", "primary.lock", "grove.db-wal"] {
            std::fs::write(dir.path().join(name), b"x").unwrap(); // created
        }
        let created = events_in_after(dir.path(), before + 3).await;
        for name in ["grove.db", "primary.lock", "grove.db-wal"] {
            std::fs::write(dir.path().join(name), b"y").unwrap(); // rewritten
        }
        // A marker event, to know the reader got past the closes.
        std::fs::write(dir.path().join("marker"), b"").unwrap();
        let after = events_in_after(dir.path(), created + 1).await;
        assert_eq!(after, created + 1, "closes of other files read no event");
        // The config written in place: its close is seen, each time.
        for round in 0..2 {
            std::fs::write(&config, format!("a = {round}\n")).unwrap();
            tokio::time::timeout(Duration::from_secs(5), watch.changed())
                .await
                .expect("an in-place write was noticed");
        }
        // Replaced by a rename (a new file): noticed, and so are the new
        // file's own in-place writes.
        std::fs::write(dir.path().join("tmp"), b"b = 1\n").unwrap();
        std::fs::rename(dir.path().join("tmp"), &config).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("the replacement was noticed");
        while tokio::time::timeout(Duration::from_millis(50), watch.changed())
            .await
            .is_ok()
        {}
        std::fs::write(&config, b"b = 2\n").unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("the new file's in-place write was noticed");
    }

    /// The watches on files themselves (for in-place writes) in `dir`.
    fn file_watches_in(dir: &Path) -> usize {
        let dirs = watcher().unwrap().dirs.lock().unwrap();
        let wds: Vec<_> = (dirs.by_wd.iter())
            .filter(|(_, d)| d.path == dir)
            .map(|(wd, _)| *wd)
            .collect();
        (dirs.files_by_wd.values())
            .filter(|(d, _)| wds.contains(d))
            .count()
    }

    #[tokio::test]
    async fn a_dropped_watch_leaves_no_kernel_watch_behind() {
        // The orchestrator watches each run's record until its agent's pid
        // is in: thousands of runs must not hold thousands of watches.
        let dir = tempfile::tempdir().unwrap();
        let forever = Duration::from_secs(3600);
        for i in 0..3 {
            let record = dir.path().join(format!("run-{i}.json"));
            let mut watch = FileWatch::with_writes(&record, forever);
            std::fs::write(&record, b"{}").unwrap(); // created: watched on its own
            tokio::time::timeout(Duration::from_secs(5), watch.changed())
                .await
                .expect("the record's creation was noticed");
            let until = std::time::Instant::now() + Duration::from_secs(5);
            while file_watches_in(dir.path()) != 1 {
                assert!(
                    std::time::Instant::now() < until,
                    "the record got its watch"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let second = FileWatch::with_writes(&record, forever);
            drop(watch);
            assert_eq!(file_watches_in(dir.path()), 1, "still watched by another");
            drop(second);
            assert_eq!(file_watches_in(dir.path()), 0, "the last one took it along");
        }
        // A link to the directory itself where a file was expected must not
        // take over the directory's own watch.
        let other = FileWatch::new(&dir.path().join("primary.json"), forever);
        std::os::unix::fs::symlink(dir.path(), dir.path().join("grove.toml")).unwrap();
        let mut linked = FileWatch::with_writes(&dir.path().join("grove.toml"), forever);
        assert_eq!(file_watches_in(dir.path()), 0);
        let mut other = other;
        std::fs::write(dir.path().join("tmp"), b"x").unwrap();
        std::fs::rename(dir.path().join("tmp"), dir.path().join("primary.json")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), other.changed())
            .await
            .expect("the directory still reports its entries");
        let _ = tokio::time::timeout(Duration::from_millis(10), linked.changed()).await;
    }

    /// Waits (bounded) until the reader has read `n` events for `dir`.
    async fn events_in_after(dir: &Path, n: u64) -> u64 {
        let until = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let seen = events_in(dir);
            if seen >= n || std::time::Instant::now() > until {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_missing_directory_is_watched_through_its_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("state");
        std::fs::create_dir(&sub).unwrap();
        let file = sub.join("deeper").join("grove.toml");
        let forever = Duration::from_secs(3600);
        let mut watch = FileWatch::with_writes(&file, forever);
        assert!(watch.is_notified() && watch.proxy);
        std::fs::create_dir(sub.join("deeper")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("the missing directory's creation was noticed");
        assert!(!watch.proxy, "now on the file's own directory");
        // Written in place (no rename): its close is seen.
        std::fs::write(&file, b"x = 1\n").unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("the new file was noticed");
        // The whole tree removed: the watch moves up again, and wakes.
        std::fs::remove_dir_all(&sub).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while !watch.proxy {
                watch.changed().await;
            }
        })
        .await
        .expect("the removal was noticed");
        let mut others = [FileWatch::new(&dir.path().join("a"), forever), watch];
        std::fs::create_dir(&sub).unwrap();
        tokio::time::timeout(Duration::from_secs(5), any(&mut others))
            .await
            .expect("any() wakes on one of them");
    }
}
