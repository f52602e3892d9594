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
    let mut control = control;
    // The request answered, named once the answer is accepted.
    let mut answered = None;
    if matches!(control.kind, ControlKind::Approve | ControlKind::Deny) {
        let pending = pending_request(ctx, &id)?;
        if let Some(option) = &control.option {
            check_option(&id, pending.as_ref(), option)?;
        } else if control.kind == ControlKind::Approve {
            check_allows(&id, pending.as_ref())?;
        }
        // Bound to the request read here: one reported meanwhile is not
        // answered by this command.
        if control.ask.is_none() {
            control.ask = pending.as_ref().and_then(|p| p["ask"].as_u64());
        }
        if let Some(p) = &pending
            && let Some(n) = p["ask"].as_u64().filter(|n| control.ask == Some(*n))
        {
            let title = p["request"]["toolCall"]["title"].as_str();
            answered = Some((n, title.unwrap_or("a tool call").to_string()));
        }
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
    if let Some((n, title)) = answered
        && !json
        && code == super::EXIT_OK
    {
        errln!("grove: permission request {n}: {title}");
    }
    Ok(code)
}

/// The task's latest permission request (its `permission_request` update),
/// if it has one.
fn pending_request(ctx: &Context, id: &str) -> Result<Option<serde_json::Value>, CliError> {
    let reader = ctx.reader()?;
    Ok(reader
        .last_agent_update(id, crate::store::agent::PERMISSION_REQUEST)
        .ok()
        .flatten()
        .and_then(|acp| serde_json::from_str::<serde_json::Value>(&acp).ok()))
}

/// Refuses an approve of a request whose agent offered no option that
/// allows (only rejects, or none): it would be answered `cancelled`, and
/// the command would say it approved.
fn check_allows(id: &str, request: Option<&serde_json::Value>) -> Result<(), CliError> {
    let Some(options) = request.and_then(|r| r["request"]["options"].as_array()) else {
        return Ok(());
    };
    let allows = options
        .iter()
        .any(|o| o["kind"].as_str().is_some_and(|k| k.starts_with("allow")));
    if allows {
        return Ok(());
    }
    let offered: Vec<&str> = options
        .iter()
        .filter_map(|o| o["optionId"].as_str())
        .collect();
    Err(CliError::Usage(format!(
        "task {id}'s agent offered no option that allows (it offered: {}); `grove deny {id}` answers it, or `grove approve {id} OPTION` picks one",
        if offered.is_empty() {
            "none".to_string()
        } else {
            offered.join(", ")
        }
    )))
}

/// Refuses an option the agent did not offer, naming the ones it did.
fn check_option(
    id: &str,
    request: Option<&serde_json::Value>,
    option: &str,
) -> Result<(), CliError> {
    let Some(request) = request else {
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
