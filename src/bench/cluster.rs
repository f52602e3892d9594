//! A throwaway grove for benchmarks: a temp workspace and `grove serve`
//! processes of this binary, all killed on drop.

use crate::config::Config;
use crate::paths::Workspace;
use crate::store::Reader;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct BenchCluster {
    _dir: tempfile::TempDir,
    pub ws: Workspace,
    pub config: Config,
    pub members: Vec<Child>,
}

impl BenchCluster {
    pub fn new() -> Result<BenchCluster, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let ws = Workspace::resolve(dir.path()).map_err(|e| e.to_string())?;
        ws.ensure_state_dir().map_err(|e| e.to_string())?;
        Ok(BenchCluster {
            _dir: dir,
            ws,
            config: Config::default(),
            members: Vec::new(),
        })
    }

    pub fn spawn_member(&mut self) -> Result<u32, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .arg("serve")
            .arg("--workspace")
            .arg(&self.ws.root)
            .env("GROVE_LOG", "grove=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start grove serve: {e}"))?;
        let pid = child.id();
        self.members.push(child);
        Ok(pid)
    }

    /// Reaps exited members so that their pids read as dead.
    pub fn reap(&mut self) {
        self.members
            .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    }

    pub fn client(&self, name: &str) -> crate::client::Client {
        crate::client::Client::new(&self.ws, &self.config, name)
    }

    /// Waits until `n` live members other than the primary registered at
    /// `epoch` (their `hello` was acknowledged: they can write).
    pub async fn wait_registered(
        &self,
        n: usize,
        epoch: u64,
        primary_pid: u32,
    ) -> Result<(), String> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(reader) = Reader::open(&self.ws.db_path()) {
                let members = reader.members().map_err(|e| e.to_string())?;
                let ready = members
                    .iter()
                    .filter(|m| {
                        m.epoch == epoch && m.pid != primary_pid && crate::proc::running(m.pid)
                    })
                    .count();
                if ready >= n {
                    return Ok(());
                }
            }
            if Instant::now() > until {
                return Err(format!("{n} secondaries did not register at epoch {epoch}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for BenchCluster {
    fn drop(&mut self) {
        for c in &mut self.members {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
