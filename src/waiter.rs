//! Waiting for tasks, from any process (see docs/design.md, Waiting): a
//! snapshot of the store gives the starting state, the gap-free event
//! stream the changes after it, so a wait survives a failover and never
//! misses a transition. A waiter that fell behind the event retention (stopped for
//! long) re-reads the tasks instead of trusting a stream with a hole.

use crate::paths::Workspace;
use crate::protocol::{EventData, TaskRecord, TaskStatus};
use crate::store::Reader;
use std::collections::BTreeMap;
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
/// until its session is closed.
fn finished(t: &Option<TaskRecord>) -> bool {
    t.as_ref()
        .is_none_or(|t| t.status.is_terminal() || t.status == TaskStatus::Idle)
}

fn completed(t: &Option<TaskRecord>) -> bool {
    t.as_ref()
        .is_some_and(|t| matches!(t.status, TaskStatus::Completed | TaskStatus::Idle))
}

/// `Some(satisfied)` once the policy is decided.
fn decide(policy: Policy, tasks: &BTreeMap<String, Option<TaskRecord>>) -> Option<bool> {
    let done = tasks.values().filter(|t| finished(t)).count();
    let ok = tasks.values().filter(|t| completed(t)).count();
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
    for (id, t) in ids.iter().zip(snapshot) {
        let t = t.ok_or_else(|| format!("no task {id}"))?;
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
        if let Some(satisfied) = decide(policy, &tasks) {
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
                }
                if event.seq != 0 && event.seq <= known_upto {
                    continue;
                }
                match event.data {
                    EventData::TaskUpdated { task } | EventData::TaskCreated { task }
                        if tasks.contains_key(&task.id) =>
                    {
                        on_change(&task);
                        tasks.insert(task.id.clone(), Some(task));
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
        let m = map(vec![t(Completed), t(Running), t(Failed)]);
        assert_eq!(decide(Policy::All, &m), None);
        assert_eq!(decide(Policy::Any, &m), Some(true));
        assert_eq!(decide(Policy::Quorum(1), &m), Some(true));
        // A quorum counts ended tasks, a failed one too.
        assert_eq!(decide(Policy::Quorum(2), &m), Some(true));
        assert_eq!(decide(Policy::Quorum(3), &m), None);
        let m = map(vec![t(Failed), t(Running), t(Failed)]);
        assert_eq!(decide(Policy::Quorum(2), &m), Some(true));
        let m = map(vec![t(Completed), None]);
        assert_eq!(decide(Policy::All, &m), Some(false));
    }
}
