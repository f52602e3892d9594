//! `.grove/primary.json`: who the primary is and where its sockets are.
//!
//! Written only by the lock holder, atomically (temp file + rename), after
//! its sockets are bound. Everyone else watches it to follow failovers; it is
//! a hint, never the authority — the flock is.

use crate::paths::{Workspace, write_atomic};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::SystemTime;

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
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(&ws.primary_json(), &json)
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
}

/// Notices changes of `primary.json` cheaply: a `stat` per poll, a read only
/// when the file's identity (inode, size, mtime) changed.
pub struct PrimaryWatch {
    path: PathBuf,
    ws: Workspace,
    stamp: Option<(u64, u64, SystemTime)>,
    current: Option<PrimaryRecord>,
}

impl PrimaryWatch {
    pub fn new(ws: &Workspace) -> Self {
        PrimaryWatch {
            path: ws.primary_json(),
            ws: ws.clone(),
            stamp: None,
            current: None,
        }
    }

    /// Re-checks the file; returns true when the record changed.
    pub fn poll(&mut self) -> bool {
        use std::os::unix::fs::MetadataExt;
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

    pub fn current(&self) -> Option<&PrimaryRecord> {
        self.current.as_ref()
    }
}
