//! Wire types of the grove bus (see docs/design.md, Wire protocol) and their MessagePack codec.
//!
//! Everything that crosses a socket is defined here and nowhere else, so the
//! language-neutral contract in `ipc-schema/` has exactly one Rust
//! counterpart (the drift test in `tests/schema.rs` compares them).
//!
//! Encoding rules, chosen so that old and new peers can read each other:
//! - MessagePack with **named** fields (`rmp_serde::to_vec_named`);
//! - every field added after protocol v1 is `#[serde(default)]`;
//! - enums are externally tagged only (`{"task.create": {...}}`): rmp-serde
//!   has known bugs with untagged/adjacent tagging and `flatten`.

use serde::{Deserialize, Serialize};

mod wire_form;

/// Version of the wire protocol carried in every request and reply (`v`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest request frame the primary decodes. Anything bigger is answered
/// with `too_large` (addressed to the request's id when it can be read) and
/// never decoded; clients refuse to send such a request in the first place.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Longest accepted request id (idempotency key).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A request from any client to the primary's ROUTER socket: one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    /// Client-generated unique id (a UUID in text form). For writes it is the
    /// idempotency key: a retry with the same id is never applied twice.
    pub id: String,
    /// Instance id of the sender (a UUID string, or any name for tools).
    pub from: String,
    /// Highest primary epoch the sender has seen; a primary older than that
    /// refuses the request with `stale_epoch`.
    pub epoch_seen: u64,
    pub method: Method,
}

/// Every RPC method. The variant name on the wire is the method name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Method {
    /// Liveness probe, answered by the event loop without touching the store.
    #[serde(rename = "ping")]
    Ping {},
    /// A member (secondary or front end) registers itself with the primary.
    #[serde(rename = "hello")]
    Hello(MemberInfo),
    #[serde(rename = "task.create")]
    TaskCreate(NewTask),
    #[serde(rename = "task.set_progress")]
    TaskSetProgress {
        id: String,
        /// 0..=100; `None` leaves the percentage unchanged.
        #[serde(default)]
        percent: Option<u8>,
        #[serde(default)]
        text: Option<String>,
    },
    #[serde(rename = "task.update_status")]
    TaskUpdateStatus {
        id: String,
        status: TaskStatus,
        #[serde(default)]
        reason: Option<FailureReason>,
        #[serde(default)]
        exit_code: Option<i32>,
        #[serde(default)]
        pid: Option<u32>,
    },
    /// Deletes a task. A running task is refused unless `force`, which
    /// kills it first.
    #[serde(rename = "task.delete")]
    TaskDelete {
        id: String,
        #[serde(default)]
        force: bool,
    },
    /// Cancels a task: a running one has its whole process group killed.
    #[serde(rename = "task.cancel")]
    TaskCancel { id: String },
    /// Pauses a task: a running one is stopped (SIGSTOP to its processes;
    /// it keeps its slot and its timeout clock stops), a waiting one is held
    /// back by the scheduler.
    #[serde(rename = "task.pause")]
    TaskPause { id: String },
    /// Continues a paused task. New instructions are appended to the prompt;
    /// a task that had started is then rerun with them (agent CLIs take
    /// instructions only at start).
    #[serde(rename = "task.resume")]
    TaskResume {
        id: String,
        #[serde(default)]
        instructions: Option<String>,
    },
    /// Creates a new task from a finished one (`retry_of`, `attempt + 1`).
    #[serde(rename = "task.retry")]
    TaskRetry { id: String },
    /// Reruns a finished task under the same id; dependents that failed
    /// because of it are rearmed.
    #[serde(rename = "task.relaunch")]
    TaskRelaunch { id: String },
    /// Deletes a finished task and its log files; purging a missing task
    /// succeeds (idempotent).
    #[serde(rename = "task.purge")]
    TaskPurge { id: String },
    /// Sent by a task's supervisor (`grove shim`) when the agent ended.
    #[serde(rename = "task.finished")]
    TaskFinished(TaskExit),
    /// Records an ACP session so that any member can load it later.
    /// Creating an existing session is a no-op.
    #[serde(rename = "session.create")]
    SessionCreate { id: String, cwd: String },
    /// Test builds only (the `test-hooks` feature), not part of the
    /// protocol: blocks the primary's event loop for `ms` so the watchdog
    /// can be tested.
    #[cfg(feature = "test-hooks")]
    #[serde(rename = "debug.stall")]
    DebugStall { ms: u64 },
}

/// Names of every method, as they appear on the wire (in a test build, with
/// the [`TEST_HOOK_METHODS`]).
pub const METHOD_NAMES: &[&str] = &[
    "ping",
    "hello",
    "task.create",
    "task.set_progress",
    "task.update_status",
    "task.delete",
    "task.cancel",
    "task.pause",
    "task.resume",
    "task.retry",
    "task.relaunch",
    "task.purge",
    "task.finished",
    "session.create",
    #[cfg(feature = "test-hooks")]
    "debug.stall",
];

/// Methods that only test builds know (the `test-hooks` feature): not part
/// of the protocol that `ipc-schema/` describes.
pub const TEST_HOOK_METHODS: &[&str] = &[
    #[cfg(feature = "test-hooks")]
    "debug.stall",
];

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Ping {} => "ping",
            Method::Hello(_) => "hello",
            Method::TaskCreate(_) => "task.create",
            Method::TaskSetProgress { .. } => "task.set_progress",
            Method::TaskUpdateStatus { .. } => "task.update_status",
            Method::TaskDelete { .. } => "task.delete",
            Method::TaskCancel { .. } => "task.cancel",
            Method::TaskPause { .. } => "task.pause",
            Method::TaskResume { .. } => "task.resume",
            Method::TaskRetry { .. } => "task.retry",
            Method::TaskRelaunch { .. } => "task.relaunch",
            Method::TaskPurge { .. } => "task.purge",
            Method::TaskFinished(_) => "task.finished",
            Method::SessionCreate { .. } => "session.create",
            #[cfg(feature = "test-hooks")]
            Method::DebugStall { .. } => "debug.stall",
        }
    }
}

/// A reply to one request: exactly one of `ok` and `err` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub v: u32,
    /// The id of the request this answers (empty if the request was unreadable).
    pub id: String,
    /// Epoch of the primary that produced this reply.
    pub epoch: u64,
    #[serde(default)]
    pub ok: Option<ReplyBody>,
    #[serde(default)]
    pub err: Option<WireError>,
}

impl Reply {
    pub fn ok(id: String, epoch: u64, body: ReplyBody) -> Self {
        Reply {
            v: PROTOCOL_VERSION,
            id,
            epoch,
            ok: Some(body),
            err: None,
        }
    }

    pub fn err(id: String, epoch: u64, err: WireError) -> Self {
        Reply {
            v: PROTOCOL_VERSION,
            id,
            epoch,
            ok: None,
            err: Some(err),
        }
    }

    pub fn into_result(self) -> Result<ReplyBody, WireError> {
        match (self.ok, self.err) {
            (_, Some(e)) => Err(e),
            (Some(b), None) => Ok(b),
            (None, None) => Err(WireError::new(
                ErrorCode::Internal,
                "reply carries neither ok nor err",
            )),
        }
    }
}

/// The successful result of a method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReplyBody {
    #[serde(rename = "pong")]
    Pong(PrimaryInfo),
    #[serde(rename = "welcome")]
    Welcome { epoch: u64, last_seq: u64 },
    #[serde(rename = "task")]
    Task(Box<TaskRecord>),
    #[serde(rename = "deleted")]
    Deleted { id: String },
    #[serde(rename = "done")]
    Done {},
}

/// The closed set of error codes (documented in `ipc-schema/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid MessagePack or not a valid request.
    BadRequest,
    /// The method name is not one this primary knows.
    UnknownMethod,
    /// The request is well formed but a field value is invalid.
    InvalidParams,
    /// The task (or other entity) does not exist.
    NotFound,
    /// The request conflicts with the current state (e.g. illegal transition).
    Conflict,
    /// The frame exceeds `MAX_FRAME_BYTES`.
    TooLarge,
    /// The request id was already used for a different request.
    IdempotencyConflict,
    /// The request names an epoch newer than this primary's: it is stale.
    StaleEpoch,
    /// The protocol version is not supported.
    UnsupportedVersion,
    /// No primary can serve the request (shutting down, unresponsive).
    Unavailable,
    /// A bug or an I/O failure inside the primary.
    Internal,
}

pub const ERROR_CODES: &[ErrorCode] = &[
    ErrorCode::BadRequest,
    ErrorCode::UnknownMethod,
    ErrorCode::InvalidParams,
    ErrorCode::NotFound,
    ErrorCode::Conflict,
    ErrorCode::TooLarge,
    ErrorCode::IdempotencyConflict,
    ErrorCode::StaleEpoch,
    ErrorCode::UnsupportedVersion,
    ErrorCode::Unavailable,
    ErrorCode::Internal,
];

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownMethod => "unknown_method",
            ErrorCode::InvalidParams => "invalid_params",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::StaleEpoch => "stale_epoch",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
        }
    }
}

/// Who the primary is, as answered to `ping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrimaryInfo {
    pub instance_id: String,
    pub pid: u32,
    pub epoch: u64,
    /// Unix milliseconds.
    pub started_at: u64,
    pub uptime_ms: u64,
    pub pub_endpoint: String,
    pub rpc_endpoint: String,
    pub last_seq: u64,
    /// The longest single poll of the primary's event loop so far, in
    /// microseconds: every request waits behind a long one. Absent from
    /// primaries older than this field.
    #[serde(default)]
    pub longest_poll_us: u64,
    /// Group commits by this primary's store thread so far, and the client
    /// writes they carried: their ratio is the mean batch size.
    #[serde(default)]
    pub commits: u64,
    #[serde(default)]
    pub writes_committed: u64,
}

/// A member of the grove, as announced by `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub instance_id: String,
    pub pid: u32,
    /// `serve`, `acp`, `cli`, ...
    pub kind: String,
    /// Unix milliseconds.
    pub started_at: u64,
}

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
}

pub const TASK_STATUSES: &[TaskStatus] = &[
    TaskStatus::Pending,
    TaskStatus::Queued,
    TaskStatus::Running,
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
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::ExitCode => "exit_code",
            FailureReason::Timeout => "timeout",
            FailureReason::SpawnError => "spawn_error",
            FailureReason::DependencyFailed => "dependency_failed",
            FailureReason::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            FailureReason::ExitCode,
            FailureReason::Timeout,
            FailureReason::SpawnError,
            FailureReason::DependencyFailed,
            FailureReason::Lost,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
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
}

/// Parameters of `task.create`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NewTask {
    pub prompt: String,
    #[serde(default)]
    pub engine: Option<String>,
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
    pub env: std::collections::BTreeMap<String, String>,
}

/// A task as stored and as carried by events and replies (see docs/design.md, Tasks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub prompt: String,
    pub engine: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub work_dir: Option<String>,
    #[serde(default)]
    pub persona: Option<String>,
    pub status: TaskStatus,
    #[serde(default)]
    pub failure_reason: Option<FailureReason>,
    #[serde(default)]
    pub dependencies: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub progress_pct: Option<u8>,
    #[serde(default)]
    pub progress_text: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub session_id: Option<String>,
    /// Unix milliseconds.
    pub created_at: u64,
    pub updated_at: u64,
    #[serde(default)]
    pub started_at: Option<u64>,
    #[serde(default)]
    pub finished_at: Option<u64>,
    #[serde(default)]
    pub retry_of: Option<String>,
    #[serde(default = "one")]
    pub attempt: u32,
    #[serde(default)]
    pub extra_args: Vec<String>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Identifies the current run (a relaunch starts a new one).
    #[serde(default)]
    pub run_id: Option<String>,
}

fn one() -> u32 {
    1
}

/// An event published on the PUB socket as `[topic, msgpack(Event)]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the durable event log; 0 for transient events
    /// (`task.output`, `instance.heartbeat`), which are not logged.
    pub seq: u64,
    pub epoch: u64,
    /// Unix milliseconds.
    pub at: u64,
    pub data: EventData,
}

impl Event {
    pub fn topic(&self) -> &'static str {
        self.data.topic()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventData {
    #[serde(rename = "task.created")]
    TaskCreated { task: TaskRecord },
    #[serde(rename = "task.updated")]
    TaskUpdated { task: TaskRecord },
    #[serde(rename = "task.deleted")]
    TaskDeleted { id: String },
    /// Transient: a chunk of a running task's output (the log file is durable).
    #[serde(rename = "task.output")]
    TaskOutput { id: String, chunk: String },
    #[serde(rename = "instance.joined")]
    InstanceJoined { member: MemberInfo, epoch: u64 },
    /// Transient: the primary is alive; `last_seq` lets subscribers notice a
    /// lost tail of the event stream even when nothing else is published.
    #[serde(rename = "instance.heartbeat")]
    Heartbeat {
        instance_id: String,
        last_seq: u64,
        uptime_ms: u64,
    },
    #[serde(rename = "instance.promoted")]
    Promoted {
        instance_id: String,
        pid: u32,
        epoch: u64,
    },
    #[serde(rename = "instance.shutdown")]
    Shutdown { instance_id: String, epoch: u64 },
    #[serde(rename = "session.created")]
    SessionCreated { id: String, cwd: String },
}

pub const TOPICS: &[&str] = &[
    "task.created",
    "task.updated",
    "task.deleted",
    "task.output",
    "instance.joined",
    "instance.heartbeat",
    "instance.promoted",
    "instance.shutdown",
    "session.created",
];

impl EventData {
    pub fn topic(&self) -> &'static str {
        match self {
            EventData::TaskCreated { .. } => "task.created",
            EventData::TaskUpdated { .. } => "task.updated",
            EventData::TaskDeleted { .. } => "task.deleted",
            EventData::TaskOutput { .. } => "task.output",
            EventData::InstanceJoined { .. } => "instance.joined",
            EventData::Heartbeat { .. } => "instance.heartbeat",
            EventData::Promoted { .. } => "instance.promoted",
            EventData::Shutdown { .. } => "instance.shutdown",
            EventData::SessionCreated { .. } => "session.created",
        }
    }

    /// Durable events are appended to the `events` table and get a `seq`.
    pub fn is_durable(&self) -> bool {
        !matches!(
            self,
            EventData::TaskOutput { .. } | EventData::Heartbeat { .. }
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("unknown method `{0}`")]
    UnknownMethod(String),
    #[error("protocol version {0} is not supported (this primary speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u32),
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge(_) => ErrorCode::TooLarge,
            DecodeError::UnknownMethod(_) => ErrorCode::UnknownMethod,
            DecodeError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            DecodeError::Malformed(_) => ErrorCode::BadRequest,
        }
    }
}

/// Encodes any wire value with named fields.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain structs into a Vec cannot fail.
    rmp_serde::to_vec_named(value).expect("wire types always serialize")
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    rmp_serde::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// The parts of a request that can be read even when its method cannot, so
/// that the error reply can still be addressed to the request's id.
#[derive(Debug, Default, Deserialize)]
pub struct RequestHead {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub method: Option<std::collections::BTreeMap<String, serde::de::IgnoredAny>>,
}

/// Only the version of a request, read on its own so that a request of a
/// newer protocol is told so even when the rest of it does not decode here.
#[derive(Debug, Default, Deserialize)]
struct VersionHead {
    #[serde(default)]
    v: Option<u32>,
}

/// Decodes a request frame, telling apart a newer protocol version and an
/// unknown method (the peer is newer than us) from a malformed request, and
/// refusing the MessagePack forms the contract leaves out (see `wire_form`).
/// On failure returns the request id when it could be read, so the caller
/// can still answer.
pub fn decode_request(bytes: &[u8]) -> Result<Request, (String, DecodeError)> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err((String::new(), DecodeError::TooLarge(bytes.len())));
    }
    // The id and the version are read only from a map: in a positional
    // array they would be guesses (and arrays are refused anyway).
    let is_map = matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf));
    let head = || -> RequestHead {
        match is_map {
            true => rmp_serde::from_slice(bytes).unwrap_or_default(),
            false => RequestHead::default(),
        }
    };
    match rmp_serde::from_slice::<Request>(bytes) {
        // Refused by its version alone, by the caller.
        Ok(req) if req.v != PROTOCOL_VERSION && is_map => Ok(req),
        Ok(req) => match wire_form::check(bytes, &req) {
            Ok(()) => Ok(req),
            Err(msg) => Err((head().id, DecodeError::Malformed(msg))),
        },
        Err(full_err) => {
            let head = head();
            let version = is_map
                .then(|| rmp_serde::from_slice::<VersionHead>(bytes).ok())
                .flatten()
                .and_then(|h| h.v);
            if let Some(v) = version.filter(|&v| v != PROTOCOL_VERSION) {
                return Err((head.id, DecodeError::UnsupportedVersion(v)));
            }
            let method_name = head.method.as_ref().and_then(|m| m.keys().next().cloned());
            let err = match method_name {
                Some(name) if !METHOD_NAMES.contains(&name.as_str()) => {
                    DecodeError::UnknownMethod(name)
                }
                _ => DecodeError::Malformed(full_err.to_string()),
            };
            Err((head.id, err))
        }
    }
}

/// The id of a request too large to decode, read without building its
/// method (whose payload is skipped), so that the `too_large` answer still
/// reaches the caller waiting for that id. Empty when it cannot be read.
pub fn oversized_request_id(bytes: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Head {
        #[serde(default)]
        id: String,
    }
    rmp_serde::from_slice::<Head>(bytes)
        .map(|h| h.id)
        .unwrap_or_default()
}

/// A fingerprint of what a write asks for, stored beside its ledger row so
/// that an id reused for a different request is refused
/// (`idempotency_conflict`) instead of answered with the first reply.
/// FNV-1a over the method's encoding: stable across builds and versions, as
/// the ledger outlives the process that wrote it.
pub fn request_digest(method: &Method) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in encode(method) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method) -> Request {
        Request {
            v: PROTOCOL_VERSION,
            id: "r1".into(),
            from: "me".into(),
            epoch_seen: 3,
            method,
        }
    }

    #[test]
    fn request_roundtrip() {
        let r = req(Method::TaskCreate(NewTask {
            prompt: "echo hi".into(),
            tags: vec!["a".into()],
            ..Default::default()
        }));
        let back = decode_request(&encode(&r)).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn unknown_method_is_told_apart() {
        #[derive(Serialize)]
        struct Weird {
            v: u32,
            id: String,
            from: String,
            epoch_seen: u64,
            method: std::collections::BTreeMap<String, u8>,
        }
        let w = Weird {
            v: 1,
            id: "abc".into(),
            from: "x".into(),
            epoch_seen: 0,
            method: [("task.frobnicate".to_string(), 1u8)].into(),
        };
        let (id, err) = decode_request(&encode(&w)).unwrap_err();
        assert_eq!(id, "abc");
        assert_eq!(err.code(), ErrorCode::UnknownMethod);
    }

    #[test]
    fn garbage_is_bad_request() {
        let (id, err) = decode_request(b"\xc1\xff garbage").unwrap_err();
        assert_eq!(id, "");
        assert_eq!(err.code(), ErrorCode::BadRequest);
    }

    #[test]
    fn oversized_is_refused_before_decoding() {
        let big = vec![0u8; MAX_FRAME_BYTES + 1];
        let (_, err) = decode_request(&big).unwrap_err();
        assert_eq!(err.code(), ErrorCode::TooLarge);
        assert_eq!(oversized_request_id(&big), "");
        let huge = req(Method::TaskCreate(NewTask {
            prompt: "x".repeat(MAX_FRAME_BYTES),
            ..Default::default()
        }));
        let bytes = encode(&huge);
        assert_eq!(
            decode_request(&bytes).unwrap_err().1.code(),
            ErrorCode::TooLarge
        );
        assert_eq!(oversized_request_id(&bytes), huge.id);
    }

    #[test]
    fn digest_tells_requests_apart() {
        let a = Method::TaskCancel { id: "a".into() };
        assert_eq!(request_digest(&a), request_digest(&a.clone()));
        assert_ne!(
            request_digest(&a),
            request_digest(&Method::TaskCancel { id: "b".into() })
        );
        assert_ne!(
            request_digest(&a),
            request_digest(&Method::TaskPause { id: "a".into() })
        );
    }

    proptest::proptest! {
        /// Whatever bytes arrive, decoding answers (Ok or a coded error) and
        /// never panics.
        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            match decode_request(&bytes) {
                Ok(r) => proptest::prop_assert!(r.id.len() <= bytes.len()),
                Err((_, e)) => proptest::prop_assert!(matches!(
                    e.code(),
                    ErrorCode::BadRequest
                        | ErrorCode::UnknownMethod
                        | ErrorCode::UnsupportedVersion
                        | ErrorCode::TooLarge
                )),
            }
        }

        /// Valid requests with bytes flipped or cut off: still no panic, and
        /// an untouched frame always decodes to the same request.
        #[test]
        fn mutated_requests_decode_without_panic(
            prompt in ".{0,64}",
            flips in proptest::collection::vec((0usize..512, proptest::num::u8::ANY), 0..8),
            cut in 0usize..512,
        ) {
            let r = req(Method::TaskCreate(NewTask { prompt, ..Default::default() }));
            let mut bytes = encode(&r);
            proptest::prop_assert_eq!(decode_request(&bytes).ok(), Some(r));
            for (at, b) in flips {
                let n = bytes.len();
                bytes[at % n] = b;
            }
            bytes.truncate(cut.max(1));
            let _ = decode_request(&bytes);
        }
    }

    #[test]
    fn error_code_names_match_serde() {
        for code in ERROR_CODES {
            let v: String = rmp_serde::from_slice(&encode(code)).unwrap();
            assert_eq!(v, code.as_str());
        }
    }
}
