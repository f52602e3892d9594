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
/// an open file still guards the path everyone else locks.
pub type FileId = (u64, u64);

pub fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn open_file_id(file: &File) -> Option<FileId> {
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
    Ok(above_inotify(file))
}

/// Moves the lock's descriptor above the process's inotify descriptor.
///
/// A process killed with `kill -9` has its files released newest
/// descriptor first, and releasing an inotify instance that has watches
/// waits for an RCU grace period (~20 ms). Were the lock below the inotify
/// descriptor, every crash failover would wait for that; above it, the lock
/// is released first and a secondary takes over at once. (flock belongs to
/// the open file, so the duplicate keeps it and closing the original does
/// not release it.)
fn above_inotify(file: File) -> File {
    use std::os::fd::{AsRawFd, FromRawFd};
    let Some(inotify) = crate::fs_watch::instance_fd() else {
        return file;
    };
    if file.as_raw_fd() > inotify {
        return file;
    }
    let dup = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, inotify + 1) };
    if dup < 0 {
        return file;
    }
    drop(file);
    unsafe { File::from_raw_fd(dup) }
}

/// Takes the lock if nobody holds it.
pub fn try_acquire(path: &Path) -> io::Result<Option<PrimaryLock>> {
    let file = open_lock_file(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(PrimaryLock { _file: file })),
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
    Ok(try_acquire(path)?.is_none())
}

/// Starts the dedicated waiter thread: it blocks in `flock` until the lock is
/// ours and then hands it over through the returned channel.
/// Also returns the id of the file it waits on.
pub fn wait_in_thread(
    path: &Path,
) -> io::Result<(tokio::sync::oneshot::Receiver<PrimaryLock>, Option<FileId>)> {
    let file = open_lock_file(path)?;
    let id = open_file_id(&file);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("grove-lock-waiter".into())
        .spawn(move || match file.lock() {
            Ok(()) => {
                // If the receiver is gone the process is shutting down; the
                // lock is released when `file` drops here.
                let _ = tx.send(PrimaryLock { _file: file });
            }
            Err(e) => tracing::error!("waiting for the election lock failed: {e}"),
        })?;
    Ok((rx, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_sits_above_inotify_and_survives_the_move() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("primary.lock");
        let held = try_acquire(&path).unwrap().expect("free lock");
        let inotify = crate::fs_watch::instance_fd().expect("inotify in tests");
        assert!(
            held._file.as_raw_fd() > inotify,
            "released before inotify on kill -9"
        );
        assert!(
            is_held(&path).unwrap(),
            "the duplicate still holds the flock"
        );
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
        let (rx, id) = wait_in_thread(&path).unwrap();
        assert_eq!(id, file_id(&path));
        drop(first);
        let _second = tokio::time::timeout(std::time::Duration::from_secs(5), rx)
            .await
            .expect("waiter woke")
            .expect("lock handed over");
    }
}
