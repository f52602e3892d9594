//! The conversations of ACP agents: each update of a `task.agent_updates`
//! batch becomes one durable `task.agent_update` event, in the batch's
//! order, in the batch's transaction; a `permission_request` among them
//! puts the task in `waiting`, an `idle` in `idle` (a kept session between
//! turns). `task.control` records a steering control as a durable
//! `task.control` event for the task's shim: a permission answer makes the
//! task run again, a follow-up wakes an idle one. Both kinds of event carry
//! their task id in a column (`events.task_id`): read by task, and kept past
//! the retention while the task exists (the transcript is replayed whole).
//! Kept apart from `tasks` because most of this is the conversation, not
//! the lifecycle.

use super::tasks::{Ctx, existing, move_to};
use super::txn::{Applied, WriteResult, append_event, refused};
use crate::protocol::{
    AgentOp, AgentUpdates, Conclusion, ConclusionSource, ControlKind, ErrorCode, EventData,
    ReplyBody, TaskControl, TaskRecord, TaskStatus, decode_stored,
};
use rusqlite::{OptionalExtension, params};

/// Most updates in one batch (the frame limit bounds their bytes).
pub const MAX_BATCH_UPDATES: usize = 1024;

/// The update kind by which a shim says its agent waits for a human.
pub const PERMISSION_REQUEST: &str = "permission_request";

/// The update kind by which a shim says how a permission request was
/// answered (by a policy, a human, a timeout, a cancel).
pub const PERMISSION: &str = "permission";

/// The update kind by which a shim says its kept session waits for a
/// follow-up (the turn ended; the agent stays).
pub const IDLE: &str = "idle";

/// The update kind by which a shim says a turn ended (its stop reason, and
/// the turn's conclusion when the task asked for one).
pub const TURN_END: &str = "turn_end";

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
    // A turn that ended with a conclusion (the task asked for one): the
    // task's conclusion so far, and a goal's verdict on the iteration —
    // before the status below, so that a goal's next turn, written here,
    // keeps the session running rather than idle.
    for u in batch.updates.iter().filter(|u| u.kind == TURN_END) {
        if let Some(con) = turn_conclusion(&u.acp) {
            concluded(c, &batch.id, con)?;
        }
    }
    // The last of them says where the conversation stands now. A kept
    // session goes idle only from running: paused, it stays paused (the
    // turn was cancelled by the pause), and a follow-up written meanwhile
    // has already moved it back to running (the shim sends it next).
    // A request answered by the shim itself (the permission timeout) lets
    // a waiting task run again.
    let status_now = batch
        .updates
        .iter()
        .rev()
        .find_map(|u| match u.kind.as_str() {
            PERMISSION_REQUEST => Some((TaskStatus::Waiting, u)),
            IDLE => Some((TaskStatus::Idle, u)),
            PERMISSION => Some((TaskStatus::Running, u)),
            _ => None,
        });
    if let Some((to, update)) = status_now {
        let task = existing(c.tx, &batch.id)?;
        let from = if to == TaskStatus::Running {
            TaskStatus::Waiting
        } else {
            TaskStatus::Running
        };
        let stale = to == TaskStatus::Idle && followup_pending(c, &task, &update.acp)?;
        if task.status == from && !stale {
            move_to(c, task, to)?.map_err(Applied::Refused)?;
        }
    }
    Ok(Ok(ReplyBody::Done {}))
}

/// The conclusion a shim put in a `turn_end` update, if any.
fn turn_conclusion(acp: &str) -> Option<Conclusion> {
    let v: serde_json::Value = serde_json::from_str(acp).ok()?;
    serde_json::from_value(v.get("conclusion")?.clone()).ok()
}

/// A turn of task `id` concluded `con`: kept as the task's conclusion (one
/// the agent reported through `task.conclude` is not replaced by grove's
/// guess), then judged by the task's goal, if it pursues one.
fn concluded(c: &mut Ctx<'_>, id: &str, con: Conclusion) -> Result<(), Applied> {
    // Bounded before the goal keeps its texts too (see `Conclusion::bounded`).
    let con = con.bounded();
    let mut task = existing(c.tx, id)?;
    let own = (task.conclusion.as_ref()).is_some_and(|o| o.source == ConclusionSource::Reported);
    if !own || con.source == ConclusionSource::Reported {
        task.conclusion = Some(con.clone());
        super::tasks::save_task(c, task)?.map_err(Applied::Refused)?;
    }
    super::tasks::goals::turn_ended(c, id, &con)
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
    let session_open = matches!(
        status,
        TaskStatus::Running | TaskStatus::Waiting | TaskStatus::Idle
    ) || (status == TaskStatus::Paused && task.run_id.is_some());
    match ctl.kind {
        ControlKind::Approve | ControlKind::Deny if status != TaskStatus::Waiting => {
            return refuse("it has no pending permission request to answer");
        }
        ControlKind::Say | ControlKind::Mode | ControlKind::Interrupt
            if ctl.text.as_deref().is_none_or(str::is_empty) =>
        {
            return Err(refused(
                ErrorCode::InvalidParams,
                "say needs a text, interrupt the prompt's text, mode a mode id",
            ));
        }
        ControlKind::Say | ControlKind::Mode | ControlKind::Close | ControlKind::Interrupt
            if !session_open =>
        {
            return refuse("its agent session has ended");
        }
        ControlKind::Close | ControlKind::Interrupt if !task.spec.keep_session => {
            return refuse(
                "it does not keep its session (spawn --session); it ends after its turn",
            );
        }
        // Its shim ends the session after the current turn: a follow-up
        // now would be accepted and never run.
        ControlKind::Say if closing(c.tx, &task)? => {
            return refuse("its session is closing (grove close); spawn a new task");
        }
        _ => {}
    }
    // An answer is bound to the request pending now; one given for another
    // request (answered meanwhile from another window, or by the timeout)
    // is refused, never taken for the next request's.
    let ask = match ctl.kind {
        ControlKind::Approve | ControlKind::Deny => {
            let pending = pending_ask(c.tx, &ctl.id)?;
            if let Some(asked) = ctl.ask
                && pending != Some(asked)
            {
                return refuse(&format!(
                    "its permission request {asked} was answered already{}",
                    pending.map_or(String::new(), |p| format!(
                        "; request {p} is pending now (answer it by its own number)"
                    ))
                ));
            }
            pending
        }
        _ => None,
    };
    let event = append_event(
        c.tx,
        c.epoch,
        EventData::TaskControlled {
            id: ctl.id.clone(),
            run_id: task.run_id.clone().unwrap_or_default(),
            kind: ctl.kind,
            option: ctl.option.clone(),
            text: ctl.text.clone(),
            ask,
        },
    )?;
    c.events.push(event);
    match ctl.kind {
        // A follow-up to an idle session is its next turn, at once: the
        // user asked for it (it takes no slot from the queue's order).
        ControlKind::Say if status == TaskStatus::Idle => move_to(c, task, TaskStatus::Running),
        // An interrupt changes no status here: the shim answers a pending
        // request `cancelled` (its `permission` update runs the task
        // again) and reports the session idle after the cut turn.
        ControlKind::Say | ControlKind::Mode | ControlKind::Close | ControlKind::Interrupt => {
            Ok(Ok(ReplyBody::Task(Box::new(task))))
        }
        ControlKind::Approve | ControlKind::Deny => move_to(c, task, TaskStatus::Running),
    }
}

/// How many of a task's latest events of a topic are looked at for the
/// newest one that matters: a pending permission request is reported last
/// (nothing more is while it waits), and a session takes few controls
/// after its close (it ends).
const LOOKBACK: i64 = 256;

/// The first of task `id`'s latest [`LOOKBACK`] events on `topic`, newest
/// first, that `pick` takes.
fn newest<T>(
    tx: &rusqlite::Connection,
    id: &str,
    topic: &str,
    mut pick: impl FnMut(EventData) -> Option<T>,
) -> Result<Option<T>, Applied> {
    let mut stmt = tx.prepare_cached(
        "SELECT payload FROM events WHERE task_id = ?1 AND topic = ?2 ORDER BY seq DESC LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![id, topic, LOOKBACK])?;
    while let Some(row) = rows.next()? {
        let payload: Vec<u8> = row.get(0)?;
        if let Some(found) = decode_stored::<EventData>(&payload)
            .ok()
            .and_then(&mut pick)
        {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Whether the task's current run was told to close its session.
fn closing(tx: &rusqlite::Connection, task: &TaskRecord) -> Result<bool, Applied> {
    let run = task.run_id.clone().unwrap_or_default();
    let close = newest(tx, &task.id, "task.control", |e| match e {
        EventData::TaskControlled {
            run_id,
            kind: ControlKind::Close,
            ..
        } if run_id == run => Some(()),
        _ => None,
    })?;
    Ok(close.is_some())
}

/// The `ask` number of task `id`'s pending permission request: that of its
/// latest `permission_request` update (the shim reports one request at a
/// time, and the task is waiting, so it is the pending one). `None` from
/// a shim older than the numbers.
fn pending_ask(tx: &rusqlite::Connection, id: &str) -> Result<Option<u64>, Applied> {
    let request = newest(tx, id, "task.agent_update", |e| match e {
        EventData::TaskAgentUpdate { kind, acp, .. } if kind == PERMISSION_REQUEST => Some(acp),
        _ => None,
    })?;
    Ok(request.and_then(|acp| {
        let v: serde_json::Value = serde_json::from_str(&acp).unwrap_or_default();
        v["ask"].as_u64()
    }))
}

/// Whether a follow-up for the task's run was written after the last
/// control the shim had read when it reported `idle` (`controlsSeen` in
/// the update): the report is stale, the shim reads that follow-up next
/// and starts the turn, so the task stays running.
fn followup_pending(c: &Ctx<'_>, task: &TaskRecord, idle: &str) -> Result<bool, Applied> {
    let seen = serde_json::from_str::<serde_json::Value>(idle)
        .ok()
        .and_then(|v| v["controlsSeen"].as_u64())
        .unwrap_or(0);
    let run = task.run_id.clone().unwrap_or_default();
    let mut stmt = c.tx.prepare_cached(
        "SELECT payload FROM events WHERE task_id = ?1 AND seq > ?2 AND topic = 'task.control'",
    )?;
    let mut rows = stmt.query(params![task.id, seen as i64])?;
    while let Some(row) = rows.next()? {
        let payload: Vec<u8> = row.get(0)?;
        if let Ok(EventData::TaskControlled {
            run_id,
            kind: ControlKind::Say,
            ..
        }) = decode_stored::<EventData>(&payload)
            && run_id == run
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether the task has an ACP conversation (any update or control).
pub(super) fn has_conversation(tx: &rusqlite::Connection, id: &str) -> rusqlite::Result<bool> {
    tx.prepare_cached("SELECT 1 FROM events WHERE task_id = ?1 LIMIT 1")?
        .query_row(params![id], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

/// Resumes a paused ACP task: its session was kept; the resume's
/// instructions (if any) are its next turn, as a follow-up would be.
pub(super) fn resume_session(
    c: &mut Ctx<'_>,
    task: TaskRecord,
    instructions: Option<&str>,
) -> Result<WriteResult, Applied> {
    if let Some(text) = instructions.filter(|s| !s.trim().is_empty()) {
        let event = append_event(
            c.tx,
            c.epoch,
            EventData::TaskControlled {
                id: task.id.clone(),
                run_id: task.run_id.clone().unwrap_or_default(),
                kind: ControlKind::Say,
                option: None,
                text: Some(text.to_string()),
                ask: None,
            },
        )?;
        c.events.push(event);
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
    /// An answer's permission request, as the store bound it.
    pub ask: Option<u64>,
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
            "SELECT payload FROM events WHERE task_id = ?1 AND topic = 'task.agent_update' \
             ORDER BY seq DESC",
        )?;
        let mut rows = stmt.query(params![id])?;
        while let Some(row) = rows.next()? {
            let payload: Vec<u8> = row.get(0)?;
            if let Ok(EventData::TaskAgentUpdate {
                id: task,
                kind: k,
                acp,
                ..
            }) = decode_stored::<EventData>(&payload)
                && task == id
                && k == kind
            {
                return Ok(Some(acp));
            }
        }
        Ok(None)
    }

    /// Task `id`'s conversation: every agent update up to seq `upto`, in
    /// order, as (seq, kind, ACP JSON).
    pub fn agent_updates(
        &self,
        id: &str,
        upto: u64,
    ) -> Result<Vec<(u64, String, String)>, super::StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, payload FROM events WHERE task_id = ?1 AND seq <= ?2 \
             AND topic = 'task.agent_update' ORDER BY seq",
        )?;
        let upto = upto.min(i64::MAX as u64) as i64;
        let rows = stmt.query_map(params![id, upto], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, payload) = row?;
            if let Ok(EventData::TaskAgentUpdate { kind, acp, .. }) =
                decode_stored::<EventData>(&payload)
            {
                out.push((seq as u64, kind, acp));
            }
        }
        Ok(out)
    }

    /// The controls of task `id` after seq `after`, in order.
    pub fn controls_after(&self, id: &str, after: u64) -> Result<Vec<Control>, super::StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, payload FROM events WHERE task_id = ?1 AND seq > ?2 \
             AND topic = 'task.control' ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![id, after as i64], |r| {
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
                ask,
            }) = decode_stored::<EventData>(&payload)
                && task == id
            {
                out.push(Control {
                    seq: seq as u64,
                    run_id,
                    kind,
                    option,
                    text,
                    ask,
                });
            }
        }
        Ok(out)
    }
}
