//! Steering an ACP task from any window: `grove approve ID [OPTION]` and
//! `grove deny ID` answer its pending permission request, `grove say ID
//! TEXT` queues a follow-up turn, `grove mode ID MODE` switches the agent
//! session's mode. A control is a write first (a durable
//! `task.control` event), then the task's shim is woken to apply it; a shim
//! that was not woken finds the control in the store the next time it
//! looks (at the latest when its turn ends).

use super::{CliError, Context, orchestrate};
use crate::protocol::{ControlKind, Method, TaskControl};
use crate::runs::RunFiles;

pub async fn send(ctx: &Context, control: TaskControl, json: bool) -> Result<i32, CliError> {
    let id = super::task::resolve_id(ctx, &control.id)?;
    if let Some(option) = &control.option {
        check_option(ctx, &id, option)?;
    }
    if matches!(control.kind, ControlKind::Say | ControlKind::Mode)
        && control.text.as_deref().is_none_or(str::is_empty)
    {
        return Err(CliError::Usage("say needs a text, mode a mode id".into()));
    }
    let code = orchestrate::simple(
        ctx,
        Method::TaskControl(TaskControl {
            id: id.clone(),
            ..control
        }),
        json,
    )
    .await?;
    wake_shim(ctx, &id);
    Ok(code)
}

/// Refuses an option the agent did not offer, naming the ones it did.
fn check_option(ctx: &Context, id: &str, option: &str) -> Result<(), CliError> {
    let reader = ctx.reader()?;
    let Some(request) = reader
        .last_agent_update(id, crate::store::agent::PERMISSION_REQUEST)
        .ok()
        .flatten()
        .and_then(|acp| serde_json::from_str::<serde_json::Value>(&acp).ok())
    else {
        return Ok(());
    };
    let offered: Vec<String> = request["request"]["options"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["optionId"].as_str().map(str::to_string))
        .collect();
    if offered.iter().any(|o| o == option) {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "task {id}'s agent offered no option '{option}'; it offered: {}",
            offered.join(", ")
        )))
    }
}

/// Sends the shim of the task's current run its sync signal, when its run
/// record names a live shim (pid and start time).
fn wake_shim(ctx: &Context, id: &str) {
    let Ok(reader) = ctx.reader() else { return };
    let Some(run_id) = reader.task(id).ok().flatten().and_then(|t| t.run_id) else {
        return;
    };
    let Some(run) = RunFiles::read_run(&ctx.ws, id, &run_id) else {
        return;
    };
    if crate::proc::start_time(run.shim_pid) == Some(run.shim_start) {
        unsafe { libc::kill(run.shim_pid as i32, crate::runs::SYNC_SIGNAL) };
    }
}
