//! Slot loans (see docs/design.md, Slot loans). A running task blocked in
//! a wait for its children (`grove wait`, `spawn --wait`, `run`, the MCP
//! `wait` tool) does no work, yet it held its `max_parallel` slot: enough
//! parents waiting on their children held every slot, and the children
//! queued until the waits timed out. While it waits, its slot is lent: the
//! task is not counted as holding one.
//!
//! A loan is one waiter's (a task may wait in several calls at once), for
//! the run it waits in, and lasts `LOAN_MS` unless the waiter renews it
//! (every `RENEW_EVERY_MS`): a waiter that died without taking the slot
//! back costs the limit that long at most. It counts only while the task
//! runs that run and still has an unfinished child — the case it exists
//! for: a task that waits for anything else, or whose children ended,
//! holds its slot as any running task does. Taking the slot back may leave
//! more than `max_parallel` running for a while (the children started
//! meanwhile): nothing new starts until the count is under the limit.

use super::{Ctx, Res, existing, ok};
use crate::protocol::{ErrorCode, EventData, TaskStatus, now_ms};
use crate::store::txn::{Applied, append_event, refused};
use rusqlite::{Connection, OptionalExtension};

/// How long a loan lasts without being renewed.
pub const LOAN_MS: u64 = 30_000;
/// How often a waiter renews its loan: three renewals fit in a loan, so
/// one slow or lost renewal does not end it.
pub const RENEW_EVERY_MS: u64 = 10_000;

/// What a `task.lend_slot` names: the task, the run the waiter waits in,
/// the waiter, and whether it lends or takes the slot back.
pub struct LendSlot<'a> {
    pub id: &'a str,
    pub run_id: &'a str,
    pub waiter: &'a str,
    pub lend: bool,
}

/// `task.lend_slot`: a waiter lends (or renews its loan of) the slot of
/// its running task, or takes it back. The first waiter's loan and the
/// last one's end are events (`task.slot`); the first wakes the scheduler,
/// which may now start a queued task. Renewals are not events.
pub(super) fn lend(c: &mut Ctx<'_>, req: LendSlot<'_>) -> Res {
    let LendSlot {
        id,
        run_id,
        waiter,
        lend,
    } = req;
    let task = existing(c.tx, id)?;
    let now = now_ms();
    let before = has_loans(c.tx, id, run_id, now)?;
    if lend {
        if task.status != TaskStatus::Running || task.run_id.as_deref() != Some(run_id) {
            return Err(refused(
                ErrorCode::Conflict,
                format!(
                    "task {id} is {}{}; only a running task lends its slot, for the run it waits in",
                    task.status.as_str(),
                    match task.run_id.as_deref() {
                        Some(now) if now != run_id => format!(" in run {now}, not {run_id}"),
                        _ => String::new(),
                    }
                ),
            ));
        }
        // A task with no unfinished child waits for nothing of its own: its
        // loan would never count, and its `task.slot` would say it lent.
        // A `delegate` task's child is the task it follows, in another
        // workspace.
        let follows = task.spec.engine == crate::config::DELEGATE_ENGINE;
        if follows || has_unfinished_child(c.tx, id)? {
            c.tx.prepare_cached(
                "INSERT OR REPLACE INTO slot_loans (id, waiter, run_id, until) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(rusqlite::params![
                id,
                waiter,
                run_id,
                (now + LOAN_MS) as i64
            ])?;
        } else {
            c.tx.prepare_cached("DELETE FROM slot_loans WHERE id = ?1 AND waiter = ?2")?
                .execute([id, waiter])?;
        }
    } else {
        c.tx.prepare_cached("DELETE FROM slot_loans WHERE id = ?1 AND waiter = ?2")?
            .execute([id, waiter])?;
    }
    // A task's loans of other runs, and lapsed ones, go too.
    c.tx.prepare_cached("DELETE FROM slot_loans WHERE id = ?1 AND (run_id != ?2 OR until <= ?3)")?
        .execute(rusqlite::params![
            id,
            task.run_id.as_deref().unwrap_or(""),
            now as i64
        ])?;
    let after = has_loans(c.tx, id, run_id, now)?;
    if before != after {
        slot_event(c, id, run_id, after)?;
    }
    ok(task)
}

/// Appends `task.slot`: `id`'s slot in `run_id` lent, or taken back.
fn slot_event(c: &mut Ctx<'_>, id: &str, run_id: &str, lent: bool) -> Result<(), Applied> {
    let data = EventData::TaskSlot {
        id: id.to_string(),
        run_id: run_id.to_string(),
        lent,
    };
    c.events.push(append_event(c.tx, c.epoch, data)?);
    Ok(())
}

/// Whether `id` has a child that may still need a slot (as in [`IN_FORCE`]).
fn has_unfinished_child(tx: &Connection, id: &str) -> rusqlite::Result<bool> {
    tx.prepare_cached(
        "SELECT 1 FROM tasks WHERE parent_id = ?1 \
         AND status IN ('pending', 'queued', 'running', 'waiting', 'paused') LIMIT 1",
    )?
    .query_row([id], |_| Ok(()))
    .optional()
    .map(|found| found.is_some())
}

/// Whether waiters of `id` hold loans for `run_id` that have not lapsed.
fn has_loans(tx: &Connection, id: &str, run_id: &str, now: u64) -> rusqlite::Result<bool> {
    tx.prepare_cached("SELECT 1 FROM slot_loans WHERE id = ?1 AND run_id = ?2 AND until > ?3")?
        .query_row(rusqlite::params![id, run_id, now as i64], |_| Ok(()))
        .optional()
        .map(|found| found.is_some())
}

/// The condition under which loan `l` of task `t` counts at `?1` (now):
/// for the run `t` runs, not lapsed, not further ahead than a loan is ever
/// given (a clock set back would otherwise stretch it), and while `t` has a
/// child that may still need a slot (a `delegate` task's is the task it
/// follows in another workspace).
const IN_FORCE: &str = "l.run_id = t.run_id AND t.status = 'running' \
     AND l.until > ?1 AND l.until <= ?1 + 30000 \
     AND (t.engine = 'delegate' OR EXISTS (SELECT 1 FROM tasks c WHERE c.parent_id = t.id \
         AND c.status IN ('pending', 'queued', 'running', 'waiting', 'paused')))";
const _: () = assert!(
    same(crate::config::DELEGATE_ENGINE, "delegate"),
    "IN_FORCE spells DELEGATE_ENGINE out"
);

/// `a == b`, at compile time.
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}
const _: () = assert!(LOAN_MS == 30_000, "IN_FORCE spells LOAN_MS out");

/// How many tasks hold a slot at `now`: running or waiting for a
/// permission answer, or paused with a run (it keeps its slot), less the
/// running ones whose slot is lent.
pub(super) fn held(tx: &Connection, now: u64) -> rusqlite::Result<usize> {
    tx.prepare_cached(&format!(
        "SELECT COUNT(*) FROM tasks t
         WHERE (t.status IN ('running', 'waiting') OR (t.status = 'paused' AND t.run_id IS NOT NULL))
           AND NOT EXISTS (SELECT 1 FROM slot_loans l WHERE l.id = t.id AND {IN_FORCE})"
    ))?
    .query_row([now as i64], |r| r.get::<_, i64>(0))
    .map(|n| n as usize)
}

/// A lender whose slot is kept for one of its children (see docs/design.md,
/// Slot loans), and the child to start in it first.
#[derive(Debug, Clone, PartialEq)]
pub struct Reserved {
    pub lender: String,
    pub child: String,
    pub priority: i64,
}

/// The lenders whose slot is kept for their children at `now`: a loan in
/// force, not a `delegate` task (what it follows runs elsewhere, so its
/// slot is anyone's), a queued child, and no child started (running,
/// waiting, or paused with a run — whether or not that child lent the slot
/// on to its own children: the slot went to it). For each, its first
/// queued child in start order.
pub fn reserving(conn: &Connection, now: u64) -> rusqlite::Result<Vec<Reserved>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT t.id, c.id, c.priority FROM tasks t
         JOIN tasks c ON c.parent_id = t.id AND c.status = 'queued'
         WHERE t.status = 'running' AND t.engine != 'delegate'
           AND EXISTS (SELECT 1 FROM slot_loans l WHERE l.id = t.id AND {IN_FORCE})
           AND NOT EXISTS (SELECT 1 FROM tasks s WHERE s.parent_id = t.id
               AND (s.status IN ('running', 'waiting') OR (s.status = 'paused' AND s.run_id IS NOT NULL)))
         ORDER BY c.priority DESC, c.rowid"
    ))?;
    let rows = stmt.query_map([now as i64], |r| {
        Ok(Reserved {
            lender: r.get(0)?,
            child: r.get(1)?,
            priority: r.get(2)?,
        })
    })?;
    let mut out: Vec<Reserved> = Vec::new();
    for row in rows {
        let row = row?;
        // The first row of each lender is its child to start first.
        if !out.iter().any(|r| r.lender == row.lender) {
            out.push(row);
        }
    }
    Ok(out)
}

/// Whether starting `task` now stays within `max_parallel`, `held` slots
/// being held: a child of a lender whose slot is kept for it may take any
/// free slot, anyone else only a slot no lender keeps. So a lent slot goes
/// to the lender's children, and a child is never held back more than
/// without loans (nothing new can wait for ever on a kept slot: while one
/// is kept, a child that may take it is queued).
pub fn may_start(
    parent: Option<&str>,
    held: usize,
    reserved: &[Reserved],
    max_parallel: usize,
) -> bool {
    if held >= max_parallel {
        return false;
    }
    let kept_for_it = parent.is_some_and(|p| reserved.iter().any(|r| r.lender == p));
    kept_for_it || held + reserved.len() < max_parallel
}

/// The tasks whose slot is lent at `now` (the orchestrator's count of
/// held slots leaves them out, as `held` does).
pub fn lent(conn: &Connection, now: u64) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT DISTINCT l.id FROM slot_loans l JOIN tasks t ON t.id = l.id WHERE {IN_FORCE}"
    ))?;
    let rows = stmt.query_map([now as i64], |r| r.get(0))?;
    rows.collect()
}

/// The run of `task` ended or left its slot (it ended, or was queued
/// again): its loans go, and a loan that was still lent ends with an
/// event, so that every `task.slot` lent is followed by one taken back. A
/// task that goes from running to waiting for a permission answer keeps
/// its loans (they count again once it runs again), and no event says so:
/// a waiting task holds its slot whatever its loans (see [`held`]).
pub(super) fn run_left(c: &mut Ctx<'_>, task: &crate::protocol::TaskRecord) -> Result<(), Applied> {
    let Some(run_id) = task.run_id.as_deref() else {
        return Ok(());
    };
    let now = now_ms() as i64;
    let mut gone =
        c.tx.prepare_cached("DELETE FROM slot_loans WHERE id = ?1 RETURNING run_id, until")?;
    let mut lent = false;
    let mut rows = gone.query([&task.id])?;
    while let Some(row) = rows.next()? {
        lent |= row.get::<_, String>(0)? == run_id && row.get::<_, i64>(1)? > now;
    }
    drop(rows);
    drop(gone);
    if lent {
        slot_event(c, &task.id, run_id, false)?;
    }
    Ok(())
}

/// A deleted task's loans go with it.
pub(super) fn forget(tx: &Connection, id: &str) -> Result<(), Applied> {
    tx.prepare_cached("DELETE FROM slot_loans WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}
