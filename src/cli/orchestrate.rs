//! The orchestrator's commands: spawn, wait, cancel, pause, resume, retry,
//! relaunch, delete, purge, progress, stats, logs, engines, personas.

use super::task::{one_line, resolve_id};
use super::{CliError, Context, EXIT_FAILED, EXIT_OK, print_json};
use crate::protocol::{Method, ReplyBody, TaskRecord, TaskStatus};
use crate::waiter::Policy;
use clap::Args;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct SpawnArgs {
    #[command(flatten)]
    pub task: super::task_args::TaskArgs,
    /// A task this one waits for (repeatable).
    #[arg(long = "dep", value_name = "ID")]
    pub dependencies: Vec<String>,
    /// ACP engines: keep the agent session open after each turn. The task
    /// goes `idle` until a follow-up (`grove say`) or `grove close`, or
    /// until `idle_timeout_ms` (config) passes.
    #[arg(long)]
    pub session: bool,
    /// Block until the task ends (with --session: until its first turn
    /// ends) and exit with its exit code (1 when it has none, or when a
    /// timeout or a cancel stopped it, as `grove run`).
    #[arg(long)]
    pub wait: bool,
    /// Run the task in another workspace: its id, name or path (see
    /// `grove projects`). The task created here follows the one there
    /// (output, result, conclusion); cancelling it cancels that one. Engine,
    /// model, persona and workdir are that workspace's. Refused for a
    /// directory another user owns or others can write.
    #[arg(long, value_name = "PROJECT")]
    pub project: Option<String>,
    /// Idempotency key: the same key never creates a second task.
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    /// Task ids (full or unique prefix).
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Return when any one task ends.
    #[arg(long, conflicts_with = "quorum")]
    pub any: bool,
    /// Return when N tasks ended, whatever their status (a failed one
    /// counts); exit 0 then.
    #[arg(long, value_name = "N")]
    pub quorum: Option<usize>,
    /// Give up after this many seconds (exit 1).
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    pub timeout: Option<f64>,
    #[arg(long)]
    pub json: bool,
}

pub async fn spawn(ctx: &Context, a: SpawnArgs) -> Result<i32, CliError> {
    let mut new = a.task.new_task()?;
    new.dependencies = resolve_distinct(ctx, &a.dependencies, "--dep")?;
    new.keep_session = a.session;
    place_in_chain(ctx, &mut new);
    let new = match &a.project {
        None => new,
        Some(query) => {
            let project = crate::projects::resolve(query).map_err(CliError::Usage)?;
            if project.path == ctx.ws.root {
                new
            } else {
                crate::projects::proxy_task(&project, new).map_err(CliError::Usage)?
            }
        }
    };
    let reply = ctx
        .call(Method::TaskCreate(new), a.request_id.as_deref())
        .await?;
    let ReplyBody::Task(task) = reply else {
        return Err(CliError::Failed(format!("unexpected reply {reply:?}")));
    };
    if !a.wait {
        if a.json {
            print_json(&task);
        } else {
            outln!("{}", task.id);
        }
        return Ok(EXIT_OK);
    }
    errln!("spawned {}", task.id);
    wait_for_end(ctx, &task, a.json).await
}

/// A write that answers with a task (resume, retry, relaunch): printed, or
/// with `wait`, followed to its end (exit code as `spawn --wait`).
pub(super) async fn written_task(
    ctx: &Context,
    method: Method,
    wait: bool,
    json: bool,
) -> Result<i32, CliError> {
    let reply = ctx.call(method, None).await?;
    let ReplyBody::Task(task) = reply else {
        return Err(CliError::Failed(format!("unexpected reply {reply:?}")));
    };
    if !wait {
        if json {
            print_json(&task);
        } else {
            outln!("{}", one_line(&task));
        }
        return Ok(EXIT_OK);
    }
    errln!("{}", one_line(&task));
    wait_for_end(ctx, &task, json).await
}

/// Follows `task` to its end; the exit code is its own (1 without one, or
/// when a timeout or a cancel stopped it, as `grove run`).
async fn wait_for_end(ctx: &Context, task: &TaskRecord, json: bool) -> Result<i32, CliError> {
    let waited = crate::waiter::wait(
        &ctx.ws,
        std::slice::from_ref(&task.id),
        Policy::All,
        None,
        progress_line,
    );
    let waited = async {
        tokio::select! {
            outcome = waited => outcome.map_err(CliError::Unavailable),
            hopeless = ctx.keep_member() => Err(hopeless),
        }
    };
    let outcome = lending_slot(ctx, waited).await?;
    let last = outcome.tasks.get(&task.id).cloned().flatten();
    if json {
        print_json(&last);
    }
    Ok(match last {
        Some(t) if matches!(t.status, TaskStatus::Completed | TaskStatus::Idle) => EXIT_OK,
        Some(t) => {
            errln!("task {} {}", t.id, describe_end(&t));
            if super::run::stopped_from_outside(&t) {
                EXIT_FAILED
            } else {
                (t.exit_code)
                    .filter(|c| (1..=255).contains(c))
                    .unwrap_or(EXIT_FAILED)
            }
        }
        None => EXIT_FAILED,
    })
}

pub async fn wait(ctx: &Context, a: WaitArgs) -> Result<i32, CliError> {
    let ids = resolve_distinct(ctx, &a.ids, "wait")?;
    let policy = match (a.any, a.quorum) {
        (true, _) => Policy::Any,
        (_, Some(n)) if n == 0 || n > ids.len() => {
            return Err(CliError::Usage(format!(
                "--quorum {n} must be between 1 and the number of tasks waited for ({})",
                ids.len()
            )));
        }
        (_, Some(n)) => Policy::Quorum(n),
        _ => Policy::All,
    };
    let deadline = seconds_to_ms(a.timeout, "--timeout")?.map(Duration::from_millis);
    ctx.ensure_member().await?;
    let mut bars = super::live::TaskBars::new();
    if let Ok(reader) = ctx.reader() {
        for id in &ids {
            if let Ok(Some(t)) = reader.task(id) {
                bars.update(&t);
            }
        }
    }
    let waited = crate::waiter::wait(&ctx.ws, &ids, policy, deadline, |t| bars.update(t));
    let waited = async {
        tokio::select! {
            outcome = waited => outcome.map_err(|e| {
                if e.starts_with("quorum") {
                    CliError::Usage(e)
                } else {
                    CliError::Unavailable(e)
                }
            }),
            hopeless = ctx.keep_member() => Err(hopeless),
        }
    };
    let outcome = lending_slot(ctx, waited).await?;
    if a.json {
        print_json(&serde_json::json!({
            "satisfied": outcome.satisfied,
            "timed_out": outcome.timed_out,
            "tasks": outcome.tasks,
        }));
    } else {
        for (id, t) in &outcome.tasks {
            match t {
                Some(t) => outln!("{}", one_line(t)),
                None => outln!("{id}  deleted"),
            }
        }
    }
    if outcome.timed_out {
        errln!("grove: wait: deadline passed");
    }
    Ok(if outcome.satisfied {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

/// Where `new` stands in a chain of delegation: a child of the task this
/// command runs inside when that is a task of this workspace, else, when
/// it is a task of another workspace, a task that inherits its level
/// (`projects::inherit_foreign_caller`).
pub(super) fn place_in_chain(ctx: &Context, new: &mut crate::protocol::NewTask) {
    new.parent_id = calling_task(ctx);
    let cap = ctx.config.max_delegation_depth.saturating_add(1);
    crate::projects::inherit_foreign_caller(&ctx.ws.root, cap, new);
}

/// Runs `wait` with the slot of the task this command runs inside lent
/// (see `mcp::slot_loan`): a task blocked in a wait does no work.
pub(super) async fn lending_slot<F: std::future::Future>(ctx: &Context, wait: F) -> F::Output {
    use crate::mcp::slot_loan;
    let Some(lender) = slot_loan::Lender::of(calling_task(ctx)) else {
        return wait.await;
    };
    // Stopped in the middle (`timeout 60 grove wait …` in a script, a
    // hang-up), the slot is taken back first: the task may work on, and
    // its loan would count for 30 s. SIGINT stays the command's own (a
    // `grove run` cancels its task on Ctrl-C).
    tokio::select! {
        out = slot_loan::while_waiting(ctx, Some(lender), wait) => out,
        signal = slot_loan::stop_signal(&[libc::SIGTERM, libc::SIGHUP]) => {
            slot_loan::give_back_all(ctx).await;
            std::process::exit(128 + signal);
        }
    }
}

/// The task this command runs inside (`GROVE_TASK_ID`, set by the shim
/// for its agent), when it is a task of this workspace: a task spawned
/// from there is its child.
fn calling_task(ctx: &Context) -> Option<String> {
    let id = std::env::var("GROVE_TASK_ID")
        .ok()
        .filter(|s| !s.is_empty())?;
    let found = ctx.reader().ok()?.task(&id).ok()??;
    Some(found.id)
}

fn progress_line(t: &TaskRecord) {
    if t.status.is_terminal() {
        errln!("{} {}", &t.id[..12.min(t.id.len())], describe_end(t));
    } else if let Some(p) = t.progress_pct {
        errln!(
            "{} {} {p}% {}",
            &t.id[..12.min(t.id.len())],
            t.status.as_str(),
            t.progress_text.as_deref().unwrap_or("")
        );
    }
}

pub(super) fn describe_end(t: &TaskRecord) -> String {
    let mut s = t.status.as_str().to_string();
    if let Some(r) = t.failure_reason {
        s.push_str(&format!(" ({})", r.as_str()));
    }
    if let Some(c) = t.exit_code {
        s.push_str(&format!(", exit code {c}"));
    }
    // A run that could not start says why in its progress text.
    if t.failure_reason == Some(crate::protocol::FailureReason::SpawnError)
        && let Some(why) = &t.progress_text
    {
        s.push_str(&format!(": {why}"));
    }
    s
}

/// An empty prompt is refused before anything starts (the primary would
/// refuse it too, after an autostart).
pub(super) fn check_prompt(prompt: &str) -> Result<(), CliError> {
    if prompt.trim().is_empty() {
        return Err(CliError::Usage(
            "the prompt is empty; say what the task should do (for the shell engine: a command)"
                .into(),
        ));
    }
    Ok(())
}

/// Resolves ids (or prefixes) and refuses one task named twice: a
/// duplicate is a mistake on the command line, not a request.
pub(super) fn resolve_distinct(
    ctx: &Context,
    given: &[String],
    what: &str,
) -> Result<Vec<String>, CliError> {
    let mut ids: Vec<String> = Vec::with_capacity(given.len());
    for g in given {
        let id = resolve_id(ctx, g)?;
        if let Some(j) = ids.iter().position(|x| *x == id) {
            return Err(CliError::Usage(format!(
                "{what}: task {id} is given twice ('{}' and '{g}'); name each task once",
                given[j]
            )));
        }
        ids.push(id);
    }
    Ok(ids)
}

pub(super) fn seconds_to_ms(v: Option<f64>, flag: &str) -> Result<Option<u64>, CliError> {
    // A year is more than any task or wait needs, and keeps the value far
    // from the store's signed 64-bit column.
    const MAX_SECS: f64 = 365.0 * 24.0 * 3600.0;
    match v {
        Some(t) if !(t.is_finite() && t > 0.0 && t <= MAX_SECS) => Err(CliError::Usage(format!(
            "{flag} must be a positive number of seconds, at most {MAX_SECS} (a year), got {t}"
        ))),
        Some(t) => Ok(Some((t * 1000.0).ceil() as u64)),
        None => Ok(None),
    }
}

/// `grove cancel --tree`: the task, then every unfinished task below it,
/// parents before their children (a cancelled parent spawns no more).
pub async fn cancel_tree(ctx: &Context, id: &str, json: bool) -> Result<i32, CliError> {
    let id = resolve_id(ctx, id)?;
    // Read here first for this command's own errors (and exit codes).
    if ctx.reader()?.task(&id)?.is_none() {
        return Err(CliError::Failed(format!("no task {id}")));
    }
    let crate::mcp::tree::Cancelled { cancelled, failed } =
        crate::mcp::tree::cancel_with_descendants(ctx, &id, None)
            .await
            .map_err(CliError::Failed)?;
    if json {
        print_json(&serde_json::json!({ "cancelled": cancelled, "failed": failed }));
    } else {
        for c in &cancelled {
            outln!("cancelled {c}");
        }
        if cancelled.is_empty() && failed.is_empty() {
            errln!("nothing to cancel: {id} and the tasks below it have finished");
        }
    }
    if failed.is_empty() {
        return Ok(EXIT_OK);
    }
    for f in &failed {
        errln!("grove: cannot cancel {f}");
    }
    // What refuses a cancel is an existing task that already ended (not a
    // failure); what is left is grove not answering.
    Ok(super::EXIT_UNAVAILABLE)
}

/// cancel / pause / resume / retry / relaunch / delete / purge: one write,
/// print the resulting task.
pub async fn simple(ctx: &Context, method: Method, json: bool) -> Result<i32, CliError> {
    let reply = ctx.call(method, None).await?;
    match reply {
        ReplyBody::Task(t) if json => print_json(&t),
        ReplyBody::Task(t) => outln!("{}", one_line(&t)),
        ReplyBody::Deleted { id } if json => print_json(&serde_json::json!({ "deleted": id })),
        ReplyBody::Deleted { id } => outln!("deleted {id}"),
        other => outln!("{other:?}"),
    }
    Ok(EXIT_OK)
}

/// `grove progress PCT [TEXT]`: from inside a task, GROVE_TASK_ID says which.
pub async fn progress(
    ctx: &Context,
    task: Option<String>,
    percent: u8,
    text: Option<String>,
) -> Result<i32, CliError> {
    if percent > 100 {
        return Err(CliError::Usage(format!(
            "progress is a percentage 0-100, got {percent}"
        )));
    }
    let id = task
        .or_else(|| std::env::var("GROVE_TASK_ID").ok())
        .ok_or_else(|| {
            CliError::Usage(
                "which task? pass --task ID (inside a task, GROVE_TASK_ID is set)".into(),
            )
        })?;
    let id = resolve_id(ctx, &id)?;
    let method = Method::TaskSetProgress {
        id,
        percent: Some(percent),
        text,
    };
    ctx.call(method, None).await?;
    Ok(EXIT_OK)
}

pub fn stats(ctx: &Context, json: bool) -> Result<i32, CliError> {
    let reader = ctx.reader()?;
    let counts = reader.counts()?;
    let delegation = reader.counters()?;
    let running = reader.tasks(&crate::store::TaskFilter {
        status: Some(TaskStatus::Running),
        ..Default::default()
    })?;
    if json {
        let running: Vec<_> = running
            .iter()
            .map(|t| {
                serde_json::json!({
                    "id": t.id, "progress_pct": t.progress_pct,
                    "progress_text": t.progress_text, "started_at": t.started_at,
                })
            })
            .collect();
        print_json(&serde_json::json!({
            "counts": counts, "running": running, "delegation": delegation,
        }));
        return Ok(EXIT_OK);
    }
    for (status, n) in &counts {
        outln!("{status:<10} {n}");
    }
    outln!("delegation:");
    for (name, n) in &delegation {
        outln!("  {name:<16} {n}");
    }
    for t in &running {
        outln!(
            "  {} {:>3}% {}",
            &t.id[..12.min(t.id.len())],
            t.progress_pct.unwrap_or(0),
            t.progress_text.as_deref().unwrap_or("")
        );
    }
    Ok(EXIT_OK)
}

/// `grove logs ID [--follow]`: with --follow, tails until the task ends.
pub async fn logs(ctx: &Context, id: &str, follow: bool) -> Result<i32, CliError> {
    if !follow {
        return copy_all_of(ctx, id, false).await;
    }
    // Followed, the task ends only if a member runs to record it.
    tokio::select! {
        r = copy_all_of(ctx, id, true) => r,
        hopeless = ctx.keep_member() => Err(hopeless),
    }
}

/// The task's log, and with `follow` what it writes until it ends.
async fn copy_all_of(ctx: &Context, id: &str, follow: bool) -> Result<i32, CliError> {
    let id = resolve_id(ctx, id)?;
    let path = crate::runs::RunFiles::log(&ctx.ws, &id);
    let reader = ctx.reader()?;
    let mut offset = 0u64;
    loop {
        // Read the status before the file: output written before the task
        // ended is then certainly in the file when we see it ended.
        let ended = reader.task(&id)?.is_none_or(|t| t.status.is_terminal());
        if let Some(end) = copy_log(&path, offset)? {
            offset = end;
        } else if !follow {
            return Err(CliError::Failed(format!(
                "task {id} has no log yet (it has not started)"
            )));
        }
        if !follow || ended {
            return Ok(EXIT_OK);
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

pub fn engines(ctx: &Context, json: bool) -> Result<i32, CliError> {
    let rows: Vec<_> = ctx
        .config
        .engines
        .iter()
        .map(|(name, e)| {
            let found = crate::orchestrator::engines::find_binary(&e.command[0]);
            serde_json::json!({
                "name": name,
                "kind": e.kind.as_str(),
                "command": e.command,
                "model_args": e.model_args,
                "prompt_via": e.prompt_via,
                "permissions": e.permissions,
                "binary": found.as_ref().map(|p| p.display().to_string()),
                "available": found.is_some(),
                "default": *name == ctx.config.default_engine,
            })
        })
        .collect();
    if json {
        print_json(&rows);
    } else {
        for r in &rows {
            outln!(
                "{:<13} {:<4} {:<8} {}{}",
                r["name"].as_str().unwrap_or(""),
                r["kind"].as_str().unwrap_or(""),
                if r["available"] == true {
                    "found"
                } else {
                    "missing"
                },
                r["command"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(" "))
                    .unwrap_or_default(),
                if r["default"] == true {
                    "  (default)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(EXIT_OK)
}

pub fn personas(ctx: &Context, json: bool) -> Result<i32, CliError> {
    let names = crate::orchestrator::engines::personas(&ctx.config, &ctx.ws.root);
    if json {
        print_json(&names);
    } else if names.is_empty() {
        errln!(
            "no personas in {} (add NAME.md files there)",
            ctx.config.personas_dir(&ctx.ws.root).display()
        );
    } else {
        for n in &names {
            outln!("{n}");
        }
    }
    Ok(EXIT_OK)
}

/// How often `grove logs --follow` reads the log again.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// One read of a task's log.
const LOG_READ: usize = 64 * 1024;

/// Copies a task's log from `offset` to stdout, as far as it is written;
/// the offset it reached, or `None` when the log does not exist yet.
pub(super) fn copy_log(path: &std::path::Path, offset: u64) -> Result<Option<u64>, CliError> {
    let Ok(mut log) = crate::runs::log::LogReader::open(path, offset, LOG_READ) else {
        return Ok(None);
    };
    loop {
        let bytes = log.peek().map_err(|e| CliError::Failed(e.to_string()))?;
        if bytes.is_empty() {
            return Ok(Some(log.offset()));
        }
        crate::output::stdout_task_bytes(bytes);
        let n = bytes.len();
        log.consume(n);
    }
}
