//! `.grove/primary.json`: who the primary is and where its sockets are.
//!
//! Written only by the lock holder, atomically (temp file + rename), after
//! its sockets are bound. Everyone else watches it to follow failovers; it is
//! a hint, never the authority — the flock is.

use crate::fs_watch::FileWatch;
use crate::paths::{Workspace, write_replace};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrimaryRecord {
    pub instance_id: String,
    pub pid: u32,
    pub epoch: u64,
    /// `ipc://` endpoint of the PUB socket.
    #[serde(rename = "pub")]
    pub pub_endpoint: String,
    /// `ipc://` endpoint of the ROUTER socket.
    #[serde(rename = "rpc")]
    pub rpc_endpoint: String,
    /// Unix milliseconds.
    pub started_at: u64,
}

impl PrimaryRecord {
    pub fn write(&self, ws: &Workspace) -> std::io::Result<()> {
        self.write_into(ws, None)
    }

    /// Writes the record, into `slot` when there is one (see
    /// [`RecordSlot`]), else through a new temp file.
    pub fn write_into(&self, ws: &Workspace, slot: Option<RecordSlot>) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        // No fsync: the record only says who serves *now*. After a power
        // loss no member runs, and the next one writes its own; a crash of
        // this process loses nothing (the page cache outlives it). The flush
        // cost a new primary ~0.5 ms during every failover.
        match slot.map(|slot| slot.fill(&json, ws)) {
            Some(Ok(())) => Ok(()),
            _ => write_replace(&ws.primary_json(), &json),
        }
    }

    /// Reads the record; `None` when absent or unreadable (a corrupt record
    /// is treated like a missing one: the next primary rewrites it).
    pub fn read(ws: &Workspace) -> Option<PrimaryRecord> {
        let bytes = std::fs::read(ws.primary_json()).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!("ignoring unreadable {}: {e}", ws.primary_json().display());
                None
            }
        }
    }

    /// Whether the recorded process still runs (it may be hung or stopped;
    /// a zombie waiting for its parent counts as dead).
    pub fn pid_alive(&self) -> bool {
        crate::proc::running(self.pid)
    }

    /// Whether the recorded process still runs and is the one that wrote
    /// the record, not another that reused its pid: that one started no
    /// later than the member it runs recorded `started_at` (a member may
    /// start long after its process, as `grove acp` does), while a process
    /// that reused the pid started after the recorded one died.
    pub fn same_process_runs(&self) -> bool {
        self.pid_alive()
            && crate::proc::started_at_ms(self.pid)
                .is_some_and(|at| at <= self.started_at + START_SLACK_MS)
    }
}

/// Allowance for reading a process's start from `/proc` (the boot time,
/// to the second, plus clock ticks) against the member's own clock (see
/// [`PrimaryRecord::same_process_runs`]).
const START_SLACK_MS: u64 = 1_000;

/// A file made ahead of time by a member that may be promoted, for its
/// `primary.json`: the promotion then only writes and renames it. Creating
/// a file allocates an inode, which on a file system without a journal
/// searches past every inode freed in the last minutes (ext4's
/// `recently_deleted`), and each failover frees one (the record it
/// replaces): up to ~1.5 ms of a failover went there.
/// `.grove/primary.next-PID-INSTANCE`; removed when dropped unused, and a
/// dead member's by the next member that makes its own.
pub struct RecordSlot {
    path: PathBuf,
    file: Option<std::fs::File>,
}

const SLOT_PREFIX: &str = "primary.next-";

impl RecordSlot {
    /// `None` when the file cannot be made: the record is then written
    /// the usual way.
    pub fn prepare(ws: &Workspace, instance_id: &str) -> Option<RecordSlot> {
        remove_stale_slots(ws);
        // The instance as well as the pid: members in different pid
        // namespaces may share a workspace, and a pid.
        let path = ws
            .state_dir
            .join(format!("{SLOT_PREFIX}{}-{instance_id}", std::process::id()));
        let file = crate::paths::open_private(&path).ok()?;
        Some(RecordSlot {
            path,
            file: Some(file),
        })
    }

    /// Writes `record` into the slot and renames it over `primary.json`.
    /// Fails when the slot is not in the workspace's `.grove` any more
    /// (the caller then writes the record the usual way).
    fn fill(mut self, record: &[u8], ws: &Workspace) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let file = self.file.take().expect("a slot is filled once");
        let filled = (file.write_all_at(record, 0))
            .and_then(|()| std::fs::rename(&self.path, ws.primary_json()));
        if filled.is_err() {
            let _ = std::fs::remove_file(&self.path);
        }
        filled
    }
}

impl Drop for RecordSlot {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes the slots of members that are gone (they die without cleaning
/// up): so there are never more than the members that died since the last
/// one started waiting.
fn remove_stale_slots(ws: &Workspace) {
    let Ok(entries) = std::fs::read_dir(&ws.state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = (name.to_str())
            .and_then(|n| n.strip_prefix(SLOT_PREFIX)?.split('-').next()?.parse().ok());
        if pid.is_some_and(|pid: u32| pid != std::process::id() && !crate::proc::running(pid)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// How often a watch re-reads `primary.json` when the kernel cannot notify
/// it (inotify unavailable): the failover latency of that degraded mode.
const FALLBACK_POLL: Duration = Duration::from_millis(20);

/// Notices changes of `primary.json`: the kernel wakes `next_change` when the
/// file is replaced or removed (a new primary renames its record into place),
/// and `poll` reads it only when its identity (inode, size, mtime) changed.
pub struct PrimaryWatch {
    path: PathBuf,
    ws: Workspace,
    stamp: Option<(u64, u64, SystemTime)>,
    current: Option<PrimaryRecord>,
    notify: FileWatch,
    /// `notified` resolved (taking the kernel's report) and `poll` has not
    /// looked since: `poll_if_told` must look.
    told: bool,
}

impl PrimaryWatch {
    pub fn new(ws: &Workspace) -> Self {
        PrimaryWatch {
            path: ws.primary_json(),
            ws: ws.clone(),
            stamp: None,
            current: None,
            told: false,
            // Watching starts before the first read, so no change between
            // the two is missed.
            notify: FileWatch::new(&ws.primary_json(), FALLBACK_POLL),
        }
    }

    /// Waits until the record differs from the last one `poll` saw (it may
    /// have changed already). Cancel-safe.
    pub async fn next_change(&mut self) {
        loop {
            if self.poll() {
                return;
            }
            self.notify.changed().await;
        }
    }

    /// Resolves when the file may have changed since the last call; follow
    /// with `poll`. Cheaper than `next_change` in a loop that is woken by
    /// other things often (it does not `stat` the file each time).
    pub async fn notified(&mut self) {
        self.notify.changed().await;
        self.told = true;
    }

    /// Re-checks the file; returns true when the record changed.
    pub fn poll(&mut self) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.told = false;
        let stamp = std::fs::metadata(&self.path).ok().map(|m| {
            (
                m.ino(),
                m.size(),
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            )
        });
        if stamp == self.stamp && self.current.is_some() {
            return false;
        }
        self.stamp = stamp;
        let fresh = PrimaryRecord::read(&self.ws);
        let changed = fresh != self.current;
        self.current = fresh;
        changed
    }

    /// `poll`, skipped while the kernel has reported no change of the file
    /// since the last look (see `FileWatch::take_change`): a client that
    /// re-checks before every call pays no `stat` for it.
    pub fn poll_if_told(&mut self) -> bool {
        // Taken first: a report that arrives after it is left for the next.
        let reported = self.notify.take_change();
        if !reported && !self.told && self.current.is_some() {
            return false;
        }
        self.poll()
    }

    pub fn current(&self) -> Option<&PrimaryRecord> {
        self.current.as_ref()
    }
}

/// How long a member that survived a failover waits before it connects to
/// the new primary (registers, resubscribes to its heartbeats): a random
/// moment within [`SURVIVOR_SPREAD`] (from a quarter of it). Every survivor
/// notices the new `primary.json` at the same instant; connecting at once,
/// each with a handshake, a probe and a write, they competed with the
/// users' own reconnecting windows for the new primary's first
/// milliseconds, on the same cores (see docs/design.md, Following). A
/// member needs neither to follow: its events do not wait for either.
pub fn survivor_delay() -> std::time::Duration {
    let spread = SURVIVOR_SPREAD.as_micros() as u64;
    let random = uuid::Uuid::new_v4().as_u128() as u64;
    std::time::Duration::from_micros(spread / 4 + random % (spread - spread / 4))
}

/// See [`survivor_delay`]: far under the 100 ms in which every survivor
/// must write again.
pub const SURVIVOR_SPREAD: std::time::Duration = std::time::Duration::from_millis(16);

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: u64) -> PrimaryRecord {
        PrimaryRecord {
            instance_id: format!("i{epoch}"),
            pid: std::process::id(),
            epoch,
            pub_endpoint: "ipc:///nowhere/pub".into(),
            rpc_endpoint: "ipc:///nowhere/rpc".into(),
            started_at: 1,
        }
    }

    /// This process wrote a record when it started (or later, as a member
    /// that joined late): the same process. A record that says its process
    /// started an hour before this one did names a process whose pid this
    /// one reused. A dead pid is nobody.
    #[test]
    fn a_reused_pid_is_not_the_recorded_process() {
        let now = crate::protocol::now_ms();
        let ours = |started_at| PrimaryRecord {
            started_at,
            ..record(1)
        };
        assert!(ours(now).same_process_runs());
        assert!(!ours(now - 3_600_000).same_process_runs());
        let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!PrimaryRecord { pid, ..ours(now) }.same_process_runs());
    }

    /// `poll_if_told` skips the file only while nothing was reported: not
    /// after a report `notified` took (the failover a client waits for).
    #[tokio::test]
    async fn a_record_replaced_is_read_after_the_report_whoever_took_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".grove")).unwrap();
        let ws = Workspace::resolve(dir.path()).unwrap();
        record(1).write(&ws).unwrap();
        let mut watch = PrimaryWatch::new(&ws);
        assert!(watch.poll_if_told(), "the first look reads the file");
        assert_eq!(watch.current().map(|r| r.epoch), Some(1));
        assert!(!watch.poll_if_told(), "nothing reported: as it was");

        record(2).write(&ws).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.notified())
            .await
            .expect("the new record was reported");
        assert!(watch.poll_if_told(), "the report was taken by `notified`");
        assert_eq!(watch.current().map(|r| r.epoch), Some(2));

        record(3).write(&ws).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while watch.current().map(|r| r.epoch) != Some(3) {
            assert!(std::time::Instant::now() < deadline, "never read epoch 3");
            watch.poll_if_told();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(!watch.poll_if_told());
    }
}
