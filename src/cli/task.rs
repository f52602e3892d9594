//! `grove task ...`: writes go to the primary over RPC, reads come from this
//! process's own read-only store connection.

use super::{CliError, Context, EXIT_OK, print_json};
use crate::protocol::{FailureReason, Method, NewTask, ReplyBody, TaskRecord, TaskStatus};
use crate::store::{FindTask, TaskFilter};
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Create a task (it waits for its dependencies, then for a slot).
    Create {
        /// What the task should do (for the `shell` engine: a shell command).
        prompt: String,
        #[arg(long)]
        engine: Option<String>,
        #[arg(long)]
        model: Option<String>,
        /// A task id this task depends on (repeatable).
        #[arg(long = "dep", value_name = "ID")]
        dependencies: Vec<String>,
        /// A tag (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i64,
        /// Timeout in seconds.
        #[arg(long, allow_negative_numbers = true)]
        timeout: Option<f64>,
        #[command(flatten)]
        write: WriteOpts,
    },
    /// List tasks, optionally filtered.
    List(ListArgs),
    /// Show one task (full id or a unique prefix).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Report a task's progress: a percentage (0-100) and an optional text.
    Progress {
        id: String,
        percent: u8,
        text: Option<String>,
        #[command(flatten)]
        write: WriteOpts,
    },
    /// Set a task's status (low level; the orchestrator normally does this).
    SetStatus {
        id: String,
        status: String,
        #[arg(long)]
        exit_code: Option<i32>,
        /// Failure reason: exit_code, timeout, spawn_error, dependency_failed, lost.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        write: WriteOpts,
    },
    /// Delete a task (refused while it runs).
    Delete {
        id: String,
        #[command(flatten)]
        write: WriteOpts,
    },
}

#[derive(Args, Debug)]
pub struct WriteOpts {
    /// Idempotency key: repeating a write with the same id applies it once.
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,
    /// Print the resulting task as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(ctx: &Context, cmd: TaskCommand) -> Result<i32, CliError> {
    match cmd {
        TaskCommand::Create {
            prompt,
            engine,
            model,
            dependencies,
            tags,
            priority,
            timeout,
            write,
        } => {
            super::orchestrate::check_prompt(&prompt)?;
            let timeout_ms = super::orchestrate::seconds_to_ms(timeout, "--timeout")?;
            let dependencies = super::orchestrate::resolve_distinct(ctx, &dependencies, "--dep")?;
            let method = Method::TaskCreate(NewTask {
                prompt,
                engine,
                model,
                dependencies,
                tags,
                priority,
                timeout_ms,
                ..Default::default()
            });
            write_task(ctx, method, &write).await
        }
        TaskCommand::List(args) => list(ctx, args),
        TaskCommand::Show { id, json } => show(ctx, &id, json),
        TaskCommand::Progress {
            id,
            percent,
            text,
            write,
        } => {
            if percent > 100 {
                return Err(CliError::Usage(format!(
                    "progress is a percentage 0-100, got {percent}"
                )));
            }
            let id = resolve_id(ctx, &id)?;
            let method = Method::TaskSetProgress {
                id,
                percent: Some(percent),
                text,
            };
            write_task(ctx, method, &write).await
        }
        TaskCommand::SetStatus {
            id,
            status,
            exit_code,
            reason,
            write,
        } => {
            let id = resolve_id(ctx, &id)?;
            let status = parse_status(&status)?;
            let reason = reason.map(|r| parse_reason(&r)).transpose()?;
            let method = Method::TaskUpdateStatus {
                id,
                status,
                reason,
                exit_code,
                pid: None,
            };
            write_task(ctx, method, &write).await
        }
        TaskCommand::Delete { id, write } => {
            let id = resolve_id(ctx, &id)?;
            let tree = super::worktree::guard_removal(ctx, &id, false)?;
            let code = write_task(ctx, Method::TaskDelete { id, force: false }, &write).await?;
            super::worktree::remove_after(ctx, tree);
            Ok(code)
        }
    }
}

fn parse_reason(r: &str) -> Result<FailureReason, CliError> {
    FailureReason::parse(r).ok_or_else(|| {
        CliError::Usage(format!(
            "unknown failure reason '{r}'; one of: exit_code, timeout, spawn_error, dependency_failed, lost"
        ))
    })
}

/// The filters of `grove list` and `grove task list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only tasks in this status (queued, running, failed, ...).
    #[arg(long)]
    status: Option<String>,
    /// Only tasks with this tag.
    #[arg(long)]
    tag: Option<String>,
    /// Only tasks whose prompt contains TEXT (case-insensitive).
    #[arg(long)]
    text: Option<String>,
    /// Only the tasks of this ACP session.
    #[arg(long)]
    session: Option<String>,
    /// Only the children of this task (tasks it spawned).
    #[arg(long, value_name = "ID")]
    parent: Option<String>,
    /// Print the tasks as JSON.
    #[arg(long)]
    json: bool,
}

pub fn list(ctx: &Context, args: ListArgs) -> Result<i32, CliError> {
    let ListArgs {
        status,
        tag,
        text,
        session,
        parent,
        json,
    } = args;
    let status = status.map(|s| parse_status(&s)).transpose()?;
    let parent_id = parent.map(|p| resolve_id(ctx, &p)).transpose()?;
    let filter = TaskFilter {
        status,
        tag,
        text,
        session_id: session,
        parent_id,
    };
    let tasks = ctx.reader()?.tasks(&filter)?;
    if json {
        print_json(&tasks);
    } else if tasks.is_empty() {
        errln!("no tasks");
    } else {
        for t in &tasks {
            outln!("{}", one_line(t));
        }
    }
    Ok(EXIT_OK)
}

pub fn show(ctx: &Context, id: &str, json: bool) -> Result<i32, CliError> {
    let id = resolve_id(ctx, id)?;
    let reader = ctx.reader()?;
    let task = reader
        .task(&id)?
        .ok_or_else(|| CliError::Failed(format!("no task {id}")))?;
    let goal = reader.goal(&task.id)?;
    if json {
        // The task's own document, and its goal beside it when it has one.
        let mut doc = serde_json::to_value(&task).unwrap_or_default();
        if let (Some(g), Some(obj)) = (&goal, doc.as_object_mut()) {
            obj.insert("goal".into(), serde_json::to_value(g).unwrap_or_default());
        }
        print_json(&doc);
    } else {
        print_details(&task);
        for line in goal.iter().flat_map(super::goal::show_lines) {
            outln!("{line}");
        }
        let tree = reader.descendants(&task.id)?;
        if !tree.is_empty() {
            outln!("children:");
            for (depth, t) in &tree {
                outln!("{}{}", "  ".repeat(*depth), one_line(t));
            }
        }
    }
    Ok(EXIT_OK)
}

async fn write_task(ctx: &Context, method: Method, opts: &WriteOpts) -> Result<i32, CliError> {
    let reply = ctx.call(method, opts.request_id.as_deref()).await?;
    match reply {
        ReplyBody::Task(task) if opts.json => print_json(&task),
        ReplyBody::Task(task) => outln!("{}", task.id),
        ReplyBody::Deleted { id } if opts.json => print_json(&serde_json::json!({"deleted": id})),
        ReplyBody::Deleted { id } => outln!("deleted {id}"),
        other => print_json(&format!("{other:?}")),
    }
    Ok(EXIT_OK)
}

/// Accepts a full id or a unique prefix, as users copy them from listings.
pub fn resolve_id(ctx: &Context, id: &str) -> Result<String, CliError> {
    if id.is_empty() {
        return Err(CliError::Usage("a task id cannot be empty".into()));
    }
    // Ids are lowercase hex; one copied from somewhere that shouts is the
    // same id.
    match ctx.reader()?.find_task(&id.to_ascii_lowercase())? {
        FindTask::Found(t) => Ok(t.id),
        FindTask::Missing => Err(CliError::Failed(format!(
            "no task {id} (see `grove task list`)"
        ))),
        FindTask::Ambiguous => Err(CliError::Usage(format!(
            "task id prefix '{id}' matches several tasks; give more characters"
        ))),
    }
}

/// Like `resolve_id`, except that a full task id that no longer exists is
/// accepted: purging it again succeeds (idempotent). A prefix or a typo
/// that names no task is an error, as for every other command.
pub fn resolve_purge_id(ctx: &Context, id: &str) -> Result<String, CliError> {
    match resolve_id(ctx, id) {
        Err(CliError::Failed(_)) if is_full_task_id(&id.to_ascii_lowercase()) => {
            Ok(id.to_ascii_lowercase())
        }
        other => other,
    }
}

/// Task ids are UUIDs in simple form: 32 lowercase hex digits.
fn is_full_task_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn parse_status(s: &str) -> Result<TaskStatus, CliError> {
    TaskStatus::parse(s).ok_or_else(|| {
        let all: Vec<_> = crate::protocol::TASK_STATUSES
            .iter()
            .map(|s| s.as_str())
            .collect();
        CliError::Usage(format!("unknown status '{s}'; one of: {}", all.join(", ")))
    })
}

pub fn one_line(t: &TaskRecord) -> String {
    let progress = t
        .progress_pct
        .map(|p| format!(" {p:>3}%"))
        .unwrap_or_default();
    let prompt: String = t.spec.prompt.chars().take(60).collect();
    format!(
        "{}  {:<9}{}  {}  {}",
        &t.id[..12.min(t.id.len())],
        t.status.as_str(),
        progress,
        t.spec.engine,
        prompt.replace('\n', " ")
    )
}

fn print_details(t: &TaskRecord) {
    outln!("id:        {}", t.id);
    outln!("status:    {}", t.status.as_str());
    if let Some(r) = t.failure_reason {
        outln!("reason:    {}", r.as_str());
    }
    if let Some(c) = t.exit_code {
        outln!("exit code: {c}");
    }
    outln!("engine:    {}", t.spec.engine);
    if let Some(m) = &t.spec.model {
        outln!("model:     {m}");
    }
    outln!("prompt:    {}", t.spec.prompt);
    if !t.spec.dependencies.is_empty() {
        outln!("depends:   {}", t.spec.dependencies.join(", "));
    }
    if !t.spec.tags.is_empty() {
        outln!("tags:      {}", t.spec.tags.join(", "));
    }
    outln!("priority:  {}", t.spec.priority);
    match (t.progress_pct, &t.progress_text) {
        (Some(p), text) => outln!("progress:  {p}% {}", text.as_deref().unwrap_or("")),
        // Without a percentage it is a note, e.g. why a run could not start.
        (None, Some(text)) => outln!("note:      {text}"),
        (None, None) => {}
    }
    outln!("attempt:   {}", t.attempt);
    if let Some(p) = &t.spec.parent_id {
        outln!("parent:    {p}");
    }
    if let Some(c) = &t.conclusion {
        outln!(
            "concluded: {} ({}){}",
            c.status.as_str(),
            c.source.as_str(),
            c.confidence
                .map(|x| format!(", confidence {x:.2}"))
                .unwrap_or_default()
        );
        outln!("summary:   {}", c.summary);
        if let Some(e) = &c.error {
            outln!("malformed: {e}");
        }
        for a in &c.artifacts {
            outln!("artifact:  {a}");
        }
        for f in &c.follow_up {
            outln!("follow-up: {f}");
        }
    }
}
