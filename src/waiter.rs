//! Waiting for tasks, from any process (see docs/design.md, Waiting): a
//! snapshot of the store gives the starting state, the gap-free event
//! stream the changes after it, so a wait survives a failover and never
//! misses a transition. A waiter that fell behind the event retention (stopped for
//! long) re-reads the tasks instead of trusting a stream with a hole.

use crate::paths::Workspace;
use crate::protocol::{EventData, GoalStatus, TaskRecord, TaskStatus};
use crate::store::Reader;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Until every task finished; satisfied when all completed.
    All,
    /// Until one task finished; satisfied when a finished one completed.
    Any,
    /// Until `n` tasks ended, whatever their status (a failed one counts:
    /// the caller learns what each one reached); satisfied then.
    Quorum(usize),
}

#[derive(Debug)]
pub struct Outcome {
    /// The last known state of each task (`None`: deleted meanwhile).
    pub tasks: BTreeMap<String, Option<TaskRecord>>,
    pub satisfied: bool,
    pub timed_out: bool,
}

/// Ended, or an ACP task whose kept session is idle: its turn ended well
/// and it waits for a follow-up, so a wait for it would otherwise last
/// until its session is closed. Not while it is `held`.
fn finished(t: &Option<TaskRecord>, held: &BTreeSet<String>) -> bool {
    t.as_ref().is_none_or(|t| {
        (t.status.is_terminal() || t.status == TaskStatus::Idle) && !held.contains(&t.id)
    })
}

fn completed(t: &Option<TaskRecord>) -> bool {
    t.as_ref()
        .is_some_and(|t| matches!(t.status, TaskStatus::Completed | TaskStatus::Idle))
}

/// Whether the task's end or idleness is not its end yet: it pursues a
/// running goal (a CLI goal's task ends once per iteration and is rerun in
/// the same commit), or it is idle only until its await fires. Read from
/// the store as it is now, which is never older than the event that asked.
fn is_held(reader: &Reader, t: &TaskRecord) -> Result<bool, String> {
    let ending = t.status.is_terminal() || t.status == TaskStatus::Idle;
    if !ending {
        return Ok(false);
    }
    let goal = reader.goal(&t.id).map_err(|e| e.to_string())?;
    if goal.is_some_and(|g| g.status == GoalStatus::Running) {
        return Ok(true);
    }
    if t.status == TaskStatus::Idle {
        return reader.is_awaiting(&t.id).map_err(|e| e.to_string());
    }
    Ok(false)
}

/// Records whether `t` is held (see [`is_held`]).
fn note_held(reader: &Reader, held: &mut BTreeSet<String>, t: &TaskRecord) -> Result<(), String> {
    if is_held(reader, t)? {
        held.insert(t.id.clone());
    } else {
        held.remove(&t.id);
    }
    Ok(())
}

/// `Some(satisfied)` once the policy is decided.
fn decide(
    policy: Policy,
    tasks: &BTreeMap<String, Option<TaskRecord>>,
    held: &BTreeSet<String>,
) -> Option<bool> {
    let done = tasks.values().filter(|t| finished(t, held)).count();
    let ok = tasks
        .values()
        .filter(|t| finished(t, held) && completed(t))
        .count();
    match policy {
        Policy::All => (done == tasks.len()).then_some(ok == tasks.len()),
        Policy::Any => (done > 0).then_some(ok > 0),
        Policy::Quorum(n) => (done >= n).then_some(true),
    }
}

/// Waits for `ids` under `policy`, calling `on_change` for each update.
pub async fn wait(
    ws: &Workspace,
    ids: &[String],
    policy: Policy,
    deadline: Option<Duration>,
    mut on_change: impl FnMut(&TaskRecord),
) -> Result<Outcome, String> {
    if let Policy::Quorum(n) = policy
        && (n == 0 || n > ids.len())
    {
        return Err(format!(
            "quorum must be between 1 and the number of tasks ({})",
            ids.len()
        ));
    }
    let reader = Reader::open(&ws.db_path()).map_err(|e| e.to_string())?;
    let (snapshot, last) = reader.snapshot(ids).map_err(|e| e.to_string())?;
    let mut tasks = BTreeMap::new();
    let mut held = BTreeSet::new();
    for (id, t) in ids.iter().zip(snapshot) {
        let t = t.ok_or_else(|| format!("no task {id}"))?;
        note_held(&reader, &mut held, &t)?;
        tasks.insert(id.clone(), Some(t));
    }
    let mut sub = crate::subscriber::subscribe(ws, last + 1);
    tracing::debug!(
        "waiting for {} task(s), following events after seq {last}",
        ids.len()
    );
    // Events up to this seq are already in `tasks`.
    let mut known_upto = last;
    let mut gaps = 0;
    let sleep = tokio::time::sleep(deadline.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(sleep);
    loop {
        if let Some(satisfied) = decide(policy, &tasks, &held) {
            return Ok(Outcome {
                tasks,
                satisfied,
                timed_out: false,
            });
        }
        tokio::select! {
            event = sub.events.recv() => {
                let Some(event) = event else {
                    return Err("the event stream ended".into());
                };
                if sub.health.pruned_gaps() != gaps {
                    // We fell behind the store's event retention: the
                    // transitions we missed are gone. Read the tasks as
                    // they are now and go on after that point.
                    gaps = sub.health.pruned_gaps();
                    known_upto = resync(&reader, &mut tasks, &mut on_change)?;
                    for t in tasks.values().flatten() {
                        note_held(&reader, &mut held, t)?;
                    }
                }
                if event.seq != 0 && event.seq <= known_upto {
                    continue;
                }
                match event.data {
                    EventData::TaskUpdated { task } | EventData::TaskCreated { task }
                        if tasks.contains_key(&task.id) =>
                    {
                        on_change(&task);
                        note_held(&reader, &mut held, &task)?;
                        tasks.insert(task.id.clone(), Some(task));
                    }
                    // A goal ended: its task's end is now the end.
                    EventData::GoalUpdated { goal } if tasks.contains_key(&goal.id) => {
                        if let Some(Some(t)) = tasks.get(&goal.id) {
                            note_held(&reader, &mut held, t)?;
                        }
                    }
                    EventData::TaskDeleted { id } if tasks.contains_key(&id) => {
                        tasks.insert(id, None);
                    }
                    _ => {}
                }
            }
            _ = &mut sleep => {
                return Ok(Outcome { tasks, satisfied: false, timed_out: true });
            }
        }
    }
}

/// Re-reads every waited task; returns the seq the new state reflects.
fn resync(
    reader: &Reader,
    tasks: &mut BTreeMap<String, Option<TaskRecord>>,
    on_change: &mut impl FnMut(&TaskRecord),
) -> Result<u64, String> {
    let ids: Vec<String> = tasks.keys().cloned().collect();
    let (now, seq) = reader.snapshot(&ids).map_err(|e| e.to_string())?;
    for (id, t) in ids.into_iter().zip(now) {
        if let Some(t) = &t {
            on_change(t);
        }
        tasks.insert(id, t);
    }
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(status: TaskStatus) -> Option<TaskRecord> {
        let mut r: TaskRecord = serde_json::from_value(serde_json::json!({
            "id": "x", "prompt": "p", "engine": "shell", "status": "queued",
            "created_at": 0, "updated_at": 0
        }))
        .unwrap();
        r.status = status;
        Some(r)
    }

    fn map(v: Vec<Option<TaskRecord>>) -> BTreeMap<String, Option<TaskRecord>> {
        v.into_iter()
            .enumerate()
            .map(|(i, t)| (i.to_string(), t))
            .collect()
    }

    #[test]
    fn policies() {
        use TaskStatus::*;
        let none = BTreeSet::new();
        let m = map(vec![t(Completed), t(Running), t(Failed)]);
        assert_eq!(decide(Policy::All, &m, &none), None);
        assert_eq!(decide(Policy::Any, &m, &none), Some(true));
        assert_eq!(decide(Policy::Quorum(1), &m, &none), Some(true));
        // A quorum counts ended tasks, a failed one too.
        assert_eq!(decide(Policy::Quorum(2), &m, &none), Some(true));
        assert_eq!(decide(Policy::Quorum(3), &m, &none), None);
        let m = map(vec![t(Failed), t(Running), t(Failed)]);
        assert_eq!(decide(Policy::Quorum(2), &m, &none), Some(true));
        let m = map(vec![t(Completed), None]);
        assert_eq!(decide(Policy::All, &m, &none), Some(false));
        // A task held open (its goal runs, its await is pending) has not
        // ended, whatever its status says.
        let m = map(vec![t(Completed)]);
        let held = BTreeSet::from(["x".to_string()]);
        assert_eq!(decide(Policy::All, &m, &held), None);
        assert_eq!(decide(Policy::Quorum(1), &m, &held), None);
    }
}
