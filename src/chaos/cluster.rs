//! The throwaway cluster: the members this run started and replaced.

use super::*;

use crate::client::Client;
use crate::local_cluster::LocalCluster;
use crate::paths::Workspace;
use crate::primary_record::PrimaryRecord;
use crate::store::Reader;
use std::path::PathBuf;
use std::time::{Duration, Instant};

// The members

/// A member this run started, and what it needs to check it afterwards.
pub(super) struct Member {
    pub(super) pid: u32,
    pub(super) events_log: PathBuf,
    /// The store's last seq just before this member was started: a survivor
    /// that logged nothing missed everything after it.
    pub(super) spawn_seq: u64,
    pub(super) killed: bool,
}

/// The throwaway grove and which of its members this tool killed.
pub(super) struct Cluster {
    pub(super) lc: LocalCluster,
    pub(super) members: Vec<Member>,
    pub(super) target: usize,
}

impl Cluster {
    pub(super) fn ws(&self) -> &Workspace {
        &self.lc.ws
    }

    /// Starts a member logging every event it receives to its own file.
    pub(super) fn spawn(&mut self) -> Result<u32, String> {
        let events_log = self
            .lc
            .dir
            .path()
            .join(format!("member-{}.events", self.members.len()));
        let spawn_seq = Reader::open(&self.ws().db_path())
            .and_then(|r| r.last_seq())
            .unwrap_or(0);
        let pid = self.lc.spawn_member_logged(Some(&events_log))?;
        self.members.push(Member {
            pid,
            events_log,
            spawn_seq,
            killed: false,
        });
        Ok(pid)
    }

    /// Members not killed by us (whether they still run is a check).
    pub(super) fn survivors(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| !m.killed)
    }

    /// Survivors whose process still runs (a zombie does not).
    pub(super) fn live_pids(&self) -> Vec<u32> {
        self.survivors()
            .filter(|m| crate::proc::running(m.pid))
            .map(|m| m.pid)
            .collect()
    }

    /// The primary named by `primary.json`, if it runs and is one of ours.
    pub(super) fn primary(&self) -> Option<PrimaryRecord> {
        let rec = PrimaryRecord::read(self.ws())?;
        let ours = self.survivors().any(|m| m.pid == rec.pid);
        (ours && rec.pid_alive()).then_some(rec)
    }

    /// SIGKILLs a live member of ours.
    pub(super) fn kill(&mut self, pid: u32) -> Result<(), String> {
        let Some(m) = self.members.iter_mut().find(|m| m.pid == pid && !m.killed) else {
            return Err(format!("pid {pid} is not a live member of this grove"));
        };
        m.killed = true;
        if unsafe { libc::kill(pid as i32, libc::SIGKILL) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(format!("kill -9 {pid}: {e}"));
        }
        Ok(())
    }

    /// Records that a member died by the crash hook: killed, as far as the
    /// checks are concerned.
    #[cfg(feature = "test-hooks")]
    pub(super) fn forget(&mut self, pid: u32) {
        if let Some(m) = self.members.iter_mut().find(|m| m.pid == pid) {
            m.killed = true;
        }
    }

    /// Reaps exited members without forgetting them (their `Child` handles
    /// stay, so that member log file names stay unique and drop is safe).
    pub(super) fn reap(&mut self) {
        for c in &mut self.lc.members {
            let _ = c.try_wait();
        }
    }

    /// Starts members until `target` run again; returns the new pids.
    pub(super) fn refill(&mut self) -> Result<Vec<u32>, String> {
        self.reap();
        let mut new = Vec::new();
        while self.live_pids().len() < self.target {
            new.push(self.spawn()?);
        }
        Ok(new)
    }

    /// Waits until each of `pids` is the primary or a secondary registered
    /// with the current primary (its `hello` acknowledged: it can write and
    /// it follows the stream).
    pub(super) async fn wait_ready(&self, pids: &[u32]) -> Result<(), String> {
        let until = Instant::now() + DEADLINE;
        loop {
            let mut waiting = Vec::new();
            for &pid in pids {
                if !crate::proc::running(pid) {
                    return Err(format!("member pid {pid} exited on its own"));
                }
                if !self.is_ready(pid) {
                    waiting.push(pid);
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(format!(
                    "members {waiting:?} did not become primary or register within {} s",
                    DEADLINE.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Primary, or registered with the current primary's epoch.
    pub(super) fn is_ready(&self, pid: u32) -> bool {
        let Some(rec) = self.primary() else {
            return false;
        };
        if rec.pid == pid {
            return true;
        }
        Reader::open(&self.ws().db_path())
            .and_then(|r| r.members())
            .is_ok_and(|ms| ms.iter().any(|m| m.pid == pid && m.epoch == rec.epoch))
    }

    /// SIGTERMs the survivors (a graceful handover each) and waits for all
    /// of them; returns the pids that had to be SIGKILLed.
    pub(super) async fn stop(&mut self) -> Vec<u32> {
        let live = self.live_pids();
        for pid in &live {
            unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
        }
        let until = Instant::now() + DEADLINE;
        while Instant::now() < until && live.iter().any(|p| crate::proc::running(*p)) {
            self.reap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stuck: Vec<u32> = live
            .into_iter()
            .filter(|p| crate::proc::running(*p))
            .collect();
        for c in &mut self.lc.members {
            let _ = c.kill();
            let _ = c.wait();
        }
        stuck
    }
}

/// Whatever way the run ends — checks done, an early error, Ctrl-C — no
/// process of it may outlive it: members first (so that none starts another
/// task), then every process of every recorded run (shims run in sessions of
/// their own and the blocker would otherwise sleep for an hour).
impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.lc.members {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in run_processes(&self.lc.ws) {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Waits until the first member answers as primary.
pub(super) async fn wait_first_primary(client: &mut Client, clock: &Clock) -> Result<(), String> {
    let until = Instant::now() + DEADLINE;
    loop {
        match crate::client::ping(client).await {
            Ok(info) => {
                clock.say(format!("primary pid {} (epoch {})", info.pid, info.epoch));
                return Ok(());
            }
            Err(e) if Instant::now() > until => return Err(format!("no primary: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}
