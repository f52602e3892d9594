//! Tasks on the wire: what a task is (its [`TaskSpec`]), its record as
//! stored and published ([`TaskRecord`]: the spec and its run state), and
//! the vocabulary of its life (status, failure reason, how a run ended).

use super::conclusion::Conclusion;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Pending,
    Queued,
    Running,
    Paused,
    Completed,
    Failed,
    Cancelled,
    /// Running, but its ACP agent waits for a human to answer a permission
    /// request (`grove approve` / `grove deny`); keeps its slot.
    Waiting,
    /// An ACP task whose session stays open (`--session`) between turns:
    /// its agent waits for a follow-up (`grove say`) or `grove close`;
    /// holds no slot and no timeout clock.
    Idle,
}

pub const TASK_STATUSES: &[TaskStatus] = &[
    TaskStatus::Pending,
    TaskStatus::Queued,
    TaskStatus::Running,
    TaskStatus::Waiting,
    TaskStatus::Idle,
    TaskStatus::Paused,
    TaskStatus::Completed,
    TaskStatus::Failed,
    TaskStatus::Cancelled,
];

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Paused => "paused",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Waiting => "waiting",
            TaskStatus::Idle => "idle",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        TASK_STATUSES.iter().copied().find(|t| t.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    ExitCode,
    Timeout,
    SpawnError,
    DependencyFailed,
    Lost,
    /// An ACP agent ended its turn with `refusal`.
    Refusal,
    /// An ACP agent ended its turn with `max_tokens`.
    MaxTokens,
    /// An ACP agent ended its turn with `max_turn_requests`.
    MaxTurnRequests,
    /// The ACP conversation broke: the agent died mid-turn, wrote what is
    /// not the protocol, or answered with an error.
    AgentError,
}

pub const FAILURE_REASONS: &[FailureReason] = &[
    FailureReason::ExitCode,
    FailureReason::Timeout,
    FailureReason::SpawnError,
    FailureReason::DependencyFailed,
    FailureReason::Lost,
    FailureReason::Refusal,
    FailureReason::MaxTokens,
    FailureReason::MaxTurnRequests,
    FailureReason::AgentError,
];

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::ExitCode => "exit_code",
            FailureReason::Timeout => "timeout",
            FailureReason::SpawnError => "spawn_error",
            FailureReason::DependencyFailed => "dependency_failed",
            FailureReason::Lost => "lost",
            FailureReason::Refusal => "refusal",
            FailureReason::MaxTokens => "max_tokens",
            FailureReason::MaxTurnRequests => "max_turn_requests",
            FailureReason::AgentError => "agent_error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        FAILURE_REASONS.iter().copied().find(|r| r.as_str() == s)
    }
}

/// How a task's run ended, as its supervisor saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitOutcome {
    /// The agent exited by itself (see `exit_code` / `signal`).
    Exited,
    /// The supervisor killed it at its timeout.
    Timeout,
    /// The supervisor killed it on request.
    Cancelled,
    /// The agent could not be started.
    SpawnError,
    /// An ACP agent's turn ended with `end_turn`.
    EndTurn,
    /// An ACP agent's turn ended with `refusal`.
    Refusal,
    /// An ACP agent's turn ended with `max_tokens`.
    MaxTokens,
    /// An ACP agent's turn ended with `max_turn_requests`.
    MaxTurnRequests,
    /// The ACP conversation broke (see `message`).
    AgentError,
}

/// Parameters of `task.finished`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskExit {
    pub id: String,
    /// The run this report is about; reports of an older run are ignored.
    pub run_id: String,
    pub outcome: ExitOutcome,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub message: Option<String>,
    /// The run's conclusion, for a task that records one (the shim reads
    /// it from the output when the run ends).
    #[serde(default)]
    pub conclusion: Option<Conclusion>,
    /// How a delegated run on a shared agent's engine got its agent (warm
    /// reuse), counted when the report is applied; nil for every other
    /// run (and absent from older shims' reports).
    #[serde(default)]
    pub warm: Option<WarmUse>,
}

/// How a delegated task's run on a `shared` ACP engine got its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarmUse {
    /// A new session on an agent host that was already running.
    Hit,
    /// No host ran: this run started one (it stays warm for the next).
    Started,
    /// The host was at the warm cap: the run got an agent of its own.
    CapReached,
    /// The host went away before it took the session: an agent of its own.
    NoTarget,
    /// The warm path failed (the host could not be started or reached, or
    /// it or its agent died mid-session): the task failed, no cold rerun.
    Failed,
}

impl WarmUse {
    pub const NAMES: &[&str] = &["hit", "started", "cap_reached", "no_target", "failed"];
}

/// The request id of every report of run `run_id`'s end: the same for every
/// sender (the shim, or an orchestrator finalizing from the exit record),
/// so that the run's end is applied exactly once.
pub fn finished_request_id(run_id: &str) -> String {
    format!("finished-{run_id}")
}

/// What a task is: everything the user asked for, the same in each of its
/// runs (only the prompt grows, by the instructions of a resume). A retry
/// copies it whole.
///
/// `Engine` is what differs between asking and having: in a request
/// ([`NewTask`]) the engine may be left out (`None`: the primary fills in
/// its default; serde reads a missing `Option` field as `None`), in a
/// record it is always the engine the task runs with (required).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec<Engine = String, Tree = Option<Worktree>> {
    pub prompt: String,
    pub engine: Engine,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub work_dir: Option<String>,
    #[serde(default)]
    pub persona: Option<String>,
    #[serde(default)]
    pub dependencies: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub session_id: Option<String>,
    /// Extra arguments appended to the engine's command.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// Extra environment variables for the agent.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// ACP engines: the agent session stays open after a turn (the task
    /// goes `idle`) until `grove close` or the idle timeout.
    #[serde(default)]
    pub keep_session: bool,
    /// ACP engines: this task's permission policy, instead of its
    /// engine's (`--yolo` is `allow_all`).
    #[serde(default)]
    pub permissions: Option<super::PermissionPolicy>,
    /// The task's own git worktree: in a record, the one it runs in (nil:
    /// it runs in the workspace); in a request, what is asked
    /// ([`WorktreeAsk`]; nil: the configuration's `worktree` setting
    /// decides).
    #[serde(default)]
    pub worktree: Tree,
    /// The task that spawned this one (delegation): set when the caller
    /// runs inside a task (`GROVE_TASK_ID`).
    #[serde(default)]
    pub parent_id: Option<String>,
    /// Ask the agent for a conclusion block (a short brief is added to its
    /// prompt at launch, never for the `shell` engine) and record the task's
    /// conclusion when it ends.
    #[serde(default)]
    pub want_conclusion: bool,
}

/// The environment variable that names the task a task was delegated by
/// from another workspace (`<workspace path>#<task id>`): set by
/// `grove delegate-run` on the task it creates there. The parent lives in
/// another store, so it cannot be a `parent_id`; carried in the task's
/// environment, its agent sees it too.
pub const PARENT_REF_ENV: &str = "GROVE_PARENT_REF";

/// The environment variable that says, on a task delegated from another
/// workspace, how many levels below a top-level task its proxy there was:
/// set by `grove delegate-run` beside [`PARENT_REF_ENV`]. This task stands
/// at that level here, so a chain of delegations across workspaces meets
/// `max_delegation_depth` as one inside a workspace does.
pub const DEPTH_ENV: &str = "GROVE_DELEGATION_DEPTH";

impl<E, T> TaskSpec<E, T> {
    /// Spawned by another task: here (`parent_id`) or from another
    /// workspace ([`PARENT_REF_ENV`]).
    pub fn is_delegated(&self) -> bool {
        self.parent_id.is_some() || self.env.contains_key(PARENT_REF_ENV)
    }

    /// The levels this task inherits from the workspace that delegated it
    /// ([`DEPTH_ENV`]): 0 when it was not delegated from another
    /// workspace, `Err` with the value when that is not a number.
    pub fn inherited_depth(&self) -> Result<u32, &str> {
        match self.env.get(DEPTH_ENV) {
            None => Ok(0),
            Some(v) => v.trim().parse().map_err(|_| v.as_str()),
        }
    }
}

/// What a resume or a relaunch changes in a task's spec (every field left
/// out keeps its value).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskChanges {
    /// A new prompt (relaunch only; a resume appends `instructions`).
    #[serde(default)]
    pub prompt: Option<String>,
    /// A new engine (relaunch only).
    #[serde(default)]
    pub engine: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The new tags, replacing the old ones.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

impl TaskChanges {
    pub fn is_empty(&self) -> bool {
        *self == TaskChanges::default()
    }

    /// Applies the changes to `spec`.
    pub fn apply(&self, spec: &mut TaskSpec) {
        if let Some(p) = &self.prompt {
            spec.prompt = p.clone();
        }
        if let Some(e) = &self.engine {
            spec.engine = e.clone();
        }
        if let Some(m) = &self.model {
            spec.model = Some(m.clone());
        }
        if let Some(t) = self.timeout_ms {
            spec.timeout_ms = Some(t);
        }
        if let Some(tags) = &self.tags {
            spec.tags = tags.clone();
        }
    }
}

/// Parameters of `task.create`: a spec whose engine may be left to the
/// primary's default, and whose worktree is asked for, not yet made.
pub type NewTask = TaskSpec<Option<String>, Option<WorktreeAsk>>;

/// The git worktree a task runs in: `path` (relative to the workspace) on
/// branch `branch`, made from commit `base`. The primary names the branch
/// and the path when it creates the task; the task's supervisor creates
/// the worktree before the agent starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worktree {
    /// The full commit id the branch starts from (what `grove diff`
    /// compares against).
    pub base: String,
    /// `grove/<first 12 characters of the task id>`.
    pub branch: String,
    /// `.grove/worktrees/<task id>`, relative to the workspace.
    pub path: String,
}

impl Worktree {
    /// The branch and path of task `id`'s worktree, from `base`.
    pub fn for_task(id: &str, base: String) -> Worktree {
        Worktree {
            base,
            branch: format!("grove/{}", &id[..id.len().min(12)]),
            path: format!(".grove/worktrees/{id}"),
        }
    }
}

/// What a `task.create` asks about a worktree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorktreeAsk {
    /// False: no worktree, whatever the configuration says.
    pub enabled: bool,
    /// The commit (or any name git resolves to one) to branch from; nil:
    /// the workspace's `HEAD`. The primary resolves it to a commit id when
    /// the task is created.
    #[serde(default)]
    pub base: Option<String>,
}

impl NewTask {
    /// The spec with its engine decided: the one asked for, else `default`.
    pub fn with_engine_or(self, default: &str) -> TaskSpec {
        let engine = self.engine.unwrap_or_else(|| default.to_string());
        TaskSpec {
            prompt: self.prompt,
            engine,
            model: self.model,
            work_dir: self.work_dir,
            persona: self.persona,
            dependencies: self.dependencies,
            tags: self.tags,
            priority: self.priority,
            timeout_ms: self.timeout_ms,
            session_id: self.session_id,
            extra_args: self.extra_args,
            env: self.env,
            keep_session: self.keep_session,
            permissions: self.permissions,
            // A base left unresolved (no primary checked it) is refused by
            // the store as not a commit id.
            worktree: (self.worktree.filter(|w| w.enabled))
                .map(|w| Worktree::for_task("", w.base.unwrap_or_default())),
            parent_id: self.parent_id,
            want_conclusion: self.want_conclusion,
        }
    }
}

/// A task as stored and as carried by events and replies (see
/// docs/design.md, Tasks): its id, its spec, and the state of its runs.
///
/// Serialized by hand (below) so that the wire and JSON shape stays the
/// flat map of protocol v1, field for field and in its order; read back
/// through [`FlatRecord`], which takes the fields in any order.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub id: String,
    pub spec: TaskSpec,
    // The run state: what happened to the spec so far.
    pub status: TaskStatus,
    pub failure_reason: Option<FailureReason>,
    pub progress_pct: Option<u8>,
    pub progress_text: Option<String>,
    pub exit_code: Option<i32>,
    pub pid: Option<u32>,
    /// Unix milliseconds.
    pub created_at: u64,
    pub updated_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub retry_of: Option<String>,
    pub attempt: u32,
    /// Identifies the current run (a relaunch starts a new one).
    pub run_id: Option<String>,
    /// What the task concluded, once it ended (tasks with a parent or that
    /// asked for one, see [`TaskSpec::want_conclusion`]).
    pub conclusion: Option<Conclusion>,
}

/// A record as the wire carries it: one flat map. Read into this and then
/// split, rather than through `#[serde(flatten)]` of the spec, which
/// buffers every field the record does not name itself (the whole spec)
/// into an intermediate tree first: a client spent ~7 % more CPU per
/// `task.create` that way (see docs/design.md, Wire protocol). The spec's
/// fields keep [`TaskSpec`]'s requiredness (`prompt` and `engine` are
/// required); `tests/schema.rs` probes both.
#[derive(Deserialize)]
struct FlatRecord {
    id: String,
    prompt: String,
    engine: String,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    work_dir: Option<String>,
    #[serde(default)]
    persona: Option<String>,
    status: TaskStatus,
    #[serde(default)]
    failure_reason: Option<FailureReason>,
    #[serde(default)]
    dependencies: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    priority: i64,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    progress_pct: Option<u8>,
    #[serde(default)]
    progress_text: Option<String>,
    #[serde(default)]
    exit_code: Option<i32>,
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    session_id: Option<String>,
    created_at: u64,
    updated_at: u64,
    #[serde(default)]
    started_at: Option<u64>,
    #[serde(default)]
    finished_at: Option<u64>,
    #[serde(default)]
    retry_of: Option<String>,
    #[serde(default = "one")]
    attempt: u32,
    #[serde(default)]
    extra_args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    keep_session: bool,
    #[serde(default)]
    permissions: Option<super::PermissionPolicy>,
    #[serde(default)]
    worktree: Option<Worktree>,
    #[serde(default)]
    parent_id: Option<String>,
    #[serde(default)]
    want_conclusion: bool,
    #[serde(default)]
    conclusion: Option<Conclusion>,
}

impl<'de> Deserialize<'de> for TaskRecord {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let f = FlatRecord::deserialize(deserializer)?;
        Ok(TaskRecord {
            id: f.id,
            spec: TaskSpec {
                prompt: f.prompt,
                engine: f.engine,
                model: f.model,
                work_dir: f.work_dir,
                persona: f.persona,
                dependencies: f.dependencies,
                tags: f.tags,
                priority: f.priority,
                timeout_ms: f.timeout_ms,
                session_id: f.session_id,
                extra_args: f.extra_args,
                env: f.env,
                keep_session: f.keep_session,
                permissions: f.permissions,
                worktree: f.worktree,
                parent_id: f.parent_id,
                want_conclusion: f.want_conclusion,
            },
            status: f.status,
            failure_reason: f.failure_reason,
            progress_pct: f.progress_pct,
            progress_text: f.progress_text,
            exit_code: f.exit_code,
            pid: f.pid,
            created_at: f.created_at,
            updated_at: f.updated_at,
            started_at: f.started_at,
            finished_at: f.finished_at,
            retry_of: f.retry_of,
            attempt: f.attempt,
            run_id: f.run_id,
            conclusion: f.conclusion,
        })
    }
}

fn one() -> u32 {
    1
}

/// The longest prompt a task may have: with its conclusion and progress
/// (bounded too) its record stays well inside a frame (`MAX_FRAME_BYTES`),
/// as every event about it carries it whole.
pub const MAX_PROMPT_BYTES: usize = 512 * 1024;
/// The most of a progress note a record keeps.
pub const MAX_PROGRESS_TEXT_BYTES: usize = 4 * 1024;

impl TaskRecord {
    /// Bounds the texts the record keeps (see [`MAX_PROMPT_BYTES`] and
    /// `Conclusion::bounded`). Writes refuse a prompt that is too long
    /// where a user sent it; this is the net below every write, which a
    /// task's end (never refused) passes too.
    pub fn bound_texts(&mut self) {
        if let Some(c) = self.conclusion.take() {
            self.conclusion = Some(c.bounded());
        }
        if let Some(p) = &mut self.progress_text {
            super::conclusion::cut_text(p, MAX_PROGRESS_TEXT_BYTES);
        }
        super::conclusion::cut_text(&mut self.spec.prompt, MAX_PROMPT_BYTES);
    }

    /// Whether its agent runs by its row (running, waiting for a permission
    /// answer, or paused mid-run): its worktree must not change under it.
    /// A run whose row says it ended may still be being stopped: see
    /// `runs::RunFiles::still_going`.
    pub fn runs_by_its_row(&self) -> bool {
        matches!(self.status, TaskStatus::Running | TaskStatus::Waiting)
            || (self.status == TaskStatus::Paused && self.run_id.is_some())
    }

    /// A task that has not run: pending, first attempt, created `now`.
    pub fn new(id: String, spec: TaskSpec, now: u64) -> TaskRecord {
        TaskRecord {
            id,
            spec,
            status: TaskStatus::Pending,
            failure_reason: None,
            progress_pct: None,
            progress_text: None,
            exit_code: None,
            pid: None,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            retry_of: None,
            attempt: 1,
            run_id: None,
            conclusion: None,
        }
    }
}

/// The wire (and `--json`) shape of a record: protocol v1's flat map, in
/// its field order (the golden vectors in `ipc-schema/vectors/` pin the
/// bytes).
impl Serialize for TaskRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (t, s) = (self, &self.spec);
        let mut m = serializer.serialize_struct("TaskRecord", 32)?;
        m.serialize_field("id", &t.id)?;
        m.serialize_field("prompt", &s.prompt)?;
        m.serialize_field("engine", &s.engine)?;
        m.serialize_field("model", &s.model)?;
        m.serialize_field("work_dir", &s.work_dir)?;
        m.serialize_field("persona", &s.persona)?;
        m.serialize_field("status", &t.status)?;
        m.serialize_field("failure_reason", &t.failure_reason)?;
        m.serialize_field("dependencies", &s.dependencies)?;
        m.serialize_field("tags", &s.tags)?;
        m.serialize_field("priority", &s.priority)?;
        m.serialize_field("timeout_ms", &s.timeout_ms)?;
        m.serialize_field("progress_pct", &t.progress_pct)?;
        m.serialize_field("progress_text", &t.progress_text)?;
        m.serialize_field("exit_code", &t.exit_code)?;
        m.serialize_field("pid", &t.pid)?;
        m.serialize_field("session_id", &s.session_id)?;
        m.serialize_field("created_at", &t.created_at)?;
        m.serialize_field("updated_at", &t.updated_at)?;
        m.serialize_field("started_at", &t.started_at)?;
        m.serialize_field("finished_at", &t.finished_at)?;
        m.serialize_field("retry_of", &t.retry_of)?;
        m.serialize_field("attempt", &t.attempt)?;
        m.serialize_field("extra_args", &s.extra_args)?;
        m.serialize_field("env", &s.env)?;
        m.serialize_field("run_id", &t.run_id)?;
        m.serialize_field("keep_session", &s.keep_session)?;
        m.serialize_field("permissions", &s.permissions)?;
        m.serialize_field("worktree", &s.worktree)?;
        m.serialize_field("parent_id", &s.parent_id)?;
        m.serialize_field("want_conclusion", &s.want_conclusion)?;
        m.serialize_field("conclusion", &t.conclusion)?;
        m.end()
    }
}
