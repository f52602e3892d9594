//! Concurrent writers for the scenarios that need a write load (fanout,
//! memory): each writer is a client in its own thread and runtime, as
//! separate windows would be, writing pending tasks behind the blocker.

use crate::local_cluster::LocalCluster;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What one writer thread reports: writes done and when it finished.
type WriterResult = Result<(usize, Instant), String>;

pub struct Writers {
    handles: Vec<JoinHandle<WriterResult>>,
    started: Instant,
}

impl Writers {
    /// Starts `n` writers that each write `per_writer` times.
    pub fn start(c: &LocalCluster, n: usize, per_writer: usize, blocker: &str) -> Writers {
        let started = Instant::now();
        let handles = (0..n)
            .map(|w| {
                let client = c.client(&format!("bench-load-{w}"));
                let blocker = blocker.to_string();
                std::thread::spawn(move || write_loop(client, &blocker, per_writer))
            })
            .collect();
        Writers { handles, started }
    }

    /// True once every writer thread has ended.
    pub fn finished(&self) -> bool {
        self.handles.iter().all(|h| h.is_finished())
    }

    /// Waits for the writers to end by themselves; returns the writes done
    /// and the time from start until the last writer finished.
    pub async fn wait(self) -> Result<(usize, Duration), String> {
        let started = self.started;
        let mut total = 0;
        let mut last = started;
        for h in self.handles {
            let joined = tokio::task::spawn_blocking(move || h.join())
                .await
                .map_err(|e| e.to_string())?;
            let (n, at) = joined.map_err(|_| "writer thread panicked".to_string())??;
            total += n;
            last = last.max(at);
        }
        Ok((total, last.duration_since(started)))
    }
}

fn write_loop(mut client: crate::client::Client, blocker: &str, n: usize) -> WriterResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        for _ in 0..n {
            super::pending_write(&mut client, blocker).await?;
        }
        Ok((n, Instant::now()))
    })
}
