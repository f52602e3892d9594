//! Configuration: `.grove/grove.toml` in the workspace, then
//! `~/.config/grove/grove.toml`, then built-in defaults. A key set in the
//! workspace file wins over the same key in the user file; engines merge by
//! name (a workspace engine replaces the user engine of the same name, and
//! the user's other engines stay).
//!
//! A running member reloads the files when they change ([`LiveConfig`]), so
//! that `grove engines` and `spawn -e` never disagree until a restart.

mod engines;
mod live;

pub use engines::{
    DELEGATE_ENGINE, EngineConfig, EngineKind, PermissionPolicy, PromptVia, builtin_engines,
};
pub use live::{LiveConfig, LoadReport};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error(transparent)]
    Untrusted(#[from] crate::trust::Untrusted),
    /// A workspace config the repository brought, not (or no longer)
    /// approved by the user (see `crate::trust::committed`).
    #[error("{0}")]
    NotApproved(String),
}

/// The effective configuration of one workspace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How often the primary publishes `instance.heartbeat`. Each one wakes
    /// every member and follower of the workspace: the period is most of an
    /// idle member's cost (docs/design.md, Serving as primary).
    pub heartbeat_ms: u64,
    /// The primary aborts itself when its event loop has not ticked this long,
    /// releasing the lock so that a secondary can take over.
    pub watchdog_timeout_ms: u64,
    /// How long a client waits for the reply to one write.
    pub rpc_timeout_ms: u64,
    /// How long a client waits for `ping` before calling the primary unresponsive.
    pub probe_timeout_ms: u64,
    /// How long a client waits for a new primary after the old one died.
    pub failover_wait_ms: u64,
    /// Most tasks running at once.
    pub max_parallel: usize,
    /// Engine used when a task names none.
    pub default_engine: String,
    /// After SIGTERM to a task's process group, how long before SIGKILL.
    pub kill_grace_ms: u64,
    /// Where persona files (`NAME.md`) live; relative paths are relative to
    /// the workspace. Default: `.grove/personas`.
    pub personas_dir: Option<PathBuf>,
    /// Engines by name, on top of the built-in ones (see `grove engines`).
    pub engines: BTreeMap<String, EngineConfig>,
    /// Durable events kept for gap repair; older ones are pruned.
    pub event_retention: u64,
    /// Hours a request id stays in the idempotency ledger.
    pub ledger_retention_hours: u64,
    /// A member started by autostart (`serve --exit-when-idle`) exits after
    /// this long with nothing to do: no request, no task running or queued,
    /// no ACP session.
    pub autostart_idle_exit_ms: u64,
    /// Model aliases: `sonnet = "claude-sonnet-4-5"` lets `-m sonnet` reach
    /// every engine as the full name. Resolved once, before the engine sees
    /// the model.
    pub models: BTreeMap<String, String>,
    /// ACP engines: a kept session (`spawn --session`) with no turn for
    /// this long is closed and its task completes (0: never).
    pub idle_timeout_ms: u64,
    /// ACP engines: a permission request nobody answered for this long is
    /// denied (0: it waits for a human however long it takes).
    pub permission_timeout_ms: u64,
    /// ACP engines with `shared = true`: their agent process stops after
    /// this long without a task using it (0: as soon as the last one ends).
    pub agent_idle_ms: u64,
    /// MCP servers given to every ACP agent session (`session/new`), by
    /// name: `command` (stdio) or `url` (HTTP).
    pub mcp_servers: BTreeMap<String, McpServerConfig>,
    /// Which new tasks get a git worktree of their own when the request
    /// does not say (`spawn` without `--worktree` / `--no-worktree`).
    pub worktree: WorktreeMode,
    /// What a task's supervisor does in a new worktree before its agent
    /// starts.
    pub setup: Setup,
    /// Delegation: how deep tasks may spawn tasks (a task spawned from
    /// outside any task is at depth 0), so a runaway agent gets an error
    /// instead of a fork bomb.
    pub max_delegation_depth: u32,
    /// Delegation: most children one task may have (finished ones count).
    pub max_children: u32,
    /// Delegation: add a short brief to the prompt of a task that wants a
    /// conclusion, asking its agent to end with a conclusion block (never
    /// for the `shell` engine).
    pub conclusion_brief: bool,
    /// `retry`: prepend a short notice of why the last attempt failed to
    /// the new attempt's prompt (never for the `shell` engine).
    pub retry_notice: bool,
    /// Delegation: hand every agent grove's own MCP server (`grove mcp`,
    /// with its task's id), beside `[mcp_servers]`: in an ACP session's
    /// `session/new`, and on the command line of a CLI engine with
    /// `mcp_args`.
    pub mcp_inject: bool,
    /// Warm reuse: a delegated task of a `shared` ACP engine becomes a new
    /// session on the engine's running agent, at most this many such
    /// sessions per agent at once; past it the task gets an agent of its
    /// own (0: always its own).
    pub warm_cap: u32,
    /// The project's name in `grove projects` (default: the workspace
    /// directory's name).
    pub name: Option<String>,
    /// Serve the web board on the primary even when `grove web` did not
    /// turn it on (its port is still the stored one, `.grove/web.json`).
    pub web: bool,
    /// A command the primary runs (`sh -c`, the title and the text as
    /// `$1` and `$2`) when a top-level task finishes or waits for an
    /// answer, e.g. `notify-send`.
    pub notify: Option<String>,
}

/// One MCP server for ACP agents: a command on stdio, or an HTTP url.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct McpServerConfig {
    /// Program and arguments of a stdio server.
    pub command: Vec<String>,
    /// Environment of a stdio server.
    pub env: BTreeMap<String, String>,
    /// The url of an HTTP server (instead of `command`).
    pub url: Option<String>,
    /// HTTP headers of an HTTP server.
    pub headers: BTreeMap<String, String>,
}

impl McpServerConfig {
    /// The server as ACP's `McpServer` JSON (what `session/new` carries).
    pub fn to_acp(&self, name: &str) -> serde_json::Value {
        let pairs = |m: &BTreeMap<String, String>| -> Vec<serde_json::Value> {
            m.iter()
                .map(|(k, v)| serde_json::json!({"name": k, "value": v}))
                .collect()
        };
        match &self.url {
            Some(url) => serde_json::json!({
                "type": "http", "name": name, "url": url, "headers": pairs(&self.headers)
            }),
            None => serde_json::json!({
                "name": name,
                "command": self.command.first().cloned().unwrap_or_default(),
                "args": self.command.iter().skip(1).collect::<Vec<_>>(),
                "env": pairs(&self.env),
            }),
        }
    }
}

/// The `worktree` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorktreeMode {
    /// Tasks run in the workspace unless they ask for a worktree.
    #[default]
    Never,
    /// Tasks of every engine but `shell` (the agents) get one.
    Agents,
    /// Every task gets one.
    Always,
}

impl WorktreeMode {
    /// Whether a task of `engine` that did not say gets a worktree.
    pub fn applies_to(self, engine: &str) -> bool {
        match self {
            WorktreeMode::Never => false,
            // A delegated task's work happens in the other workspace.
            WorktreeMode::Agents => engine != "shell" && engine != DELEGATE_ENGINE,
            WorktreeMode::Always => true,
        }
    }
}

/// The `[setup]` table: run in a task's new worktree, output into the
/// task's log, before the agent starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Setup {
    /// Files (paths relative to the workspace) copied into the worktree,
    /// such as `.env`: git does not carry untracked files over. A missing
    /// one is skipped.
    pub copy: Vec<String>,
    /// A command run with `sh -c` in the worktree (e.g. `npm ci`); when it
    /// fails, the task fails without starting its agent.
    pub run: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_ms: 500,
            watchdog_timeout_ms: 5_000,
            rpc_timeout_ms: 5_000,
            probe_timeout_ms: 1_000,
            failover_wait_ms: 10_000,
            max_parallel: 4,
            default_engine: "shell".into(),
            kill_grace_ms: 3_000,
            personas_dir: None,
            engines: BTreeMap::new(),
            event_retention: 100_000,
            ledger_retention_hours: 24 * 7,
            autostart_idle_exit_ms: 10 * 60 * 1000,
            models: BTreeMap::new(),
            idle_timeout_ms: 60 * 60 * 1000,
            permission_timeout_ms: 0,
            agent_idle_ms: 60_000,
            mcp_servers: BTreeMap::new(),
            worktree: WorktreeMode::Never,
            setup: Setup::default(),
            max_delegation_depth: 4,
            max_children: 16,
            conclusion_brief: true,
            retry_notice: true,
            mcp_inject: true,
            warm_cap: 2,
            name: None,
            web: false,
            notify: None,
        }
    }
}

impl Config {
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
    pub fn watchdog_timeout(&self) -> Duration {
        Duration::from_millis(self.watchdog_timeout_ms)
    }
    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.rpc_timeout_ms)
    }
    pub fn probe_timeout(&self) -> Duration {
        Duration::from_millis(self.probe_timeout_ms)
    }
    pub fn failover_wait(&self) -> Duration {
        Duration::from_millis(self.failover_wait_ms)
    }
    pub fn kill_grace(&self) -> Duration {
        Duration::from_millis(self.kill_grace_ms)
    }
    pub fn autostart_idle_exit(&self) -> Duration {
        Duration::from_millis(self.autostart_idle_exit_ms)
    }

    /// The model a task's `-m` names: an alias from `[models]` becomes its
    /// target (one step: an alias of an alias is not followed, so a cycle
    /// cannot loop), anything else is passed as typed.
    pub fn resolve_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.models.get(model).map(String::as_str).unwrap_or(model)
    }

    pub fn personas_dir(&self, workspace: &Path) -> PathBuf {
        match &self.personas_dir {
            Some(p) if p.is_absolute() => p.clone(),
            Some(p) => workspace.join(p),
            None => workspace.join(".grove").join("personas"),
        }
    }

    /// Loads the layered configuration for the workspace whose state dir is
    /// `state_dir`.
    pub fn load(state_dir: &Path) -> Result<Config, ConfigError> {
        Self::load_from(state_dir, true)
    }

    /// [`Config::load`] without asking git whether the workspace config
    /// came with the repository: only for a process that takes nothing
    /// from it but the client's timeouts (a shim reporting its run's end),
    /// where a `git` per run would cost each task start a fork and exec.
    pub fn load_client_settings(state_dir: &Path) -> Result<Config, ConfigError> {
        Self::load_from(state_dir, false)
    }

    fn load_from(state_dir: &Path, vet: bool) -> Result<Config, ConfigError> {
        let mut merged = toml::Table::new();
        let workspace_file = state_dir.join("grove.toml");
        for path in config_files(state_dir) {
            let vet = vet && path == workspace_file;
            if let Some(table) = read_table(&path, vet)? {
                check_known_keys(&path, &table)?;
                merge(&mut merged, table);
            }
        }
        let mut config: Config = toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_string()))?;
        // Configured engines override presets of the same name.
        let mut engines = builtin_engines();
        engines.append(&mut config.engines);
        config.engines = engines;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("heartbeat_ms", self.heartbeat_ms),
            ("watchdog_timeout_ms", self.watchdog_timeout_ms),
            ("rpc_timeout_ms", self.rpc_timeout_ms),
            ("probe_timeout_ms", self.probe_timeout_ms),
            ("max_parallel", self.max_parallel as u64),
            ("event_retention", self.event_retention),
            ("ledger_retention_hours", self.ledger_retention_hours),
            ("autostart_idle_exit_ms", self.autostart_idle_exit_ms),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be > 0")));
            }
        }
        for (name, e) in &self.engines {
            if e.command.is_empty() || e.command[0].is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "engine '{name}' has an empty command"
                )));
            }
        }
        for (name, m) in &self.mcp_servers {
            let stdio = m.command.first().is_some_and(|c| !c.is_empty());
            if stdio == m.url.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "mcp_servers.{name} needs either a command (stdio) or a url (HTTP)"
                )));
            }
        }
        for (alias, target) in &self.models {
            if target.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "model alias '{alias}' names an empty model"
                )));
            }
        }
        for file in &self.setup.copy {
            // Copied from the workspace into a worktree inside it: a path
            // that leaves either would copy what the user did not mean.
            let p = Path::new(file);
            let escapes = p.components().any(|c| {
                !matches!(
                    c,
                    std::path::Component::Normal(_) | std::path::Component::CurDir
                )
            });
            if file.is_empty() || escapes {
                return Err(ConfigError::Invalid(format!(
                    "setup.copy entry {file:?} must be a path inside the workspace, relative, without '..'"
                )));
            }
        }
        if !self.engines.contains_key(&self.default_engine) {
            return Err(ConfigError::Invalid(format!(
                "default_engine '{}' is not a configured engine",
                self.default_engine
            )));
        }
        if self.watchdog_timeout_ms < 2 * self.heartbeat_ms {
            return Err(ConfigError::Invalid(format!(
                "watchdog_timeout_ms ({}) must be at least twice heartbeat_ms ({})",
                self.watchdog_timeout_ms, self.heartbeat_ms
            )));
        }
        Ok(())
    }
}

/// Every effective setting as `(key, value, source)`; engines are listed
/// one per line as `engines.NAME`.
pub fn explain(state_dir: &Path, config: &Config) -> Vec<(String, String, String)> {
    let files: Vec<(PathBuf, toml::Table)> = config_files(state_dir)
        .into_iter()
        .filter_map(|p| read_table(&p, false).ok().flatten().map(|t| (p, t)))
        .collect();
    // The last file that sets a key wins, as in `Config::load`.
    let source = |key: &str, sub: Option<&str>| {
        files
            .iter()
            .rev()
            .find(|(_, t)| match sub {
                None => t.contains_key(key),
                Some(s) => t.get(key).and_then(|v| v.get(s)).is_some(),
            })
            .map(|(p, _)| p.display().to_string())
    };
    let mut rows = Vec::new();
    let effective = toml::Table::try_from(config).unwrap_or_default();
    for (key, value) in &effective {
        if key == "engines" {
            continue;
        }
        let src = source(key, None).unwrap_or_else(|| "default".into());
        rows.push((key.clone(), value.to_string(), src));
    }
    if config.personas_dir.is_none() {
        rows.push((
            "personas_dir".into(),
            "\".grove/personas\"".into(),
            "default".into(),
        ));
    }
    let builtin = builtin_engines();
    for (name, engine) in &config.engines {
        let value = toml::Value::try_from(engine)
            .map(|v| v.to_string())
            .unwrap_or_default();
        let src = source("engines", Some(name)).unwrap_or_else(|| {
            if builtin.contains_key(name) {
                "built-in".into()
            } else {
                "default".into()
            }
        });
        rows.push((format!("engines.{name}"), value, src));
    }
    rows.sort();
    rows
}

/// The files a member in this environment reads, lowest precedence first.
pub fn config_files(state_dir: &Path) -> Vec<PathBuf> {
    [user_config_path(), Some(state_dir.join("grove.toml"))]
        .into_iter()
        .flatten()
        .collect()
}

/// Lays `over` on `base`: a key in `over` replaces the same key in `base`,
/// except `engines` and `models`, which merge by name.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (key.as_str(), base.get_mut(&key), value) {
            (
                "engines" | "models" | "mcp_servers",
                Some(toml::Value::Table(mine)),
                toml::Value::Table(theirs),
            ) => {
                mine.extend(theirs);
            }
            (_, _, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn user_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("grove").join("grove.toml"))
}

/// Reads one config file. `vet`: the file is the workspace's, to be used
/// only if git does not track it or its content is approved.
fn read_table(path: &Path, vet: bool) -> Result<Option<toml::Table>, ConfigError> {
    // The file configures the commands grove runs: it, and the dir it is
    // in, must be this user's and not writable by others.
    if crate::trust::check(path, "the config file")?.is_none() {
        return Ok(None);
    }
    if let Some(dir) = path.parent() {
        crate::trust::check(dir, "the directory of the config file")?;
    }
    let text = match read_config_text(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if vet {
        vet_committed(path, text.as_bytes())?;
    }
    text.parse::<toml::Table>()
        .map(Some)
        .map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// A config file is read whole, so at most this much of it.
const CONFIG_AT_MOST: u64 = 4 << 20;

/// A config file's text: a regular file of at most [`CONFIG_AT_MOST`]
/// bytes. Opened without blocking and checked after the open, so that a
/// FIFO (or a device) put where the file goes, even between a look at it
/// and the open, is refused instead of hanging every command that loads
/// the config.
pub fn read_config_text(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it is not a regular file",
        ));
    }
    let mut text = String::new();
    file.take(CONFIG_AT_MOST + 1).read_to_string(&mut text)?;
    if text.len() as u64 > CONFIG_AT_MOST {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("it is larger than {} MiB", CONFIG_AT_MOST >> 20),
        ));
    }
    Ok(text)
}

/// Refuses the workspace config at `path` (content `text`) when git tracks
/// it, so that it came with the repository, and the user has not approved
/// this content (docs/design.md, Committed configuration).
fn vet_committed(path: &Path, text: &[u8]) -> Result<(), ConfigError> {
    use crate::trust::committed::{self, Approval};
    // Approved content needs no git: the common case of a reload, and one
    // that must be cheap (a member's event loop may be reloading).
    let state = match committed::approval(path, text) {
        Approval::Approved => return Ok(()),
        Approval::Changed => "it changed since you approved it (a pull or an edit)",
        Approval::Never => "you have not approved it",
    };
    let root = path
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    let why = match committed::committed_cached(root) {
        Ok(c) if !c.config => return Ok(()),
        Ok(_) => "git tracks it, so it came with the repository".to_string(),
        Err(e) => format!("grove cannot tell whether git tracks it ({e})"),
    };
    Err(ConfigError::NotApproved(format!(
        "not using {}: {why}, and {state}. It chooses commands grove runs as you \
         (engines, MCP servers, a worktree's setup). Review it with `grove config trust --show`, \
         then run `grove config trust` to use it as it is now",
        path.display()
    )))
}

/// Parses the file's table as a `Config` on its own, so that an unknown key
/// or a wrong type is reported with this file's path and line.
fn check_known_keys(path: &Path, table: &toml::Table) -> Result<(), ConfigError> {
    let text = toml::to_string(table).unwrap_or_default();
    toml::from_str::<Config>(&text)
        .map(|_| ())
        .map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: line_hint(path, e.message()),
        })
}

/// Finds the line of the offending key in the original file for the message.
fn line_hint(path: &Path, message: &str) -> String {
    let text = read_config_text(path).unwrap_or_default();
    let key = message
        .split('`')
        .nth(1)
        .map(str::to_string)
        .unwrap_or_default();
    if !key.is_empty() {
        for (n, line) in text.lines().enumerate() {
            let rest = line.trim_start().strip_prefix(key.as_str()).unwrap_or("#");
            if rest.trim_start().starts_with('=') {
                return format!("line {}: {message}", n + 1);
            }
        }
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_files() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(dir.path()).unwrap();
        assert_eq!(c.heartbeat_ms, 500);
        assert_eq!(c.max_parallel, 4);
    }

    #[test]
    fn workspace_file_overrides_and_unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("grove.toml"), "heartbeat_ms = 100\n").unwrap();
        assert_eq!(Config::load(dir.path()).unwrap().heartbeat_ms, 100);
        std::fs::write(
            dir.path().join("grove.toml"),
            "heartbeat_ms = 100\nhartbeat = 3\n",
        )
        .unwrap();
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("grove.toml"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("hartbeat"), "{err}");
    }

    #[test]
    fn engines_merge_by_name_workspace_wins() {
        let mut base: toml::Table =
            "max_parallel = 2\n[engines.a]\ncommand = [\"a\"]\n[engines.b]\ncommand = [\"user\"]\n"
                .parse()
                .unwrap();
        let over: toml::Table =
            "max_parallel = 3\n[engines.b]\ncommand = [\"ws\"]\n[engines.c]\ncommand = [\"c\"]\n"
                .parse()
                .unwrap();
        merge(&mut base, over);
        assert_eq!(base["max_parallel"].as_integer(), Some(3));
        let engines = base["engines"].as_table().unwrap();
        assert_eq!(engines.len(), 3);
        assert_eq!(engines["b"]["command"][0].as_str(), Some("ws"));
    }

    #[test]
    fn live_config_reloads_on_change_and_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("grove.toml");
        std::fs::write(&file, "max_parallel = 2\n").unwrap();
        let live = LiveConfig::new(dir.path(), Config::default());
        assert_eq!(live.current().max_parallel, 2);
        let generation = live.generation();
        assert_eq!(live.generation(), generation, "no change, no reload");
        std::fs::write(&file, "max_parallel = 7\n").unwrap();
        assert_eq!(live.current().max_parallel, 7);
        std::fs::write(&file, "max_parallel = = 1\n").unwrap();
        assert_eq!(live.current().max_parallel, 7);
        assert!(live.report().error.unwrap().contains("line 1"));
        assert!(live.generation() > generation);
    }

    #[test]
    fn acp_engines_and_model_aliases_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("grove.toml"),
            "[models]\nsonnet = \"claude-sonnet-4-5\"\n[engines.mine]\nkind = \"acp\"\ncommand = [\"my-agent\", \"--acp\"]\npermissions = \"allow_reads\"\nenv = { A = \"1\" }\n",
        )
        .unwrap();
        let c = Config::load(dir.path()).unwrap();
        let e = &c.engines["mine"];
        assert_eq!(e.kind, EngineKind::Acp);
        assert_eq!(e.permissions, PermissionPolicy::AllowReads);
        assert_eq!(c.resolve_model("sonnet"), "claude-sonnet-4-5");
        assert_eq!(c.resolve_model("other"), "other");
        std::fs::write(
            dir.path().join("grove.toml"),
            "[engines.mine]\nkind = \"rpc\"\ncommand = [\"x\"]\n",
        )
        .unwrap();
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("rpc"), "{err}");
    }

    #[test]
    fn syntax_error_names_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("grove.toml"), "heartbeat_ms = = 1\n").unwrap();
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
