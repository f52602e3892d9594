//! `grove resume`, `retry`, `relaunch`: a task again, with what changes
//! (a new prompt, engine, model, timeout or tags) checked like a spawn's,
//! and `--wait` to block until the new run ends.

use super::orchestrate::{seconds_to_ms, written_task};
use super::task::resolve_id;
use super::{CliError, Context};
use crate::protocol::{Method, TaskChanges};
use clap::Args;

#[derive(Args, Debug)]
pub struct ResumeArgs {
    id: String,
    /// More instructions, appended to the prompt (a started task is then
    /// rerun with them).
    #[arg(long)]
    instructions: Option<String>,
    /// A new model (a started task is rerun with it).
    #[arg(long, short = 'm')]
    model: Option<String>,
    /// A new timeout in seconds (a started task is rerun with it).
    #[arg(long, allow_negative_numbers = true)]
    timeout: Option<f64>,
    /// Replace the task's tags (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    #[command(flatten)]
    end: End,
}

#[derive(Args, Debug)]
pub struct RetryArgs {
    id: String,
    #[command(flatten)]
    end: End,
}

#[derive(Args, Debug)]
pub struct RelaunchArgs {
    id: String,
    /// A new prompt, replacing the old one.
    #[arg(long)]
    prompt: Option<String>,
    /// A new engine (see `grove engines`).
    #[arg(long, short = 'e')]
    engine: Option<String>,
    #[arg(long, short = 'm')]
    model: Option<String>,
    /// A new timeout in seconds.
    #[arg(long, allow_negative_numbers = true)]
    timeout: Option<f64>,
    /// Replace the task's tags (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    #[command(flatten)]
    end: End,
}

/// How the command ends: at once, or when the task does.
#[derive(Args, Debug)]
struct End {
    /// Block until the task ends and exit with its exit code (1 when it has
    /// none, or when a timeout or a cancel stopped it, as `grove run`).
    #[arg(long)]
    wait: bool,
    #[arg(long)]
    json: bool,
}

pub async fn resume(ctx: &Context, a: ResumeArgs) -> Result<i32, CliError> {
    let id = resolve_id(ctx, &a.id)?;
    let changes = TaskChanges {
        model: a.model,
        timeout_ms: seconds_to_ms(a.timeout, "--timeout")?,
        tags: (!a.tags.is_empty()).then_some(a.tags),
        ..Default::default()
    };
    let method = Method::TaskResume {
        id,
        instructions: a.instructions,
        changes,
    };
    written_task(ctx, method, a.end.wait, a.end.json).await
}

pub async fn retry(ctx: &Context, a: RetryArgs) -> Result<i32, CliError> {
    let id = resolve_id(ctx, &a.id)?;
    written_task(ctx, Method::TaskRetry { id }, a.end.wait, a.end.json).await
}

pub async fn relaunch(ctx: &Context, a: RelaunchArgs) -> Result<i32, CliError> {
    let id = resolve_id(ctx, &a.id)?;
    if let Some(p) = &a.prompt {
        super::orchestrate::check_prompt(p)?;
    }
    let changes = TaskChanges {
        prompt: a.prompt,
        engine: a.engine,
        model: a.model,
        timeout_ms: seconds_to_ms(a.timeout, "--timeout")?,
        tags: (!a.tags.is_empty()).then_some(a.tags),
    };
    written_task(
        ctx,
        Method::TaskRelaunch {
            id,
            instructions: None,
            changes,
        },
        a.end.wait,
        a.end.json,
    )
    .await
}
