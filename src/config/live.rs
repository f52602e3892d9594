//! A running member's configuration, reloaded when a file changes (one
//! `stat` per file per use), keeping the last good one when an edit breaks it.

use super::{Config, config_files};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Identity of one config file as seen by `stat`: changes when it is
/// edited, replaced, created or removed.
type Stamp = Option<(u64, u64, u64, i64, i64, i64, i64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

/// What a member reports about its configuration (`grove config show`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoadReport {
    /// The files this member reads, lowest precedence first, and whether
    /// each exists.
    pub files: Vec<(PathBuf, bool)>,
    /// The error of the last load, when it failed; the member then keeps
    /// the configuration it loaded at `loaded_at`.
    pub error: Option<String>,
    /// Unix milliseconds of the last successful load.
    pub loaded_at: u64,
}

struct Loaded {
    /// Counts the reloads (and failed reloads), so that whoever reports
    /// them learns of a reload another caller triggered.
    generation: u64,
    stamps: Vec<Stamp>,
    config: Arc<Config>,
    report: LoadReport,
}

/// The configuration of a running member, reloaded when a file changes.
/// A check costs one `stat` per file; a file that fails to load leaves the
/// last good configuration in use, and the error in the report.
pub struct LiveConfig {
    state_dir: PathBuf,
    /// The config files, lowest precedence first.
    configs: Vec<PathBuf>,
    /// What a reload depends on: the config files and the approval record
    /// of the workspace's.
    files: Vec<PathBuf>,
    loaded: Mutex<Loaded>,
    /// Held while a reload reads the files (see `refresh`).
    loading: Mutex<()>,
}

impl LiveConfig {
    /// Loads the files now; when they do not load, starts from `fallback`.
    pub fn new(state_dir: &Path, fallback: Config) -> LiveConfig {
        let configs = config_files(state_dir);
        // The approval of a committed workspace config: `grove config
        // trust` changes it, not the config, and must reload it too.
        let approval = crate::trust::committed::approval_record(&state_dir.join("grove.toml"));
        let live = LiveConfig {
            state_dir: state_dir.to_path_buf(),
            loaded: Mutex::new(Loaded {
                generation: 0,
                stamps: Vec::new(),
                config: Arc::new(fallback),
                report: LoadReport {
                    files: configs.iter().map(|f| (f.clone(), f.exists())).collect(),
                    error: None,
                    loaded_at: crate::protocol::now_ms(),
                },
            }),
            files: configs.iter().cloned().chain(approval).collect(),
            configs,
            loading: Mutex::new(()),
        };
        live.refresh();
        live
    }

    /// The configuration to use now (reloaded first if a file changed).
    pub fn current(&self) -> Arc<Config> {
        self.refresh();
        self.lock().config.clone()
    }

    /// The configuration as last loaded, without looking at the files:
    /// for a timer re-armed at every heartbeat (the member's watches
    /// reload it when a file changes).
    pub fn latest(&self) -> Arc<Config> {
        self.lock().config.clone()
    }

    pub fn report(&self) -> LoadReport {
        self.lock().report.clone()
    }

    /// The files this configuration depends on (some may not exist): the
    /// config files and the approval of a committed workspace config.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Reloads when a file changed; returns the generation, which changes
    /// with every reload attempt.
    pub fn generation(&self) -> u64 {
        self.refresh();
        self.lock().generation
    }

    /// Reloads when a file changed; true when it did (loaded or failed).
    pub fn refresh(&self) -> bool {
        let stamps: Vec<Stamp> = self.files.iter().map(|f| stamp(f)).collect();
        if self.lock().stamps == stamps {
            return false;
        }
        // One load at a time, outside the lock that `latest` and the
        // others take: a load may ask git (a committed config, see
        // `trust::committed`), and the event loop must not wait for it.
        let _loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        let stamps: Vec<Stamp> = self.files.iter().map(|f| stamp(f)).collect();
        if self.lock().stamps == stamps {
            return false;
        }
        let result = Config::load(&self.state_dir);
        let mut loaded = self.lock();
        loaded.stamps = stamps;
        loaded.generation += 1;
        loaded.report.files = (self.configs.iter())
            .map(|f| (f.clone(), f.exists()))
            .collect();
        match result {
            Ok(config) => {
                if loaded.report.error.is_some() || *loaded.config != config {
                    tracing::info!("configuration reloaded");
                }
                loaded.config = Arc::new(config);
                loaded.report.error = None;
                loaded.report.loaded_at = crate::protocol::now_ms();
            }
            Err(e) => {
                tracing::error!("configuration not reloaded, keeping the last good one: {e}");
                loaded.report.error = Some(e.to_string());
            }
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }
}
