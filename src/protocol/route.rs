//! Who answers each method: the one place that routes them. The primary's
//! event loop answers [`Route::Local`] itself; everything else is a write
//! for the store thread, which hands [`Route::Task`] to the task
//! operations. Each of those matches only its own kind, so none has to
//! answer a method that can never reach it.

use super::{
    AgentUpdates, AwaitSpec, Conclusion, FailureReason, GoalSpec, MemberInfo, Method, NewTask,
    TaskChanges, TaskControl, TaskExit, TaskStatus,
};

/// Where a method is answered, with its parameters borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Route<'a> {
    /// By the primary's event loop, at once: never stored, no ledger row.
    Local(Local),
    /// On the store thread: a member registers (`hello`).
    Member(&'a MemberInfo),
    /// On the store thread: an ACP session is recorded.
    Session { id: &'a str, cwd: &'a str },
    /// On the store thread: an operation on tasks.
    Task(TaskOp<'a>),
    /// On the store thread: an ACP agent's conversation (its updates, the
    /// controls that steer it).
    Agent(AgentOp<'a>),
    /// On the store thread: a parent's durable await of its children.
    Await(AwaitOp<'a>),
    /// On the store thread: a new goal and its task.
    Goal(&'a GoalSpec),
}

/// An operation on a parent's await.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AwaitOp<'a> {
    Create(&'a AwaitSpec),
    Cancel { parent_id: &'a str },
}

/// An operation on an ACP task's conversation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AgentOp<'a> {
    Updates(&'a AgentUpdates),
    Control(&'a TaskControl),
}

/// The methods the event loop answers without the store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Local {
    Ping,
    /// Test builds only (see [`Method::DebugStall`]).
    #[cfg(feature = "test-hooks")]
    DebugStall {
        ms: u64,
    },
}

/// A task operation from the wire (the parameters of the `task.*` methods).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TaskOp<'a> {
    Create(&'a NewTask),
    SetProgress {
        id: &'a str,
        percent: Option<u8>,
        text: Option<&'a str>,
    },
    UpdateStatus {
        id: &'a str,
        status: TaskStatus,
        reason: Option<FailureReason>,
        exit_code: Option<i32>,
        pid: Option<u32>,
    },
    Delete {
        id: &'a str,
        force: bool,
    },
    Cancel {
        id: &'a str,
    },
    Pause {
        id: &'a str,
    },
    Resume {
        id: &'a str,
        instructions: Option<&'a str>,
        changes: &'a TaskChanges,
    },
    Retry {
        id: &'a str,
    },
    Relaunch {
        id: &'a str,
        instructions: Option<&'a str>,
        changes: &'a TaskChanges,
    },
    Conclude {
        id: &'a str,
        conclusion: &'a Conclusion,
    },
    Purge {
        id: &'a str,
    },
    Finished(&'a TaskExit),
    LendSlot {
        id: &'a str,
        run_id: &'a str,
        waiter: &'a str,
        lend: bool,
    },
}

impl Method {
    /// Who answers this method.
    pub fn route(&self) -> Route<'_> {
        match self {
            Method::Ping {} => Route::Local(Local::Ping),
            #[cfg(feature = "test-hooks")]
            Method::DebugStall { ms } => Route::Local(Local::DebugStall { ms: *ms }),
            Method::Hello(member) => Route::Member(member),
            Method::SessionCreate { id, cwd } => Route::Session { id, cwd },
            Method::TaskCreate(new) => Route::Task(TaskOp::Create(new)),
            Method::TaskSetProgress { id, percent, text } => Route::Task(TaskOp::SetProgress {
                id,
                percent: *percent,
                text: text.as_deref(),
            }),
            Method::TaskUpdateStatus {
                id,
                status,
                reason,
                exit_code,
                pid,
            } => Route::Task(TaskOp::UpdateStatus {
                id,
                status: *status,
                reason: *reason,
                exit_code: *exit_code,
                pid: *pid,
            }),
            Method::TaskDelete { id, force } => Route::Task(TaskOp::Delete { id, force: *force }),
            Method::TaskCancel { id } => Route::Task(TaskOp::Cancel { id }),
            Method::TaskPause { id } => Route::Task(TaskOp::Pause { id }),
            Method::TaskResume {
                id,
                instructions,
                changes,
            } => Route::Task(TaskOp::Resume {
                id,
                instructions: instructions.as_deref(),
                changes,
            }),
            Method::TaskRetry { id } => Route::Task(TaskOp::Retry { id }),
            Method::TaskRelaunch {
                id,
                instructions,
                changes,
            } => Route::Task(TaskOp::Relaunch {
                id,
                instructions: instructions.as_deref(),
                changes,
            }),
            Method::TaskConclude { id, conclusion } => {
                Route::Task(TaskOp::Conclude { id, conclusion })
            }
            Method::TaskPurge { id } => Route::Task(TaskOp::Purge { id }),
            Method::TaskFinished(exit) => Route::Task(TaskOp::Finished(exit)),
            Method::TaskLendSlot {
                id,
                run_id,
                waiter,
                lend,
            } => Route::Task(TaskOp::LendSlot {
                id,
                run_id,
                waiter,
                lend: *lend,
            }),
            Method::TaskAgentUpdates(batch) => Route::Agent(AgentOp::Updates(batch)),
            Method::TaskControl(ctl) => Route::Agent(AgentOp::Control(ctl)),
            Method::TaskAwait(spec) => Route::Await(AwaitOp::Create(spec)),
            Method::TaskAwaitCancel { parent_id } => Route::Await(AwaitOp::Cancel { parent_id }),
            Method::GoalCreate(spec) => Route::Goal(spec),
        }
    }

    /// Whether the event loop answers it itself (nothing stored, so no
    /// digest and no ledger row).
    pub fn is_local(&self) -> bool {
        matches!(self.route(), Route::Local(_))
    }
}
