//! Turning a task into a command line: engine templates, personas, and the
//! checks made at spawn time (unknown engine, bad template, missing binary,
//! unknown persona) so that a task that cannot start is never created.

use crate::config::{Config, EngineConfig, EngineKind, PermissionPolicy, PromptVia};
use crate::protocol::{NewTask, TaskRecord};
use crate::runs::AcpSpec;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// What the supervisor runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Written to the agent's stdin, then closed (engines with `stdin`).
    pub stdin: Option<String>,
    pub work_dir: PathBuf,
    /// Set for an `acp` engine: the conversation the shim holds with it.
    pub acp: Option<AcpSpec>,
}

const PLACEHOLDERS: &[&str] = &["{prompt}", "{model}", "{workdir}"];

/// Linux refuses (`E2BIG`) any single argument or environment string longer
/// than this, terminating NUL included (`MAX_ARG_STRLEN`, 32 pages).
pub const MAX_ARG_STRLEN: usize = 128 * 1024;

/// What a run is made from: the fields of a task (or of a task about to be
/// created) that shape its command line.
pub struct RunSpec<'a> {
    pub engine: &'a str,
    pub prompt: &'a str,
    pub model: Option<&'a str>,
    pub persona: Option<&'a str>,
    pub work_dir: Option<&'a str>,
    pub extra_args: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    pub keep_session: bool,
    pub permissions: Option<PermissionPolicy>,
    /// The task's worktree (relative to the workspace), where its work dir
    /// is then taken from; not made yet at create, so only a run has one.
    pub worktree: Option<&'a str>,
    /// Append the conclusion brief to the prompt (a task that wants a
    /// conclusion; `build` leaves it out for the `shell` engine and when
    /// the config turns it off).
    pub brief: bool,
    /// Spawned by another task (warm reuse applies to its run).
    pub delegated: bool,
}

impl<'a> RunSpec<'a> {
    pub fn of_task(task: &'a TaskRecord) -> Self {
        RunSpec {
            engine: &task.spec.engine,
            prompt: &task.spec.prompt,
            model: task.spec.model.as_deref(),
            persona: task.spec.persona.as_deref(),
            work_dir: task.spec.work_dir.as_deref(),
            extra_args: &task.spec.extra_args,
            env: &task.spec.env,
            keep_session: task.spec.keep_session,
            permissions: task.spec.permissions,
            worktree: task.spec.worktree.as_ref().map(|w| w.path.as_str()),
            brief: task.spec.want_conclusion,
            delegated: task.spec.is_delegated(),
        }
    }

    /// A task about to be created, with its engine already defaulted.
    pub fn of_new(new: &'a NewTask, engine: &'a str) -> Self {
        RunSpec {
            engine,
            prompt: &new.prompt,
            model: new.model.as_deref(),
            persona: new.persona.as_deref(),
            work_dir: new.work_dir.as_deref(),
            extra_args: &new.extra_args,
            env: &new.env,
            keep_session: new.keep_session,
            permissions: new.permissions,
            worktree: None,
            brief: new.want_conclusion,
            delegated: new.is_delegated(),
        }
    }
}

/// Why a task cannot run with its engine: refused at create (`validate`)
/// or at start (`launch`). Each message names the value and what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// No engine of that name is configured.
    #[error("{0}")]
    Unknown(String),
    /// The engine's program is not on `PATH`.
    #[error("{0}")]
    MissingBinary(String),
    /// The command template, a model or the ACP settings do not fit.
    #[error("{0}")]
    Template(String),
    /// An argument or the environment is over the kernel's `exec` limits.
    #[error("{0}")]
    TooLong(String),
    /// The task's work dir does not exist or is not a directory.
    #[error("{0}")]
    WorkDir(String),
    /// The persona is missing, or its file is not one grove may trust.
    #[error("{0}")]
    Persona(String),
}

/// Checks everything a spawn can get wrong, without running anything, so
/// that a task that cannot start is refused when it is created.
pub fn validate(config: &Config, workspace: &Path, spec: &RunSpec<'_>) -> Result<(), EngineError> {
    validate_with(config, workspace, spec, &mut FsChecks::default())
}

/// [`validate`], with the file system's answers remembered in `checks`.
pub fn validate_with(
    config: &Config,
    workspace: &Path,
    spec: &RunSpec<'_>,
    checks: &mut FsChecks,
) -> Result<(), EngineError> {
    let engine = spec.engine;
    let e = lookup(config, engine)?;
    if !checks.on_path(&e.command[0]) {
        check_template(engine, e, spec.model)?;
        return Err(EngineError::MissingBinary(format!(
            "{} engine '{engine}' needs '{}', which is not on PATH; install it{} or configure [engines.{engine}] command in .grove/grove.toml",
            e.kind.as_str(),
            e.command[0],
            install_hint(&e.command[0]),
        )));
    }
    build(config, workspace, spec, checks).map(|_| ())
}

/// What validation asked the file system (is the engine's program on
/// `PATH`, is the work dir a directory), remembered for as long as the
/// caller keeps this. The store thread keeps one and calls
/// [`FsChecks::next_batch`] between batches: a batch of `task.create`s
/// stats each binary and directory at most once instead of once a write,
/// and a check that passed is trusted for [`PASSED_TRUSTED_FOR`], where a
/// lone write a batch paid two `stat`s each time (~8 % of the store
/// thread's time per sequential write;
/// see docs/design.md, Serving as primary). A failed check is asked again in the next batch, so a binary
/// installed after a refusal is found at once; one removed within the
/// second fails its task at launch, with the same message.
#[derive(Default)]
pub struct FsChecks {
    on_path: HashMap<String, Checked>,
    dirs: HashMap<PathBuf, Checked>,
}

/// One answer of the file system, and when it was asked.
#[derive(Clone, Copy)]
struct Checked {
    passed: bool,
    at: std::time::Instant,
}

/// How long a check that passed is trusted across batches (see [`FsChecks`]).
pub const PASSED_TRUSTED_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Most checks kept across batches: engines and work dirs are few, and a
/// flood of distinct work dirs must not grow the map without bound.
const KEPT_CHECKS: usize = 256;

impl FsChecks {
    fn on_path(&mut self, program: &str) -> bool {
        let checked = (self.on_path.entry(program.to_string()))
            .or_insert_with(|| Checked::now(find_binary(program).is_some()));
        checked.passed
    }

    fn is_dir(&mut self, dir: &Path) -> bool {
        let checked =
            (self.dirs.entry(dir.to_path_buf())).or_insert_with(|| Checked::now(dir.is_dir()));
        checked.passed
    }

    /// Between batches: forgets what failed, and what passed longer than
    /// [`PASSED_TRUSTED_FOR`] ago.
    pub fn next_batch(&mut self) {
        self.next_batch_at(std::time::Instant::now());
    }

    fn next_batch_at(&mut self, now: std::time::Instant) {
        let trusted = |c: &Checked| c.passed && now.duration_since(c.at) < PASSED_TRUSTED_FOR;
        self.on_path.retain(|_, c| trusted(c));
        self.dirs.retain(|_, c| trusted(c));
        if self.on_path.len() + self.dirs.len() > KEPT_CHECKS {
            self.on_path.clear();
            self.dirs.clear();
        }
    }
}

impl Checked {
    fn now(passed: bool) -> Checked {
        Checked {
            passed,
            at: std::time::Instant::now(),
        }
    }
}

/// The command line for one run of `task`.
pub fn launch(config: &Config, workspace: &Path, task: &TaskRecord) -> Result<Launch, EngineError> {
    build(
        config,
        workspace,
        &RunSpec::of_task(task),
        &mut FsChecks::default(),
    )
}

fn build(
    config: &Config,
    workspace: &Path,
    spec: &RunSpec<'_>,
    checks: &mut FsChecks,
) -> Result<Launch, EngineError> {
    let e = lookup(config, spec.engine)?;
    check_template(spec.engine, e, spec.model)?;
    if e.kind != EngineKind::Acp && (spec.keep_session || spec.permissions.is_some()) {
        return Err(EngineError::Template(format!(
            "engine '{}' is a {} engine: --session, --permissions and --yolo are for acp engines (see grove engines)",
            spec.engine,
            e.kind.as_str()
        )));
    }
    if e.kind != EngineKind::Acp && e.shared {
        return Err(EngineError::Template(format!(
            "engine '{}' is a {} engine: shared = true is for acp engines (one agent serving several sessions)",
            spec.engine,
            e.kind.as_str()
        )));
    }
    let work_dir = match spec.worktree {
        Some(tree) => in_worktree(workspace, &workspace.join(tree), spec.work_dir),
        None => resolve_work_dir(workspace, spec.work_dir, checks)?,
    };
    // A prompt that a shell runs as code (the `shell` engine's, or one a
    // configured engine hands to a shell) is a command line: no words go
    // into it, which would run as commands (a persona's text, the brief).
    let code = spec.engine == "shell" || e.runs_prompt_as_shell();
    let mut prompt = match spec.persona {
        Some(p) => {
            let persona = persona_text(config, workspace, p)?;
            if code {
                return Err(EngineError::Template(format!(
                    "engine '{}' runs its prompt as a shell command: persona '{p}' would run as commands; leave --persona out",
                    spec.engine
                )));
            }
            format!("{persona}\n\n{}", spec.prompt)
        }
        None => spec.prompt.to_string(),
    };
    // Never for a delegated task's proxy: the task it creates in the other
    // workspace gets the brief there.
    // Nor for a prompt that asks for its own block already (a goal's).
    let briefed = !code
        && spec.engine != crate::config::DELEGATE_ENGINE
        && !prompt.contains(crate::runs::conclusion::OPEN);
    if spec.brief && config.conclusion_brief && briefed {
        prompt.push_str(crate::runs::conclusion::BRIEF);
    }
    let resolved = spec.model.map(|m| config.resolve_model(m));
    let model = resolved.unwrap_or_default();
    let wd = work_dir.display().to_string();
    let values = [
        ("{prompt}", prompt.as_str()),
        ("{model}", model),
        ("{workdir}", wd.as_str()),
    ];
    let fill = |arg: &str| fill_template(arg, &values);
    let mut argv: Vec<String> = e.command.iter().map(|a| fill(a)).collect();
    if spec.model.is_some() {
        argv.extend(e.model_args.iter().map(|a| fill(a)));
    }
    if e.kind == EngineKind::Cli && config.mcp_inject && !e.mcp_args.is_empty() {
        let mcp = mcp_config(config);
        argv.extend(e.mcp_args.iter().map(|a| a.replace("{mcp_config}", &mcp)));
    }
    argv.extend(spec.extra_args.iter().cloned());
    let mut env = e.env.clone();
    env.extend(spec.env.clone());
    check_exec_limits(spec.engine, e, &argv, &env)?;
    let acp = (e.kind == EngineKind::Acp).then(|| AcpSpec {
        prompt: prompt.clone(),
        // A model the command line already carries is not chosen again.
        model: resolved
            .filter(|_| e.model_args.is_empty())
            .map(str::to_string),
        permissions: spec.permissions.unwrap_or(e.permissions),
        keep_session: spec.keep_session,
        idle_timeout_ms: config.idle_timeout_ms,
        permission_timeout_ms: config.permission_timeout_ms,
        shared: e.shared,
        agent_idle_ms: config.agent_idle_ms,
        warm_cap: (e.shared && spec.delegated).then_some(config.warm_cap),
        mcp_servers: config
            .mcp_servers
            .iter()
            .map(|(name, m)| m.to_acp(name))
            .collect(),
        inject_grove: config.mcp_inject,
    });
    Ok(Launch {
        argv,
        env,
        stdin: (e.kind == EngineKind::Cli && e.prompt_via == PromptVia::Stdin).then_some(prompt),
        work_dir,
        acp,
    })
}

/// The MCP configuration a CLI agent takes on its command line (Claude
/// Code's `--mcp-config` form): grove's own server, which finds its task
/// and workspace in the environment the shim gives the agent
/// (`GROVE_TASK_ID`, `GROVE_WORKSPACE`), and the configured stdio servers
/// (a CLI agent's HTTP support is not known, so those stay out).
fn mcp_config(config: &Config) -> String {
    let mut servers = serde_json::Map::new();
    let grove = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "grove".into());
    servers.insert(
        "grove".into(),
        serde_json::json!({ "command": grove, "args": ["mcp"] }),
    );
    for (name, m) in &config.mcp_servers {
        if m.url.is_none() && !m.command.is_empty() {
            servers.insert(
                name.clone(),
                serde_json::json!({
                    "command": m.command[0], "args": &m.command[1..], "env": m.env,
                }),
            );
        }
    }
    serde_json::json!({ "mcpServers": servers }).to_string()
}

/// Where the agent binaries of the presets come from.
fn install_hint(program: &str) -> &'static str {
    match program {
        "claude-agent-acp" => " (npm install -g @agentclientprotocol/claude-agent-acp)",
        "codex-acp" => " (npm install -g @agentclientprotocol/codex-acp)",
        _ => "",
    }
}

/// Refuses a command line the kernel would refuse at `exec` (`E2BIG`), with
/// a message that says which part is too long and what to do instead.
fn check_exec_limits(
    name: &str,
    e: &EngineConfig,
    argv: &[String],
    env: &BTreeMap<String, String>,
) -> Result<(), EngineError> {
    let limit = MAX_ARG_STRLEN - 1;
    if let Some(i) = argv.iter().position(|a| a.len() > limit) {
        if e.command.get(i).is_some_and(|t| t.contains("{prompt}")) {
            return Err(EngineError::TooLong(format!(
                "the prompt makes an argument of {} bytes; engine '{name}' passes the prompt as one command-line argument, which Linux limits to {limit} bytes (128 KiB). \
Use an engine that reads the prompt from stdin (prompt_via = \"stdin\" in its [engines.{name}] section), \
or write the text to a file in the workspace and refer to it in the prompt",
                argv[i].len()
            )));
        }
        return Err(EngineError::TooLong(format!(
            "argument {i} of engine '{name}' is {} bytes; Linux limits one command-line argument to {limit} bytes (128 KiB)",
            argv[i].len()
        )));
    }
    if let Some((k, v)) = env.iter().find(|(k, v)| k.len() + 1 + v.len() > limit) {
        return Err(EngineError::TooLong(format!(
            "environment variable {k} is {} bytes; Linux limits one variable to {limit} bytes (128 KiB); put the value in a file instead",
            v.len()
        )));
    }
    // argv and the environment together (the agent also inherits the
    // supervisor's environment, about the size of ours) must fit ARG_MAX.
    let strings = |it: &mut dyn Iterator<Item = usize>| it.map(|n| n + 1 + 8).sum::<usize>();
    // Ours and the limit, measured once: grove never changes its
    // environment or stack limit after start, and every `task.create` is
    // checked here (on the store thread, between commits).
    static INHERITED: std::sync::OnceLock<(usize, libc::c_long)> = std::sync::OnceLock::new();
    let (inherited, arg_max) = *INHERITED.get_or_init(|| {
        let ours = strings(&mut std::env::vars_os().map(|(k, v)| k.len() + 1 + v.len()));
        (ours, unsafe { libc::sysconf(libc::_SC_ARG_MAX) })
    });
    let total = strings(&mut argv.iter().map(String::len))
        + strings(&mut env.iter().map(|(k, v)| k.len() + 1 + v.len()))
        + inherited;
    if arg_max > 0 && total > arg_max as usize {
        return Err(EngineError::TooLong(format!(
            "the command line and environment of engine '{name}' total {total} bytes, more than this system's ARG_MAX of {arg_max}; pass less through arguments and --env"
        )));
    }
    Ok(())
}

/// Replaces each placeholder of `template` with its value in one pass over
/// the template. Inserted text is never scanned again: a prompt or model
/// that contains `{workdir}` reaches the agent as typed.
pub fn fill_template(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        match values.iter().find(|(name, _)| tail.starts_with(name)) {
            Some((name, value)) => {
                out.push_str(value);
                rest = &tail[name.len()..];
            }
            None => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn lookup<'c>(config: &'c Config, engine: &str) -> Result<&'c EngineConfig, EngineError> {
    config.engines.get(engine).ok_or_else(|| {
        let names: Vec<&str> = config.engines.keys().map(String::as_str).collect();
        let hint = names
            .iter()
            .min_by_key(|n| edit_distance(n, engine))
            .filter(|n| edit_distance(n, engine) <= 2)
            .map(|n| format!(" — did you mean '{n}'?"))
            .unwrap_or_else(|| ".".into());
        EngineError::Unknown(format!(
            "no engine '{engine}'{hint} Configured engines: {}",
            names.join(", ")
        ))
    })
}

fn check_template(name: &str, e: &EngineConfig, model: Option<&str>) -> Result<(), EngineError> {
    for arg in e.command.iter().chain(&e.model_args) {
        let mut rest = arg.as_str();
        while let Some(start) = rest.find('{') {
            let Some(len) = rest[start..].find('}') else {
                break;
            };
            let token = &rest[start..start + len + 1];
            // Only what looks like one of ours (`{promt}`, `{work_dir}`) is
            // a typo to refuse; a shell's `${HOME}` or `${file}`, a
            // function's `{ ...; }` or a jq filter pass through untouched
            // (`fill_template` leaves every other brace alone).
            let word = &token[1..token.len() - 1];
            let shaped = !word.is_empty()
                && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                && !rest[..start].ends_with('$');
            if shaped && !PLACEHOLDERS.contains(&token) {
                return Err(EngineError::Template(format!(
                    "engine '{name}': unknown placeholder {token} in its command (known: {})",
                    PLACEHOLDERS.join(", ")
                )));
            }
            // `"${prompt}"` in a shell script is filled like `{prompt}`:
            // the prompt's text would become shell code.
            if PLACEHOLDERS.contains(&token) && rest[..start].ends_with('$') {
                return Err(EngineError::Template(format!(
                    "engine '{name}': ${token} in its command pastes the value into shell code; pass {token} as an argument of its own and use \"$1\""
                )));
            }
            rest = &rest[start + len + 1..];
        }
    }
    let in_command = |p: &str| e.command.iter().any(|a| a.contains(p));
    if e.kind == EngineKind::Acp {
        // The prompt goes over the protocol; in the command it would start
        // the agent with the prompt as an argument, which no ACP agent takes.
        if in_command("{prompt}") {
            return Err(EngineError::Template(format!(
                "engine '{name}' is of kind acp: it gets the prompt over the protocol, so its command must not contain {{prompt}}"
            )));
        }
        return Ok(());
    }
    if e.prompt_via == PromptVia::Arg && !in_command("{prompt}") {
        return Err(EngineError::Template(format!(
            "engine '{name}': its command has no {{prompt}} (or set prompt_via = \"stdin\")"
        )));
    }
    if model.is_some() && e.model_args.is_empty() && !in_command("{model}") {
        return Err(EngineError::Template(format!(
            "engine '{name}' takes no model (configure model_args for it)"
        )));
    }
    Ok(())
}

/// A worktree task's work dir: the same place in its worktree as in the
/// workspace (checked when the task was created; the worktree itself only
/// exists once the supervisor made it). A directory outside the workspace
/// stays where it is.
fn in_worktree(workspace: &Path, tree: &Path, work_dir: Option<&str>) -> PathBuf {
    match work_dir {
        Some(d) if Path::new(d).is_absolute() => match Path::new(d).strip_prefix(workspace) {
            Ok(rel) => tree.join(rel),
            Err(_) => PathBuf::from(d),
        },
        Some(d) => tree.join(d),
        None => tree.to_path_buf(),
    }
}

fn resolve_work_dir(
    workspace: &Path,
    work_dir: Option<&str>,
    checks: &mut FsChecks,
) -> Result<PathBuf, EngineError> {
    let dir = match work_dir {
        Some(d) if Path::new(d).is_absolute() => PathBuf::from(d),
        Some(d) => workspace.join(d),
        None => workspace.to_path_buf(),
    };
    if !checks.is_dir(&dir) {
        return Err(EngineError::WorkDir(format!(
            "work dir {} is not a directory",
            dir.display()
        )));
    }
    Ok(dir)
}

/// The text of persona `name` (`<personas_dir>/<name>.md`).
pub fn persona_text(config: &Config, workspace: &Path, name: &str) -> Result<String, EngineError> {
    let dir = config.personas_dir(workspace);
    let valid = !name.is_empty() && !name.contains(['/', '\\']) && !name.starts_with('.');
    let path = dir.join(format!("{name}.md"));
    // A persona becomes part of the prompt an agent acts on: only this
    // user's files, in a dir others cannot write.
    if valid {
        crate::trust::check(&dir, "the personas dir")
            .map_err(|e| EngineError::Persona(e.to_string()))?;
        crate::trust::check(&path, "the persona file")
            .map_err(|e| EngineError::Persona(e.to_string()))?;
        // A persona file may be a symlink a repository committed (the
        // personas are shareable): one leading out of the dir, to
        // `~/.ssh/id_rsa` say, would put that file into a prompt.
        if std::fs::symlink_metadata(&path).is_ok() && !inside(&path, &dir) {
            return Err(EngineError::Persona(format!(
                "the persona file {} leads out of {} (a symlink); a persona goes into a prompt, so only files in the personas dir are used",
                path.display(),
                dir.display()
            )));
        }
    }
    match valid.then(|| crate::config::read_config_text(&path)) {
        Some(Ok(text)) => Ok(text.trim_end().to_string()),
        _ => {
            let known = personas(config, workspace);
            Err(EngineError::Persona(format!(
                "no persona '{name}' in {}; available: {}",
                dir.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )))
        }
    }
}

/// Whether `path`, symlinks followed, is a regular file inside `dir` (also
/// followed).
fn inside(path: &Path, dir: &Path) -> bool {
    match (std::fs::canonicalize(path), std::fs::canonicalize(dir)) {
        (Ok(file), Ok(dir)) => file.starts_with(&dir) && file.is_file(),
        _ => false,
    }
}

/// Names of the persona files.
pub fn personas(config: &Config, workspace: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(config.personas_dir(workspace))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_suffix(".md").map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// Finds an executable like the shell would (a path, or a name on PATH).
pub fn find_binary(program: &str) -> Option<PathBuf> {
    use std::collections::HashMap;
    use std::ffi::OsString;
    use std::sync::Mutex;
    /// Where each program was last found, per `PATH`: every `task.create`
    /// checks its engine's binary, and re-checking one remembered file costs
    /// one `stat` instead of one per `PATH` entry. Only hits are kept, so a
    /// binary installed after a refusal is found at once. Bounded: cleared
    /// when full (engines are few; `PATH` rarely changes).
    static FOUND: Mutex<Option<HashMap<(String, OsString), PathBuf>>> = Mutex::new(None);
    const REMEMBERED: usize = 64;

    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    let key = (program.to_string(), path);
    let remembered = FOUND
        .lock()
        .ok()
        .and_then(|m| m.as_ref()?.get(&key).cloned());
    if let Some(p) = remembered.filter(|p| is_executable(p)) {
        return Some(p);
    }
    let found = std::env::split_paths(&key.1)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))?;
    if let Ok(mut m) = FOUND.lock() {
        let m = m.get_or_insert_with(HashMap::new);
        if m.len() >= REMEMBERED {
            m.clear();
        }
        m.insert(key, found.clone());
    }
    Some(found)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_persona_symlink_out_of_the_personas_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        let dir = ws.join(".grove/personas");
        std::fs::create_dir_all(&dir).unwrap();
        let secret = tmp.path().join("id_rsa");
        std::fs::write(&secret, "PRIVATE KEY").unwrap();
        std::os::unix::fs::symlink(&secret, dir.join("leak.md")).unwrap();
        std::fs::write(dir.join("reviewer.md"), "You review.\n").unwrap();
        std::os::unix::fs::symlink("reviewer.md", dir.join("alias.md")).unwrap();
        let config = crate::config::Config::default();
        let err = super::persona_text(&config, &ws, "leak")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("leads out of") && !err.contains("PRIVATE"),
            "{err}"
        );
        assert_eq!(
            super::persona_text(&config, &ws, "reviewer").unwrap(),
            "You review."
        );
        assert_eq!(
            super::persona_text(&config, &ws, "alias").unwrap(),
            "You review."
        );
    }

    #[test]
    fn a_failed_check_is_asked_again_next_batch_and_a_passed_one_trusted_a_while() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("work");
        let mut checks = super::FsChecks::default();
        assert!(!checks.is_dir(&dir));
        std::fs::create_dir(&dir).unwrap();
        assert!(!checks.is_dir(&dir), "asked again within the batch");
        checks.next_batch();
        assert!(
            checks.is_dir(&dir),
            "a failure was remembered across batches"
        );
        std::fs::remove_dir(&dir).unwrap();
        checks.next_batch();
        assert!(checks.is_dir(&dir), "a pass within its second is trusted");
        checks.next_batch_at(std::time::Instant::now() + super::PASSED_TRUSTED_FOR);
        assert!(!checks.is_dir(&dir), "a pass was trusted past its second");
    }

    use super::*;

    fn config() -> Config {
        Config {
            engines: crate::config::builtin_engines(),
            ..Default::default()
        }
    }

    #[test]
    fn typo_gets_a_suggestion() {
        let err = lookup(&config(), "claud").unwrap_err();
        assert!(matches!(err, EngineError::Unknown(_)), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("did you mean 'claude'"), "{err}");
        assert!(err.contains("Configured engines:"), "{err}");
    }

    #[test]
    fn shell_launch_fills_the_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = sample();
        t.spec.prompt = "echo hi".into();
        let l = launch(&config(), dir.path(), &t).unwrap();
        assert_eq!(l.argv, vec!["sh", "-c", "echo hi"]);
        assert!(l.stdin.is_none());
    }

    #[test]
    fn model_needs_model_args() {
        let dir = tempfile::tempdir().unwrap();
        let env = BTreeMap::new();
        let spec = RunSpec {
            engine: "shell",
            prompt: "p",
            model: Some("m"),
            persona: None,
            work_dir: None,
            extra_args: &[],
            env: &env,
            keep_session: false,
            permissions: None,
            worktree: None,
            brief: false,
            delegated: false,
        };
        let err = validate(&config(), dir.path(), &spec).unwrap_err();
        assert!(matches!(err, EngineError::Template(_)), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("takes no model"), "{err}");
    }

    #[test]
    fn unknown_placeholder_is_refused() {
        let mut c = config();
        c.engines.insert(
            "odd".into(),
            EngineConfig {
                command: vec!["sh".into(), "-c".into(), "{prompt} {nope}".into()],
                model_args: vec![],
                ..c.engines["shell"].clone()
            },
        );
        let dir = tempfile::tempdir().unwrap();
        let mut t = sample();
        t.spec.engine = "odd".into();
        let err = validate(&c, dir.path(), &RunSpec::of_task(&t))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("{nope}") && err.contains("engine 'odd'"),
            "{err}"
        );
        // A shell's braces, a function's and a jq filter's are not ours.
        c.engines.get_mut("odd").unwrap().command = vec![
            "sh".into(),
            "-c".into(),
            "f() { echo \"${HOME}\" \"${file}\"; }; jq '{a: .b}'; f \"$1\"".into(),
            "sh".into(),
            "{prompt}".into(),
        ];
        validate(&c, dir.path(), &RunSpec::of_task(&t)).expect("no placeholder typo in it");
        // A placeholder inside a shell's `${...}` would paste the prompt
        // into shell code.
        c.engines.get_mut("odd").unwrap().command =
            vec!["sh".into(), "-c".into(), "echo \"${prompt}\"".into()];
        let err = validate(&c, dir.path(), &RunSpec::of_task(&t))
            .unwrap_err()
            .to_string();
        assert!(err.contains("${prompt}"), "{err}");
    }

    #[test]
    fn placeholders_are_filled_in_one_pass() {
        let values = [
            ("{prompt}", "echo {workdir} {model}"),
            ("{model}", "M{workdir}"),
            ("{workdir}", "/w"),
        ];
        assert_eq!(
            fill_template("{prompt}|{model}|{workdir}|{x}|{", &values),
            "echo {workdir} {model}|M{workdir}|/w|{x}|{"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut c = config();
        c.engines.insert(
            "echoer".into(),
            EngineConfig {
                command: vec!["echo".into(), "{prompt}".into()],
                model_args: vec!["--model".into(), "{model}".into()],
                ..c.engines["shell"].clone()
            },
        );
        let mut t = sample();
        t.spec.engine = "echoer".into();
        t.spec.prompt = "say {workdir} {model}".into();
        t.spec.model = Some("M{prompt}".into());
        let l = launch(&c, dir.path(), &t).unwrap();
        assert_eq!(
            l.argv,
            vec!["echo", "say {workdir} {model}", "--model", "M{prompt}"]
        );
    }

    #[test]
    fn acp_engine_gets_its_prompt_over_the_protocol_and_aliases_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config();
        c.models.insert("fast".into(), "vendor-fast-2".into());
        c.engines.insert(
            "agent".into(),
            EngineConfig {
                kind: EngineKind::Acp,
                command: vec!["sh".into()],
                model_args: vec![],
                ..c.engines["shell"].clone()
            },
        );
        let mut t = sample();
        t.spec.engine = "agent".into();
        t.spec.prompt = "do it".into();
        t.spec.model = Some("fast".into());
        let l = launch(&c, dir.path(), &t).unwrap();
        assert_eq!(l.argv, vec!["sh"]);
        assert!(l.stdin.is_none());
        let acp = l.acp.unwrap();
        assert_eq!(acp.prompt, "do it");
        assert_eq!(acp.model.as_deref(), Some("vendor-fast-2"));
        // A CLI engine gets the resolved name through its flag.
        t.spec.engine = "claude".into();
        let l = launch(&c, dir.path(), &t).unwrap();
        assert_eq!(l.argv[3..5], ["--model", "vendor-fast-2"]);
        // Only an acp engine can be shared.
        let mut odd = c.engines["claude"].clone();
        odd.shared = true;
        c.engines.insert("odd".into(), odd);
        t.spec.engine = "odd".into();
        let err = launch(&c, dir.path(), &t).unwrap_err().to_string();
        assert!(err.contains("shared = true is for acp engines"), "{err}");
        assert!(l.acp.is_none());
        // {prompt} in an acp command is a configuration error.
        c.engines.get_mut("agent").unwrap().command = vec!["sh".into(), "{prompt}".into()];
        t.spec.engine = "agent".into();
        let err = validate(&c, dir.path(), &RunSpec::of_task(&t))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kind acp"), "{err}");
    }

    #[test]
    fn acp_presets_keep_names_apart_from_the_cli_presets() {
        let c = config();
        assert_eq!(c.engines["claude"].kind, EngineKind::Cli);
        assert_eq!(c.engines["claude-acp"].kind, EngineKind::Acp);
        assert_eq!(c.engines["claude-acp"].command, ["claude-agent-acp"]);
        assert_eq!(c.engines["gemini-acp"].command, ["gemini", "--acp"]);
        for name in ["codex-acp", "opencode-acp", "goose-acp", "copilot-acp"] {
            assert_eq!(c.engines[name].kind, EngineKind::Acp, "{name}");
        }
    }

    #[test]
    fn distance() {
        assert_eq!(edit_distance("claude", "claud"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn a_cli_engine_with_mcp_args_gets_grove_s_server_unless_turned_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = sample();
        t.spec.engine = "claude".into();
        let mut c = config();
        c.mcp_servers.insert(
            "files".into(),
            crate::config::McpServerConfig {
                command: vec!["files-mcp".into(), "--stdio".into()],
                ..Default::default()
            },
        );
        let argv = launch(&c, dir.path(), &t).unwrap().argv;
        let at = argv
            .iter()
            .position(|a| a == "--mcp-config")
            .expect("{argv:?}");
        let mcp: serde_json::Value = serde_json::from_str(&argv[at + 1]).unwrap();
        assert_eq!(mcp["mcpServers"]["grove"]["args"][0], "mcp", "{mcp}");
        assert_eq!(mcp["mcpServers"]["files"]["command"], "files-mcp", "{mcp}");
        c.mcp_inject = false;
        let argv = launch(&c, dir.path(), &t).unwrap().argv;
        assert!(!argv.iter().any(|a| a == "--mcp-config"), "{argv:?}");
    }

    /// A batch's checks are asked once and remembered while the caller
    /// keeps them; fresh checks see the file system as it is now.
    #[test]
    fn fs_checks_remember_what_they_were_told() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let mut t = sample();
        t.spec.work_dir = Some("sub".into());
        let spec = RunSpec::of_task(&t);
        let mut batch = FsChecks::default();
        validate_with(&config(), dir.path(), &spec, &mut batch).unwrap();
        std::fs::remove_dir(dir.path().join("sub")).unwrap();
        validate_with(&config(), dir.path(), &spec, &mut batch)
            .expect("the same batch remembers the work dir");
        let err = validate_with(&config(), dir.path(), &spec, &mut FsChecks::default());
        assert!(matches!(err, Err(EngineError::WorkDir(_))), "{err:?}");
        let mut missing = config();
        let shell = missing.engines.get_mut("shell").unwrap();
        shell.command[0] = "grove-no-such-binary".into();
        let err = validate_with(
            &missing,
            dir.path(),
            &RunSpec::of_task(&sample()),
            &mut batch,
        );
        assert!(matches!(err, Err(EngineError::MissingBinary(_))), "{err:?}");
    }

    fn sample() -> TaskRecord {
        let spec = crate::protocol::TaskSpec {
            prompt: "p".into(),
            engine: "shell".into(),
            ..Default::default()
        };
        TaskRecord {
            status: crate::protocol::TaskStatus::Queued,
            ..TaskRecord::new("t".into(), spec, 0)
        }
    }
}
