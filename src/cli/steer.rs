//! Steering an ACP task from any window: `grove approve ID [OPTION]` and
//! `grove deny ID` answer its pending permission request, `grove say ID
//! TEXT` queues a follow-up turn, `grove mode ID MODE` switches the agent
//! session's mode, `grove close ID` ends a kept session. A control is a
//! write (a durable `task.control` event); the primary wakes the task's
//! shim when it publishes it, and every new primary wakes each shim it
//! adopts, so a control is applied even when its writer is gone at once.

use super::{CliError, Context, orchestrate};
use crate::protocol::{ControlKind, Method, TaskControl};

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
