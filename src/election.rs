//! Election by `flock(LOCK_EX)` on `.grove/primary.lock` (see docs/design.md, Election).
//!
//! The lock alone decides who is primary. The kernel releases it the instant
//! the holder's process dies, so a secondary that keeps one OS thread blocked
//! in `File::lock()` learns of a crash (even `kill -9`) within microseconds,
//! with no timeout involved.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Proof that this process holds the election lock. Dropping it (or the
/// process dying) releases the lock.
#[derive(Debug)]
pub struct PrimaryLock {
    _file: File,
}

/// Which file a path names: `(device, inode)`. A lock file that was
/// unlinked (the state dir deleted) keeps its inode while a new file at the
/// same path gets another, so comparing ids tells whether a lock taken on
/// an open file still guards the path everyone else locks. That holds only
/// while the first file is open: a file deleted and closed frees its inode
/// number, and the next file made may get it.
pub type FileId = (u64, u64);

pub fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

pub fn open_file_id(file: &File) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    file.metadata().ok().map(|m| (m.dev(), m.ino()))
}

impl PrimaryLock {
    /// True when this lock is on the file that `path` names now.
    pub fn is_at(&self, path: &Path) -> bool {
        let held = open_file_id(&self._file);
        held.is_some() && held == file_id(path)
    }

    pub fn id(&self) -> Option<FileId> {
        open_file_id(&self._file)
    }
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // Opened for writing only because flock needs an open fd; never written.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    Ok(file)
}

/// Moves the lock's descriptor to the top of the process's descriptors.
///
/// A process killed with `kill -9` has its files released newest
/// descriptor first (the kernel queues each final close as task work, and
/// runs that work last-queued first). Every descriptor above the lock's is
/// released before the lock: releasing an inotify instance that has watches
/// waits for an RCU grace period (~20 ms), and each socket a primary accepted
/// wakes its peer on the way. So the lock goes above all of them — as high
/// as the descriptor limit allows, below [`LOCK_FD_CEILING`] — and a
/// secondary takes over as soon as the memory is torn down. (flock belongs
/// to the open file, so the duplicate keeps it and closing the original
/// does not release it.) Where no high descriptor is free, it goes just
/// above inotify, as before.
fn to_the_top(file: File) -> File {
    use std::os::fd::{AsRawFd, FromRawFd};
    let inotify = crate::fs_watch::instance_fd().unwrap_or(-1);
    let top = top_descriptor();
    let wanted = [top, top / 2, inotify + 1];
    for min in wanted.into_iter().filter(|&min| min > inotify) {
        if file.as_raw_fd() >= min {
            return file;
        }
        // The top taken (a second lock file in this process): the next
        // free descriptor above it would grow the table, see
        // `reserve_lock_descriptor`.
        if min == top && unsafe { libc::fcntl(top, libc::F_GETFD) } >= 0 {
            continue;
        }
        let dup = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
        if dup >= 0 {
            drop(file);
            return unsafe { File::from_raw_fd(dup) };
        }
    }
    file
}

/// The highest descriptor the lock may take, plus one: the kernel sizes a
/// process's descriptor table by its highest descriptor, so not beyond
/// this even when the limit allows a million.
const LOCK_FD_CEILING: libc::c_int = 1024;

/// Grows this process's descriptor table to hold [`top_descriptor`] now,
/// while it has one thread. The kernel grows a table shared by several
/// threads only after an RCU grace period (`synchronize_rcu`, 10–20 ms
/// here): moving the lock to the top in a running member or command would
/// wait for one every time. Called first thing in `main`; a table never
/// shrinks.
pub fn reserve_lock_descriptor() {
    let top = top_descriptor();
    if top <= 2 {
        return;
    }
    for fd in [2, 1, 0] {
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, top) };
        if dup >= 0 {
            unsafe { libc::close(dup) };
            return;
        }
    }
}

/// The descriptor just below the limit of open files, at most
/// [`LOCK_FD_CEILING`] - 1.
fn top_descriptor() -> libc::c_int {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    let soft = libc::c_int::try_from(limit.rlim_cur).unwrap_or(libc::c_int::MAX);
    soft.min(LOCK_FD_CEILING) - 1
}

/// Takes the lock if nobody holds it.
pub fn try_acquire(path: &Path) -> io::Result<Option<PrimaryLock>> {
    let file = open_lock_file(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(PrimaryLock {
            _file: to_the_top(file),
        })),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// True when some process holds the lock right now. Takes and drops the
/// lock when it is free, which can delay a waiting secondary by microseconds.
pub fn is_held(path: &Path) -> io::Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    // A probe, released at once: its descriptor stays where it opened.
    match open_lock_file(path)?.try_lock() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// The election won by the waiter thread: the lock, and what the thread
/// went on to do while holding it (`then` of [`wait_in_thread`]).
pub struct Won<T> {
    pub lock: PrimaryLock,
    /// Closed without a value when the thread could not run `then`.
    pub then: tokio::sync::oneshot::Receiver<T>,
}

/// Starts the dedicated waiter thread: it blocks in `flock` until the lock is
/// ours, hands it over through the returned channel at once, and then runs
/// `then` on the same thread, still holding the lock through a second
/// descriptor of the file (so a receiver that drops the lock meanwhile
/// does not release it under `then`). A promotion's first step thus starts
/// on the thread that learned of the win, the moment it did, while the
/// event loop wakes and binds the sockets on the other core (see
/// docs/design.md, Promotion). Also returns the id of the file it waits on.
pub fn wait_in_thread<T: Send + 'static>(
    path: &Path,
    then: impl FnOnce(&PrimaryLock) -> T + Send + 'static,
) -> io::Result<(tokio::sync::oneshot::Receiver<Won<T>>, Option<FileId>)> {
    // At the top before it is won: a kill may come at any moment after.
    let file = to_the_top(open_lock_file(path)?);
    let id = open_file_id(&file);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("grove-lock-waiter".into())
        .spawn(move || match file.lock() {
            Ok(()) => {
                let kept = file.try_clone().ok().map(|f| PrimaryLock { _file: f });
                let (done, then_rx) = tokio::sync::oneshot::channel();
                let won = Won {
                    lock: PrimaryLock { _file: file },
                    then: then_rx,
                };
                // If the receiver is gone the process is shutting down; the
                // lock is released when the message drops here.
                if tx.send(won).is_err() {
                    return;
                }
                if let Some(kept) = kept {
                    let result = then(&kept);
                    // Closed before the result is told: whoever hears it
                    // holds the lock's only descriptor.
                    drop(kept);
                    let _ = done.send(result);
                }
            }
            Err(e) => tracing::error!("waiting for the election lock failed: {e}"),
        })?;
    Ok((rx, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_sits_above_every_other_descriptor_and_survives_the_move() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("primary.lock");
        let held = try_acquire(&path).unwrap().expect("free lock");
        let inotify = crate::fs_watch::instance_fd().expect("inotify in tests");
        assert!(
            held._file.as_raw_fd() > inotify,
            "released before inotify on kill -9"
        );
        // Opened after the lock, as a primary's sockets are: still below it.
        let later = std::fs::File::open(&path).unwrap();
        assert!(
            held._file.as_raw_fd() > later.as_raw_fd(),
            "a descriptor opened later would be released first on kill -9"
        );
        assert!(held._file.as_raw_fd() >= top_descriptor() / 2);
        assert!(
            is_held(&path).unwrap(),
            "the duplicate still holds the flock"
        );
    }

    /// A second lock in the process (another workspace's) and a probe of
    /// a held one stay within the reserved table: above it the kernel
    /// would grow a shared table only after an RCU grace period.
    #[test]
    fn a_second_lock_and_a_probe_stay_below_the_top() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("one.lock"), dir.path().join("two.lock"));
        let first = try_acquire(&one).unwrap().expect("free lock");
        let second = try_acquire(&two).unwrap().expect("free lock");
        let top = top_descriptor();
        assert!(first._file.as_raw_fd() <= top);
        assert!(second._file.as_raw_fd() <= top);
        assert!(is_held(&one).unwrap());
        drop(first);
        assert!(!is_held(&one).unwrap());
    }

    #[test]
    fn second_try_fails_until_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("primary.lock");
        let first = try_acquire(&path).unwrap().expect("free lock");
        assert!(try_acquire(&path).unwrap().is_none());
        assert!(is_held(&path).unwrap());
        drop(first);
        assert!(!is_held(&path).unwrap());
    }

    #[tokio::test]
    async fn waiter_wakes_on_release() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("primary.lock");
        let first = try_acquire(&path).unwrap().unwrap();
        let path_in_thread = path.clone();
        let (rx, id) = wait_in_thread(&path, move |held| held.is_at(&path_in_thread)).unwrap();
        assert_eq!(id, file_id(&path));
        drop(first);
        let won = tokio::time::timeout(std::time::Duration::from_secs(5), rx)
            .await
            .expect("waiter woke")
            .expect("lock handed over");
        // `then` ran holding the lock, on the file it was taken on.
        assert!(won.then.await.unwrap(), "then saw the lock on the path");
        assert!(is_held(&path).unwrap());
        drop(won.lock);
        assert!(!is_held(&path).unwrap(), "the second descriptor is closed");
    }
}
