//! What a new task is, as `grove spawn` and `grove run` both take it on the
//! command line: one set of flags, checked in one place, so the two
//! commands never drift apart.

use super::CliError;
use super::orchestrate::{check_prompt, seconds_to_ms};
use crate::protocol::{NewTask, PermissionPolicy, WorktreeAsk};
use clap::Args;
use std::collections::BTreeMap;

#[derive(Args, Debug)]
pub struct TaskArgs {
    /// What the agent should do (for the `shell` engine: a shell command).
    #[arg(required_unless_present = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from FILE (`-`: standard input), for prompts too long
    /// for the command line.
    #[arg(long, value_name = "FILE", conflicts_with = "prompt")]
    pub prompt_file: Option<std::path::PathBuf>,
    /// Engine to run it with (see `grove engines`); default from config.
    #[arg(long, short = 'e')]
    pub engine: Option<String>,
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Working directory (default: the workspace).
    #[arg(long)]
    pub workdir: Option<String>,
    /// A persona from the personas dir, prepended to the prompt.
    #[arg(long)]
    pub persona: Option<String>,
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i64,
    /// Timeout in seconds; the task fails with reason `timeout`.
    #[arg(long, allow_negative_numbers = true)]
    pub timeout: Option<f64>,
    /// Extra argument for the engine command (repeatable).
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub extra_args: Vec<String>,
    /// Environment variable for the agent, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Run the task in a git worktree of its own (`.grove/worktrees/<id>`,
    /// branch `grove/<short id>`), so that parallel tasks never edit the
    /// same files; review with `grove diff`, bring back with `grove merge`.
    /// Default: the config's `worktree` setting (never, agents, always).
    #[arg(long, conflicts_with = "no_worktree")]
    pub worktree: bool,
    /// Run in the workspace even when the config's `worktree` setting says
    /// otherwise.
    #[arg(long)]
    pub no_worktree: bool,
    /// The commit or branch the worktree starts from (implies --worktree;
    /// default: the workspace's HEAD when the task is created).
    #[arg(long, value_name = "REF", conflicts_with = "no_worktree")]
    pub base: Option<String>,
    /// ACP engines: which permission requests grove answers by itself —
    /// ask (every one waits for `grove approve`/`deny`), allow_reads
    /// (tools that only read, search, fetch or think), allow_all. Default:
    /// the engine's `permissions`.
    #[arg(long, value_name = "POLICY", value_parser = clap::builder::PossibleValuesParser::new(PermissionPolicy::NAMES))]
    pub permissions: Option<String>,
    /// ACP engines: allow every permission request (`--permissions allow_all`).
    #[arg(long, conflicts_with = "permissions")]
    pub yolo: bool,
    /// Ask the agent to end with a conclusion block (status, summary,
    /// artifacts, follow-up, confidence) and record the task's conclusion
    /// (`grove show`).
    #[arg(long)]
    pub conclusion: bool,
}

impl TaskArgs {
    /// The task these flags describe, checked as far as the command line
    /// can (the primary checks the engine, persona and work dir again).
    /// Dependencies, a kept session and the parent are the caller's to add.
    pub fn new_task(self) -> Result<NewTask, CliError> {
        let prompt = match (self.prompt, &self.prompt_file) {
            (Some(p), _) => p,
            (None, Some(path)) => read_prompt_file(path)?,
            (None, None) => return Err(CliError::Usage("a prompt is needed".into())),
        };
        check_prompt(&prompt)?;
        let timeout_ms = seconds_to_ms(self.timeout, "--timeout")?;
        let mut env = BTreeMap::new();
        for kv in &self.env {
            let (k, v) = kv
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| CliError::Usage(format!("--env wants KEY=VALUE, got '{kv}'")))?;
            env.insert(k.to_string(), v.to_string());
        }
        Ok(NewTask {
            prompt,
            engine: self.engine,
            model: self.model,
            work_dir: self.workdir,
            persona: self.persona,
            dependencies: Vec::new(),
            tags: self.tags,
            priority: self.priority,
            timeout_ms,
            session_id: None,
            extra_args: self.extra_args,
            env,
            keep_session: false,
            permissions: match (self.yolo, self.permissions.as_deref()) {
                (true, _) => Some(PermissionPolicy::AllowAll),
                (false, p) => p.and_then(PermissionPolicy::parse),
            },
            worktree: worktree_ask(self.worktree, self.no_worktree, self.base),
            parent_id: None,
            want_conclusion: self.conclusion,
        })
    }
}

/// What `--worktree`, `--no-worktree` and `--base` ask for; nothing when
/// none is given (the primary applies the config's `worktree` setting).
fn worktree_ask(on: bool, off: bool, base: Option<String>) -> Option<WorktreeAsk> {
    (on || off || base.is_some()).then_some(WorktreeAsk {
        enabled: !off,
        base,
    })
}

fn read_prompt_file(path: &std::path::Path) -> Result<String, CliError> {
    use std::io::Read;
    // Read no further than a prompt may be (`/dev/zero`, an endless pipe):
    // the rest would be refused anyway.
    let max = crate::protocol::MAX_PROMPT_BYTES;
    let mut bytes = Vec::new();
    let read = if path.as_os_str() == "-" {
        (std::io::stdin().lock().take(max as u64 + 1))
            .read_to_end(&mut bytes)
            .map(|_| ())
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(max as u64 + 1).read_to_end(&mut bytes).map(|_| ()))
    };
    let cannot = |e: &dyn std::fmt::Display| {
        CliError::Usage(format!(
            "cannot read the prompt from {}: {e}",
            path.display()
        ))
    };
    read.map_err(|e| cannot(&e))?;
    if bytes.len() > max {
        return Err(CliError::Usage(format!(
            "the prompt in {} is longer than the {max} bytes a task keeps; put the long part in a file and name it in the prompt",
            path.display()
        )));
    }
    String::from_utf8(bytes).map_err(|_| cannot(&"it is not UTF-8 text"))
}
