//! The property test: random sequences of operations on the store and on
//! the reference model (`model.rs`), compared after every step — the reply
//! (applied, or refused with which code), every task's existence, status,
//! failure reason and run — with the invariants every step must keep:
//! at most `max_parallel` tasks hold a slot; a task is released to the
//! queue only when its dependencies all completed; every changed task
//! appended exactly one event, and nothing else did, with contiguous seqs.
//!
//! "Released", not "is queued": relaunching a completed task leaves the
//! dependents it had released queued, and a requeued run goes back to the
//! queue it had already left; neither waits for a rerun of its dependency.

use super::Store;
use super::model::{MAX_PARALLEL, Model, Op, Res};
use super::{Exit, exit_method};
use crate::protocol::{EventData, Method, NewTask, ReplyBody, TaskStatus};
use crate::store::tasks::InternalOp;
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::HashSet;

fn op() -> impl Strategy<Value = Op> {
    let exit = prop_oneof![
        3 => Just(Exit::Code0),
        1 => Just(Exit::Code1),
        1 => Just(Exit::Signal9),
        1 => Just(Exit::Timeout),
        1 => Just(Exit::Cancelled),
        1 => Just(Exit::SpawnError),
    ];
    let ix = any::<Index>;
    prop_oneof![
        5 => prop::collection::vec(ix(), 0..3).prop_map(Op::Spawn),
        1 => ix().prop_map(Op::Cancel),
        1 => ix().prop_map(Op::Pause),
        2 => (ix(), any::<bool>()).prop_map(|(i, b)| Op::Resume(i, b)),
        1 => ix().prop_map(Op::Retry),
        2 => ix().prop_map(Op::Relaunch),
        1 => (ix(), any::<bool>()).prop_map(|(i, b)| Op::Delete(i, b)),
        1 => ix().prop_map(Op::Purge),
        4 => ix().prop_map(Op::Start),
        4 => (ix(), exit, prop::bool::weighted(0.9)).prop_map(|(i, e, own)| Op::Finished(i, e, own)),
        1 => ix().prop_map(Op::Lost),
        1 => ix().prop_map(Op::Requeue),
    ]
}

struct Harness {
    store: Store,
    model: Model,
}

impl Harness {
    fn id(&self, i: Option<usize>) -> String {
        i.map(|i| self.model.tasks[i].id.clone())
            .unwrap_or_else(|| "missing".into())
    }

    fn run(&self, i: Option<usize>) -> String {
        i.and_then(|i| self.model.tasks[i].run.clone())
            .unwrap_or_else(|| "none".into())
    }

    /// The task the op is about, and the dependencies of a spawn.
    fn target(&self, op: &Op) -> (Option<usize>, Vec<usize>) {
        let m = &self.model;
        match op {
            Op::Spawn(deps) => (None, deps.iter().filter_map(|d| m.pick_any(d)).collect()),
            Op::Start(x) => (m.pick(x, |t| t.status == TaskStatus::Queued), vec![]),
            Op::Finished(x, ..) | Op::Lost(x) | Op::Requeue(x) => (
                m.pick(x, |t| t.run.is_some() && !t.status.is_terminal()),
                vec![],
            ),
            Op::Cancel(x)
            | Op::Pause(x)
            | Op::Resume(x, _)
            | Op::Retry(x)
            | Op::Relaunch(x)
            | Op::Delete(x, _)
            | Op::Purge(x) => (m.pick_any(x), vec![]),
        }
    }

    fn apply_to_store(&mut self, op: &Op, i: Option<usize>, deps: &[usize]) -> super::Outcome {
        let id = self.id(i);
        let internal = match op {
            Op::Start(_) => Some(InternalOp::Start {
                id: id.clone(),
                run_id: self.model.next_run(),
                max_parallel: MAX_PARALLEL,
            }),
            Op::Lost(_) => Some(InternalOp::Lost {
                id: id.clone(),
                run_id: self.run(i),
            }),
            Op::Requeue(_) => Some(InternalOp::Requeue {
                id: id.clone(),
                run_id: self.run(i),
            }),
            _ => None,
        };
        if let Some(op) = internal {
            return self.store.internal(&op);
        }
        let method = match op {
            Op::Spawn(_) => Method::TaskCreate(NewTask {
                prompt: "true".into(),
                engine: Some("agent".into()),
                dependencies: deps.iter().map(|&d| self.id(Some(d))).collect(),
                ..Default::default()
            }),
            Op::Cancel(_) => Method::TaskCancel { id },
            Op::Pause(_) => Method::TaskPause { id },
            Op::Resume(_, more) => Method::TaskResume {
                id,
                instructions: more.then(|| "more".into()),
                changes: Default::default(),
            },
            Op::Retry(_) => Method::TaskRetry { id },
            Op::Relaunch(_) => Method::TaskRelaunch {
                id,
                instructions: None,
                changes: Default::default(),
            },
            Op::Delete(_, force) => Method::TaskDelete { id, force: *force },
            Op::Purge(_) => Method::TaskPurge { id },
            Op::Finished(_, exit, own) => {
                let run = if *own { self.run(i) } else { "other".into() };
                exit_method(&id, &run, *exit)
            }
            Op::Start(_) | Op::Lost(_) | Op::Requeue(_) => unreachable!("internal"),
        };
        self.store.apply(&method)
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        let before = self.model.clone();
        let last_seq = self.store.last_seq();
        let (i, deps) = self.target(op);
        let out = self.apply_to_store(op, i, &deps);
        let new_id = match &out.result {
            Ok(ReplyBody::Task(t)) if matches!(op, Op::Spawn(_) | Op::Retry(_)) => {
                Some(t.id.clone())
            }
            _ => None,
        };
        let expected: Res = self.model.apply(op, i, deps, new_id);
        let got = out.result.as_ref().map(|_| ()).map_err(|e| e.code);
        if expected != got {
            return Err(format!(
                "the model says {expected:?}, the store {:?}",
                out.result
            ));
        }
        self.compare()?;
        self.check_events(&before, i, &out.events, last_seq)?;
        self.check_invariants(&before)
    }

    /// Every task as the model has it.
    fn compare(&self) -> Result<(), String> {
        let mut live = 0;
        for t in &self.model.tasks {
            let stored = self.store.task(&t.id);
            let Some(s) = stored else {
                if t.exists {
                    return Err(format!("task {} is missing from the store", t.id));
                }
                continue;
            };
            live += 1;
            let got = (true, s.status, s.failure_reason, s.run_id.clone());
            let want = t.state();
            if got != want {
                return Err(format!(
                    "task {}: the model has {want:?}, the store {got:?}",
                    t.id
                ));
            }
        }
        if live != self.store.count() {
            return Err(format!(
                "the store has {} tasks, the model {live}",
                self.store.count()
            ));
        }
        Ok(())
    }

    /// One event per changed task, none for an unchanged one (the task
    /// the op names may have one for fields the model does not keep), in
    /// contiguous seqs, each carrying the task as stored.
    fn check_events(
        &self,
        before: &Model,
        target: Option<usize>,
        events: &[crate::protocol::Event],
        last_seq: u64,
    ) -> Result<(), String> {
        let mut seen = HashSet::new();
        for (k, e) in events.iter().enumerate() {
            if e.seq != last_seq + 1 + k as u64 {
                return Err(format!(
                    "event seqs not contiguous after {last_seq}: {events:?}"
                ));
            }
            let (id, task) = match &e.data {
                EventData::TaskCreated { task } | EventData::TaskUpdated { task } => {
                    (task.id.clone(), Some(task))
                }
                EventData::TaskDeleted { id } => (id.clone(), None),
                other => return Err(format!("unexpected event {other:?}")),
            };
            if task.cloned() != self.store.task(&id) {
                return Err(format!(
                    "event {} does not carry task {id} as stored",
                    e.seq
                ));
            }
            if !seen.insert(id.clone()) {
                return Err(format!("two events for task {id}: {events:?}"));
            }
        }
        if self.store.last_seq() != last_seq + events.len() as u64 {
            return Err("events in the log that the step did not report".into());
        }
        let target_id = target.map(|i| self.model.tasks[i].id.clone());
        for (i, t) in self.model.tasks.iter().enumerate() {
            let changed = before.tasks.get(i).map(|b| b.state()) != Some(t.state());
            let has_event = seen.contains(&t.id);
            if changed && !has_event {
                return Err(format!("task {} changed without an event", t.id));
            }
            if has_event && !changed && target_id.as_deref() != Some(t.id.as_str()) {
                return Err(format!("task {} did not change but has an event", t.id));
            }
        }
        Ok(())
    }

    fn check_invariants(&self, before: &Model) -> Result<(), String> {
        let m = &self.model;
        if self.store.running() > MAX_PARALLEL || m.held() > MAX_PARALLEL {
            return Err(format!("more than {MAX_PARALLEL} tasks hold a slot"));
        }
        for (i, t) in m.tasks.iter().enumerate() {
            let was = before.tasks.get(i).filter(|b| b.exists).map(|b| b.status);
            let released = t.exists
                && t.status == TaskStatus::Queued
                && !matches!(was, Some(TaskStatus::Queued | TaskStatus::Running));
            let unmet = t.edges.iter().any(|&d| {
                let dep = &m.tasks[d];
                !dep.exists || dep.status != TaskStatus::Completed
            });
            if released && unmet {
                return Err(format!(
                    "task {} was queued before its dependencies completed",
                    t.id
                ));
            }
        }
        Ok(())
    }
}

proptest! {
    // PROPTEST_CASES=100000 for a longer hunt.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_store_behaves_like_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let mut h = Harness { store: Store::new(), model: Model::default() };
        for (n, op) in ops.iter().enumerate() {
            if let Err(e) = h.step(op) {
                return Err(TestCaseError::fail(format!("step {n}, {op:?}: {e}")));
            }
        }
    }
}
