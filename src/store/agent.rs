//! The conversations of ACP agents: each update of a `task.agent_updates`
//! batch becomes one durable `task.agent_update` event, in the batch's
//! order, in the batch's transaction; a `permission_request` among them
//! puts the task in `waiting`. `task.control` records a steering control
//! (a permission answer) as a durable `task.control` event for the task's
//! shim, and the task runs again. Kept apart from `tasks` because most of
//! this is the conversation, not the lifecycle.

use super::tasks::{Ctx, existing, move_to};
use super::txn::{Applied, WriteResult, append_event, refused};
use crate::protocol::{
    AgentOp, AgentUpdates, ControlKind, ErrorCode, EventData, ReplyBody, TaskControl, TaskStatus,
    decode,
};
use rusqlite::{OptionalExtension, params};

/// Most updates in one batch (the frame limit bounds their bytes).
pub const MAX_BATCH_UPDATES: usize = 1024;

/// The update kind by which a shim says its agent waits for a human.
pub const PERMISSION_REQUEST: &str = "permission_request";

pub(super) fn apply(c: &mut Ctx<'_>, op: AgentOp<'_>) -> Result<WriteResult, Applied> {
    match op {
        AgentOp::Updates(batch) => append(c, batch),
        AgentOp::Control(ctl) => control(c, ctl),
    }
}

fn append(c: &mut Ctx<'_>, batch: &AgentUpdates) -> Result<WriteResult, Applied> {
    if batch.updates.len() > MAX_BATCH_UPDATES {
        return Err(refused(
            ErrorCode::InvalidParams,
            format!(
                "a batch holds at most {MAX_BATCH_UPDATES} updates, this one {}",
                batch.updates.len()
            ),
        ));
    }
    let run: Option<Option<String>> =
        c.tx.prepare_cached("SELECT run_id FROM tasks WHERE id = ?1")?
            .query_row(params![batch.id], |r| r.get(0))
            .optional()?;
    // Updates of a run that is no longer the task's (relaunched, deleted)
    // are acknowledged and dropped: the shim must not resend them forever.
    if run.flatten().as_deref() != Some(batch.run_id.as_str()) {
        return Ok(Ok(ReplyBody::Done {}));
    }
    for u in &batch.updates {
        let event = append_event(
            c.tx,
            c.epoch,
            EventData::TaskAgentUpdate {
                id: batch.id.clone(),
                run_id: batch.run_id.clone(),
                kind: u.kind.clone(),
                acp: u.acp.clone(),
            },
        )?;
        c.events.push(event);
    }
    if batch.updates.iter().any(|u| u.kind == PERMISSION_REQUEST) {
        let task = existing(c.tx, &batch.id)?;
        if task.status == TaskStatus::Running {
            move_to(c, task, TaskStatus::Waiting)?.map_err(Applied::Refused)?;
        }
    }
    Ok(Ok(ReplyBody::Done {}))
}

/// `task.control`: a steering control for the task's shim, recorded as a
/// durable event first. An answer to the pending permission request makes
/// the task run again at once, so a second answer to the same request is
/// refused rather than taken for the next request's; a follow-up needs a
/// turn that has not ended.
fn control(c: &mut Ctx<'_>, ctl: &TaskControl) -> Result<WriteResult, Applied> {
    let task = existing(c.tx, &ctl.id)?;
    let status = task.status;
    let refuse = |why: &str| {
        Err(refused(
            ErrorCode::Conflict,
            format!("task {} is {}: {why}", ctl.id, status.as_str()),
        ))
    };
    match ctl.kind {
        ControlKind::Approve | ControlKind::Deny if status != TaskStatus::Waiting => {
            return refuse("it has no pending permission request to answer");
        }
        ControlKind::Say | ControlKind::Mode if ctl.text.as_deref().is_none_or(str::is_empty) => {
            return Err(refused(
                ErrorCode::InvalidParams,
                "say needs a text, mode a mode id",
            ));
        }
        ControlKind::Say | ControlKind::Mode
            if !matches!(status, TaskStatus::Running | TaskStatus::Waiting) =>
        {
            return refuse("its agent session has ended");
        }
        _ => {}
    }
    let event = append_event(
        c.tx,
        c.epoch,
        EventData::TaskControlled {
            id: ctl.id.clone(),
            run_id: task.run_id.clone().unwrap_or_default(),
            kind: ctl.kind,
            option: ctl.option.clone(),
            text: ctl.text.clone(),
        },
    )?;
    c.events.push(event);
    if matches!(ctl.kind, ControlKind::Say | ControlKind::Mode) {
        return Ok(Ok(ReplyBody::Task(Box::new(task))));
    }
    move_to(c, task, TaskStatus::Running)
}

/// A steering control as the shim reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    /// The seq of its event: the control's id.
    pub seq: u64,
    pub run_id: String,
    pub kind: ControlKind,
    pub option: Option<String>,
    pub text: Option<String>,
}

impl super::Reader {
    /// The ACP JSON of task `id`'s latest update of `kind`, newest first
    /// (a request is answered soon after it is made, so the scan is short).
    pub fn last_agent_update(
        &self,
        id: &str,
        kind: &str,
    ) -> Result<Option<String>, super::StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT payload FROM events WHERE topic = 'task.agent_update' ORDER BY seq DESC",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let payload: Vec<u8> = row.get(0)?;
            if let Ok(EventData::TaskAgentUpdate {
                id: task,
                kind: k,
                acp,
                ..
            }) = decode::<EventData>(&payload)
                && task == id
                && k == kind
            {
                return Ok(Some(acp));
            }
        }
        Ok(None)
    }

    /// The controls of task `id` after seq `after`, in order.
    pub fn controls_after(&self, id: &str, after: u64) -> Result<Vec<Control>, super::StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, payload FROM events WHERE seq > ?1 AND topic = 'task.control' ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![after as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, payload) = row?;
            if let Ok(EventData::TaskControlled {
                id: task,
                run_id,
                kind,
                option,
                text,
            }) = decode::<EventData>(&payload)
                && task == id
            {
                out.push(Control {
                    seq: seq as u64,
                    run_id,
                    kind,
                    option,
                    text,
                });
            }
        }
        Ok(out)
    }
}
