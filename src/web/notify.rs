//! Desktop notifications: the primary runs the config's `notify` command
//! when a top-level task finishes or starts waiting for an answer (a
//! permission request). Once per task and state: a task that sends
//! progress while it waits notifies once; a second permission request,
//! after the task ran again, notifies again. Only the primary runs it, and
//! it follows events from its promotion on, so a failover neither repeats
//! old notifications nor loses later ones.

use crate::config::LiveConfig;
use crate::paths::Workspace;
use crate::protocol::{Event, EventData, TaskRecord, TaskStatus};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Tasks whose last notified state is remembered; past it, those that
/// ended are forgotten first (they do not notify again anyway unless
/// relaunched).
const REMEMBERED: usize = 10_000;

/// Task events waiting for the follower (see [`follows`]).
pub const QUEUE: usize = 4096;

/// The events the follower reads: the primary's publisher hands it these
/// as they are published, in order, from its promotion on.
pub fn follows(event: &EventData) -> bool {
    matches!(
        event,
        EventData::TaskCreated { .. }
            | EventData::TaskUpdated { .. }
            | EventData::TaskDeleted { .. }
    )
}

pub async fn run(ws: Workspace, live: Arc<LiveConfig>, mut events: mpsc::Receiver<Event>) {
    let mut told: HashMap<String, TaskStatus> = HashMap::new();
    while let Some(event) = events.recv().await {
        let task = match event.data {
            EventData::TaskCreated { task } | EventData::TaskUpdated { task } => task,
            EventData::TaskDeleted { id } => {
                told.remove(&id);
                continue;
            }
            _ => continue,
        };
        if !worth_telling(&task) {
            if !task.status.is_terminal() {
                told.remove(&task.id);
            }
            continue;
        }
        // Only now: reading the config stats its files, on the primary's
        // event loop, and most events (every write's) are not worth telling.
        let Some(command) = live.current().notify.clone() else {
            continue;
        };
        if told.get(&task.id) == Some(&task.status) {
            continue;
        }
        if told.len() >= REMEMBERED {
            told.retain(|_, s| !s.is_terminal());
        }
        told.insert(task.id.clone(), task.status);
        tell(&ws, &command, &task);
    }
}

/// A top-level task that finished or waits for a human: a delegated
/// task's parent agent hears of it, its human need not.
fn worth_telling(task: &TaskRecord) -> bool {
    task.spec.parent_id.is_none()
        && (task.status.is_terminal() || task.status == TaskStatus::Waiting)
}

fn tell(ws: &Workspace, command: &str, task: &TaskRecord) {
    let short = &task.id[..task.id.len().min(8)];
    let title = match task.status {
        TaskStatus::Waiting => format!("grove: task {short} needs an answer"),
        s => format!("grove: task {short} {}", s.as_str()),
    };
    let prompt: String = task
        .spec
        .prompt
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(120)
        .collect();
    // The command is the user's own configuration; the task's words reach
    // it only as arguments, never as shell text.
    let spawned = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{command} \"$@\""))
        .arg("grove-notify")
        .arg(&title)
        .arg(&prompt)
        .env("GROVE_TASK_ID", &task.id)
        .env("GROVE_TASK_STATUS", task.status.as_str())
        .current_dir(&ws.root)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn();
    match spawned {
        Ok(mut child) => {
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
        Err(e) => tracing::warn!("cannot run the notify command '{command}': {e}"),
    }
}
