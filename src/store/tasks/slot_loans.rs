//! Slot loans (see docs/design.md, Slot loans). A running task blocked in
//! a wait (`grove wait`, `spawn --wait`, `run`, the MCP `wait` tool) does
//! no work, yet it held its `max_parallel` slot: enough parents waiting on
//! their children held every slot, and the children queued until the
//! waits timed out. While it waits, its slot is lent: the task is not
//! counted as holding one. The waiter renews the loan every
//! `RENEW_EVERY_MS`; a loan not renewed lapses after `LOAN_MS`, so a waiter
//! that died without taking its slot back costs the limit only that long.
//! Taking the slot back may leave more than `max_parallel` running for a
//! while (the children started meanwhile): nothing new starts until the
//! count is under the limit again.

use super::{Ctx, Res, existing, ok};
use crate::protocol::{ErrorCode, EventData, TaskRecord, TaskStatus, now_ms};
use crate::store::txn::{Applied, append_event, refused};
use rusqlite::{Connection, OptionalExtension};

/// How long a loan lasts without being renewed.
pub const LOAN_MS: u64 = 30_000;
/// How often a waiter renews its loan: three renewals fit in a loan, so
/// one slow or lost renewal does not end it.
pub const RENEW_EVERY_MS: u64 = 10_000;

/// `task.lend_slot`: lends `id`'s slot (a running task only) or takes it
/// back. Only a loan's start and end are events (`task.slot`): the start
/// wakes the scheduler, which may now start a queued task.
pub(super) fn lend(c: &mut Ctx<'_>, id: &str, lend: bool) -> Res {
    let task = existing(c.tx, id)?;
    let now = now_ms();
    let was_lent = is_lent(c.tx, &task, now)?;
    let run_id = task.run_id.clone().unwrap_or_default();
    if lend {
        if task.status != TaskStatus::Running {
            return Err(refused(
                ErrorCode::Conflict,
                format!(
                    "task {id} is {}; only a running task lends its slot",
                    task.status.as_str()
                ),
            ));
        }
        c.tx.prepare_cached(
            "INSERT OR REPLACE INTO slot_loans (id, run_id, until) VALUES (?1, ?2, ?3)",
        )?
        .execute(rusqlite::params![id, run_id, (now + LOAN_MS) as i64])?;
    } else {
        c.tx.prepare_cached("DELETE FROM slot_loans WHERE id = ?1")?
            .execute([id])?;
    }
    if was_lent != lend {
        c.events.push(append_event(
            c.tx,
            c.epoch,
            EventData::TaskSlot {
                id: task.id.clone(),
                run_id,
                lent: lend,
            },
        )?);
    }
    ok(task)
}

/// The condition under which a task's loan counts at `?1` (now): for its
/// current run, while it runs, not lapsed, and not further ahead than a
/// loan is ever given (a clock set back would otherwise stretch it).
const IN_FORCE: &str = "l.run_id = t.run_id AND t.status = 'running' \
     AND l.until > ?1 AND l.until <= ?1 + 30000";
const _: () = assert!(LOAN_MS == 30_000, "IN_FORCE spells LOAN_MS out");

fn is_lent(tx: &Connection, task: &TaskRecord, now: u64) -> rusqlite::Result<bool> {
    tx.prepare_cached(&format!(
        "SELECT 1 FROM slot_loans l JOIN tasks t ON t.id = l.id WHERE l.id = ?2 AND {IN_FORCE}"
    ))?
    .query_row(rusqlite::params![now as i64, task.id], |_| Ok(()))
    .optional()
    .map(|found| found.is_some())
}

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

/// The tasks whose slot is lent at `now` (the orchestrator's count of
/// held slots leaves them out, as `held` does).
pub fn lent(conn: &Connection, now: u64) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT l.id FROM slot_loans l JOIN tasks t ON t.id = l.id WHERE {IN_FORCE}"
    ))?;
    let rows = stmt.query_map([now as i64], |r| r.get(0))?;
    rows.collect()
}

/// A deleted task's loan goes with it.
pub(super) fn forget(tx: &Connection, id: &str) -> Result<(), Applied> {
    tx.prepare_cached("DELETE FROM slot_loans WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}
