//! A reference model of the task state machine, and a property test that
//! applies random sequences of operations to the model and to the store and
//! compares them after every step.
//!
//! The model states the rules as plainly as possible: each operation
//! changes its own task, then [`Model::settle`] brings the graph to rest —
//! a task still waiting (pending, queued, or paused before it started) with
//! a dependency that failed, was cancelled or was deleted before completing
//! fails with `dependency_failed`; a pending task whose dependencies all
//! completed is queued. Only relaunch's second chance for dependents is a
//! walk, as it is in the store.

use super::Exit;
use crate::protocol::{
    ErrorCode, FailureReason,
    TaskStatus::{self, *},
};
use proptest::sample::Index;
use std::collections::HashSet;

pub const MAX_PARALLEL: usize = 2;

#[derive(Debug, Clone, PartialEq)]
pub struct MTask {
    pub id: String,
    pub exists: bool,
    pub status: TaskStatus,
    pub reason: Option<FailureReason>,
    pub run: Option<String>,
    /// Dependencies as listed at creation (what a retry copies).
    pub deps: Vec<usize>,
    /// Dependencies it still waits on: a completed dependency that was
    /// deleted since is satisfied for good and no longer one.
    pub edges: Vec<usize>,
}

impl MTask {
    /// What the store must agree on (edges are compared through their
    /// effects).
    pub fn state(&self) -> (bool, TaskStatus, Option<FailureReason>, Option<String>) {
        (self.exists, self.status, self.reason, self.run.clone())
    }
}

/// An operation; indexes pick among the tasks when it is applied.
#[derive(Debug, Clone)]
pub enum Op {
    Spawn(Vec<Index>),
    Cancel(Index),
    Pause(Index),
    /// With new instructions when true.
    Resume(Index, bool),
    Retry(Index),
    Relaunch(Index),
    /// With force when true.
    Delete(Index, bool),
    Purge(Index),
    /// Picks among queued tasks.
    Start(Index),
    /// Picks among tasks with a run; about their own run when true.
    Finished(Index, Exit, bool),
    /// Picks among tasks with a run.
    Lost(Index),
    Requeue(Index),
}

pub type Res = Result<(), ErrorCode>;

#[derive(Debug, Default, Clone)]
pub struct Model {
    pub tasks: Vec<MTask>,
    runs: usize,
}

impl Model {
    fn live(&self, i: usize) -> bool {
        self.tasks[i].exists
    }

    /// The status the dependencies call for.
    fn ready(&self, edges: &[usize]) -> TaskStatus {
        let mut waiting = false;
        for &d in edges {
            let dep = &self.tasks[d];
            if !dep.exists || matches!(dep.status, Failed | Cancelled) {
                return Failed;
            }
            waiting |= dep.status != Completed;
        }
        if waiting { Pending } else { Queued }
    }

    fn set(&mut self, i: usize, status: TaskStatus, reason: FailureReason) {
        let t = &mut self.tasks[i];
        t.status = status;
        t.reason = (status == Failed).then_some(reason);
    }

    fn waiting(t: &MTask) -> bool {
        t.exists
            && (matches!(t.status, Pending | Queued) || (t.status == Paused && t.run.is_none()))
    }

    /// Brings the dependency graph to rest (see the module comment).
    fn settle(&mut self) {
        loop {
            let mut changed = false;
            for i in 0..self.tasks.len() {
                let t = &self.tasks[i];
                if !Self::waiting(t) {
                    continue;
                }
                match self.ready(&t.edges) {
                    Failed => self.set(i, Failed, FailureReason::DependencyFailed),
                    Queued if t.status == Pending => self.set(i, Queued, FailureReason::ExitCode),
                    _ => continue,
                }
                changed = true;
            }
            if !changed {
                return;
            }
        }
    }

    /// A task that may start now holds a slot; so does a paused one that
    /// had started (its process is only stopped).
    pub fn held(&self) -> usize {
        let held = |t: &&MTask| {
            t.exists && (t.status == Running || (t.status == Paused && t.run.is_some()))
        };
        self.tasks.iter().filter(held).count()
    }

    /// The run id the next start gets.
    pub fn next_run(&self) -> String {
        format!("run{}", self.runs + 1)
    }

    /// Any task ever created, deleted ones included.
    pub fn pick_any(&self, index: &Index) -> Option<usize> {
        (!self.tasks.is_empty()).then(|| index.index(self.tasks.len()))
    }

    /// The index an operation picks: among the live tasks that are
    /// `candidate`s when there are any, else among every task ever created
    /// (deleted ones included).
    pub fn pick(&self, index: &Index, candidate: impl Fn(&MTask) -> bool) -> Option<usize> {
        let c: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| self.live(i) && candidate(&self.tasks[i]))
            .collect();
        if !c.is_empty() {
            Some(c[index.index(c.len())])
        } else if self.tasks.is_empty() {
            None
        } else {
            Some(index.index(self.tasks.len()))
        }
    }

    fn new_task(&mut self, deps: Vec<usize>, id: Option<String>) -> Res {
        let mut seen = HashSet::new();
        for &d in &deps {
            if !seen.insert(d) || !self.live(d) {
                return Err(ErrorCode::InvalidParams);
            }
        }
        let status = self.ready(&deps);
        self.tasks.push(MTask {
            id: id.unwrap_or_default(),
            exists: true,
            status,
            reason: (status == Failed).then_some(FailureReason::DependencyFailed),
            run: None,
            edges: deps.clone(),
            deps,
        });
        Ok(())
    }

    /// Applies `op` to task `i` (`None`: a task that never existed);
    /// `new_id` is the id the store gave a task this op created.
    pub fn apply(
        &mut self,
        op: &Op,
        i: Option<usize>,
        deps: Vec<usize>,
        new_id: Option<String>,
    ) -> Res {
        if let Op::Spawn(_) = op {
            return self.new_task(deps, new_id);
        }
        let Some(i) = i.filter(|&i| self.live(i)) else {
            return match op {
                Op::Purge(_) | Op::Finished(..) => Ok(()),
                _ => Err(ErrorCode::NotFound),
            };
        };
        let res = self.apply_to(op, i, new_id);
        self.settle();
        res
    }

    fn apply_to(&mut self, op: &Op, i: usize, new_id: Option<String>) -> Res {
        let t = self.tasks[i].clone();
        let terminal = t.status.is_terminal();
        match op {
            Op::Spawn(_) => unreachable!("handled by apply"),
            Op::Cancel(_) if terminal => return Err(ErrorCode::Conflict),
            Op::Cancel(_) => self.set(i, Cancelled, FailureReason::ExitCode),
            Op::Pause(_) if !matches!(t.status, Pending | Queued | Running) => {
                return Err(ErrorCode::Conflict);
            }
            Op::Pause(_) => self.set(i, Paused, FailureReason::ExitCode),
            Op::Resume(..) if t.status != Paused => return Err(ErrorCode::Conflict),
            Op::Resume(_, false) if t.run.is_some() => {
                self.set(i, Running, FailureReason::ExitCode)
            }
            Op::Resume(..) => {
                // New instructions rerun a started task from the queue.
                self.tasks[i].run = None;
                let status = self.ready(&t.edges);
                self.set(i, status, FailureReason::DependencyFailed);
            }
            Op::Retry(_) | Op::Relaunch(_) | Op::Purge(_) if !terminal => {
                return Err(ErrorCode::Conflict);
            }
            Op::Retry(_) => {
                // A completed dependency deleted since stays satisfied.
                let deps = t.deps.iter().copied().filter(|d| t.edges.contains(d));
                return self.new_task(deps.collect(), new_id);
            }
            Op::Relaunch(_) => self.relaunch(i),
            Op::Delete(_, false) if t.status == Running => return Err(ErrorCode::Conflict),
            Op::Delete(..) | Op::Purge(_) => {
                self.tasks[i].exists = false;
                if t.status == Completed {
                    for other in &mut self.tasks {
                        other.edges.retain(|&d| d != i);
                    }
                }
            }
            Op::Start(_) if t.status != Queued || self.held() >= MAX_PARALLEL => {
                return Err(ErrorCode::Conflict);
            }
            Op::Start(_) => {
                self.tasks[i].run = Some(self.next_run());
                self.runs += 1;
                self.set(i, Running, FailureReason::ExitCode);
            }
            Op::Finished(_, exit, own) => {
                if *own && t.run.is_some() && matches!(t.status, Running | Paused) {
                    let (status, reason) = match exit {
                        Exit::Code0 => (Completed, FailureReason::ExitCode),
                        Exit::Code1 | Exit::Signal9 => (Failed, FailureReason::ExitCode),
                        Exit::Timeout => (Failed, FailureReason::Timeout),
                        Exit::Cancelled => (Cancelled, FailureReason::ExitCode),
                        Exit::SpawnError => (Failed, FailureReason::SpawnError),
                    };
                    self.set(i, status, reason);
                }
            }
            Op::Lost(_) => {
                if t.run.is_some() && !terminal {
                    self.set(i, Failed, FailureReason::Lost);
                }
            }
            Op::Requeue(_) => match t.status {
                Running => {
                    self.tasks[i].run = None;
                    self.set(i, Queued, FailureReason::ExitCode);
                }
                // A run that never started, on a task paused meanwhile: the
                // task is as if paused before it started.
                Paused if t.run.is_some() => self.tasks[i].run = None,
                _ => {}
            },
        }
        Ok(())
    }

    /// The task runs again under its id; dependents that failed because of
    /// it (and theirs, and so on) get another chance when nothing else
    /// they depend on failed.
    fn relaunch(&mut self, root: usize) {
        let rearm = |m: &mut Model, i: usize| {
            m.tasks[i].run = None;
            let status = m.ready(&m.tasks[i].edges);
            m.set(i, status, FailureReason::DependencyFailed);
        };
        rearm(self, root);
        if self.tasks[root].status == Failed {
            return;
        }
        let mut work = vec![root];
        while let Some(k) = work.pop() {
            for j in 0..self.tasks.len() {
                let t = &self.tasks[j];
                if t.exists
                    && t.edges.contains(&k)
                    && t.status == Failed
                    && t.reason == Some(FailureReason::DependencyFailed)
                    && self.ready(&t.edges) != Failed
                {
                    rearm(self, j);
                    work.push(j);
                }
            }
        }
    }
}
