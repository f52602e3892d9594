//! A throwaway grove for benchmarks and the demo: a temp workspace and
//! `grove serve` processes of this binary, all killed on drop.

use crate::config::Config;
use crate::paths::Workspace;
use crate::store::Reader;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a throwaway cluster could not be set up or did not come up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot make the cluster's temporary workspace: {0}")]
    TempDir(std::io::Error),
    #[error(transparent)]
    Workspace(#[from] crate::paths::PathError),
    #[error("cannot write the cluster's grove.toml: {0}")]
    Config(std::io::Error),
    #[error(transparent)]
    BadConfig(#[from] crate::config::ConfigError),
    #[error("cannot find this grove binary: {0}")]
    Exe(std::io::Error),
    #[error("cannot start grove serve: {0}")]
    Spawn(std::io::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{n} secondaries did not register at epoch {epoch}")]
    NotRegistered { n: usize, epoch: u64 },
}

/// The benchmarks, the demo and chaos report failures as text.
impl From<ClusterError> for String {
    fn from(e: ClusterError) -> String {
        e.to_string()
    }
}

pub struct LocalCluster {
    pub dir: tempfile::TempDir,
    pub ws: Workspace,
    pub config: Config,
    pub members: Vec<Child>,
}

impl LocalCluster {
    pub fn new() -> Result<LocalCluster, ClusterError> {
        Self::with_config("")
    }

    /// A cluster whose workspace has this `grove.toml`.
    pub fn with_config(toml: &str) -> Result<LocalCluster, ClusterError> {
        let dir = tempfile::tempdir().map_err(ClusterError::TempDir)?;
        let ws = Workspace::resolve(dir.path())?;
        ws.ensure_state_dir()?;
        std::fs::write(ws.config_path(), toml).map_err(ClusterError::Config)?;
        let config = Config::load(&ws.state_dir)?;
        Ok(LocalCluster {
            dir,
            ws,
            config,
            members: Vec::new(),
        })
    }

    pub fn spawn_member(&mut self) -> Result<u32, ClusterError> {
        self.spawn_member_logged(None)
    }

    /// Starts a member that records every event it receives in `events_log`.
    pub fn spawn_member_logged(
        &mut self,
        events_log: Option<&std::path::Path>,
    ) -> Result<u32, ClusterError> {
        let exe = std::env::current_exe().map_err(ClusterError::Exe)?;
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
            // A throwaway workspace: not one to delegate to.
            .env(crate::projects::NO_REGISTER_ENV, "1")
            .env(
                "GROVE_LOG",
                std::env::var("GROVE_LOG").unwrap_or_else(|_| MEMBER_LOG.into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(member_log(&self.dir, self.members.len()))
            .spawn()
            .map_err(ClusterError::Spawn)?;
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
    ) -> Result<(), ClusterError> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(reader) = Reader::open(&self.ws.db_path()) {
                let members = reader.members()?;
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
                return Err(ClusterError::NotRegistered { n, epoch });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// What members log unless `GROVE_LOG` says otherwise: warnings, plus the
/// promotion and registration lines whose phase stamps `grove bench
/// failover` reads back (one line per member per failover).
const MEMBER_LOG: &str = "grove=warn,grove::node::primary=info,grove::node::secondary=info";

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
