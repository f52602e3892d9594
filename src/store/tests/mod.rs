//! In-process tests of the store's task state machine: the functions the
//! store thread calls (`tasks::apply`, `tasks::apply_internal`), driven on
//! an in-memory database migrated like a real one. Milliseconds per test,
//! no processes; the real-process tests in `tests/` stay the proof that the
//! pieces work together.
//!
//! - `table`: every (status × operation) pair, checked against a table.
//! - `model`, `property`: a reference model, and a property test of random
//!   sequences of operations applied to both.
//! - `crash_guard`: counting crashes, poisoning after two.
//! - `files`: two promotions creating the store at once.
//! - `slot_loans`: a waiting task's slot lent.
//! - `writer.rs` (a child of `writer`, for its private parts): group commit.

mod crash_guard;
mod files;
mod fixes;
mod model;
mod property;
mod rows;
mod slot_loans;
mod table;
mod wal_vfs;

use super::tasks::{self, Ctx, InternalOp};
use super::txn::{Applied, WriteResult};
use crate::protocol::{
    Event, ExitOutcome, Method, NewTask, ReplyBody, Route, TaskExit, TaskRecord, TaskStatus,
};
use rusqlite::Connection;

/// One store, as the store thread holds it.
pub(super) struct Store {
    conn: Connection,
    epoch: u64,
}

/// What one write did: its reply and the events it appended.
pub(super) struct Outcome {
    pub result: WriteResult,
    pub events: Vec<Event>,
}

impl Store {
    pub fn new() -> Store {
        let mut conn = Connection::open_in_memory().expect("in-memory database");
        super::schema::migrate(&mut conn).expect("migrations");
        Store { conn, epoch: 1 }
    }

    /// Applies a wire method the way the store thread does: in its own
    /// transaction, rolled back (events and all) when refused.
    pub fn apply(&mut self, method: &Method) -> Outcome {
        match method.route() {
            Route::Task(op) => self.in_tx(|c| tasks::apply(c, op)),
            Route::Await(op) => self.in_tx(|c| tasks::apply_await(c, op)),
            Route::Goal(spec) => self.in_tx(|c| tasks::apply_goal(c, spec)),
            _ => panic!("not a task operation: {method:?}"),
        }
    }

    /// Applies an orchestrator operation, likewise.
    pub fn internal(&mut self, op: &InternalOp) -> Outcome {
        self.in_tx(|c| tasks::apply_internal(c, op))
    }

    fn in_tx(&mut self, f: impl FnOnce(&mut Ctx<'_>) -> Result<WriteResult, Applied>) -> Outcome {
        let tx = self.conn.transaction().expect("begin");
        let mut events = Vec::new();
        let mut ctx = Ctx {
            tx: &tx,
            epoch: self.epoch,
            events: &mut events,
            limits: Default::default(),
            id_prefix: None,
        };
        let result = match f(&mut ctx) {
            Ok(r) => r,
            Err(Applied::Refused(e)) => Err(e),
            Err(Applied::Sqlite(e)) => panic!("SQLite failed: {e}"),
        };
        if result.is_ok() {
            tx.commit().expect("commit");
        } else {
            tx.rollback().expect("rollback");
            events.clear();
        }
        Outcome { result, events }
    }

    pub fn task(&self, id: &str) -> Option<TaskRecord> {
        super::rows::get(&self.conn, id).expect("read task")
    }

    pub fn last_seq(&self) -> u64 {
        super::last_seq(&self.conn).expect("last seq")
    }

    /// Number of tasks that hold a `max_parallel` slot.
    pub fn running(&self) -> usize {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM tasks WHERE status = 'running'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .expect("count") as usize
    }

    /// Creates a task with these dependencies; panics when refused.
    pub fn create(&mut self, deps: &[&str]) -> TaskRecord {
        // An agent's engine, not `shell`: instructions (resume, relaunch)
        // are refused for a shell task, whose prompt is a command line.
        let new = NewTask {
            prompt: "true".into(),
            engine: Some("agent".into()),
            dependencies: deps.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        };
        expect_task(self.apply(&Method::TaskCreate(new)).result)
    }

    /// Applies and panics unless it succeeded.
    pub fn ok(&mut self, method: Method) -> ReplyBody {
        let what = format!("{method:?}");
        self.apply(&method)
            .result
            .unwrap_or_else(|e| panic!("{what} refused: {e:?}"))
    }

    pub fn ok_internal(&mut self, op: InternalOp) {
        let what = format!("{op:?}");
        if let Err(e) = self.internal(&op).result {
            panic!("{what} refused: {e:?}");
        }
    }

    pub fn count(&self) -> usize {
        self.conn
            .query_row("SELECT COUNT(*) FROM tasks", [], |r| r.get::<_, i64>(0))
            .expect("count") as usize
    }

    pub fn status(&self, id: &str) -> Option<TaskStatus> {
        self.task(id).map(|t| t.status)
    }

    /// Starts `id` as `run_id` with slots to spare.
    pub fn start(&mut self, id: &str, run_id: &str) {
        self.ok_internal(InternalOp::Start {
            id: id.into(),
            run_id: run_id.into(),
            max_parallel: 100,
        });
    }

    /// Starts `id` and reports its run's end.
    pub fn run(&mut self, id: &str, run_id: &str, exit: Exit) {
        self.start(id, run_id);
        self.ok(exit_method(id, run_id, exit));
    }
}

/// How a run ended, as its supervisor reports it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Exit {
    Code0,
    Code1,
    /// Killed by signal 9: no exit code.
    Signal9,
    Timeout,
    Cancelled,
    SpawnError,
}

pub(super) fn exit_method(id: &str, run_id: &str, e: Exit) -> Method {
    let (outcome, exit_code, signal) = match e {
        Exit::Code0 => (ExitOutcome::Exited, Some(0), None),
        Exit::Code1 => (ExitOutcome::Exited, Some(1), None),
        Exit::Signal9 => (ExitOutcome::Exited, None, Some(9)),
        Exit::Timeout => (ExitOutcome::Timeout, None, Some(15)),
        Exit::Cancelled => (ExitOutcome::Cancelled, None, Some(15)),
        Exit::SpawnError => (ExitOutcome::SpawnError, None, None),
    };
    Method::TaskFinished(TaskExit {
        id: id.into(),
        run_id: run_id.into(),
        outcome,
        exit_code,
        signal,
        message: None,
        conclusion: None,
        warm: None,
    })
}

pub(super) fn expect_task(result: WriteResult) -> TaskRecord {
    match result {
        Ok(ReplyBody::Task(t)) => *t,
        other => panic!("expected a task, got {other:?}"),
    }
}
