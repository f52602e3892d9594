//! Durable awaits (see docs/design.md, Delegation): a parent's intent to be
//! resumed with its children's results is a row of `awaits`, evaluated
//! inside the transaction of every child's end (so no primary can miss a
//! completion) and, for deadlines, by the orchestrator's
//! [`InternalOp::SettleAwaits`](super::InternalOp). Firing an await writes
//! the parent's next turn (a `say` control, or a rerun of a parent whose
//! session ended) and retires the row in that same transaction: the parent
//! is resumed exactly once, whichever primary commits it.

use super::{Ctx, Res, existing, lineage, next_turn};
use crate::protocol::{
    AwaitOp, AwaitPolicy, AwaitRecord, AwaitSpec, AwaitState, ErrorCode, GoalStatus, ReplyBody,
    TaskChanges, TaskRecord, TaskStatus, now_ms,
};
use crate::store::rows;
use crate::store::txn::{Applied, refused};
use rusqlite::{OptionalExtension, params};

/// An await's deadline when the caller gives none.
pub const DEFAULT_TIMEOUT_MS: u64 = 60 * 60 * 1000;
/// The longest deadline an await may have.
pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// Most children one await may name (max_children bounds real use).
pub const MAX_CHILDREN: usize = 1024;
/// Most characters of one child's conclusion summary in the parent's
/// prompt: a chatty child must not flood its parent's context.
const SUMMARY_CHARS: usize = 4000;
/// Most bytes of the whole results prompt: it is one control event, which
/// every subscriber receives; children past it are named, not quoted.
const PROMPT_BYTES: usize = 64 * 1024;

pub(in crate::store) fn apply(c: &mut Ctx<'_>, op: AwaitOp<'_>) -> Res {
    match op {
        AwaitOp::Create(spec) => create(c, spec),
        AwaitOp::Cancel { parent_id } => {
            let Some(rec) = pending(c.tx, parent_id)? else {
                return Err(refused(
                    ErrorCode::NotFound,
                    format!("task {parent_id} has no pending await"),
                ));
            };
            let rec = settle(c, rec, AwaitState::Cancelled)?;
            // A one-turn parent that stayed idle only for this await has
            // nothing left to wait for: its session ends (it completes),
            // rather than idling until its idle timeout. A kept session
            // stays idle, and has now ended for its own parent's await.
            if let Some(parent) = rows::get(c.tx, parent_id)?
                && parent.status == TaskStatus::Idle
            {
                if !parent.spec.keep_session {
                    next_turn::close(c, &parent)?;
                } else if let Some(grandparent) = &parent.spec.parent_id {
                    child_ended(c, grandparent, parent_id)?;
                }
            }
            Ok(Ok(ReplyBody::Await(Box::new(rec))))
        }
    }
}

fn create(c: &mut Ctx<'_>, spec: &AwaitSpec) -> Res {
    let parent = existing(c.tx, &spec.parent_id)?;
    if !matches!(parent.status, TaskStatus::Running | TaskStatus::Waiting) {
        return Err(refused(
            ErrorCode::Conflict,
            format!(
                "task {} is {}: only a running task awaits its children (from inside its turn)",
                parent.id,
                parent.status.as_str()
            ),
        ));
    }
    let children = resolve_children(c, &parent, &spec.children)?;
    let n = children.len() as u32;
    let quorum = match (spec.policy, spec.quorum) {
        (AwaitPolicy::All, _) => n,
        (AwaitPolicy::Any, _) => 1,
        (AwaitPolicy::Quorum, Some(q)) if (1..=n).contains(&q) => q,
        (AwaitPolicy::Quorum, q) => {
            return Err(refused(
                ErrorCode::InvalidParams,
                format!(
                    "policy quorum needs a quorum between 1 and the number of children awaited ({n}), got {q:?}"
                ),
            ));
        }
    };
    let timeout = spec.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if timeout == 0 || timeout > MAX_TIMEOUT_MS {
        return Err(refused(
            ErrorCode::InvalidParams,
            format!("timeout must be between 1 ms and 7 days, got {timeout} ms"),
        ));
    }
    if let Some(old) = pending(c.tx, &parent.id)? {
        settle(c, old, AwaitState::Replaced)?;
    }
    let now = now_ms();
    let rec = AwaitRecord {
        id: uuid::Uuid::new_v4().simple().to_string(),
        parent_id: parent.id.clone(),
        children,
        policy: spec.policy,
        quorum,
        created_at: now,
        deadline: now.saturating_add(timeout),
        state: AwaitState::Pending,
        settled_at: None,
    };
    c.tx.prepare_cached(
        "INSERT INTO awaits (id, parent_id, children, policy, quorum, created_at, deadline, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending')",
    )?
    .execute(params![
        rec.id,
        rec.parent_id,
        serde_json::to_string(&rec.children).unwrap_or_default(),
        rec.policy.as_str(),
        rec.quorum,
        rec.created_at as i64,
        rec.deadline as i64,
    ])?;
    // Already satisfied (children that ended before the await): the
    // results become the parent's next turn, queued behind this one.
    let rec = evaluate(c, rec, now)?;
    Ok(Ok(ReplyBody::Await(Box::new(rec))))
}

/// The children an await names, checked; none named: every child of the
/// parent that has not ended.
fn resolve_children(
    c: &Ctx<'_>,
    parent: &TaskRecord,
    named: &[String],
) -> Result<Vec<String>, Applied> {
    if named.len() > MAX_CHILDREN {
        return Err(refused(
            ErrorCode::InvalidParams,
            format!("an await names at most {MAX_CHILDREN} children"),
        ));
    }
    let mut out: Vec<String> = Vec::new();
    if named.is_empty() {
        let mut stmt = c.tx.prepare_cached(
            "SELECT id FROM tasks WHERE parent_id = ?1
             AND status NOT IN ('completed', 'failed', 'cancelled') ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map([&parent.id], |r| r.get::<_, String>(0))?;
        let ids = rows.collect::<Result<Vec<_>, _>>()?;
        // Not those that have ended for an await already (an idle kept
        // session): they would satisfy it in this very commit.
        for id in ids {
            if !ended(c.tx, &rows::get(c.tx, &id)?)? {
                out.push(id);
            }
        }
        if out.is_empty() {
            return Err(refused(
                ErrorCode::Conflict,
                format!(
                    "task {} has no children still running: nothing to await (spawn them first, or name ended ones to get their results)",
                    parent.id
                ),
            ));
        }
        return Ok(out);
    }
    for id in named {
        if out.contains(id) {
            continue;
        }
        let child = rows::get(c.tx, id)?
            .ok_or_else(|| refused(ErrorCode::NotFound, format!("no task {id}")))?;
        if child.spec.parent_id.as_deref() != Some(parent.id.as_str()) {
            return Err(refused(
                ErrorCode::InvalidParams,
                format!(
                    "task {id} is not a child of task {} (only tasks it spawned can be awaited)",
                    parent.id
                ),
            ));
        }
        out.push(id.clone());
    }
    Ok(out)
}

/// A child of `parent_id` ended (or was deleted): its pending await, if
/// any, is evaluated in the same transaction.
pub(super) fn child_ended(c: &mut Ctx<'_>, parent_id: &str, child_id: &str) -> Result<(), Applied> {
    if let Some(rec) = pending(c.tx, parent_id)?
        && rec.children.iter().any(|id| id == child_id)
    {
        evaluate(c, rec, now_ms())?;
    }
    Ok(())
}

/// The parent was cancelled or deleted: nobody is left to resume.
pub(super) fn parent_gone(c: &mut Ctx<'_>, parent_id: &str) -> Result<(), Applied> {
    if let Some(rec) = pending(c.tx, parent_id)? {
        settle(c, rec, AwaitState::Dropped)?;
    }
    Ok(())
}

/// Every pending await that is satisfied or past its deadline fires (the
/// orchestrator asks at its deadlines and after each promotion). At most
/// `limit` per call; the rest wait for the next.
pub(super) fn settle_due(c: &mut Ctx<'_>, now: u64, limit: usize) -> Result<usize, Applied> {
    let list: Vec<AwaitRecord> = {
        let mut stmt = c.tx.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM awaits WHERE state = 'pending' ORDER BY deadline LIMIT ?1"
        ))?;
        let rows = stmt.query_map([limit as i64], read_row)?;
        rows.collect::<Result<_, _>>()?
    };
    let mut fired = 0;
    for rec in list {
        if evaluate(c, rec, now)?.state != AwaitState::Pending {
            fired += 1;
        }
    }
    Ok(fired)
}

/// Fires the await when enough children ended or its deadline passed.
fn evaluate(c: &mut Ctx<'_>, rec: AwaitRecord, now: u64) -> Result<AwaitRecord, Applied> {
    let children = children_now(c, &rec)?;
    let ended = children.iter().filter(|child| child.ended).count() as u32;
    let state = if ended >= rec.quorum {
        AwaitState::Satisfied
    } else if now >= rec.deadline {
        AwaitState::Expired
    } else {
        return Ok(rec);
    };
    let prompt = results_prompt(&rec, &children, state);
    let rec = settle(c, rec, state)?;
    resume_parent(c, &rec.parent_id, prompt)?;
    Ok(rec)
}

/// One child of an await as it is now.
pub struct Child {
    pub id: String,
    /// `None`: deleted.
    pub task: Option<TaskRecord>,
    /// Ended for the await (see [`ended`]).
    pub ended: bool,
}

/// Ended for an await: finished whatever its status, deleted, or idle in a
/// kept session (its turn ended well and it waits for a follow-up), as
/// every other wait counts it (see docs/design.md, Waiting) — unless it is
/// idle only until an await of its own fires, or pursues a running goal.
/// Counting only finished children, an await on a `keep_session` child
/// sat out its deadline (an hour by default) while `wait` returned at once.
fn ended(tx: &rusqlite::Connection, t: &Option<TaskRecord>) -> rusqlite::Result<bool> {
    Ok(match t {
        None => true,
        Some(t) if t.status.is_terminal() => true,
        Some(t) if t.status == TaskStatus::Idle => {
            pending(tx, &t.id)?.is_none()
                && (super::goals::get(tx, &t.id)?).is_none_or(|g| g.status != GoalStatus::Running)
        }
        Some(_) => false,
    })
}

fn children_now(c: &Ctx<'_>, rec: &AwaitRecord) -> Result<Vec<Child>, Applied> {
    let mut out = Vec::with_capacity(rec.children.len());
    for id in &rec.children {
        let task = rows::get(c.tx, id)?;
        let ended = ended(c.tx, &task)?;
        out.push(Child {
            id: id.clone(),
            task,
            ended,
        });
    }
    Ok(out)
}

/// The parent's next turn: one `[delegated-result ID STATUS]` block per
/// ended child with its conclusion, and the children still running.
pub fn results_prompt(rec: &AwaitRecord, children: &[Child], state: AwaitState) -> String {
    let done = children.iter().filter(|child| child.ended).count();
    let why = match state {
        AwaitState::Expired => "the await's deadline passed",
        _ => "the await is satisfied",
    };
    let mut out = format!(
        "[grove: {done} of the {} tasks you delegated have ended ({} {} needed); {why}. Their results follow.]\n",
        children.len(),
        rec.policy.as_str(),
        rec.quorum
    );
    let mut left_out: Vec<&str> = Vec::new();
    for Child { id, task, ended } in children {
        let block = match task {
            None => format!(
                "\n[delegated-result {id} deleted]\n(the task was deleted before it reported)\n[/delegated-result]\n"
            ),
            Some(_) if !ended => continue,
            Some(t) => {
                let body = match &t.conclusion {
                    Some(con) => {
                        // Bounded whole (artifacts and follow-ups too),
                        // whatever an older grove stored.
                        let mut con = con.clone().bounded();
                        if con.summary.chars().count() > SUMMARY_CHARS {
                            con.summary =
                                con.summary.chars().take(SUMMARY_CHARS).collect::<String>() + "…";
                        }
                        serde_json::to_string(&con).unwrap_or_default()
                    }
                    None => "(no conclusion recorded)".to_string(),
                };
                format!(
                    "\n[delegated-result {id} {}]\n{body}\n[/delegated-result]\n",
                    t.status.as_str()
                )
            }
        };
        // The whole prompt stays within its bound: a block that would take
        // it past is left out and named.
        if out.len() + block.len() > PROMPT_BYTES {
            left_out.push(id);
            continue;
        }
        out.push_str(&block);
    }
    if !left_out.is_empty() {
        out.push_str(&format!(
            "\nAlso ended (results too long to include; see `get`): {}\n",
            left_out.join(", ")
        ));
    }
    let running: Vec<&str> = (children.iter())
        .filter(|child| !child.ended)
        .map(|child| child.id.as_str())
        .collect();
    if !running.is_empty() {
        out.push_str(&format!(
            "\nStill running ({}): {}\n",
            if state == AwaitState::Expired {
                "the deadline passed before they ended"
            } else {
                "not waited for"
            },
            running.join(", ")
        ));
    }
    out
}

/// Gives the parent its next turn. An open session gets a follow-up (the
/// next turn if it is mid-turn, at once if idle); a parent whose session
/// ended is rerun under its id with the results after its prompt; one
/// that has not started yet gets them after its prompt. Never refused:
/// a child's end must commit whatever became of its parent.
fn resume_parent(c: &mut Ctx<'_>, parent_id: &str, text: String) -> Result<(), Applied> {
    let Some(parent) = rows::get(c.tx, parent_id)? else {
        return Ok(());
    };
    if next_turn::session_open(&parent) {
        // The results reach the agent in its open session: a live
        // injection (a rerun below is a resurrection).
        crate::store::counters::bump(c.tx, "live_injections", 1)?;
        return next_turn::give(c, parent, text);
    }
    // A shell parent's prompt is a command line: the children's results
    // (text agents wrote) appended to it would run as commands. It is
    // rerun as it was, and reads the results itself (`grove awaits`,
    // `grove show`).
    let text = lineage::takes_instructions(&parent.spec).then_some(text);
    match parent.status {
        TaskStatus::Completed | TaskStatus::Failed => {
            lineage::relaunch(c, parent_id, text.as_deref(), &TaskChanges::default())?
                .map_err(Applied::Refused)?;
            crate::store::counters::bump(c.tx, "resurrections", 1)?;
        }
        TaskStatus::Pending | TaskStatus::Queued | TaskStatus::Paused => {
            if let Some(text) = text {
                let mut parent = parent;
                parent.spec.prompt = lineage::fit_prompt(&parent.spec.prompt, &text);
                super::change::save(c, parent)?.map_err(Applied::Refused)?;
            }
        }
        // Cancelled: its await was dropped with it.
        _ => {}
    }
    Ok(())
}

const COLUMNS: &str =
    "id, parent_id, children, policy, quorum, created_at, deadline, state, settled_at";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AwaitRecord> {
    let bad = |i: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unreadable await {what}").into(),
        )
    };
    let children: String = r.get(2)?;
    let policy: String = r.get(3)?;
    let state: String = r.get(7)?;
    Ok(AwaitRecord {
        id: r.get(0)?,
        parent_id: r.get(1)?,
        children: serde_json::from_str(&children).map_err(|_| bad(2, "children"))?,
        policy: AwaitPolicy::parse(&policy).ok_or_else(|| bad(3, "policy"))?,
        quorum: r.get(4)?,
        created_at: r.get::<_, i64>(5)? as u64,
        deadline: r.get::<_, i64>(6)? as u64,
        state: AwaitState::parse(&state).ok_or_else(|| bad(7, "state"))?,
        settled_at: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
    })
}

fn pending(tx: &rusqlite::Connection, parent_id: &str) -> rusqlite::Result<Option<AwaitRecord>> {
    tx.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM awaits WHERE parent_id = ?1 AND state = 'pending'"
    ))?
    .query_row([parent_id], read_row)
    .optional()
}

/// Every await, pending first, then the most recent: for `grove awaits`.
pub fn list(
    conn: &rusqlite::Connection,
    all: bool,
    limit: usize,
) -> rusqlite::Result<Vec<AwaitRecord>> {
    let filter = if all { "" } else { "WHERE state = 'pending'" };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM awaits {filter}
         ORDER BY state = 'pending' DESC, created_at DESC LIMIT ?1"
    ))?;
    let rows = stmt.query_map([limit as i64], read_row)?;
    rows.collect()
}

/// The earliest deadline of a pending await (the orchestrator sleeps
/// until it).
pub fn next_deadline(conn: &rusqlite::Connection) -> rusqlite::Result<Option<u64>> {
    conn.prepare_cached("SELECT MIN(deadline) FROM awaits WHERE state = 'pending'")?
        .query_row([], |r| r.get::<_, Option<i64>>(0))
        .map(|d| d.map(|d| d as u64))
}

/// Whether the task has a pending await: its shim keeps the session open
/// after the turn, to be resumed with the results.
pub fn is_awaiting(conn: &rusqlite::Connection, task_id: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM awaits WHERE parent_id = ?1 AND state = 'pending'")?
        .query_row([task_id], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

fn settle(
    c: &mut Ctx<'_>,
    mut rec: AwaitRecord,
    state: AwaitState,
) -> Result<AwaitRecord, Applied> {
    let now = now_ms();
    c.tx.prepare_cached("UPDATE awaits SET state = ?2, settled_at = ?3 WHERE id = ?1")?
        .execute(params![rec.id, state.as_str(), now as i64])?;
    rec.state = state;
    rec.settled_at = Some(now);
    Ok(rec)
}
