//! A throwaway grove for benchmarks and the demo: a temp workspace and
//! `grove serve` processes of this binary, all killed on drop.

use crate::config::Config;
use crate::paths::Workspace;
use crate::store::Reader;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct LocalCluster {
    pub dir: tempfile::TempDir,
    pub ws: Workspace,
    pub config: Config,
    pub members: Vec<Child>,
}

impl LocalCluster {
    pub fn new() -> Result<LocalCluster, String> {
        Self::with_config("")
    }

    /// A cluster whose workspace has this `grove.toml`.
    pub fn with_config(toml: &str) -> Result<LocalCluster, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let ws = Workspace::resolve(dir.path()).map_err(|e| e.to_string())?;
        ws.ensure_state_dir().map_err(|e| e.to_string())?;
        std::fs::write(ws.config_path(), toml).map_err(|e| e.to_string())?;
        let config = Config::load(&ws.state_dir).map_err(|e| e.to_string())?;
        Ok(LocalCluster {
            dir,
            ws,
            config,
            members: Vec::new(),
        })
    }

    pub fn spawn_member(&mut self) -> Result<u32, String> {
        self.spawn_member_logged(None)
    }

    /// Starts a member that records every event it receives in `events_log`.
    pub fn spawn_member_logged(
        &mut self,
        events_log: Option<&std::path::Path>,
    ) -> Result<u32, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // Tasks may call `grove progress`: put this binary first on PATH.
        let path = match (exe.parent(), std::env::var_os("PATH")) {
            (Some(dir), Some(p)) => {
                let mut dirs = vec![dir.to_path_buf()];
                dirs.extend(std::env::split_paths(&p));
                std::env::join_paths(dirs).unwrap_or(p)
            }
            (_, p) => p.unwrap_or_default(),
        };
        let mut cmd = Command::new(exe);
        cmd.arg("serve").arg("--workspace").arg(&self.ws.root);
        if let Some(log) = events_log {
            cmd.arg("--events-log").arg(log);
        }
        let child = cmd
            .env("PATH", path)
            .env(
                "GROVE_LOG",
                std::env::var("GROVE_LOG").unwrap_or_else(|_| "grove=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(member_log(&self.dir, self.members.len()))
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

/// Members log to files in the cluster's dir (kept only while it lives).
fn member_log(dir: &tempfile::TempDir, n: usize) -> Stdio {
    match std::fs::File::create(dir.path().join(format!("member-{n}.log"))) {
        Ok(f) => Stdio::from(f),
        Err(_) => Stdio::null(),
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for c in &mut self.members {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
