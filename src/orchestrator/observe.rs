//! What the orchestrator looks at before it decides: the store's rows,
//! `/proc`, run and exit records, the task logs. All of it is blocking
//! (SQLite, file reads), so it runs on a blocking thread
//! (`spawn_blocking`), never on the primary's single event-loop thread,
//! where every slow step would delay every request.

use super::decide::{Facts, Row, RowFact, RunFacts, Slots, Trace, Unconfirmed};
use super::tail::{Tail, tail_log};
use crate::config::{Config, LiveConfig};
use crate::paths::Workspace;
use crate::protocol::{TaskRecord, TaskStatus};
use crate::runs::RunFiles;
use crate::store::{Reader, TaskFilter};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What the event loop hands over for one look: the state it keeps.
pub struct Look {
    pub ws: Workspace,
    pub live: Arc<LiveConfig>,
    pub reader: Arc<Mutex<Option<Reader>>>,
    pub runs: Vec<RunState>,
    pub unconfirmed: Vec<(String, String, Instant)>,
}

/// A supervised run as the event loop knows it.
pub struct RunState {
    pub task_id: String,
    pub run_id: String,
    pub shim_pid: u32,
    pub shim_start: Option<u64>,
    /// Our own child that we reaped already: gone, whatever `/proc` says.
    pub reaped: bool,
    pub told_paused: Option<bool>,
    pub kill_sent: bool,
    pub log_offset: u64,
    /// The run record as last read, once it named the agent.
    pub record: Option<crate::runs::RunRecord>,
}

/// What one look saw.
pub struct Seen {
    pub facts: Facts,
    /// The configuration of this pass (an edited `grove.toml` applies to
    /// the next task started).
    pub config: Arc<Config>,
    /// New output of each run, and where its log now ends.
    pub tails: Vec<(String, Tail)>,
    /// The earliest deadline of a pending await (Unix ms): the pass that
    /// sees it passed settles the awaits.
    pub await_deadline: Option<u64>,
}

/// Gathers the facts of one pass. Blocking: call it off the event loop.
pub fn look(l: Look) -> Seen {
    let config = l.live.current();
    let reader = Store {
        ws: &l.ws,
        reader: &l.reader,
    };
    // The rows that hold a slot, read once: the slot count, and the row of
    // every run still running (a look per run only for the others).
    let holding = reader.holding();
    let rows: HashMap<&str, Row> = holding
        .iter()
        .flatten()
        .map(|t| (t.id.as_str(), row_of(t)))
        .collect();
    let mut tails = Vec::new();
    let runs: Vec<_> = l
        .runs
        .iter()
        .map(|r| {
            let row = match rows.get(r.task_id.as_str()) {
                Some(row) => RowFact::Present(row.clone()),
                None => reader.row(&r.task_id),
            };
            let facts = run_facts(&l.ws, r, row);
            // After the liveness check: a run that ended has written all
            // its output, which goes out before its end is recorded.
            tails.push((r.task_id.clone(), tail_log(&l.ws, &r.task_id, r.log_offset)));
            facts
        })
        .collect();
    let unconfirmed = l
        .unconfirmed
        .into_iter()
        .map(|(task_id, run_id, give_up)| Unconfirmed {
            trace: trace(&l.ws, &task_id, &run_id),
            task_id,
            run_id,
            give_up,
        })
        .collect();
    // A running task blocked in a wait lends its slot
    // (`store::tasks::slot_loans`).
    let lent = reader.read(|r| r.lent_slots(crate::protocol::now_ms()));
    let slots = holding.zip(lent).and_then(|(holding, lent)| {
        let ending = super::decide::ending(&runs, &lent);
        reader.slots(&holding, lent, config.max_parallel + ending)
    });
    let facts = Facts {
        now: Instant::now(),
        max_parallel: config.max_parallel,
        slots,
        runs,
        unconfirmed,
    };
    Seen {
        facts,
        config,
        tails,
        await_deadline: reader.read(|r| r.next_await_deadline()).flatten(),
    }
}

fn run_facts(ws: &Workspace, r: &RunState, row: RowFact) -> RunFacts {
    let alive = !r.reaped && crate::proc::running_as(r.shim_pid, r.shim_start);
    RunFacts {
        task_id: r.task_id.clone(),
        run_id: r.run_id.clone(),
        shim_pid: r.shim_pid,
        alive,
        exit: (!alive)
            .then(|| RunFiles::read_exit(ws, &r.task_id, &r.run_id))
            .flatten(),
        // Read for an ended run too: whether its end frees a slot.
        row,
        // Once it names the agent the record does not change: no need to
        // read it again on every pass.
        record: match &r.record {
            Some(rec) if rec.agent_pid.is_some() => Some(rec.clone()),
            _ => RunFiles::read_run(ws, &r.task_id, &r.run_id),
        },
        told_paused: r.told_paused,
        kill_sent: r.kill_sent,
    }
}

/// What a run whose supervisor we have not seen left on disk.
pub fn trace(ws: &Workspace, task_id: &str, run_id: &str) -> Trace {
    match RunFiles::read_run(ws, task_id, run_id) {
        Some(rec)
            if crate::proc::running(rec.shim_pid)
                && crate::proc::start_time(rec.shim_pid) == Some(rec.shim_start) =>
        {
            Trace::Alive {
                shim_pid: rec.shim_pid,
                shim_start: rec.shim_start,
            }
        }
        Some(rec) => Trace::Ended {
            shim_pid: rec.shim_pid,
            exit: RunFiles::read_exit(ws, task_id, run_id),
        },
        None => match RunFiles::read_exit(ws, task_id, run_id) {
            Some(exit) => Trace::Ended {
                shim_pid: 0,
                exit: Some(exit),
            },
            None => Trace::Nothing,
        },
    }
}

/// A task's row as the decision sees it: the one place that reads a
/// `TaskRecord` for it.
pub fn row_of(t: &TaskRecord) -> Row {
    Row {
        status: t.status,
        run_id: t.run_id.clone(),
        pid: t.pid,
    }
}

/// The orchestrator's read-only store connection, reopened after an error.
struct Store<'a> {
    ws: &'a Workspace,
    /// Shared across looks; a connection is not `Sync`, hence the mutex.
    reader: &'a Mutex<Option<Reader>>,
}

impl Store<'_> {
    fn read<T>(&self, f: impl FnOnce(&Reader) -> Result<T, crate::store::StoreError>) -> Option<T> {
        let mut guard = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Reader::open(&self.ws.db_path())
                .map_err(|e| tracing::error!("orchestrator cannot read the store: {e}"))
                .ok();
        }
        match f(guard.as_ref()?) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!("reading the store failed: {e}");
                *guard = None;
                None
            }
        }
    }

    fn row(&self, id: &str) -> RowFact {
        match self.read(|r| r.task(id)) {
            Some(Some(t)) => RowFact::Present(row_of(&t)),
            Some(None) => RowFact::Gone,
            None => RowFact::Unreadable,
        }
    }

    fn tasks(&self, status: TaskStatus) -> Option<Vec<TaskRecord>> {
        let filter = TaskFilter {
            status: Some(status),
            ..Default::default()
        };
        self.read(|r| r.tasks(&filter))
    }

    /// The tasks that may hold a slot: running, waiting for a permission
    /// answer (it keeps its slot), paused. An idle one (its session waits
    /// for a follow-up) holds none.
    fn holding(&self) -> Option<Vec<TaskRecord>> {
        let mut tasks = self.tasks(TaskStatus::Running)?;
        tasks.extend(self.tasks(TaskStatus::Waiting)?);
        tasks.extend(self.tasks(TaskStatus::Paused)?);
        Some(tasks)
    }

    /// Slot use, and the queue only when a slot is free (`limit`:
    /// `max_parallel` plus the slots this pass frees).
    fn slots(&self, holding: &[TaskRecord], lent: Vec<String>, limit: usize) -> Option<Slots> {
        // A paused task keeps its slot only while it has a run; a running
        // task whose slot is lent holds none.
        let held = holding
            .iter()
            .filter(|t| t.status != TaskStatus::Paused || t.run_id.is_some())
            .filter(|t| !(t.status == TaskStatus::Running && lent.contains(&t.id)))
            .count();
        // Only as many as there are free slots, in start order; and the
        // lenders whose slot is kept for a child, only when there are loans.
        let (queued, reserved) = if held < limit {
            let queued = self.read(|r| r.next_queued(limit - held))?;
            let reserved = if lent.is_empty() {
                Vec::new()
            } else {
                self.read(|r| r.reserved_slots(crate::protocol::now_ms()))?
            };
            (queued, reserved)
        } else {
            (Vec::new(), Vec::new())
        };
        Some(Slots {
            held,
            queued,
            lent,
            reserved,
        })
    }

    /// Started tasks (running, waiting for a permission answer, idle
    /// between turns, or paused with a run), for adoption.
    pub fn started(&self) -> Option<Vec<TaskRecord>> {
        let mut started = self.tasks(TaskStatus::Running)?;
        started.extend(self.tasks(TaskStatus::Waiting)?);
        started.extend(self.tasks(TaskStatus::Idle)?);
        started.extend(
            self.tasks(TaskStatus::Paused)?
                .into_iter()
                .filter(|t| t.run_id.is_some()),
        );
        Some(started)
    }
}

/// Every started task's run, for a new primary to confirm: task id, run id,
/// and when its run was recorded as started (Unix ms); `None` when the
/// store could not be read. Blocking.
pub fn started_runs(
    ws: &Workspace,
    reader: &Mutex<Option<Reader>>,
) -> Option<Vec<(String, String, Option<u64>)>> {
    let store = Store { ws, reader };
    Some(
        store
            .started()?
            .into_iter()
            .filter_map(|t| Some((t.id, t.run_id?, t.started_at)))
            .collect(),
    )
}
