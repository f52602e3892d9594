//! Continuity of a workspace's state across a deleted `.grove`, and what a
//! member reports about itself.
//!
//! - [`StateGuard`]: the primary's lock and store are open files; when
//!   `.grove` is deleted (or replaced) they live on unlinked, and a member
//!   that kept using them would answer writes into a file nobody will ever
//!   read, while a new member elects itself on the new lock file. The guard
//!   compares the inodes of the open lock and store with what the paths name
//!   now; a member whose state is gone stops and runs the election again.
//! - The epoch mark: every epoch a primary takes is recorded in the per-user
//!   socket dir (outside `.grove`), and a new primary takes one above both
//!   the store's epoch and the mark, so epochs (and the socket names that
//!   carry them) never repeat for a workspace, even after `.grove` is
//!   deleted. It is also the evidence that a store existed (an emptied
//!   `grove.db` must not silently become a fresh store).
//! - Member reports: each member writes which config files it uses and
//!   whether they loaded, for `grove config show`.

use crate::config::LoadReport;
use crate::election::{FileId, PrimaryLock, file_id};
use crate::paths::Workspace;
use crate::paths::write_replace;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the kernel cannot notify a secondary, how often it checks that the
/// lock it waits on is still the workspace's and whether its configuration
/// changed (normally both are watched: see `watches`).
pub const SECONDARY_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Watches for the files whose change a member must act on: `paths` and
/// the configuration files. Each wakes its member once per change (inotify),
/// or every `fallback` where the kernel cannot notify.
pub fn watches(
    paths: &[PathBuf],
    live: &crate::config::LiveConfig,
    fallback: std::time::Duration,
) -> Vec<crate::fs_watch::FileWatch> {
    use crate::fs_watch::FileWatch;
    let entries = paths.iter().map(|p| FileWatch::new(p, fallback));
    // Config files may be saved in place.
    let configs = live
        .files()
        .iter()
        .map(|p| FileWatch::with_writes(p, fallback));
    entries.chain(configs).collect()
}

/// The identities of the files a primary holds open.
#[derive(Debug, Clone)]
pub struct StateGuard {
    lock_path: PathBuf,
    lock_id: Option<FileId>,
    db_path: PathBuf,
    db_id: Option<FileId>,
}

impl StateGuard {
    /// Taken right after the store was opened, with the lock held.
    pub fn new(ws: &Workspace, lock: &PrimaryLock) -> StateGuard {
        StateGuard {
            lock_path: ws.lock_path(),
            lock_id: lock.id(),
            db_path: ws.db_path(),
            db_id: file_id(&ws.db_path()),
        }
    }

    /// True while the paths still name the files this primary holds.
    pub fn intact(&self) -> bool {
        self.lock_id.is_some()
            && file_id(&self.lock_path) == self.lock_id
            && file_id(&self.db_path) == self.db_id
    }
}

/// The highest epoch recorded for this workspace outside `.grove` (0 when
/// none, e.g. after a reboot emptied the runtime dir).
pub fn epoch_mark(ws: &Workspace) -> u64 {
    std::fs::read_to_string(ws.epoch_mark())
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Records `epoch` as the workspace's highest, on a failover's critical
/// path (before the sockets are bound): written over the mark in place, at
/// a fixed width, rather than through a new file renamed over it. Creating
/// a file allocates an inode, which on a file system without a journal
/// searches past every inode freed in the last minutes (ext4's
/// `recently_deleted`), and each failover had freed the previous mark's:
/// 0.5–1.3 ms of every failover went there. Only the lock holder writes it
/// (one `pwrite` of 21 bytes into the page cache: a crash cannot tear it)
/// and nobody reads it without the lock, so the rename bought nothing.
pub fn record_epoch(ws: &Workspace, epoch: u64) {
    if epoch <= epoch_mark(ws) {
        return;
    }
    if let Err(e) = write_mark(&ws.epoch_mark(), epoch) {
        tracing::warn!(
            "cannot record epoch {epoch} in {}: {e}",
            ws.epoch_mark().display()
        );
    }
}

/// The width every mark is written at: an epoch's digits, zero-padded
/// (the parse takes leading zeros), and a newline, so a new mark always
/// covers the old one entirely.
const MARK_WIDTH: u64 = 21;

fn write_mark(path: &std::path::Path, epoch: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    // In the private socket dir (checked by `ensure_socket_dir`).
    let file = crate::paths::open_private(path)?;
    file.write_all_at(format!("{epoch:020}\n").as_bytes(), 0)?;
    // Longer only if something else wrote it; not on the usual path.
    if file.metadata()?.len() > MARK_WIDTH {
        file.set_len(MARK_WIDTH)?;
    }
    Ok(())
}

/// One member's account of its configuration, in the socket dir.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberReport {
    pub instance_id: String,
    pub pid: u32,
    /// Start time of the process (clock ticks since boot): with the pid it
    /// tells a live member from a dead one whose pid was reused.
    pub proc_start: Option<u64>,
    pub kind: String,
    /// `primary` or `secondary`.
    pub role: String,
    pub config: LoadReport,
}

impl MemberReport {
    pub fn write(&self, ws: &Workspace) {
        let path = ws.member_report(&self.instance_id);
        let result = serde_json::to_vec_pretty(self)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_replace(&path, &bytes));
        if let Err(e) = result {
            tracing::debug!("cannot write {}: {e}", path.display());
        }
    }

    pub fn remove(ws: &Workspace, instance_id: &str) {
        let _ = std::fs::remove_file(ws.member_report(instance_id));
    }

    /// Reports of the members that run now; removes those of dead ones.
    pub fn read_all(ws: &Workspace) -> Vec<MemberReport> {
        let Ok(entries) = std::fs::read_dir(&ws.socket_dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !(name.starts_with("member-") && name.ends_with(".json")) {
                continue;
            }
            let Some(report) = read_report(&entry.path()) else {
                continue;
            };
            let alive = crate::proc::running(report.pid)
                && crate::proc::start_time(report.pid) == report.proc_start;
            if alive {
                out.push(report);
            } else {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        out.sort_by_key(|r| (r.role != "primary", r.pid));
        out
    }
}

fn read_report(path: &Path) -> Option<MemberReport> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mark is rewritten in place: it only grows, an old-format
    /// (unpadded) mark is covered entirely, a lower epoch changes nothing.
    #[test]
    fn the_epoch_mark_is_rewritten_in_place_and_only_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("epoch");
        std::fs::write(&path, "7\n").unwrap();
        write_mark(&path, 12).unwrap();
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&path).trim().parse::<u64>().unwrap(), 12);
        assert_eq!(read(&path).len() as u64, MARK_WIDTH);
        let ino = |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&p.metadata().unwrap());
        let before = ino(&path);
        write_mark(&path, u64::MAX).unwrap();
        assert_eq!(read(&path).trim().parse::<u64>().unwrap(), u64::MAX);
        assert_eq!(ino(&path), before, "the same file, written over");
        std::fs::write(&path, "garbage that is longer than any mark ever is\n").unwrap();
        write_mark(&path, 3).unwrap();
        assert_eq!(read(&path), format!("{:020}\n", 3));
    }
}
