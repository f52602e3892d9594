//! A task's worktree from the command line: `grove diff`, `merge`,
//! `discard`, `review`; and the check that `delete`/`purge` do not throw
//! away work that was never merged (see `crate::worktree`).

use super::task::resolve_id;
use super::{CliError, Context, EXIT_FAILED, EXIT_OK, orchestrate, print_json};
use crate::config::EngineKind;
use crate::protocol::{ControlKind, Method, TaskControl, TaskRecord, Worktree};
use crate::worktree::{self as wt, WorktreeError};
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum WorktreeCommand {
    /// Show a worktree task's changes against its base: what it committed
    /// on its branch and what it left uncommitted (new files included).
    Diff {
        id: String,
        /// Only the summary: files and lines changed.
        #[arg(long)]
        stat: bool,
        #[arg(long)]
        json: bool,
    },
    /// Bring a finished worktree task's branch into the workspace's branch
    /// (or --into BRANCH): a fast-forward when possible, else a merge
    /// commit. Changes it left uncommitted are committed on its branch
    /// first. Prepared away from your checkout: a conflict lists the files
    /// and changes nothing; a checkout with uncommitted changes is refused.
    /// One merge at a time per workspace.
    Merge(MergeArgs),
    /// Remove a task's worktree and its branch, with whatever they hold.
    Discard {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Send review comments on a task's changes: each comment quotes the
    /// lines it is about. An ACP task gets them as a follow-up turn in its
    /// session; any other task is relaunched (in the same worktree) with
    /// them appended to its prompt.
    Review {
        id: String,
        /// PATH:L1-L2 (or PATH:L) and the comment (repeatable), e.g.
        /// --comment src/main.rs:10-12 "handle the error here".
        #[arg(long, num_args = 2, value_names = ["PATH:L1-L2", "TEXT"], required = true)]
        comment: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    pub id: String,
    /// One new commit with the task's changes instead of its history.
    #[arg(long)]
    pub squash: bool,
    /// The message of the merge (or squash) commit.
    #[arg(long, short = 'm', value_name = "M")]
    pub message: Option<String>,
    /// The branch to merge into (default: the one checked out in the
    /// workspace).
    #[arg(long, value_name = "BRANCH")]
    pub into: Option<String>,
    #[arg(long)]
    pub json: bool,
}

impl From<WorktreeError> for CliError {
    fn from(e: WorktreeError) -> Self {
        match e {
            WorktreeError::Usage(m) => CliError::Usage(m),
            // Only the board's merge and discard have a deadline.
            WorktreeError::Failed(m) | WorktreeError::Stopped(m) => CliError::Failed(m),
        }
    }
}

pub async fn run(ctx: &Context, cmd: WorktreeCommand) -> Result<i32, CliError> {
    match cmd {
        WorktreeCommand::Diff { id, stat, json } => diff(ctx, &id, stat, json),
        WorktreeCommand::Merge(a) => merge(ctx, a),
        WorktreeCommand::Discard { id, json } => discard(ctx, &id, json),
        WorktreeCommand::Review { id, comment, json } => review(ctx, &id, &comment, json).await,
    }
}

/// The task and its worktree; an error naming the task when it has none.
fn task_with_tree(ctx: &Context, id: &str) -> Result<(TaskRecord, Worktree), CliError> {
    let id = resolve_id(ctx, id)?;
    let task =
        (ctx.reader()?.task(&id)?).ok_or_else(|| CliError::Failed(format!("no task {id}")))?;
    match task.spec.worktree.clone() {
        Some(w) => Ok((task, w)),
        None => Err(CliError::Usage(format!(
            "task {id} runs in the workspace, not in a worktree of its own (spawn it with --worktree)"
        ))),
    }
}

/// Waits until the last run of task `task_id` has ended (see
/// `RunFiles::still_going`), for at most the kill grace and a margin; false when
/// it outlasted the wait. (Blocking: the command has nothing else to do.)
fn wait_run_ended(ctx: &Context, task_id: &str, run_id: Option<&str>) -> bool {
    if !crate::runs::RunFiles::still_going(&ctx.ws, task_id, run_id) {
        return true;
    }
    let Some(record) = run_id.and_then(|r| crate::runs::RunFiles::read_run(&ctx.ws, task_id, r))
    else {
        return true;
    };
    errln!("grove: waiting for task {task_id}'s processes to end first");
    let until = std::time::Instant::now() + ctx.config.kill_grace() + RUN_END_MARGIN;
    crate::proc::wait_gone(record.shim_pid, Some(record.shim_start), until)
}

/// `doing` (merge, discard) waits until the task's last run has ended.
fn ended_before(ctx: &Context, task: &TaskRecord, doing: &str) -> Result<(), CliError> {
    if wait_run_ended(ctx, &task.id, task.run_id.as_deref()) {
        return Ok(());
    }
    Err(CliError::Failed(format!(
        "task {}'s processes are still being stopped and may still write in its worktree; {doing} once they are gone",
        task.id
    )))
}

/// How long past the kill grace a stopped run may take to be gone.
const RUN_END_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

fn diff(ctx: &Context, id: &str, stat: bool, json: bool) -> Result<i32, CliError> {
    let (task, w) = task_with_tree(ctx, id)?;
    let form = if stat {
        wt::diff::Form::Stat
    } else {
        wt::diff::Form::Patch
    };
    let copied = &ctx.config.setup.copy;
    if !json {
        // Passed on as git writes it: a patch of gigabytes is never held.
        wt::diff::write(
            &ctx.ws.root,
            &w,
            form,
            copied,
            crate::output::stdout_task_bytes,
        )?;
        return Ok(EXIT_OK);
    }
    let limits = wt::diff::Limits {
        cap: usize::MAX,
        until: None,
    };
    let changes = wt::diff::changes(&ctx.ws.root, &w, form, copied, limits)?;
    let mut v = serde_json::to_value(&changes).unwrap_or_default();
    v["task"] = task.id.into();
    if stat {
        v.as_object_mut().map(|m| m.remove("text"));
    }
    print_json(&v);
    Ok(EXIT_OK)
}

fn merge(ctx: &Context, a: MergeArgs) -> Result<i32, CliError> {
    let (task, w) = task_with_tree(ctx, &a.id)?;
    if task.runs_by_its_row() {
        return Err(CliError::Failed(format!(
            "task {} is {}: its agent may still change the worktree; wait for it or cancel it, then merge",
            task.id,
            task.status.as_str()
        )));
    }
    ended_before(ctx, &task, "merge")?;
    let title = task
        .spec
        .prompt
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let title: String = title.chars().take(72).collect();
    if a.message.as_deref().is_some_and(|m| m.trim().is_empty()) {
        // git itself refuses an empty commit message.
        return Err(CliError::Usage(
            "-m needs a message: an empty one says nothing of what was merged (leave -m out for grove's)".into(),
        ));
    }
    let message = a.message.clone().unwrap_or_else(|| {
        if a.squash {
            format!("{title}\n\ngrove task {}", task.id)
        } else {
            format!("Merge {} (grove task {})\n\n{title}", w.branch, task.id)
        }
    });
    let ask = wt::merge::MergeAsk {
        root: &ctx.ws.root,
        state_dir: &ctx.ws.state_dir,
        worktree: &w,
        squash: a.squash,
        message,
        snapshot_message: format!("{title}\n\nLeft uncommitted by grove task {}", task.id),
        into: a.into.clone(),
        copied: &ctx.config.setup.copy,
        // In a terminal, where a Ctrl-C reaches git: no deadline.
        until: None,
    };
    let merged = wt::merge::merge(&ask)?;
    if a.json {
        let mut v = serde_json::to_value(&merged).unwrap_or_default();
        v["task"] = task.id.clone().into();
        v["branch"] = w.branch.clone().into();
        print_json(&v);
    }
    use wt::merge::Merged;
    let line = match &merged {
        Merged::UpToDate { into } => format!("{into} already contains {}", w.branch),
        Merged::FastForward { into, commit } => {
            format!("fast-forwarded {into} to {} ({})", short(commit), w.branch)
        }
        Merged::MergeCommit { into, commit } => {
            format!("merged {} into {into}: {}", w.branch, short(commit))
        }
        Merged::Squashed { into, commit } => {
            format!("squashed {} onto {into}: {}", w.branch, short(commit))
        }
        Merged::Conflict { into, files } => {
            errln!(
                "grove: merging {} into {into} conflicts in:\n  {}\nnothing was changed: your checkout, {into} and {} are as they were; resolve it in {} (e.g. rebase on {into}) and merge again, or `grove discard {}`",
                w.branch,
                files.join("\n  "),
                w.branch,
                w.path,
                task.id
            );
            return Ok(EXIT_FAILED);
        }
    };
    if !a.json {
        outln!("{line}");
    }
    Ok(EXIT_OK)
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

fn discard(ctx: &Context, id: &str, json: bool) -> Result<i32, CliError> {
    let (task, w) = task_with_tree(ctx, id)?;
    if task.runs_by_its_row() {
        return Err(CliError::Failed(format!(
            "task {} is {}: cancel it first (`grove cancel {}`), then discard",
            task.id,
            task.status.as_str(),
            task.id
        )));
    }
    ended_before(ctx, &task, "discard")?;
    // Discarded already (a second discard, a merge's clean-up): said so,
    // not "removed" again.
    let there =
        wt::path_of(&ctx.ws.root, &w).exists() || wt::branch_head(&ctx.ws.root, &w).is_some();
    wt::remove(&ctx.ws.root, &w, None)?;
    if json {
        print_json(&serde_json::json!({ "task": task.id, "discarded": w, "existed": there }));
    } else if there {
        outln!("removed {} and branch {}", w.path, w.branch);
    } else {
        outln!(
            "nothing to discard: {} and branch {} are gone already",
            w.path,
            w.branch
        );
    }
    Ok(EXIT_OK)
}

/// `delete` or `purge` (`method`) of a task with its worktree (see
/// [`guard_removal`]).
pub async fn removing(
    ctx: &Context,
    method: Method,
    force: bool,
    json: bool,
) -> Result<i32, CliError> {
    let (Method::TaskDelete { id, .. } | Method::TaskPurge { id }) = &method else {
        unreachable!("only delete and purge remove a task");
    };
    let id = id.clone();
    let run_id = (ctx.reader()?.task(&id)?).and_then(|t| t.run_id);
    let tree = guard_removal(ctx, &id, force)?;
    let purge = matches!(method, Method::TaskPurge { .. });
    let code = orchestrate::simple(ctx, method, json).await?;
    if code != EXIT_OK {
        return Ok(code);
    }
    // A forced delete of a running task: its processes are being stopped
    // and may still write in the worktree and the log meanwhile.
    if !wait_run_ended(ctx, &id, run_id.as_deref()) {
        errln!(
            "grove: the task is gone, but its processes are still being stopped: its log stays (`grove purge {id}` removes it once they are gone)"
        );
        if let Some(w) = &tree {
            errln!(
                "grove: its worktree {} and branch {} stay too; remove them once they are gone (`git worktree remove --force {}`, `git branch -D {}`)",
                w.path,
                w.branch,
                w.path,
                w.branch
            );
        }
        return Ok(code);
    }
    // A purge's files went with it (the primary removes them); a deleted
    // task's log goes too: nothing could reach it once its row is gone
    // (its run records stay for the orchestrator, see `remove_logs`).
    if !purge {
        crate::runs::RunFiles::remove_logs(&ctx.ws, &id);
    }
    remove_after(ctx, tree);
    Ok(code)
}

/// Before `delete`/`purge`: the worktree of task `id` if it has one, after
/// refusing (unless `force`) when removing it would lose work.
pub fn guard_removal(ctx: &Context, id: &str, force: bool) -> Result<Option<Worktree>, CliError> {
    let Some(w) = (ctx.reader()?.task(id)?).and_then(|t| t.spec.worktree) else {
        return Ok(None);
    };
    if force {
        return Ok(Some(w));
    }
    let lost = wt::unmerged(&ctx.ws.root, &w, &ctx.config.setup.copy).map_err(|e| {
        CliError::Failed(format!(
            "cannot check {} for unmerged work: {e}; --force to delete anyway",
            wt::path_of(&ctx.ws.root, &w).display()
        ))
    })?;
    if !lost.is_empty() {
        return Err(CliError::Failed(format!(
            "task {id}'s worktree holds work that was never merged: {}; `grove merge {id}` it, or pass --force to delete it anyway",
            lost.join("; ")
        )));
    }
    Ok(Some(w))
}

/// After a successful `delete`/`purge`: the worktree and branch go too.
pub fn remove_after(ctx: &Context, w: Option<Worktree>) {
    if let Some(w) = w
        && let Err(e) = wt::remove(&ctx.ws.root, &w, None)
    {
        errln!("grove: the task is gone, but its worktree stays: {e}");
    }
}

/// One `--comment PATH:L1-L2 TEXT`, with the lines it quotes.
fn comment_text(root: &std::path::Path, spot: &str, text: &str) -> Result<String, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--comment wants PATH:L1-L2 (or PATH:L), got {spot:?}"
        ))
    };
    let (path, lines) = spot.rsplit_once(':').ok_or_else(bad)?;
    let (from, to) = lines.split_once('-').unwrap_or((lines, lines));
    let (from, to): (usize, usize) = (
        from.parse().map_err(|_| bad())?,
        to.parse().map_err(|_| bad())?,
    );
    if path.is_empty() || from == 0 || to < from {
        return Err(bad());
    }
    let file = root.join(path);
    let content = std::fs::read_to_string(&file)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?;
    let quoted: Vec<String> = content
        .lines()
        .enumerate()
        .skip(from - 1)
        .take(to - from + 1)
        .map(|(i, l)| format!("{:>5} | {l}", i + 1))
        .collect();
    if quoted.is_empty() {
        return Err(CliError::Usage(format!(
            "{path} has fewer than {from} lines"
        )));
    }
    let range = if from == to {
        format!("line {from}")
    } else {
        format!("lines {from}-{to}")
    };
    Ok(format!("{path}, {range}:\n{}\n{text}", quoted.join("\n")))
}

async fn review(ctx: &Context, id: &str, comments: &[String], json: bool) -> Result<i32, CliError> {
    let id = resolve_id(ctx, id)?;
    let task =
        (ctx.reader()?.task(&id)?).ok_or_else(|| CliError::Failed(format!("no task {id}")))?;
    // The lines as the task sees them: in its worktree, else the workspace.
    let root = match &task.spec.worktree {
        Some(w) => wt::path_of(&ctx.ws.root, w),
        None => ctx.ws.root.clone(),
    };
    let mut parts = vec!["Review comments on your changes:".to_string()];
    for pair in comments.chunks(2) {
        let [spot, text] = pair else {
            return Err(CliError::Usage(
                "--comment wants PATH:L1-L2 and a text".into(),
            ));
        };
        parts.push(comment_text(&root, spot, text)?);
    }
    let text = parts.join("\n\n");
    let acp =
        (ctx.config.engines.get(&task.spec.engine)).is_some_and(|e| e.kind == EngineKind::Acp);
    if acp && !task.status.is_terminal() {
        let control = TaskControl {
            id,
            kind: ControlKind::Say,
            option: None,
            text: Some(text),
            ask: None,
        };
        return super::steer::send(ctx, control, json).await;
    }
    if !task.status.is_terminal() {
        return Err(CliError::Failed(format!(
            "task {id} is {}: a review relaunches it with the comments, so wait for it to end (or cancel it) first",
            task.status.as_str()
        )));
    }
    let method = Method::TaskRelaunch {
        id,
        instructions: Some(text),
        changes: Default::default(),
    };
    orchestrate::simple(ctx, method, json).await
}
