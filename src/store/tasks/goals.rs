//! Goals as the store thread advances them (see docs/design.md,
//! Runs and goals). A goal is a row beside its task. Each iteration's end is decided
//! in the commit that records it — an ACP turn's `turn_end` (in
//! `store/agent.rs`) or a CLI run's end (in `change::set_status`) — and the
//! next iteration is written in that same commit: a `say` to the open
//! session (the way an await resumes a parent, `next_turn`) or a rerun of
//! the task with the last conclusion. Deadlines are the orchestrator's
//! `SettleAwaits`. No process holds a goal in memory, so a new primary
//! continues it, and a finished iteration is never run again.

use super::{Ctx, Res, lineage, next_turn};
use crate::protocol::{
    Conclusion, ConclusionSource, ConclusionStatus, ErrorCode, EventData, GoalRecord, GoalSpec,
    GoalStatus, ReplyBody, TaskChanges, TaskRecord, TaskStatus, goal_brief, now_ms,
};
use crate::store::rows;
use crate::store::txn::{Applied, append_event, refused};
use rusqlite::{OptionalExtension, params};

/// Most iterations a goal may ask for.
pub const MAX_ITERATIONS: u32 = 1000;
/// The longest a goal may run.
pub const MAX_DURATION_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// Most characters of the objective repeated in each next turn's prompt
/// (the whole objective is in the first).
const OBJECTIVE_CHARS: usize = 2000;
/// Most characters of the last summary carried into a CLI engine's next
/// run (its prompt is one argument: it must stay far below ARG_MAX).
const SUMMARY_CHARS: usize = 4000;

/// `goal.create`: the goal's task and its row, one commit.
pub(in crate::store) fn create(c: &mut Ctx<'_>, spec: &GoalSpec) -> Res {
    let objective = spec.task.prompt.trim().to_string();
    if objective.is_empty() {
        return Err(refused(ErrorCode::InvalidParams, "the objective is empty"));
    }
    let invalid = |m: String| Err(refused(ErrorCode::InvalidParams, m));
    if !(1..=MAX_ITERATIONS).contains(&spec.max_iterations) {
        return invalid(format!(
            "max_iterations must be 1..={MAX_ITERATIONS}, got {}",
            spec.max_iterations
        ));
    }
    if !(1000..=MAX_DURATION_MS).contains(&spec.max_duration_ms) {
        return invalid(format!(
            "max_duration must be between 1 s and 7 days, got {} ms",
            spec.max_duration_ms
        ));
    }
    if spec.stall_after == 0 {
        return invalid("stall_after must be at least 1".into());
    }
    let mut new = spec.task.clone();
    // The admission kept the session of an ACP engine (its turns are the
    // iterations) and of nothing else.
    let session = new.keep_session;
    new.prompt = format!("{objective}{}", goal_brief(spec.max_iterations, session));
    new.want_conclusion = true;
    let task = match lineage::create_new(c, &new)? {
        Ok(ReplyBody::Task(t)) => *t,
        Ok(_) => unreachable!("create returns the task"),
        Err(e) => return Err(Applied::Refused(e)),
    };
    let now = now_ms();
    let goal = GoalRecord {
        id: task.id.clone(),
        objective,
        status: GoalStatus::Running,
        iteration: 1,
        max_iterations: spec.max_iterations,
        max_duration_ms: spec.max_duration_ms,
        stall_after: spec.stall_after,
        stalls: 0,
        session,
        progress: None,
        response: None,
        next_step: None,
        blocked_reason: None,
        created_at: now,
        deadline: now.saturating_add(spec.max_duration_ms),
        finished_at: None,
    };
    c.tx.prepare_cached(
        "INSERT INTO goals (id, objective, prompt, status, iteration, max_iterations,
             max_duration_ms, stall_after, stalls, session, created_at, deadline)
         VALUES (?1, ?2, ?3, 'running', 1, ?4, ?5, ?6, 0, ?7, ?8, ?9)",
    )?
    .execute(params![
        goal.id,
        goal.objective,
        task.spec.prompt,
        goal.max_iterations,
        goal.max_duration_ms as i64,
        goal.stall_after,
        goal.session,
        goal.created_at as i64,
        goal.deadline as i64,
    ])?;
    publish(c, &goal)?;
    Ok(Ok(ReplyBody::Goal(Box::new(goal))))
}

/// What one iteration's conclusion decides.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    /// The goal ends with this status.
    End(GoalStatus),
    /// Another iteration.
    Continue,
}

/// The goal after an iteration that concluded `con` at `now`: its fields
/// updated and the verdict. Pure: the rules of a goal in one place.
fn judge(goal: &mut GoalRecord, best: &mut Option<f64>, con: &Conclusion, now: u64) -> Verdict {
    let reported = con.source == ConclusionSource::Reported;
    goal.response = Some(con.summary.clone());
    goal.next_step = con.next_step.clone();
    goal.blocked_reason = con.blocked_reason.clone();
    if let Some(p) = con.progress {
        goal.progress = Some(p);
    }
    if reported {
        match con.status {
            ConclusionStatus::Success => return Verdict::End(GoalStatus::Completed),
            ConclusionStatus::Blocked => return Verdict::End(GoalStatus::Blocked),
            ConclusionStatus::Failed => return Verdict::End(GoalStatus::Failed),
            ConclusionStatus::Partial => {}
        }
    }
    if now >= goal.deadline {
        return Verdict::End(GoalStatus::Timeout);
    }
    // Advancing is passing the best so far: falling back and climbing
    // back up is not progress.
    match con.progress.filter(|_| reported) {
        Some(p) if best.is_none_or(|b| p > b) => {
            *best = Some(p);
            goal.stalls = 0;
        }
        _ => goal.stalls += 1,
    }
    if goal.stalls >= goal.stall_after {
        return Verdict::End(GoalStatus::Stalled);
    }
    if goal.iteration >= goal.max_iterations {
        return Verdict::End(GoalStatus::Failed);
    }
    Verdict::Continue
}

/// An ACP turn of `task_id` ended with `con` (from its `turn_end`): the
/// goal, if the task pursues one, takes its next turn or ends.
pub(in crate::store) fn turn_ended(
    c: &mut Ctx<'_>,
    task_id: &str,
    con: &Conclusion,
) -> Result<(), Applied> {
    let Some((mut goal, mut best)) = running(c.tx, task_id)? else {
        return Ok(());
    };
    let Some(task) = rows::get(c.tx, task_id)? else {
        return Ok(());
    };
    match judge(&mut goal, &mut best, con, now_ms()) {
        Verdict::Continue if next_turn::session_open(&task) => {
            goal.iteration += 1;
            let text = next_turn_prompt(&goal, con);
            save(c, &goal, best)?;
            next_turn::give(c, task, text)
        }
        Verdict::Continue => {
            // The session is gone (paused without a run, ended): the
            // task's own end decides the goal.
            save(c, &goal, best)
        }
        Verdict::End(status) => {
            end(c, &mut goal, best, status)?;
            if next_turn::session_open(&task) {
                next_turn::close(c, &task)?;
            }
            Ok(())
        }
    }
}

/// `task` (just saved with a terminal status) pursues a running goal: a
/// CLI engine's run ended, or an ACP session ended before the goal did.
/// Returns the task rerun for the next iteration, if any.
pub(super) fn task_ended(
    c: &mut Ctx<'_>,
    task: &TaskRecord,
) -> Result<Option<TaskRecord>, Applied> {
    let Some((mut goal, mut best)) = running(c.tx, &task.id)? else {
        return Ok(None);
    };
    let status = match (task.status, &task.conclusion) {
        (TaskStatus::Cancelled, _) => GoalStatus::Cancelled,
        // A session that ends before its goal does (closed, timed out,
        // its agent gone), or a run that failed without saying why: the
        // goal cannot go on.
        (TaskStatus::Completed | TaskStatus::Failed, Some(con))
            if !goal.session && (task.status == TaskStatus::Completed || reported(con)) =>
        {
            match judge(&mut goal, &mut best, con, now_ms()) {
                Verdict::End(s) => s,
                Verdict::Continue => return next_run(c, goal, best, con).map(Some),
            }
        }
        _ => {
            let how = match (goal.session, task.status) {
                (true, TaskStatus::Completed) => {
                    "its agent session was closed before the goal ended".to_string()
                }
                (_, s) => format!("its task {}", s.as_str()),
            };
            goal.response = Some(match &task.progress_text {
                Some(why) => format!("{how}: {why}"),
                None => how,
            });
            GoalStatus::Failed
        }
    };
    end(c, &mut goal, best, status)?;
    Ok(None)
}

fn reported(con: &Conclusion) -> bool {
    con.source == ConclusionSource::Reported
}

/// A CLI engine's next iteration: the task rerun under its id, with the
/// first prompt and the last conclusion.
fn next_run(
    c: &mut Ctx<'_>,
    mut goal: GoalRecord,
    best: Option<f64>,
    con: &Conclusion,
) -> Result<TaskRecord, Applied> {
    goal.iteration += 1;
    let first: String =
        c.tx.prepare_cached("SELECT prompt FROM goals WHERE id = ?1")?
            .query_row([&goal.id], |r| r.get(0))?;
    let mut last = con.clone();
    if last.summary.chars().count() > SUMMARY_CHARS {
        last.summary = last.summary.chars().take(SUMMARY_CHARS).collect::<String>() + "…";
    }
    let prompt = format!(
        "{first}\n\n[grove goal: this is iteration {} of at most {}. The previous iteration concluded: {}{}]",
        goal.iteration,
        goal.max_iterations,
        serde_json::to_string(&last).unwrap_or_default(),
        stall_note(&goal),
    );
    save(c, &goal, best)?;
    let changes = TaskChanges {
        prompt: Some(prompt),
        ..TaskChanges::default()
    };
    match lineage::relaunch(c, &goal.id, None, &changes)? {
        Ok(ReplyBody::Task(t)) => Ok(*t),
        Ok(_) => unreachable!("relaunch returns the task"),
        Err(e) => Err(Applied::Refused(e)),
    }
}

/// The next turn of an ACP session pursuing `goal`, after `con`.
fn next_turn_prompt(goal: &GoalRecord, con: &Conclusion) -> String {
    let mut objective: String = goal.objective.chars().take(OBJECTIVE_CHARS).collect();
    if objective.len() < goal.objective.len() {
        objective.push('…');
    }
    let last = if reported(con) {
        let mut s = match con.progress {
            Some(p) => format!("Your last iteration reported progress {p}%"),
            None => "Your last iteration reported no progress figure".to_string(),
        };
        if let Some(next) = &con.next_step {
            s.push_str(&format!("; next step: {next}"));
        }
        s + "."
    } else {
        let why = con.error.as_deref().unwrap_or("there was none");
        format!(
            "Your last turn did not end with a valid conclusion block ({why}); end this one with one."
        )
    };
    format!(
        "[grove goal: iteration {} of at most {}. {last}{}]\nContinue toward the objective: {objective}\nEnd this turn with a <grove:conclusion> block, as before.",
        goal.iteration,
        goal.max_iterations,
        stall_note(goal),
    )
}

fn stall_note(goal: &GoalRecord) -> String {
    match goal.stalls {
        0 => String::new(),
        n => format!(
            " Progress has not advanced for {n} iteration(s) (the goal stops as stalled after {}): change approach, or conclude blocked if you need a human.",
            goal.stall_after
        ),
    }
}

/// Every running goal past its deadline times out, and its running
/// iteration is cancelled. At most `limit` per call.
pub(super) fn settle_due(c: &mut Ctx<'_>, now: u64, limit: usize) -> Result<usize, Applied> {
    let due: Vec<String> = {
        let mut stmt = c.tx.prepare_cached(
            "SELECT id FROM goals WHERE status = 'running' AND deadline <= ?1
             ORDER BY deadline LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now as i64, limit as i64], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for id in &due {
        let Some((mut goal, best)) = running(c.tx, id)? else {
            continue;
        };
        end(c, &mut goal, best, GoalStatus::Timeout)?;
        if let Some(task) = rows::get(c.tx, id)?
            && !task.status.is_terminal()
        {
            super::change::transition(c, task, super::change::Change::to(TaskStatus::Cancelled))?
                .map_err(Applied::Refused)?;
        }
    }
    Ok(due.len())
}

/// Its task was deleted: the goal goes with it.
pub(super) fn deleted(c: &mut Ctx<'_>, id: &str) -> Result<(), Applied> {
    c.tx.prepare_cached("DELETE FROM goals WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

fn end(
    c: &mut Ctx<'_>,
    goal: &mut GoalRecord,
    best: Option<f64>,
    status: GoalStatus,
) -> Result<(), Applied> {
    goal.status = status;
    goal.finished_at = Some(now_ms());
    save(c, goal, best)
}

fn save(c: &mut Ctx<'_>, goal: &GoalRecord, best: Option<f64>) -> Result<(), Applied> {
    c.tx.prepare_cached(
        "UPDATE goals SET status = ?2, iteration = ?3, stalls = ?4, progress = ?5,
             best_progress = ?6, response = ?7, next_step = ?8, blocked_reason = ?9,
             finished_at = ?10
         WHERE id = ?1",
    )?
    .execute(params![
        goal.id,
        goal.status.as_str(),
        goal.iteration,
        goal.stalls,
        goal.progress,
        best,
        goal.response,
        goal.next_step,
        goal.blocked_reason,
        goal.finished_at.map(|t| t as i64),
    ])?;
    publish(c, goal)
}

fn publish(c: &mut Ctx<'_>, goal: &GoalRecord) -> Result<(), Applied> {
    c.events.push(append_event(
        c.tx,
        c.epoch,
        EventData::GoalUpdated { goal: goal.clone() },
    )?);
    Ok(())
}

const COLUMNS: &str = "id, objective, status, iteration, max_iterations, max_duration_ms, \
     stall_after, stalls, session, progress, response, next_step, blocked_reason, created_at, \
     deadline, finished_at, best_progress";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(GoalRecord, Option<f64>)> {
    let status: String = r.get(2)?;
    let status = GoalStatus::parse(&status).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            2,
            rusqlite::types::Type::Text,
            format!("unreadable goal status {status:?}").into(),
        )
    })?;
    let goal = GoalRecord {
        id: r.get(0)?,
        objective: r.get(1)?,
        status,
        iteration: r.get(3)?,
        max_iterations: r.get(4)?,
        max_duration_ms: r.get::<_, i64>(5)? as u64,
        stall_after: r.get(6)?,
        stalls: r.get(7)?,
        session: r.get(8)?,
        progress: r.get(9)?,
        response: r.get(10)?,
        next_step: r.get(11)?,
        blocked_reason: r.get(12)?,
        created_at: r.get::<_, i64>(13)? as u64,
        deadline: r.get::<_, i64>(14)? as u64,
        finished_at: r.get::<_, Option<i64>>(15)?.map(|v| v as u64),
    };
    Ok((goal, r.get(16)?))
}

/// The task's goal while it runs, with its best progress.
fn running(
    tx: &rusqlite::Connection,
    id: &str,
) -> rusqlite::Result<Option<(GoalRecord, Option<f64>)>> {
    tx.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM goals WHERE id = ?1 AND status = 'running'"
    ))?
    .query_row([id], read_row)
    .optional()
}

/// The goal of task `id`, if it pursues one.
pub fn get(conn: &rusqlite::Connection, id: &str) -> rusqlite::Result<Option<GoalRecord>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM goals WHERE id = ?1"))?
        .query_row([id], read_row)
        .optional()
        .map(|g| g.map(|(g, _)| g))
}

/// Goals, running first, then the most recent: for `grove goals`.
pub fn list(
    conn: &rusqlite::Connection,
    all: bool,
    limit: usize,
) -> rusqlite::Result<Vec<GoalRecord>> {
    let filter = if all { "" } else { "WHERE status = 'running'" };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM goals {filter}
         ORDER BY status = 'running' DESC, created_at DESC LIMIT ?1"
    ))?;
    let rows = stmt.query_map([limit as i64], |r| read_row(r).map(|(g, _)| g))?;
    rows.collect()
}

/// The earliest deadline of a running goal (the orchestrator wakes then).
pub fn next_deadline(conn: &rusqlite::Connection) -> rusqlite::Result<Option<u64>> {
    conn.prepare_cached("SELECT MIN(deadline) FROM goals WHERE status = 'running'")?
        .query_row([], |r| r.get::<_, Option<i64>>(0))
        .map(|d| d.map(|d| d as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn goal(max: u32, stall_after: u32) -> GoalRecord {
        GoalRecord {
            id: "g".into(),
            objective: "o".into(),
            status: GoalStatus::Running,
            iteration: 1,
            max_iterations: max,
            max_duration_ms: 60_000,
            stall_after,
            stalls: 0,
            session: true,
            progress: None,
            response: None,
            next_step: None,
            blocked_reason: None,
            created_at: 0,
            deadline: 60_000,
            finished_at: None,
        }
    }

    fn con(status: ConclusionStatus, progress: Option<f64>) -> Conclusion {
        Conclusion {
            status,
            summary: "s".into(),
            artifacts: vec![],
            follow_up: vec![],
            confidence: None,
            source: ConclusionSource::Reported,
            error: None,
            progress,
            next_step: Some("n".into()),
            blocked_reason: None,
        }
    }

    #[test]
    fn success_blocked_and_failed_end_the_goal_at_once() {
        use ConclusionStatus::*;
        for (s, want) in [
            (Success, GoalStatus::Completed),
            (Blocked, GoalStatus::Blocked),
            (Failed, GoalStatus::Failed),
        ] {
            let (mut g, mut best) = (goal(5, 3), None);
            assert_eq!(
                judge(&mut g, &mut best, &con(s, None), 1),
                Verdict::End(want)
            );
        }
    }

    #[test]
    fn progress_that_does_not_pass_its_best_stalls() {
        let (mut g, mut best) = (goal(20, 2), None);
        let partial = |p| con(ConclusionStatus::Partial, Some(p));
        assert_eq!(
            judge(&mut g, &mut best, &partial(50.0), 1),
            Verdict::Continue
        );
        assert_eq!(
            judge(&mut g, &mut best, &partial(40.0), 1),
            Verdict::Continue
        );
        assert_eq!(g.stalls, 1);
        assert_eq!(
            judge(&mut g, &mut best, &partial(50.0), 1),
            Verdict::End(GoalStatus::Stalled),
            "climbing back to the best is not progress"
        );
        assert_eq!(g.progress, Some(50.0));
    }

    #[test]
    fn a_missing_block_never_completes_a_goal() {
        let (mut g, mut best) = (goal(20, 3), None);
        let mut synthesized = con(ConclusionStatus::Success, Some(100.0));
        synthesized.source = ConclusionSource::Synthesized;
        assert_eq!(judge(&mut g, &mut best, &synthesized, 1), Verdict::Continue);
        assert_eq!(g.stalls, 1);
    }

    #[test]
    fn the_last_iteration_and_the_deadline_end_it() {
        let (mut g, mut best) = (goal(1, 3), None);
        let partial = con(ConclusionStatus::Partial, Some(10.0));
        assert_eq!(
            judge(&mut g, &mut best, &partial, 1),
            Verdict::End(GoalStatus::Failed)
        );
        let (mut g, mut best) = (goal(5, 3), None);
        assert_eq!(
            judge(&mut g, &mut best, &partial, 60_000),
            Verdict::End(GoalStatus::Timeout)
        );
    }
}
