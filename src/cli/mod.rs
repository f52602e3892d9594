//! The command line: argument parsing, exit codes, and one function per
//! command. Commands are thin: they call the client, the store reader or the
//! node, and print.
//!
//! Exit codes: 0 ok; 1 the operation failed (refused, task failed);
//! 2 usage or configuration error, or a workspace grove refuses to use
//! (another user's `.grove`, config or store; an emptied store);
//! 3 grove unavailable. `grove run` exits with its task's own code and keeps
//! grove's failures apart (125-127, 130: see `run.rs`).

mod autostart;
mod awaits;
mod config_cmd;
mod delegate;
mod events;
mod goal;
mod live;
mod mcp;
mod orchestrate;
mod projects;
mod rerun;
mod run;
mod run_view;
mod status;
mod steer;
mod stop;
mod task;
mod task_args;
mod web;
mod worktree;

use crate::client::ClientError;
use crate::config::Config;
use crate::paths::Workspace;
use crate::protocol::{ControlKind, Method, TaskControl};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

pub use crate::output::{EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, print_json};

/// Commands grouped by purpose above clap's full list (a unit test keeps
/// the groups in step with the commands).
const HELP_TEMPLATE: &str = "\
{before-help}{about-with-newline}
{usage-heading} {usage}

By purpose:
  members   serve, acp, mcp, status, events, stop, web
  tasks     run, goal, spawn, list, show, wait, logs, progress, stats,
            cancel, pause, resume, retry, relaunch, delete, purge, task,
            approve, deny, say, mode, close, awaits, goals
  worktrees diff, merge, discard, review
  setup     engines, personas, projects, config, completions
  measure   demo, bench, chaos

Commands:
{subcommands}

Options:
{options}{after-help}";

#[derive(Parser, Debug)]
#[command(
    name = "grove",
    version,
    about = "One agent-task orchestrator per workspace, shared by every window",
    long_about = "grove runs one orchestrator per workspace. The first `grove serve` becomes the \
primary (store, bus, tasks); every other member follows it and takes over if it dies.",
    help_template = HELP_TEMPLATE,
    after_help = "Examples:\n  grove serve &                      # a member for this workspace\n  grove spawn 'make test'            # run a task from any window\n  grove status                       # who is primary, who follows\n  grove events --follow              # every event, live\n\nExit codes: 0 ok, 1 operation failed, 2 usage/config error or a refused workspace (not yours, emptied store), 3 grove unavailable."
)]
pub struct Cli {
    /// Workspace directory (default: $GROVE_WORKSPACE, else the current directory).
    #[arg(long, short = 'w', global = true, env = "GROVE_WORKSPACE")]
    workspace: Option<PathBuf>,

    /// Do not start a background `grove serve` when no member is running.
    #[arg(long, global = true, env = "GROVE_NO_AUTOSTART", value_parser = clap::builder::FalseyValueParser::new())]
    no_autostart: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// See grove work in 30 seconds: 4 members, a task DAG, a SIGKILLed
    /// primary, and checks that nothing was lost (temporary workspace).
    Demo,
    /// SIGKILL members at random while clients write and tasks run, then
    /// check that nothing was lost, doubled, missed or left behind.
    Chaos(crate::chaos::ChaosArgs),
    /// Run as an Agent Client Protocol agent on stdio (for editors such as
    /// Zed: {"command": "grove", "args": ["acp"]}), joining the workspace's
    /// grove as a member. The workspace is --workspace, else the cwd of the
    /// first session.
    Acp,
    /// Serve grove's tools over the Model Context Protocol on stdio, for
    /// agents that delegate (spawn, wait, get, list, output, cancel, say,
    /// conclude, ...). Inside a task, what it spawns is that task's child.
    Mcp,
    /// Run a long-lived member of the workspace's grove (primary or secondary).
    Serve {
        /// Append every event this member receives to FILE as JSON lines.
        #[arg(long, value_name = "FILE")]
        events_log: Option<PathBuf>,
        /// Exit after `autostart_idle_exit_ms` (default 10 min) without a
        /// request, a running or queued task, or an ACP session (members
        /// that autostart starts run this way).
        #[arg(long)]
        exit_when_idle: bool,
        /// Turn the workspace's web board on (stored, like `grove web`):
        /// whichever member is primary serves it.
        #[arg(long)]
        web: bool,
    },
    /// Stop every member of the workspace (secondaries first, so nothing is
    /// handed over). Running tasks keep running; the next member adopts them.
    Stop {
        #[arg(long)]
        json: bool,
    },
    /// Turn on the workspace's live web board (served by the primary on
    /// 127.0.0.1, moving with it) and print its URL with the token.
    Web(web::WebArgs),
    /// Show the primary, the secondaries, heartbeat age and task counts.
    Status {
        #[arg(long)]
        json: bool,
        /// Keep running: a live view of the grove and its running tasks.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
    /// Start an agent task (from any window; it outlives the window).
    #[command(
        after_help = "Examples:\n  grove spawn 'make test' --tag ci\n  grove spawn 'fix the failing test' -e claude -m sonnet --wait\n  grove spawn 'deploy' --dep 3f2a --timeout 600"
    )]
    Spawn(orchestrate::SpawnArgs),
    /// Run one task and stream what it does to stdout; exit with its exit
    /// code (125-127 and 130: grove's own, see below).
    #[command(after_help = run::RUN_AFTER_HELP)]
    Run(run::RunArgs),
    /// Pursue an objective over many iterations until the agent reports
    /// success (or it is blocked, stalls, or runs out of iterations or
    /// time); stream it like `run`, exit by how it ended.
    #[command(after_help = goal::GOAL_AFTER_HELP)]
    Goal(goal::GoalArgs),
    /// Goals: the running ones (--all: ended ones too, newest first).
    /// `grove show ID` shows one, `grove cancel ID` stops one.
    Goals {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// List tasks (filters: --status, --tag, --text, --session).
    #[command(alias = "tasks")]
    List(task::ListArgs),
    /// Show one task.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Wait for tasks: all (default), --any, or --quorum N; --timeout SECS.
    ///
    /// Run inside a task (GROVE_TASK_ID), the task's max_parallel slot is
    /// lent while it waits, so the tasks it waits for can run; so do
    /// `spawn --wait` and `run`.
    Wait(orchestrate::WaitArgs),
    /// Cancel a task; a running one has its whole process group killed.
    Cancel {
        id: String,
        /// Cancel every unfinished task it spawned too, all the way down.
        #[arg(long)]
        tree: bool,
        #[arg(long)]
        json: bool,
    },
    /// Pause a task (a running one is stopped with SIGSTOP, keeps its slot;
    /// its --timeout clock stops).
    Pause {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Resume a paused task, optionally with new instructions, model,
    /// timeout or tags (a started task is then rerun with them).
    Resume(rerun::ResumeArgs),
    /// Create a new attempt of a finished task (linked by retry_of); its
    /// agent is told why the last attempt failed (`retry_notice`).
    Retry(rerun::RetryArgs),
    /// Rerun a finished task under the same id (its failed dependents too),
    /// optionally with a new prompt, engine, model, timeout or tags.
    Relaunch(rerun::RelaunchArgs),
    /// Delete a task and its log; refused while it runs unless --force
    /// (which kills it). Its worktree and branch go too, refused while they
    /// hold work that was never merged unless --force.
    Delete {
        id: String,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete a finished task and its log files. With a full task id it is
    /// idempotent (purging a purged task succeeds); a prefix must name a task.
    /// Its worktree and branch go too, refused while they hold work that
    /// was never merged unless --force.
    Purge {
        id: String,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Allow an ACP task's pending permission request (OPTION: one of the
    /// option ids its agent offered; default the narrowest allow option).
    /// The answer is for the request pending as the command reads it (named
    /// in its output); with --request N only for request N, refused when
    /// that one was answered meanwhile (another window, the timeout).
    Approve {
        id: String,
        option: Option<String>,
        /// Answer only permission request N (`grove show` names it).
        #[arg(long, value_name = "N")]
        request: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Reject an ACP task's pending permission request (as approve: the one
    /// pending as the command reads it, or --request N only).
    Deny {
        id: String,
        /// Answer only permission request N (`grove show` names it).
        #[arg(long, value_name = "N")]
        request: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Switch a running ACP task's agent session to MODE (session/set_mode).
    Mode {
        id: String,
        mode: String,
        #[arg(long)]
        json: bool,
    },
    /// A follow-up prompt for an ACP task, in the same agent session: sent
    /// when the current turn ends, or at once to an idle session
    /// (`spawn --session`).
    Say {
        id: String,
        #[arg(required = true)]
        text: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// End an ACP task's kept session (`spawn --session`): after the
    /// current turn, if one runs; the task completes and its agent stops.
    Close {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Report progress (inside a task, GROVE_TASK_ID names the task).
    Progress {
        /// 0-100.
        percent: u8,
        text: Option<String>,
        #[arg(long)]
        task: Option<String>,
    },
    /// Durable awaits: parents to be resumed with their children's
    /// results (pending ones; --all: settled ones too), or --cancel one.
    Awaits {
        /// Settled awaits too (satisfied, expired, cancelled, replaced,
        /// dropped), newest first.
        #[arg(long)]
        all: bool,
        /// Cancel the pending await of this parent task.
        #[arg(long, value_name = "PARENT")]
        cancel: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Counts per status and the progress of running tasks.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Print a task's log; --follow tails it until the task ends.
    Logs {
        id: String,
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// List the engines and whether their binaries are found.
    Engines {
        #[arg(long)]
        json: bool,
    },
    /// List the personas (NAME.md files in the personas dir).
    Personas {
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Worktree(worktree::WorktreeCommand),
    /// Low-level task commands (create, list, show, progress, set-status, delete).
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Print the event log; with --follow, stream new events live.
    Events(events::EventsArgs),
    /// Measure failover and RPC performance on this machine.
    Bench(crate::bench::BenchArgs),
    /// The workspaces this user runs grove in (each member registers its
    /// own): id, name, path, whether a member runs, stale entries.
    Projects {
        /// Remove the entry with this id (a stale one, typically).
        #[arg(long, value_name = "ID")]
        forget: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Supervise one run of a task (started by the primary, not by users).
    /// SPEC is `-` (the spec on stdin) or a spec file.
    #[command(hide = true)]
    Shim { spec: PathBuf },
    /// The agent of a task delegated to another workspace (the `delegate`
    /// engine, run by the task's shim, not by users).
    #[command(hide = true)]
    DelegateRun,
    /// Serve one agent of a shared ACP engine to several tasks' shims
    /// (started by a shim, not by users).
    #[command(hide = true)]
    AgentHost(crate::shim::HostArgs),
    /// Benchmark helper: hold or wait for a flock (the raw handoff baseline).
    #[command(hide = true)]
    BenchFlock { mode: String, path: PathBuf },
    /// Benchmark helper: the fast ACP agent of `grove bench acp`.
    #[command(hide = true)]
    BenchAgent,
    /// Print shell completions: grove completions bash|zsh|fish > FILE.
    Completions { shell: clap_complete::Shell },
    /// Show the effective configuration and where each value came from.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Test builds only (the `test-hooks` feature): block the primary's
    /// event loop, to test the watchdog.
    #[cfg(feature = "test-hooks")]
    #[command(hide = true)]
    DebugStall {
        /// How long to block the primary's event loop.
        ms: u64,
    },
}

pub fn main() -> i32 {
    if let Some(spec) = shim_spec() {
        return shim_main(&spec);
    }
    if is_zygote() {
        return crate::shim::zygote::serve(|| shim_main(std::path::Path::new("-")));
    }
    // Before any thread exists (see the function).
    crate::election::reserve_lock_descriptor();
    // `GROVE_WORKSPACE=` (set, empty: a script's unset variable) means no
    // workspace given, not an empty one, which clap would refuse.
    if std::env::var_os("GROVE_WORKSPACE").is_some_and(|v| v.is_empty()) {
        // SAFETY: no other thread exists yet (see above), so nothing reads
        // the environment meanwhile.
        unsafe { std::env::remove_var("GROVE_WORKSPACE") };
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    init_tracing(matches!(cli.command, Command::Serve { .. }));
    let Some(runtime) = runtime() else {
        return EXIT_FAILED;
    };
    // A closed stdout (`grove list | head -1`) ends the command quietly;
    // `run` and `goal` exit as a process killed by SIGPIPE would, never 0:
    // their exit code is the task's, which is not known yet.
    let closed = match cli.command {
        Command::Run(_) | Command::Goal(_) => run::EXIT_STDOUT_CLOSED,
        _ => EXIT_OK,
    };
    crate::output::run_command(closed, EXIT_FAILED, || runtime.block_on(run(cli)))
}

/// `grove shim SPEC`, exactly as the orchestrator starts it (`-`: the spec
/// on stdin) or with a spec file.
/// Every task start runs it, so it skips the parsing of the whole command
/// line (any other form goes through clap as usual).
fn shim_spec() -> Option<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    let (cmd, spec) = (args.next()?, args.next()?);
    let spec_bytes = spec.as_encoded_bytes();
    let plain = cmd == "shim" && (spec_bytes == b"-" || !spec_bytes.starts_with(b"-"));
    (plain && args.next().is_none()).then(|| PathBuf::from(spec))
}

/// `grove shim --zygote`: the shims' fork server (`shim::zygote`), which a
/// primary starts; it must stay single-threaded, so it too skips clap and
/// everything else this function's callers set up.
fn is_zygote() -> bool {
    let args: Vec<_> = std::env::args_os().skip(1).take(3).collect();
    args.len() == 2 && args[0] == "shim" && args[1] == "--zygote"
}

fn shim_main(spec: &std::path::Path) -> i32 {
    init_tracing(false);
    let Some(runtime) = runtime() else {
        return EXIT_FAILED;
    };
    let code = runtime.block_on(crate::shim::run(spec));
    // Not waiting for blocking work left running: a preparation cut short
    // by a cancel or the timeout leaves its thread behind (`shim::worktree`),
    // and the run has ended (its exit record is written).
    runtime.shutdown_background();
    code
}

/// Every command's one-thread runtime (`None`: could not start, said why).
fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| errln!("grove: cannot start the async runtime: {e}"))
        .ok()
}

fn init_tracing(serving: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let fmt = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // `EnvFilter` compiles regexes to parse its directives, a cost every
    // command (and every task's shim) would pay at start: only for
    // `GROVE_LOG`, the default is a plain target filter.
    if std::env::var_os("GROVE_LOG").is_some()
        && let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("GROVE_LOG")
    {
        fmt.with_env_filter(filter).init();
        return;
    }
    let level = if serving {
        tracing::Level::INFO
    } else {
        tracing::Level::WARN
    };
    let filter = tracing_subscriber::filter::Targets::new().with_target("grove", level);
    fmt.finish().with(filter).init();
}

/// The resolved workspace and its configuration, shared by all commands.
pub struct Context {
    pub ws: Workspace,
    pub config: Config,
    /// Start a background member when none runs (see `autostart.rs`).
    pub autostart: bool,
    /// Why the config files did not load, for the one command that goes on
    /// without them (`config show`, which must report the error).
    pub config_error: Option<String>,
}

impl Context {
    fn load(
        workspace: Option<PathBuf>,
        autostart: bool,
        lenient: bool,
    ) -> Result<Context, CliError> {
        let root = match workspace {
            Some(w) => w,
            None => std::env::current_dir().map_err(|e| CliError::Usage(e.to_string()))?,
        };
        let ws = Workspace::resolve(&root).map_err(|e| CliError::Usage(e.to_string()))?;
        // Before anything from `.grove` is read: another user's state dir
        // or config must never configure what grove runs as this user.
        ws.check_state_dir()
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let (config, config_error) = match Config::load(&ws.state_dir) {
            Ok(c) => (c, None),
            Err(e) if lenient && !matches!(e, crate::config::ConfigError::Untrusted(_)) => {
                (Config::default(), Some(e.to_string()))
            }
            Err(e) => return Err(CliError::Usage(e.to_string())),
        };
        Ok(Context {
            ws,
            config,
            autostart,
            config_error,
        })
    }

    pub fn client(&self) -> crate::client::Client {
        let id = format!("cli-{}", uuid::Uuid::new_v4());
        crate::client::Client::new(&self.ws, &self.config, &id)
    }

    pub fn reader(&self) -> Result<crate::store::Reader, CliError> {
        crate::store::Reader::open(&self.ws.db_path()).map_err(|e| match e {
            crate::store::StoreError::Missing(_) => {
                CliError::Unavailable(format!("{e}{}", self.grove_above()))
            }
            crate::store::StoreError::Sqlite(_) => CliError::Unavailable(e.to_string()),
            e => e.into(),
        })
    }

    /// A hint for a command run below the workspace it meant: the
    /// workspace is the directory given (or the current one), never
    /// searched for upwards, so `cd src` makes another one. Names the
    /// nearest directory above with a store of its own.
    pub(super) fn grove_above(&self) -> String {
        let above = self
            .ws
            .root
            .ancestors()
            .skip(1)
            .find(|d| std::fs::symlink_metadata(d.join(".grove").join("grove.db")).is_ok());
        match above {
            Some(d) => format!(
                " (a grove runs in {0}, above: run grove there, or pass --workspace {0})",
                d.display()
            ),
            None => String::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Unavailable(String),
}

impl CliError {
    fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Failed(_) => EXIT_FAILED,
            CliError::Unavailable(_) => EXIT_UNAVAILABLE,
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        use crate::protocol::ErrorCode;
        match &e {
            _ if e.is_unavailable() => CliError::Unavailable(e.to_string()),
            // The request itself was wrong (a value, its size, a reused
            // --request-id): the user has to change the command line.
            ClientError::Refused(w)
                if matches!(
                    w.code,
                    ErrorCode::InvalidParams
                        | ErrorCode::BadRequest
                        | ErrorCode::TooLarge
                        | ErrorCode::IdempotencyConflict
                ) =>
            {
                CliError::Usage(e.to_string())
            }
            _ => CliError::Failed(e.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for CliError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            // The workspace needs the user's attention before grove may
            // use it: a setup problem (exit 2), like a bad config.
            StoreError::Emptied { .. } | StoreError::Untrusted(_) => CliError::Usage(e.to_string()),
            e => CliError::Failed(e.to_string()),
        }
    }
}

async fn run(cli: Cli) -> i32 {
    let result = dispatch(cli).await;
    match result {
        Ok(code) => code,
        Err(e) => {
            errln!("grove: {e}");
            e.exit_code()
        }
    }
}

async fn dispatch(cli: Cli) -> Result<i32, CliError> {
    if let Some(code) = without_workspace(&cli).await {
        return Ok(code);
    }
    // Commands that start nothing go on without a config that does not
    // load (a typo, an unapproved pull): the user must still be able to
    // see their tasks, stop the members and cancel a runaway task.
    // `config show` reports the error itself; the others say they go on.
    let lenient = matches!(
        cli.command,
        Command::Config(_)
            | Command::Stop { .. }
            | Command::Status { .. }
            | Command::List(_)
            | Command::Show { .. }
            | Command::Logs { .. }
            | Command::Events(_)
            | Command::Cancel { .. }
    );
    let ctx = Context::load(cli.workspace, !cli.no_autostart, lenient)?;
    if let Some(e) = &ctx.config_error
        && !matches!(cli.command, Command::Config(_))
    {
        errln!(
            "grove: {e}\ngrove: (this command runs nothing the config chooses, and goes on with the defaults)"
        );
    }
    let control = |id, kind, option, text| TaskControl {
        id,
        kind,
        option,
        text,
        ask: None,
    };
    match cli.command {
        Command::Serve {
            events_log,
            exit_when_idle,
            web,
        } => {
            if web {
                web::enable(&ctx, None)?;
            }
            serve(ctx, events_log, exit_when_idle).await
        }
        Command::Web(a) => web::run(&ctx, a).await,
        Command::Mcp => mcp::run(ctx).await,
        Command::Status {
            json: _,
            watch: true,
        } => status::watch(&ctx).await,
        Command::Status { json, .. } => status::run(&ctx, json).await,
        Command::Stop { json } => stop::run(&ctx, json).await,
        Command::Task(cmd) => task::run(&ctx, cmd).await,
        Command::Spawn(a) => orchestrate::spawn(&ctx, a).await,
        Command::Run(a) => run::run(&ctx, a).await,
        Command::Goal(a) => goal::run(&ctx, a).await,
        Command::Goals { all, json } => goal::list(&ctx, all, json).await,
        Command::List(args) => task::list(&ctx, args),
        Command::Show { id, json } => task::show(&ctx, &id, json),
        Command::Wait(a) => orchestrate::wait(&ctx, a).await,
        Command::Cancel {
            id,
            tree: true,
            json,
        } => orchestrate::cancel_tree(&ctx, &id, json).await,
        Command::Cancel { id, json, .. } => {
            task_op(&ctx, &id, json, |id| Method::TaskCancel { id }).await
        }
        Command::Pause { id, json } => {
            task_op(&ctx, &id, json, |id| Method::TaskPause { id }).await
        }
        Command::Resume(a) => rerun::resume(&ctx, a).await,
        Command::Retry(a) => rerun::retry(&ctx, a).await,
        Command::Relaunch(a) => rerun::relaunch(&ctx, a).await,
        Command::Delete { id, force, json } => {
            let id = task::resolve_id(&ctx, &id)?;
            worktree::removing(&ctx, Method::TaskDelete { id, force }, force, json).await
        }
        Command::Purge { id, force, json } => {
            let id = task::resolve_purge_id(&ctx, &id)?;
            if ctx.reader()?.task(&id)?.is_none() {
                // Purged already (idempotent), or a typo of a full id:
                // either way nothing was deleted now, and it says so. Files
                // a deleted task left (its run records, see
                // `RunFiles::remove_logs`) go now.
                let files = crate::runs::RunFiles::remove_all(&ctx.ws, &id);
                if json {
                    print_json(&serde_json::json!({
                        "deleted": id,
                        "existed": false,
                        "files_removed": files,
                    }));
                } else if files > 0 {
                    outln!("no task {id}: removed the {files} file(s) it left (its run records)");
                } else {
                    outln!("no task {id}: purged already, or never existed; nothing to do");
                }
                return Ok(EXIT_OK);
            }
            worktree::removing(&ctx, Method::TaskPurge { id }, force, json).await
        }
        Command::Worktree(cmd) => worktree::run(&ctx, cmd).await,
        Command::Approve {
            id,
            option,
            request,
            json,
        } => {
            let c = control(id, ControlKind::Approve, option, None);
            steer::send(&ctx, TaskControl { ask: request, ..c }, json).await
        }
        Command::Deny { id, request, json } => {
            let c = control(id, ControlKind::Deny, None, None);
            steer::send(&ctx, TaskControl { ask: request, ..c }, json).await
        }
        Command::Mode { id, mode, json } => {
            steer::send(&ctx, control(id, ControlKind::Mode, None, Some(mode)), json).await
        }
        Command::Say { id, text, json } => {
            let c = control(id, ControlKind::Say, None, Some(text.join(" ")));
            steer::send(&ctx, c, json).await
        }
        Command::Close { id, json } => {
            steer::send(&ctx, control(id, ControlKind::Close, None, None), json).await
        }
        Command::Progress {
            percent,
            text,
            task,
        } => orchestrate::progress(&ctx, task, percent, text).await,
        Command::Stats { json } => orchestrate::stats(&ctx, json),
        Command::Awaits { all, cancel, json } => awaits::run(&ctx, all, cancel, json).await,
        Command::Logs { id, follow } => orchestrate::logs(&ctx, &id, follow).await,
        Command::Engines { json } => orchestrate::engines(&ctx, json),
        Command::Personas { json } => orchestrate::personas(&ctx, json),
        Command::Events(args) => events::run(&ctx, args).await,
        Command::Bench(args) => match crate::bench::run(args).await {
            Ok(()) => Ok(EXIT_OK),
            Err(crate::bench::BenchError::Usage(m)) => Err(CliError::Usage(m)),
            Err(crate::bench::BenchError::Failed(m)) => Err(CliError::Failed(m)),
        },
        Command::Config(cmd) => config_cmd::run(&ctx, cmd),
        Command::BenchFlock { .. }
        | Command::BenchAgent
        | Command::Shim { .. }
        | Command::Projects { .. }
        | Command::DelegateRun
        | Command::AgentHost(_)
        | Command::Demo
        | Command::Acp
        | Command::Chaos(_)
        | Command::Completions { .. } => {
            unreachable!("handled before loading the workspace")
        }
        #[cfg(feature = "test-hooks")]
        Command::DebugStall { ms } => {
            ctx.client()
                .call(crate::protocol::Method::DebugStall { ms })
                .await?;
            // (never autostarts: a test hook needs a running primary)
            Ok(EXIT_OK)
        }
    }
}

/// The commands that need no workspace (or find their own): their exit
/// code, or `None` for every other command.
async fn without_workspace(cli: &Cli) -> Option<i32> {
    Some(match &cli.command {
        Command::BenchFlock { mode, path } => crate::bench::flock_helper(mode, path),
        Command::BenchAgent => crate::bench::bench_agent().await,
        Command::Shim { spec } => crate::shim::run(spec).await,
        Command::AgentHost(args) => crate::shim::agent_host(args).await,
        Command::Projects { forget, json } => projects::run(forget.as_deref(), *json),
        Command::DelegateRun => delegate::run(!cli.no_autostart).await,
        Command::Demo => crate::demo::run().await,
        // ACP binds its workspace from the first session's cwd.
        Command::Acp => crate::acp::run(cli.workspace.clone()).await,
        Command::Chaos(args) => crate::chaos::run(args.clone()).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "grove",
                &mut crate::output::Stdout,
            );
            EXIT_OK
        }
        _ => return None,
    })
}

/// `grove serve`: a member of the workspace until stopped.
async fn serve(
    ctx: Context,
    events_log: Option<std::path::PathBuf>,
    exit_when_idle: bool,
) -> Result<i32, CliError> {
    let opts = crate::node::NodeOptions {
        idle_exit: exit_when_idle.then(|| ctx.config.autostart_idle_exit()),
        ws: ctx.ws,
        config: ctx.config,
        kind: "serve",
        events_log,
    };
    crate::loop_watch::watched("member", crate::node::serve(opts))
        .await
        .map_err(|e| match e {
            // A workspace we cannot use is a setup problem, not a crash.
            crate::node::NodeError::Path(_) => CliError::Usage(e.to_string()),
            crate::node::NodeError::Store(e) => e.into(),
            e => CliError::Failed(e.to_string()),
        })?;
    Ok(EXIT_OK)
}

/// A write about one task named by a full id or a unique prefix.
async fn task_op(
    ctx: &Context,
    id: &str,
    json: bool,
    method: impl FnOnce(String) -> Method,
) -> Result<i32, CliError> {
    let id = task::resolve_id(ctx, id)?;
    orchestrate::simple(ctx, method(id), json).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_visible_command_is_in_a_help_group() {
        let groups = HELP_TEMPLATE
            .split("By purpose:")
            .nth(1)
            .and_then(|g| g.split("Commands:").next())
            .unwrap_or_default();
        let named: Vec<&str> = groups
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|w| !w.is_empty())
            .collect();
        for sub in Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
        {
            assert!(
                named.contains(&sub.get_name()),
                "{} is in no help group",
                sub.get_name()
            );
        }
    }
}
