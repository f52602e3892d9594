//! Drift test between the Rust wire types (`grove::protocol`) and the
//! language-neutral contract in `ipc-schema/`.
//!
//! - (a) the closed lists (methods, topics, error codes, statuses, failure
//!   reasons, exit outcomes) and the limits are the same on both sides;
//! - (b) for every record, method, reply variant and topic, the map keys that
//!   Rust writes are exactly the schema's fields, with the schema's types,
//!   nullability, requiredness and defaults;
//! - (c) every golden vector in `ipc-schema/vectors/` decodes into its Rust
//!   type and re-encodes to the identical bytes;
//! - (d) what Rust encodes reads, with a generic MessagePack decoder, as the
//!   vector's JSON view.
//!
//! The schema describes the shipped protocol: the methods of test builds
//! only (`TEST_HOOK_METHODS`, the `test-hooks` feature every test build has)
//! are left out of it and out of the samples here.
//!
//! Regenerate the vectors after an intended change with
//! `GROVE_BLESS=1 cargo test --test schema`, then review the diff.

use grove::primary_record::PrimaryRecord;
use grove::protocol::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------
// The schema, read as plain JSON.

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ipc-schema")
}

fn vectors_dir() -> PathBuf {
    schema_dir().join("vectors")
}

#[derive(Debug, Clone)]
struct Field {
    name: String,
    ty: String,
    required: bool,
    nullable: bool,
    default: Option<Value>,
}

struct Schema(Value);

impl Schema {
    fn load() -> Schema {
        let path = schema_dir().join("schema.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        Schema(serde_json::from_str(&text).expect("schema.json is valid JSON"))
    }

    fn table(&self, key: &str) -> &serde_json::Map<String, Value> {
        self.0[key]
            .as_object()
            .unwrap_or_else(|| panic!("schema.json: `{key}` must be an object"))
    }

    fn names(&self, list_key: &str) -> Vec<String> {
        self.0[list_key]
            .as_array()
            .unwrap_or_else(|| panic!("schema.json: `{list_key}` must be a list"))
            .iter()
            .map(|e| {
                e["name"]
                    .as_str()
                    .expect("a list entry has a name")
                    .to_string()
            })
            .collect()
    }

    fn enum_values(&self, enum_name: &str) -> Vec<String> {
        let list_key = self.0["enums"][enum_name]
            .as_str()
            .unwrap_or_else(|| panic!("schema.json: unknown enum {enum_name}"));
        self.names(list_key)
    }

    fn fields(list: &Value, what: &str) -> Vec<Field> {
        list.as_array()
            .unwrap_or_else(|| panic!("{what}: `fields` must be a list"))
            .iter()
            .map(|f| {
                let name = f["name"].as_str().expect("field name").to_string();
                let ctx = format!("{what}.{name}");
                Field {
                    ty: f["type"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{ctx}: type"))
                        .to_string(),
                    required: f["required"]
                        .as_bool()
                        .unwrap_or_else(|| panic!("{ctx}: required")),
                    nullable: f["nullable"]
                        .as_bool()
                        .unwrap_or_else(|| panic!("{ctx}: nullable")),
                    default: f.get("default").cloned(),
                    name,
                }
            })
            .collect()
    }

    fn record_fields(&self, record: &str) -> Vec<Field> {
        let r = &self.0["records"][record];
        assert!(r.is_object(), "schema.json: no record {record}");
        Self::fields(&r["fields"], record)
    }

    /// The fields of a shape: `{"fields": [...]}` or `{"record": "Name"}`.
    fn shape_fields(&self, shape: &Value, what: &str) -> Vec<Field> {
        match (shape.get("fields"), shape.get("record")) {
            (Some(list), None) => Self::fields(list, what),
            (None, Some(Value::String(r))) => self.record_fields(r),
            _ => panic!("{what}: a shape has exactly one of `fields` and `record`"),
        }
    }

    fn method_fields(&self, name: &str) -> Vec<Field> {
        let m = &self.0["methods"][name];
        assert!(m.is_object(), "schema.json: no method {name}");
        self.shape_fields(&m["params"], &format!("method {name}"))
    }

    fn reply_fields(&self, name: &str) -> Vec<Field> {
        let r = &self.0["replies"][name];
        assert!(r.is_object(), "schema.json: no reply variant {name}");
        self.shape_fields(r, &format!("reply {name}"))
    }

    fn topic_fields(&self, name: &str) -> Vec<Field> {
        let t = &self.0["topics"][name];
        assert!(t.is_object(), "schema.json: no topic {name}");
        self.shape_fields(t, &format!("topic {name}"))
    }

    fn variant_fields(&self, table: &str, name: &str) -> Option<Vec<Field>> {
        self.table(table).get(name)?;
        Some(match table {
            "methods" => self.method_fields(name),
            "replies" => self.reply_fields(name),
            "topics" => self.topic_fields(name),
            other => panic!("unknown variant table {other}"),
        })
    }

    /// Checks a value against a schema type (see ipc-schema/README.md).
    fn check_type(&self, ty: &str, v: &Value, path: &str) -> Result<(), String> {
        let bad = || Err(format!("{path}: expected {ty}, got {v}"));
        let inner = |prefix: &str| {
            ty.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix('>'))
        };
        let unsigned = |max: u64| match v.as_u64() {
            Some(n) if n <= max => Ok(()),
            _ => bad(),
        };
        let signed = |min: i64, max: i64| match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => Ok(()),
            _ => bad(),
        };
        match ty {
            "string" if v.is_string() => Ok(()),
            "bool" if v.is_boolean() => Ok(()),
            "f64" if v.is_number() => Ok(()),
            "string" | "bool" | "f64" => bad(),
            "u8" => unsigned(u8::MAX as u64),
            "u32" => unsigned(u32::MAX as u64),
            "u64" => unsigned(u64::MAX),
            "i32" => signed(i32::MIN as i64, i32::MAX as i64),
            "i64" => signed(i64::MIN, i64::MAX),
            _ => {
                if let Some(elem) = inner("list<") {
                    let Some(items) = v.as_array() else {
                        return bad();
                    };
                    for (i, item) in items.iter().enumerate() {
                        self.check_type(elem, item, &format!("{path}[{i}]"))?;
                    }
                    Ok(())
                } else if let Some(elem) = inner("map<") {
                    // String keys (a JSON view has no others), values of `elem`.
                    let Some(map) = v.as_object() else {
                        return bad();
                    };
                    for (k, item) in map {
                        self.check_type(elem, item, &format!("{path}[{k:?}]"))?;
                    }
                    Ok(())
                } else if let Some(e) = inner("enum<") {
                    match v.as_str() {
                        Some(s) if self.enum_values(e).iter().any(|x| x == s) => Ok(()),
                        _ => bad(),
                    }
                } else if let Some(r) = inner("record<") {
                    self.check_fields(&self.record_fields(r), v, path)
                } else if let Some(table) = inner("variant<") {
                    let Some(map) = v.as_object() else {
                        return bad();
                    };
                    if map.len() != 1 {
                        return Err(format!("{path}: a variant is a one-key map, got {v}"));
                    }
                    let (name, body) = map.iter().next().expect("one key");
                    let fields = self
                        .variant_fields(table, name)
                        .ok_or_else(|| format!("{path}: `{name}` is not in {table}"))?;
                    self.check_fields(&fields, body, &format!("{path}.{name}"))
                } else {
                    Err(format!("{path}: unknown schema type `{ty}`"))
                }
            }
        }
    }

    /// Strict: Rust writes every field, so the keys must be exactly the
    /// schema's fields.
    fn check_fields(&self, fields: &[Field], v: &Value, path: &str) -> Result<(), String> {
        let Some(map) = v.as_object() else {
            return Err(format!("{path}: expected a map, got {v}"));
        };
        let have: BTreeSet<&str> = map.keys().map(String::as_str).collect();
        let want: BTreeSet<&str> = fields.iter().map(|f| f.name.as_str()).collect();
        if have != want {
            return Err(format!(
                "{path}: Rust writes keys {have:?}, the schema lists {want:?}"
            ));
        }
        for f in fields {
            let value = &map[&f.name];
            let p = format!("{path}.{}", f.name);
            if value.is_null() {
                if !f.nullable {
                    return Err(format!("{p}: nil, but the schema says not nullable"));
                }
            } else {
                self.check_type(&f.ty, value, &p)?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Codec helpers.

/// What a generic MessagePack decoder sees: the JSON view of the bytes.
fn generic(bytes: &[u8]) -> Value {
    rmp_serde::from_slice::<Value>(bytes).expect("any msgpack map decodes generically")
}

fn view<T: Serialize>(v: &T) -> Value {
    generic(&encode(v))
}

fn pack(v: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(v).expect("JSON values encode")
}

/// Decodes into `T` and returns the re-encoded JSON view.
fn roundtrip<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<Value, String> {
    let t: T = rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?;
    Ok(view(&t))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd-length hex");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// The single key of a one-key map and its value.
fn one_key(v: &Value) -> (String, Value) {
    let map = v.as_object().expect("a variant is a map");
    assert_eq!(map.len(), 1, "a variant is a one-key map: {v}");
    let (k, body) = map.iter().next().expect("one key");
    (k.clone(), body.clone())
}

// ---------------------------------------------------------------------------
// Sample values: "full" has every optional field set, "minimal" none.

const TASK_ID: &str = "0b5e6f7a8c9d4e1f a2b3c4d5e6f70819";
const INSTANCE: &str = "3f2b8c1e-6d4a-4b7e-9a10-5c6d7e8f9a0b";
const PEER: &str = "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";
const T0: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z in Unix ms
const RUN_ID: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a0";
const SESSION_ID: &str = "sess-1";
const SESSION_CWD: &str = "/home/dev/project";

const BASE_COMMIT: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";

fn task_id() -> String {
    TASK_ID.replace(' ', "")
}

fn full_task() -> TaskRecord {
    let spec = TaskSpec {
        priority: -5,
        worktree: Some(Worktree::for_task(&task_id(), BASE_COMMIT.into())),
        ..full_new_task().with_engine_or("claude")
    };
    TaskRecord {
        status: TaskStatus::Failed,
        failure_reason: Some(FailureReason::ExitCode),
        progress_pct: Some(80),
        progress_text: Some("running tests".into()),
        exit_code: Some(-1),
        pid: Some(41_234),
        updated_at: T0 + 9_000,
        started_at: Some(T0 + 1_000),
        finished_at: Some(T0 + 9_000),
        retry_of: Some("ffeeddccbbaa99887766554433221100".into()),
        attempt: 2,
        run_id: Some(RUN_ID.into()),
        conclusion: Some(conclusion(true)),
        ..TaskRecord::new(task_id(), spec, T0)
    }
}

fn min_task() -> TaskRecord {
    TaskRecord {
        status: TaskStatus::Queued,
        ..TaskRecord::new(task_id(), min_new_task().with_engine_or("shell"), T0)
    }
}

/// Every field set (the full record's spec, but for its priority).
fn full_new_task() -> NewTask {
    NewTask {
        prompt: "cargo test --workspace".into(),
        engine: Some("claude".into()),
        model: Some("sonnet".into()),
        work_dir: Some("/home/dev/project".into()),
        persona: Some("reviewer".into()),
        dependencies: vec!["a1b2c3d4e5f60718293a4b5c6d7e8f90".into()],
        tags: vec!["ci".into(), "nightly".into()],
        priority: 3,
        timeout_ms: Some(600_000),
        session_id: Some("sess-1".into()),
        extra_args: vec!["--max-turns".into(), "5".into()],
        env: BTreeMap::from([
            ("CI".to_string(), "1".to_string()),
            ("RUST_LOG".to_string(), "debug".to_string()),
        ]),
        keep_session: true,
        permissions: Some(grove::protocol::PermissionPolicy::AllowReads),
        worktree: Some(WorktreeAsk {
            enabled: true,
            base: Some("main".into()),
        }),
        parent_id: Some("0123456789abcdef0123456789abcdef".into()),
        want_conclusion: true,
    }
}

fn min_new_task() -> NewTask {
    NewTask {
        prompt: "echo hi".into(),
        ..Default::default()
    }
}

/// A supervisor's report: "full" has every optional field set (a signal
/// death reported with an exit code too is artificial, but legal).
fn task_exit(full: bool) -> TaskExit {
    TaskExit {
        id: task_id(),
        run_id: RUN_ID.into(),
        outcome: if full {
            ExitOutcome::Timeout
        } else {
            ExitOutcome::Cancelled
        },
        exit_code: full.then_some(124),
        signal: full.then_some(15),
        message: full.then(|| "timed out after 600000 ms".into()),
        conclusion: full.then(|| conclusion(false)),
        warm: full.then_some(grove::protocol::WarmUse::Hit),
    }
}

/// A conclusion: "full" as an agent reports one, minimal as grove makes one.
fn conclusion(full: bool) -> Conclusion {
    Conclusion {
        status: if full {
            ConclusionStatus::Partial
        } else {
            ConclusionStatus::Failed
        },
        summary: "fixed 2 of 3 tests".into(),
        artifacts: full.then(|| "src/lib.rs".into()).into_iter().collect(),
        follow_up: full.then(|| "fix test_c".into()).into_iter().collect(),
        confidence: full.then_some(0.75),
        source: if full {
            ConclusionSource::Malformed
        } else {
            ConclusionSource::Synthesized
        },
        error: full.then(|| "`confidence` must be a number from 0 to 1".into()),
        progress: full.then_some(40.0),
        next_step: full.then(|| "write the tests".into()),
        blocked_reason: full.then(|| "needs a decision on the API".into()),
    }
}

/// A batch of an ACP agent's updates ("full": two of them).
fn agent_updates(full: bool) -> AgentUpdates {
    AgentUpdates {
        id: task_id(),
        run_id: RUN_ID.into(),
        batch: 7,
        updates: if full {
            vec![
                AgentUpdate {
                    kind: "agent_message_chunk".into(),
                    acp: r#"{"content":{"text":"Hello world","type":"text"},"sessionUpdate":"agent_message_chunk"}"#.into(),
                },
                AgentUpdate {
                    kind: "turn_end".into(),
                    acp: r#"{"stopReason":"end_turn"}"#.into(),
                },
            ]
        } else {
            vec![]
        },
    }
}

fn member() -> MemberInfo {
    MemberInfo {
        instance_id: PEER.into(),
        pid: 4242,
        kind: "serve".into(),
        started_at: T0 - 500,
    }
}

fn primary_info() -> PrimaryInfo {
    PrimaryInfo {
        instance_id: INSTANCE.into(),
        pid: 4100,
        epoch: 3,
        started_at: T0 - 60_000,
        uptime_ms: 59_000,
        pub_endpoint: "ipc:///run/user/1000/grove/5d41402abc4b2a76/pub-3.sock".into(),
        rpc_endpoint: "ipc:///run/user/1000/grove/5d41402abc4b2a76/rpc-3.sock".into(),
        last_seq: 17,
        longest_poll_us: 840,
        commits: 12,
        writes_committed: 40,
        wal_pages: 95,
        wal_syncs: 3,
    }
}

/// One sample of every method of the shipped protocol. A new `Method`
/// variant fails to compile in `method_guard` until it is added here and to
/// the schema.
fn methods(full: bool) -> Vec<Method> {
    vec![
        Method::Ping {},
        Method::Hello(member()),
        Method::TaskCreate(if full {
            full_new_task()
        } else {
            min_new_task()
        }),
        Method::TaskSetProgress {
            id: task_id(),
            percent: full.then_some(42),
            text: full.then(|| "halfway".into()),
        },
        Method::TaskUpdateStatus {
            id: task_id(),
            status: TaskStatus::Failed,
            reason: full.then_some(FailureReason::Timeout),
            exit_code: full.then_some(137),
            pid: full.then_some(41_234),
        },
        Method::TaskDelete {
            id: task_id(),
            force: full,
        },
        Method::TaskCancel { id: task_id() },
        Method::TaskPause { id: task_id() },
        Method::TaskResume {
            id: task_id(),
            instructions: full.then(|| "also run clippy".into()),
            changes: if full {
                TaskChanges {
                    model: Some("opus".into()),
                    timeout_ms: Some(60_000),
                    tags: Some(vec!["ci".into()]),
                    ..Default::default()
                }
            } else {
                TaskChanges::default()
            },
        },
        Method::TaskRetry { id: task_id() },
        Method::TaskRelaunch {
            id: task_id(),
            instructions: full.then(|| "address the review comments".into()),
            changes: if full {
                TaskChanges {
                    prompt: Some("cargo test -p grove".into()),
                    engine: Some("claude".into()),
                    model: Some("opus".into()),
                    timeout_ms: Some(60_000),
                    tags: Some(vec![]),
                }
            } else {
                TaskChanges::default()
            },
        },
        Method::TaskConclude {
            id: task_id(),
            conclusion: conclusion(full),
        },
        Method::TaskAwait(await_spec(full)),
        Method::TaskAwaitCancel {
            parent_id: task_id(),
        },
        Method::TaskLendSlot {
            id: task_id(),
            run_id: RUN_ID.into(),
            waiter: "5b1e0c9d7a2f4e3b8c6d1a0f9e8d7c6b".into(),
            lend: true,
        },
        Method::GoalCreate(goal_spec(full)),
        Method::TaskPurge { id: task_id() },
        Method::TaskFinished(task_exit(full)),
        Method::TaskAgentUpdates(agent_updates(full)),
        Method::TaskControl(TaskControl {
            id: task_id(),
            kind: ControlKind::Approve,
            option: full.then(|| "allow".into()),
            text: full.then(|| "also run the tests".into()),
            ask: full.then_some(3),
        }),
        Method::SessionCreate {
            id: SESSION_ID.into(),
            cwd: SESSION_CWD.into(),
        },
    ]
}

fn method_guard(m: &Method) -> &'static str {
    match m {
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
        Method::TaskConclude { .. } => "task.conclude",
        Method::TaskAwait(_) => "task.await",
        Method::TaskAwaitCancel { .. } => "task.await_cancel",
        Method::TaskLendSlot { .. } => "task.lend_slot",
        Method::GoalCreate(_) => "goal.create",
        Method::TaskPurge { .. } => "task.purge",
        Method::TaskFinished(_) => "task.finished",
        Method::TaskAgentUpdates(_) => "task.agent_updates",
        Method::TaskControl(_) => "task.control",
        Method::SessionCreate { .. } => "session.create",
        // A test hook: not in the schema, so not sampled (see the module doc).
        #[cfg(feature = "test-hooks")]
        Method::DebugStall { .. } => "debug.stall",
    }
}

fn replies(full: bool) -> Vec<ReplyBody> {
    vec![
        ReplyBody::Pong(primary_info()),
        ReplyBody::Welcome {
            epoch: 3,
            last_seq: 18,
        },
        ReplyBody::Task(Box::new(if full { full_task() } else { min_task() })),
        ReplyBody::Deleted { id: task_id() },
        ReplyBody::Done {},
        ReplyBody::Await(Box::new(await_record(full))),
        ReplyBody::Goal(Box::new(goal_record(full))),
    ]
}

fn goal_spec(full: bool) -> GoalSpec {
    GoalSpec {
        task: if full {
            full_new_task()
        } else {
            min_new_task()
        },
        max_iterations: 20,
        max_duration_ms: 3_600_000,
        stall_after: 3,
    }
}

fn goal_record(full: bool) -> GoalRecord {
    GoalRecord {
        id: task_id(),
        objective: "make every test pass".into(),
        status: if full {
            GoalStatus::Blocked
        } else {
            GoalStatus::Running
        },
        iteration: if full { 4 } else { 1 },
        max_iterations: 20,
        max_duration_ms: 3_600_000,
        stall_after: 3,
        stalls: u32::from(full),
        session: full,
        progress: full.then_some(62.5),
        response: full.then(|| "the deploy step needs a key".into()),
        next_step: full.then(|| "deploy".into()),
        blocked_reason: full.then(|| "need the deploy key".into()),
        created_at: 1_700_000_000_000,
        deadline: 1_700_003_600_000,
        finished_at: full.then_some(1_700_000_900_000),
    }
}

fn await_spec(full: bool) -> AwaitSpec {
    AwaitSpec {
        parent_id: task_id(),
        children: if full { vec![task_id()] } else { vec![] },
        policy: if full {
            AwaitPolicy::Quorum
        } else {
            AwaitPolicy::All
        },
        quorum: full.then_some(1),
        timeout_ms: full.then_some(60_000),
    }
}

fn await_record(full: bool) -> AwaitRecord {
    AwaitRecord {
        id: "0123456789abcdef0123456789abcdef".into(),
        parent_id: task_id(),
        children: vec![task_id()],
        policy: AwaitPolicy::Any,
        quorum: 1,
        created_at: 1_700_000_000_000,
        deadline: 1_700_003_600_000,
        state: if full {
            AwaitState::Satisfied
        } else {
            AwaitState::Pending
        },
        settled_at: full.then_some(1_700_000_100_000),
    }
}

fn reply_guard(b: &ReplyBody) -> &'static str {
    match b {
        ReplyBody::Pong(_) => "pong",
        ReplyBody::Welcome { .. } => "welcome",
        ReplyBody::Task(_) => "task",
        ReplyBody::Deleted { .. } => "deleted",
        ReplyBody::Done {} => "done",
        ReplyBody::Await(_) => "await",
        ReplyBody::Goal(_) => "goal",
    }
}

fn events(full: bool) -> Vec<EventData> {
    let task = if full { full_task() } else { min_task() };
    vec![
        EventData::TaskCreated { task: task.clone() },
        EventData::TaskUpdated { task },
        EventData::TaskDeleted { id: task_id() },
        EventData::TaskOutput {
            id: task_id(),
            chunk: "test result: ok. 12 passed\n".into(),
        },
        EventData::InstanceJoined {
            member: member(),
            epoch: 3,
        },
        EventData::Heartbeat {
            instance_id: INSTANCE.into(),
            last_seq: 17,
            uptime_ms: 59_000,
        },
        EventData::Promoted {
            instance_id: INSTANCE.into(),
            pid: 4100,
            epoch: 3,
        },
        EventData::Shutdown {
            instance_id: INSTANCE.into(),
            epoch: 3,
        },
        EventData::SessionCreated {
            id: SESSION_ID.into(),
            cwd: SESSION_CWD.into(),
        },
        EventData::TaskAgentUpdate {
            id: task_id(),
            run_id: RUN_ID.into(),
            kind: "tool_call".into(),
            acp: r#"{"kind":"edit","sessionUpdate":"tool_call","status":"pending","title":"Write f.txt","toolCallId":"t1"}"#.into(),
        },
        EventData::TaskControlled {
            id: task_id(),
            run_id: RUN_ID.into(),
            kind: ControlKind::Deny,
            option: full.then(|| "reject".into()),
            text: full.then(|| "also run the tests".into()),
            ask: full.then_some(3),
        },
        EventData::GoalUpdated {
            goal: goal_record(full),
        },
        EventData::TaskSlot {
            id: task_id(),
            run_id: RUN_ID.into(),
            lent: true,
        },
    ]
}

fn topic_guard(e: &EventData) -> &'static str {
    match e {
        EventData::TaskCreated { .. } => "task.created",
        EventData::TaskUpdated { .. } => "task.updated",
        EventData::TaskDeleted { .. } => "task.deleted",
        EventData::TaskOutput { .. } => "task.output",
        EventData::InstanceJoined { .. } => "instance.joined",
        EventData::Heartbeat { .. } => "instance.heartbeat",
        EventData::Promoted { .. } => "instance.promoted",
        EventData::Shutdown { .. } => "instance.shutdown",
        EventData::SessionCreated { .. } => "session.created",
        EventData::TaskAgentUpdate { .. } => "task.agent_update",
        EventData::TaskControlled { .. } => "task.control",
        EventData::GoalUpdated { .. } => "goal.updated",
        EventData::TaskSlot { .. } => "task.slot",
    }
}

/// Every error code; a new variant fails to compile in the match.
fn all_error_codes() -> Vec<ErrorCode> {
    use ErrorCode::*;
    let all = vec![
        BadRequest,
        UnknownMethod,
        InvalidParams,
        NotFound,
        Conflict,
        TooLarge,
        IdempotencyConflict,
        StaleEpoch,
        UnsupportedVersion,
        Unavailable,
        Internal,
    ];
    for c in &all {
        match c {
            BadRequest | UnknownMethod | InvalidParams | NotFound | Conflict | TooLarge
            | IdempotencyConflict | StaleEpoch | UnsupportedVersion | Unavailable | Internal => {}
        }
    }
    all
}

fn all_statuses() -> Vec<TaskStatus> {
    use TaskStatus::*;
    let all = vec![
        Pending, Queued, Running, Waiting, Idle, Paused, Completed, Failed, Cancelled,
    ];
    for s in &all {
        match s {
            Pending | Queued | Running | Waiting | Idle | Paused | Completed | Failed
            | Cancelled => {}
        }
    }
    all
}

fn all_failure_reasons() -> Vec<FailureReason> {
    use FailureReason::*;
    let all = vec![
        ExitCode,
        Timeout,
        SpawnError,
        DependencyFailed,
        Lost,
        Refusal,
        MaxTokens,
        MaxTurnRequests,
        AgentError,
    ];
    for r in &all {
        match r {
            ExitCode | Timeout | SpawnError | DependencyFailed | Lost | Refusal | MaxTokens
            | MaxTurnRequests | AgentError => {}
        }
    }
    all
}

/// Every exit outcome; a new variant fails to compile in the match.
fn all_exit_outcomes() -> Vec<ExitOutcome> {
    use ExitOutcome::*;
    let all = vec![
        Exited,
        Timeout,
        Cancelled,
        SpawnError,
        EndTurn,
        Refusal,
        MaxTokens,
        MaxTurnRequests,
        AgentError,
    ];
    for o in &all {
        match o {
            Exited | Timeout | Cancelled | SpawnError | EndTurn | Refusal | MaxTokens
            | MaxTurnRequests | AgentError => {}
        }
    }
    all
}

fn request(id: &str, method: Method) -> Request {
    Request {
        v: PROTOCOL_VERSION,
        id: id.into(),
        from: PEER.into(),
        epoch_seen: 3,
        method,
    }
}

fn event(seq: u64, data: EventData) -> Event {
    Event::new(if data.is_durable() { seq } else { 0 }, 3, T0 + seq, data)
}

/// Serde's unit-variant name of a plain enum value.
fn wire_name<T: Serialize>(v: &T) -> String {
    view(v)
        .as_str()
        .expect("a unit variant is a string")
        .to_string()
}

// ---------------------------------------------------------------------------
// (a) The closed lists and the limits.

#[test]
fn lists_and_limits_match() {
    let s = Schema::load();
    assert_eq!(s.0["schema_format"], "grove-ipc-schema/1");
    assert_eq!(s.0["encoding"], "msgpack-named");
    assert_eq!(s.0["protocol_version"], json!(PROTOCOL_VERSION));
    assert_eq!(s.0["max_frame_bytes"], json!(MAX_FRAME_BYTES));
    assert_eq!(s.0["max_request_id_len"], json!(MAX_REQUEST_ID_LEN));

    // Methods: protocol.rs list (without the test hooks) == schema == the
    // samples covered here.
    let shipped: Vec<&str> = METHOD_NAMES
        .iter()
        .copied()
        .filter(|m| !TEST_HOOK_METHODS.contains(m))
        .collect();
    let rust: BTreeSet<&str> = shipped.iter().copied().collect();
    assert_eq!(rust.len(), shipped.len(), "METHOD_NAMES has duplicates");
    let schema: BTreeSet<&str> = s.table("methods").keys().map(String::as_str).collect();
    assert_eq!(rust, schema, "METHOD_NAMES vs schema.json methods");
    let samples: BTreeSet<&str> = methods(true).iter().map(method_guard).collect();
    assert_eq!(rust, samples, "tests/schema.rs samples vs METHOD_NAMES");
    for m in methods(true) {
        assert_eq!(m.name(), method_guard(&m));
        assert_eq!(one_key(&view(&m)).0, m.name(), "wire name of {m:?}");
        let entry = &s.0["methods"][m.name()];
        // Only ping bypasses the store and its ledger (node/primary.rs);
        // protocol.rs has no predicate for it.
        let ledgered = !matches!(m, Method::Ping {});
        assert_eq!(
            entry["write"],
            json!(ledgered),
            "methods.{}.write",
            m.name()
        );
        let reply = entry["reply"].as_str().expect("methods.*.reply");
        assert!(
            s.table("replies").contains_key(reply),
            "unknown reply {reply}"
        );
        let others = entry["other_replies"]
            .as_array()
            .unwrap_or_else(|| panic!("methods.{}.other_replies is a list", m.name()));
        for other in others {
            let other = other.as_str().expect("a reply variant name");
            assert!(
                s.table("replies").contains_key(other) && other != reply,
                "methods.{}.other_replies: {other} is unknown or the main reply",
                m.name()
            );
        }
        for code in entry["errors"].as_array().expect("methods.*.errors") {
            let code = code.as_str().expect("an error code");
            assert!(
                s.names("error_codes").iter().any(|c| c == code),
                "methods.{}.errors: unknown code {code}",
                m.name()
            );
        }
    }

    // Topics.
    let rust: BTreeSet<&str> = TOPICS.iter().copied().collect();
    assert_eq!(rust.len(), TOPICS.len(), "TOPICS has duplicates");
    let schema: BTreeSet<&str> = s.table("topics").keys().map(String::as_str).collect();
    assert_eq!(rust, schema, "TOPICS vs schema.json topics");
    let samples: BTreeSet<&str> = events(true).iter().map(topic_guard).collect();
    assert_eq!(rust, samples, "tests/schema.rs samples vs TOPICS");
    for e in events(true) {
        assert_eq!(e.topic(), topic_guard(&e));
        assert_eq!(one_key(&view(&e)).0, e.topic(), "wire name of {e:?}");
        assert_eq!(
            s.0["topics"][e.topic()]["durable"],
            json!(e.is_durable()),
            "topics.{}.durable",
            e.topic()
        );
    }

    // Reply variants (no list in protocol.rs: the guard is the list).
    let rust: BTreeSet<&str> = replies(true).iter().map(reply_guard).collect();
    let schema: BTreeSet<&str> = s.table("replies").keys().map(String::as_str).collect();
    assert_eq!(rust, schema, "ReplyBody variants vs schema.json replies");
    for b in replies(true) {
        assert_eq!(one_key(&view(&b)).0, reply_guard(&b), "wire name of {b:?}");
    }

    // Error codes, in order.
    let rust: Vec<String> = ERROR_CODES.iter().map(|c| c.as_str().to_string()).collect();
    assert_eq!(rust, s.names("error_codes"), "ERROR_CODES vs schema.json");
    let every: Vec<String> = all_error_codes().iter().map(wire_name).collect();
    assert_eq!(every, rust, "every ErrorCode variant is in ERROR_CODES");

    // Task statuses, in order, with their terminal flag.
    let rust: Vec<String> = TASK_STATUSES
        .iter()
        .map(|t| t.as_str().to_string())
        .collect();
    assert_eq!(
        rust,
        s.names("task_statuses"),
        "TASK_STATUSES vs schema.json"
    );
    let every: Vec<String> = all_statuses().iter().map(wire_name).collect();
    assert_eq!(every, rust, "every TaskStatus variant is in TASK_STATUSES");
    for (t, entry) in TASK_STATUSES
        .iter()
        .zip(s.0["task_statuses"].as_array().unwrap())
    {
        assert_eq!(entry["terminal"], json!(t.is_terminal()), "{}", t.as_str());
        assert_eq!(TaskStatus::parse(t.as_str()), Some(*t));
    }

    // Failure reasons.
    let every: Vec<String> = all_failure_reasons().iter().map(wire_name).collect();
    assert_eq!(
        every,
        s.names("failure_reasons"),
        "FailureReason vs schema.json"
    );
    for r in all_failure_reasons() {
        assert_eq!(wire_name(&r), r.as_str());
        assert_eq!(FailureReason::parse(r.as_str()), Some(r));
    }

    // Exit outcomes (protocol.rs has no list: the guard is the list).
    let every: Vec<String> = all_exit_outcomes().iter().map(wire_name).collect();
    assert_eq!(
        every,
        s.names("exit_outcomes"),
        "ExitOutcome vs schema.json exit_outcomes"
    );
    for o in all_exit_outcomes() {
        let back: ExitOutcome = decode(&encode(&o)).unwrap();
        assert_eq!(back, o);
    }

    // Control kinds (the guard is the list).
    let every: Vec<String> = [
        ControlKind::Approve,
        ControlKind::Deny,
        ControlKind::Say,
        ControlKind::Mode,
        ControlKind::Close,
        ControlKind::Interrupt,
    ]
    .iter()
    .map(|k| {
        match k {
            ControlKind::Approve
            | ControlKind::Deny
            | ControlKind::Say
            | ControlKind::Mode
            | ControlKind::Close
            | ControlKind::Interrupt => {}
        }
        wire_name(k)
    })
    .collect();
    assert_eq!(
        every,
        s.names("control_kinds"),
        "ControlKind vs schema.json control_kinds"
    );

    // Warm uses: the list is WarmUse::NAMES.
    assert_eq!(
        grove::protocol::WarmUse::NAMES.to_vec(),
        s.names("warm_uses"),
        "WarmUse vs schema.json warm_uses"
    );
    for w in [
        grove::protocol::WarmUse::Hit,
        grove::protocol::WarmUse::Started,
        grove::protocol::WarmUse::CapReached,
        grove::protocol::WarmUse::NoTarget,
        grove::protocol::WarmUse::Failed,
    ] {
        assert!(grove::protocol::WarmUse::NAMES.contains(&wire_name(&w).as_str()));
    }

    // Permission policies: the list is PermissionPolicy::NAMES.
    assert_eq!(
        PermissionPolicy::NAMES.to_vec(),
        s.names("permission_policies"),
        "PermissionPolicy vs schema.json permission_policies"
    );
    for name in PermissionPolicy::NAMES {
        let p = PermissionPolicy::parse(name).unwrap();
        assert_eq!(wire_name(&p), *name);
        assert_eq!(p.as_str(), *name);
    }

    // Await policies and states: the lists are the constants.
    assert_eq!(
        AWAIT_POLICIES.iter().map(wire_name).collect::<Vec<_>>(),
        s.names("await_policies"),
        "AwaitPolicy vs schema.json await_policies"
    );
    assert_eq!(
        AWAIT_STATES.iter().map(wire_name).collect::<Vec<_>>(),
        s.names("await_states"),
        "AwaitState vs schema.json await_states"
    );
    for p in AWAIT_POLICIES {
        match p {
            AwaitPolicy::All | AwaitPolicy::Any | AwaitPolicy::Quorum => {}
        }
        assert_eq!(AwaitPolicy::parse(p.as_str()), Some(*p));
    }
    for st in AWAIT_STATES {
        match st {
            AwaitState::Pending
            | AwaitState::Satisfied
            | AwaitState::Expired
            | AwaitState::Cancelled
            | AwaitState::Replaced
            | AwaitState::Dropped => {}
        }
        assert_eq!(AwaitState::parse(st.as_str()), Some(*st));
    }
    assert_eq!(
        GOAL_STATUSES.iter().map(wire_name).collect::<Vec<_>>(),
        s.names("goal_statuses"),
        "GoalStatus vs schema.json goal_statuses"
    );
    for g in GOAL_STATUSES {
        match g {
            GoalStatus::Running
            | GoalStatus::Completed
            | GoalStatus::Blocked
            | GoalStatus::Stalled
            | GoalStatus::Timeout
            | GoalStatus::Failed
            | GoalStatus::Cancelled => {}
        }
        assert_eq!(GoalStatus::parse(g.as_str()), Some(*g));
    }

    // The enums table points at the lists above.
    let enums: BTreeMap<&str, &str> = s
        .table("enums")
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().expect("enums.* is a list key")))
        .collect();
    assert_eq!(
        enums,
        BTreeMap::from([
            ("ConclusionSource", "conclusion_sources"),
            ("ConclusionStatus", "conclusion_statuses"),
            ("AwaitPolicy", "await_policies"),
            ("AwaitState", "await_states"),
            ("ControlKind", "control_kinds"),
            ("ErrorCode", "error_codes"),
            ("ExitOutcome", "exit_outcomes"),
            ("FailureReason", "failure_reasons"),
            ("PermissionPolicy", "permission_policies"),
            ("TaskStatus", "task_statuses"),
            ("WarmUse", "warm_uses"),
            ("GoalStatus", "goal_statuses"),
        ])
    );
}

/// Every field declaration is well formed: a known type, and a default
/// exactly when the field is not required.
#[test]
fn schema_is_self_consistent() {
    let s = Schema::load();
    let mut all: Vec<(String, Field)> = Vec::new();
    for name in s.table("records").keys() {
        all.extend(s.record_fields(name).into_iter().map(|f| (name.clone(), f)));
    }
    for name in s.table("methods").keys() {
        all.extend(s.method_fields(name).into_iter().map(|f| (name.clone(), f)));
    }
    for name in s.table("replies").keys() {
        all.extend(s.reply_fields(name).into_iter().map(|f| (name.clone(), f)));
    }
    for name in s.table("topics").keys() {
        all.extend(s.topic_fields(name).into_iter().map(|f| (name.clone(), f)));
    }
    for (owner, f) in &all {
        let at = format!("{owner}.{}", f.name);
        assert_eq!(
            f.required,
            f.default.is_none(),
            "{at}: a field has a default exactly when it is not required"
        );
        if let Some(d) = &f.default {
            if d.is_null() {
                assert!(f.nullable, "{at}: default nil on a non-nullable field");
            } else {
                s.check_type(&f.ty, d, &at).unwrap();
            }
        }
        // The type parses (checked on a value that cannot match, so the
        // error must be a mismatch, not an unknown type).
        let err = s.check_type(&f.ty, &json!({"x": true, "y": true}), &at);
        if let Err(e) = err {
            assert!(!e.contains("unknown schema type"), "{e}");
            assert!(!e.contains("is not in"), "{e}");
        }
    }
}

// ---------------------------------------------------------------------------
// (b) Field sets, types, nullability, requiredness and defaults.

/// Where a shape lives in a whole message, and which Rust type decodes it.
#[derive(Clone)]
enum Target {
    Record(&'static str),
    Method(String),
    Reply(String),
    Topic(String),
}

impl Target {
    fn label(&self) -> String {
        match self {
            Target::Record(r) => format!("record {r}"),
            Target::Method(m) => format!("method {m}"),
            Target::Reply(r) => format!("reply {r}"),
            Target::Topic(t) => format!("topic {t}"),
        }
    }

    fn fields(&self, s: &Schema) -> Vec<Field> {
        match self {
            Target::Record(r) => s.record_fields(r),
            Target::Method(m) => s.method_fields(m),
            Target::Reply(r) => s.reply_fields(r),
            Target::Topic(t) => s.topic_fields(t),
        }
    }

    /// Builds a whole message around the shape's map.
    fn wrap(&self, shape: Value) -> Value {
        match self {
            Target::Record(_) => shape,
            Target::Method(m) => json!({
                "v": PROTOCOL_VERSION, "id": "r-1", "from": PEER, "epoch_seen": 0,
                "method": { m.as_str(): shape },
            }),
            Target::Reply(r) => json!({
                "v": PROTOCOL_VERSION, "id": "r-1", "epoch": 1,
                "ok": { r.as_str(): shape }, "err": null,
            }),
            Target::Topic(t) => json!({
                "seq": 1, "epoch": 1, "at": T0, "data": { t.as_str(): shape },
            }),
        }
    }

    /// Decodes a whole message with the Rust type; returns the shape's map
    /// as Rust re-encodes it.
    fn decode(&self, bytes: &[u8]) -> Result<Value, String> {
        match self {
            Target::Record(r) => match *r {
                "Request" => roundtrip::<Request>(bytes),
                "Reply" => roundtrip::<Reply>(bytes),
                "WireError" => roundtrip::<WireError>(bytes),
                "Event" => roundtrip::<Event>(bytes),
                "PrimaryInfo" => roundtrip::<PrimaryInfo>(bytes),
                "MemberInfo" => roundtrip::<MemberInfo>(bytes),
                "NewTask" => roundtrip::<NewTask>(bytes),
                "TaskRecord" => roundtrip::<TaskRecord>(bytes),
                "TaskExit" => roundtrip::<TaskExit>(bytes),
                "AgentUpdates" => roundtrip::<AgentUpdates>(bytes),
                "AgentUpdate" => roundtrip::<AgentUpdate>(bytes),
                "TaskControl" => roundtrip::<TaskControl>(bytes),
                "Worktree" => roundtrip::<Worktree>(bytes),
                "WorktreeAsk" => roundtrip::<WorktreeAsk>(bytes),
                "TaskChanges" => roundtrip::<TaskChanges>(bytes),
                "Conclusion" => roundtrip::<Conclusion>(bytes),
                "AwaitSpec" => roundtrip::<AwaitSpec>(bytes),
                "AwaitRecord" => roundtrip::<AwaitRecord>(bytes),
                "GoalSpec" => roundtrip::<GoalSpec>(bytes),
                "GoalRecord" => roundtrip::<GoalRecord>(bytes),
                other => panic!("no Rust type for record {other}"),
            },
            Target::Method(m) => Ok(roundtrip::<Request>(bytes)?["method"][m].clone()),
            Target::Reply(r) => Ok(roundtrip::<Reply>(bytes)?["ok"][r].clone()),
            Target::Topic(t) => Ok(roundtrip::<Event>(bytes)?["data"][t].clone()),
        }
    }
}

/// A shape with the map Rust writes for a full and for a minimal value.
struct Case {
    target: Target,
    full: Value,
    minimal: Value,
}

fn cases() -> Vec<Case> {
    let rec = |name: &'static str, full: Value, minimal: Value| Case {
        target: Target::Record(name),
        full,
        minimal,
    };
    let ok = Reply::ok("r-1".into(), 3, ReplyBody::Done {});
    let err = Reply::err(
        "r-1".into(),
        3,
        WireError::new(ErrorCode::NotFound, "no task x"),
    );
    let ev = event(5, EventData::TaskDeleted { id: task_id() });
    let req = request(
        "r-1",
        Method::TaskDelete {
            id: task_id(),
            force: false,
        },
    );
    let mut out = vec![
        rec("TaskRecord", view(&full_task()), view(&min_task())),
        rec("NewTask", view(&full_new_task()), view(&min_new_task())),
        rec("TaskExit", view(&task_exit(true)), view(&task_exit(false))),
        rec(
            "Worktree",
            view(&Worktree::for_task(&task_id(), BASE_COMMIT.into())),
            view(&Worktree::for_task(&task_id(), BASE_COMMIT.into())),
        ),
        rec(
            "WorktreeAsk",
            view(&WorktreeAsk {
                enabled: true,
                base: Some("main".into()),
            }),
            view(&WorktreeAsk {
                enabled: false,
                base: None,
            }),
        ),
        rec(
            "Conclusion",
            view(&conclusion(true)),
            view(&conclusion(false)),
        ),
        rec(
            "AwaitSpec",
            view(&await_spec(true)),
            view(&await_spec(false)),
        ),
        rec(
            "AwaitRecord",
            view(&await_record(true)),
            view(&await_record(false)),
        ),
        rec("GoalSpec", view(&goal_spec(true)), view(&goal_spec(false))),
        rec(
            "GoalRecord",
            view(&goal_record(true)),
            view(&goal_record(false)),
        ),
        rec(
            "TaskChanges",
            view(&TaskChanges {
                prompt: Some("p".into()),
                engine: Some("shell".into()),
                model: Some("m".into()),
                timeout_ms: Some(1),
                tags: Some(vec!["t".into()]),
            }),
            view(&TaskChanges::default()),
        ),
        rec(
            "TaskControl",
            view(&TaskControl {
                id: task_id(),
                kind: ControlKind::Say,
                option: Some("reject".into()),
                text: Some("also run the tests".into()),
                ask: Some(3),
            }),
            view(&TaskControl {
                id: task_id(),
                kind: ControlKind::Approve,
                option: None,
                text: None,
                ask: None,
            }),
        ),
        rec(
            "AgentUpdates",
            view(&agent_updates(true)),
            view(&agent_updates(false)),
        ),
        rec(
            "AgentUpdate",
            view(&agent_updates(true).updates[0]),
            view(&agent_updates(true).updates[1]),
        ),
        rec("MemberInfo", view(&member()), view(&member())),
        rec("PrimaryInfo", view(&primary_info()), view(&primary_info())),
        rec(
            "WireError",
            view(&WireError::new(ErrorCode::Conflict, "x")),
            view(&WireError::new(ErrorCode::Conflict, "x")),
        ),
        rec("Request", view(&req), view(&req)),
        rec("Event", view(&ev), view(&ev)),
    ];
    // A Reply has one of ok/err nil: "full" is checked once per side.
    out.push(rec("Reply", view(&ok), view(&err)));
    out.push(rec("Reply", view(&err), view(&ok)));
    for (full, minimal) in methods(true).into_iter().zip(methods(false)) {
        let (name, f) = one_key(&view(&full));
        let (_, m) = one_key(&view(&minimal));
        out.push(Case {
            target: Target::Method(name),
            full: f,
            minimal: m,
        });
    }
    for (full, minimal) in replies(true).into_iter().zip(replies(false)) {
        let (name, f) = one_key(&view(&full));
        let (_, m) = one_key(&view(&minimal));
        out.push(Case {
            target: Target::Reply(name),
            full: f,
            minimal: m,
        });
    }
    for (full, minimal) in events(true).into_iter().zip(events(false)) {
        let (name, f) = one_key(&view(&full));
        let (_, m) = one_key(&view(&minimal));
        out.push(Case {
            target: Target::Topic(name),
            full: f,
            minimal: m,
        });
    }
    out
}

#[test]
fn every_record_is_covered() {
    let s = Schema::load();
    let covered: BTreeSet<&str> = cases()
        .iter()
        .filter_map(|c| match c.target {
            Target::Record(r) => Some(r),
            _ => None,
        })
        .collect();
    let schema: BTreeSet<&str> = s.table("records").keys().map(String::as_str).collect();
    assert_eq!(
        covered, schema,
        "records checked here vs schema.json records"
    );
}

#[test]
fn field_sets_and_types_match() {
    let s = Schema::load();
    let mut failures = Vec::new();
    for case in cases() {
        let label = case.target.label();
        let fields = case.target.fields(&s);
        // Keys and types, for both values.
        for (which, v) in [("full", &case.full), ("minimal", &case.minimal)] {
            if let Err(e) = s.check_fields(&fields, v, &format!("{label} ({which})")) {
                failures.push(e);
            }
        }
        // Nullability: the minimal value is nil exactly where the schema
        // says nullable (Option in Rust), except Reply's one set side.
        let nulls = |v: &Value| -> BTreeSet<String> {
            v.as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(_, x)| x.is_null())
                        .map(|(k, _)| k.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        let nullable: BTreeSet<String> = fields
            .iter()
            .filter(|f| f.nullable)
            .map(|f| f.name.clone())
            .collect();
        let full_nulls = nulls(&case.full);
        let min_nulls = nulls(&case.minimal);
        let reply = matches!(case.target, Target::Record("Reply"));
        if !reply && !full_nulls.is_empty() {
            failures.push(format!(
                "{label}: the full sample has nil fields {full_nulls:?}"
            ));
        }
        if !reply && min_nulls != nullable {
            failures.push(format!(
                "{label}: Rust Option fields {min_nulls:?} vs schema nullable {nullable:?}"
            ));
        }
        if reply {
            let union: BTreeSet<String> = full_nulls.union(&min_nulls).cloned().collect();
            if union != nullable {
                failures.push(format!(
                    "{label}: Rust Option fields {union:?} vs schema nullable {nullable:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "schema drift:\n{}",
        failures.join("\n")
    );
}

#[test]
fn requiredness_and_defaults_match() {
    let s = Schema::load();
    let mut failures = Vec::new();
    for case in cases() {
        let label = case.target.label();
        let fields = case.target.fields(&s);
        let base = case.full.as_object().expect("a map").clone();
        // The untouched message decodes.
        if let Err(e) = case
            .target
            .decode(&pack(&case.target.wrap(case.full.clone())))
        {
            failures.push(format!("{label}: the full sample does not decode: {e}"));
            continue;
        }
        for f in &fields {
            let at = format!("{label}.{}", f.name);
            let mut without = base.clone();
            without.remove(&f.name);
            let decoded = case
                .target
                .decode(&pack(&case.target.wrap(Value::Object(without))));
            match (f.required, decoded) {
                (true, Ok(_)) => failures.push(format!(
                    "{at}: the schema says required, but Rust accepts it absent"
                )),
                (false, Err(e)) => failures.push(format!(
                    "{at}: the schema says optional, but Rust refuses it absent: {e}"
                )),
                (false, Ok(v)) => {
                    let default = f.default.clone().unwrap_or(Value::Null);
                    if v[&f.name] != default {
                        failures.push(format!(
                            "{at}: absent reads as {} in Rust, the schema's default is {default}",
                            v[&f.name]
                        ));
                    }
                }
                (true, Err(_)) => {}
            }
            // nil is accepted exactly on nullable fields.
            let mut nil = base.clone();
            nil.insert(f.name.clone(), Value::Null);
            let decoded = case
                .target
                .decode(&pack(&case.target.wrap(Value::Object(nil))));
            match (f.nullable, decoded) {
                (true, Err(e)) => failures.push(format!(
                    "{at}: nullable in the schema, Rust refuses nil: {e}"
                )),
                (false, Ok(_)) => failures.push(format!(
                    "{at}: not nullable in the schema, but Rust accepts nil"
                )),
                _ => {}
            }
        }
        // The type's exact domain: boundaries of integer widths, enum
        // values, wrong kinds.
        for f in &fields {
            for (probe, accept) in probes(&s, &f.ty) {
                let mut m = base.clone();
                m.insert(f.name.clone(), probe.clone());
                let decoded = case
                    .target
                    .decode(&pack(&case.target.wrap(Value::Object(m))));
                match (accept, decoded) {
                    (true, Err(e)) => failures.push(format!(
                        "{label}.{}: {} should be a valid {} but Rust refuses it: {e}",
                        f.name, probe, f.ty
                    )),
                    (false, Ok(_)) => failures.push(format!(
                        "{label}.{}: {} is not a valid {} but Rust accepts it",
                        f.name, probe, f.ty
                    )),
                    _ => {}
                }
            }
        }
        // Unknown keys are ignored (forward compatibility).
        let mut extra = base.clone();
        extra.insert("x_future_field".into(), json!([1, "two"]));
        match case
            .target
            .decode(&pack(&case.target.wrap(Value::Object(extra))))
        {
            Ok(v) if v == case.full => {}
            Ok(v) => failures.push(format!("{label}: an unknown key changed the value: {v}")),
            Err(e) => failures.push(format!("{label}: an unknown key is refused: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "schema drift:\n{}",
        failures.join("\n")
    );
}

/// Values that a field of type `ty` must accept (true) or refuse (false).
fn probes(s: &Schema, ty: &str) -> Vec<(Value, bool)> {
    let wrong_kind = (json!({"not": "this"}), false);
    match ty {
        "string" => vec![(json!(""), true), (json!(1), false), wrong_kind],
        "bool" => vec![(json!(true), true), (json!(1), false)],
        "f64" => vec![(json!(0.5), true), (json!("0.5"), false)],
        "u8" => vec![
            (json!(u8::MAX), true),
            (json!(256), false),
            (json!(-1), false),
        ],
        "u32" => vec![
            (json!(u32::MAX), true),
            (json!(u32::MAX as u64 + 1), false),
            (json!(-1), false),
        ],
        "u64" => vec![
            (json!(u64::MAX), true),
            (json!(-1), false),
            (json!("1"), false),
        ],
        "i32" => vec![
            (json!(i32::MIN), true),
            (json!(i32::MAX), true),
            (json!(i32::MIN as i64 - 1), false),
            (json!(i32::MAX as i64 + 1), false),
        ],
        "i64" => vec![
            (json!(i64::MIN), true),
            (json!(i64::MAX), true),
            (json!(i64::MAX as u64 + 1), false),
        ],
        "list<string>" => vec![
            (json!([]), true),
            (json!(["a", "b"]), true),
            (json!([1]), false),
        ],
        "map<string>" => vec![
            (json!({}), true),
            (json!({"A": "b", "": ""}), true),
            (json!({"A": 1}), false),
            (json!({"A": null}), false),
            (json!(["a"]), false),
            (json!("a"), false),
        ],
        _ => {
            if let Some(e) = ty.strip_prefix("enum<").and_then(|r| r.strip_suffix('>')) {
                let mut out: Vec<(Value, bool)> = s
                    .enum_values(e)
                    .into_iter()
                    .map(|v| (json!(v), true))
                    .collect();
                // (rmp-serde also accepts a variant's index as an integer;
                // that is not part of the contract, so it is not probed.)
                out.push((json!("no_such_value"), false));
                out.push((json!(["pending"]), false));
                out
            } else {
                // Records and variants: their own cases check their fields.
                vec![(json!("not a map"), false)]
            }
        }
    }
}

#[test]
fn files_match() {
    let s = Schema::load();
    // primary.json
    let fields = Schema::fields(&s.0["files"]["primary.json"]["fields"], "primary.json");
    let rec = PrimaryRecord {
        instance_id: INSTANCE.into(),
        pid: 4100,
        epoch: 3,
        pub_endpoint: "ipc:///tmp/grove-1000/x/pub-3.sock".into(),
        rpc_endpoint: "ipc:///tmp/grove-1000/x/rpc-3.sock".into(),
        started_at: T0,
    };
    let json = serde_json::to_value(&rec).unwrap();
    s.check_fields(&fields, &json, "primary.json").unwrap();

    // The events table, as the real migrations create it.
    let mut conn = rusqlite::Connection::open_in_memory().unwrap();
    grove::store::schema::migrate(&mut conn).unwrap();
    let mut stmt = conn.prepare("PRAGMA table_info(events)").unwrap();
    let cols: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(1))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let table = &s.0["files"]["events_table"];
    assert_eq!(table["table"], "events");
    let schema_cols: Vec<&str> = table["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, schema_cols, "events table columns vs schema.json");

    // The tasks table: its columns, their SQL types, and that they are the
    // TaskRecord's fields, one for one (a client reads the row as a record).
    let mut stmt = conn.prepare("PRAGMA table_info(tasks)").unwrap();
    let cols: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let table = &s.0["files"]["tasks_table"];
    assert_eq!(table["table"], "tasks");
    let schema_cols: Vec<(String, String)> = table["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ty = c["type"].as_str().unwrap();
            let base = ty.split_whitespace().next().unwrap_or(ty);
            (c["name"].as_str().unwrap().to_string(), base.to_string())
        })
        .collect();
    assert_eq!(
        cols, schema_cols,
        "tasks table columns and types vs schema.json"
    );
    let record: Vec<String> = s
        .record_fields("TaskRecord")
        .into_iter()
        .map(|f| f.name)
        .collect();
    let names: Vec<String> = cols.into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, record, "tasks table columns vs TaskRecord fields");
}

// ---------------------------------------------------------------------------
// (c) + (d) Golden vectors.

struct Vector {
    name: String,
    kind: &'static str,
    topic: Option<&'static str>,
    description: String,
    bytes: Vec<u8>,
}

impl Vector {
    fn new<T: Serialize>(name: &str, kind: &'static str, description: &str, value: &T) -> Self {
        Vector {
            name: name.to_string(),
            kind,
            topic: None,
            description: description.to_string(),
            bytes: encode(value),
        }
    }

    fn file(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "msgpack_hex": hex(&self.bytes),
            "value": generic(&self.bytes),
        });
        if let Some(t) = self.topic {
            v["topic"] = json!(t);
        }
        v
    }
}

fn vectors() -> Vec<Vector> {
    let mut out = Vec::new();
    for m in methods(true) {
        let name = m.name();
        out.push(Vector::new(
            &format!("request.{name}"),
            "Request",
            &format!("A `{name}` request, every optional parameter set."),
            &request("5e0c2f3a-1b7d-4c8e-9f60-a1b2c3d4e5f6", m),
        ));
    }
    out.push(Vector::new(
        "request.task.create.minimal",
        "Request",
        "A `task.create` request with only the prompt set; Rust still writes every key (nil / [] / 0).",
        &request(
            "5e0c2f3a-1b7d-4c8e-9f60-a1b2c3d4e5f7",
            Method::TaskCreate(min_new_task()),
        ),
    ));
    out.push(Vector::new(
        "request.task.finished.exited",
        "Request",
        "A supervisor's report of a clean exit (exit_code 0): the task becomes completed when run_id is its current run.",
        &request(
            "finished-9f8e7d6c5b4a39281706f5e4d3c2b1a0",
            Method::TaskFinished(TaskExit {
                outcome: ExitOutcome::Exited,
                exit_code: Some(0),
                ..task_exit(false)
            }),
        ),
    ));
    out.push(Vector::new(
        "request.task.finished.signal",
        "Request",
        "A supervisor's report of an agent killed by signal 9: no exit_code; the task becomes failed (exit_code) with exit_code 137.",
        &request(
            "finished-9f8e7d6c5b4a39281706f5e4d3c2b1a0",
            Method::TaskFinished(TaskExit {
                outcome: ExitOutcome::Exited,
                signal: Some(9),
                ..task_exit(false)
            }),
        ),
    ));
    for b in replies(true) {
        let name = reply_guard(&b);
        out.push(Vector::new(
            &format!("reply.{name}"),
            "Reply",
            &format!("A successful reply carrying `{name}`."),
            &Reply::ok("5e0c2f3a-1b7d-4c8e-9f60-a1b2c3d4e5f6".into(), 3, b),
        ));
    }
    out.push(Vector::new(
        "reply.task.minimal",
        "Reply",
        "A `task` reply for a fresh task: optional fields are nil, lists empty.",
        &Reply::ok(
            "5e0c2f3a-1b7d-4c8e-9f60-a1b2c3d4e5f7".into(),
            3,
            ReplyBody::Task(Box::new(min_task())),
        ),
    ));
    out.push(Vector::new(
        "reply.err.not_found",
        "Reply",
        "An error reply: `ok` is nil, `err` carries the code.",
        &Reply::err(
            "5e0c2f3a-1b7d-4c8e-9f60-a1b2c3d4e5f6".into(),
            3,
            WireError::new(ErrorCode::NotFound, format!("no task {}", task_id())),
        ),
    ));
    out.push(Vector::new(
        "reply.err.too_large",
        "Reply",
        "The answer to an oversized frame: it was never decoded, so `id` is empty.",
        &Reply::err(
            String::new(),
            3,
            WireError::new(
                ErrorCode::TooLarge,
                "frame of 1048577 bytes exceeds the 1048576-byte limit",
            ),
        ),
    ));
    for (i, data) in events(true).into_iter().enumerate() {
        let topic = data.topic();
        let durable = data.is_durable();
        let mut v = Vector::new(
            &format!("event.{topic}"),
            "Event",
            &format!(
                "The second PUB frame of an event on topic `{topic}` (the first frame is the topic). {}",
                if durable {
                    "Durable: seq > 0, also stored in the events table."
                } else {
                    "Transient: seq is 0, never stored."
                }
            ),
            &event(10 + i as u64, data),
        );
        v.topic = Some(topic);
        out.push(v);
    }
    let mut row = Vector::new(
        "events_row.task.deleted",
        "EventData",
        "The `payload` column of an events-table row: only the Event's `data` (seq, epoch, at and topic are columns).",
        &EventData::TaskDeleted { id: task_id() },
    );
    row.topic = Some("task.deleted");
    out.push(row);
    out
}

/// Decodes a vector's bytes into its Rust type and re-encodes them.
fn reencode(kind: &str, bytes: &[u8]) -> Result<Vec<u8>, String> {
    fn re<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<Vec<u8>, String> {
        let t: T = decode(bytes).map_err(|e| e.to_string())?;
        Ok(encode(&t))
    }
    match kind {
        "Request" => {
            let r = decode_request(bytes).map_err(|(_, e)| e.to_string())?;
            Ok(encode(&r))
        }
        "Reply" => re::<Reply>(bytes),
        "Event" => re::<Event>(bytes),
        "EventData" => re::<EventData>(bytes),
        other => Err(format!("unknown vector kind {other}")),
    }
}

fn schema_type_of(kind: &str) -> &'static str {
    match kind {
        "Request" => "record<Request>",
        "Reply" => "record<Reply>",
        "Event" => "record<Event>",
        "EventData" => "variant<topics>",
        other => panic!("unknown vector kind {other}"),
    }
}

#[test]
fn golden_vectors() {
    let dir = vectors_dir();
    let expected = vectors();
    let bless = std::env::var("GROVE_BLESS").is_ok_and(|v| v == "1");
    if bless {
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "json") {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
        for v in &expected {
            let text = serde_json::to_string_pretty(&v.file()).unwrap() + "\n";
            std::fs::write(dir.join(format!("{}.json", v.name)), text).unwrap();
        }
    }
    let hint = "if the change is intended, run `GROVE_BLESS=1 cargo test --test schema` and review the diff";

    // The set of files is exactly the set of vectors.
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}; {hint}", dir.display()))
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let wanted: BTreeSet<String> = expected
        .iter()
        .map(|v| format!("{}.json", v.name))
        .collect();
    assert_eq!(on_disk, wanted, "vector files vs vectors(); {hint}");

    let s = Schema::load();
    let mut failures = Vec::new();
    for v in &expected {
        let path = dir.join(format!("{}.json", v.name));
        let file: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = &v.name;
        let kind = file["kind"].as_str().unwrap_or_default();
        let bytes = unhex(file["msgpack_hex"].as_str().unwrap_or_default());

        // What Rust encodes today is byte for byte the recorded vector.
        if file["kind"] != v.kind || file["topic"] != json!(v.topic) {
            failures.push(format!("{name}: kind/topic differ from the file"));
        }
        if bytes != v.bytes {
            failures.push(format!(
                "{name}: Rust now encodes\n  {}\nthe vector has\n  {}",
                hex(&v.bytes),
                hex(&bytes)
            ));
        }
        // (c) The recorded bytes decode into the Rust type and re-encode
        // identically.
        match reencode(kind, &bytes) {
            Ok(again) if again == bytes => {}
            Ok(again) => failures.push(format!(
                "{name}: decode + encode changes the bytes:\n  {}\n  {}",
                hex(&bytes),
                hex(&again)
            )),
            Err(e) => failures.push(format!("{name}: does not decode as {kind}: {e}")),
        }
        // (d) A generic decoder reads Rust's bytes as the JSON view.
        if generic(&v.bytes) != file["value"] {
            failures.push(format!(
                "{name}: generic decoding gives {}, the vector's view is {}",
                generic(&v.bytes),
                file["value"]
            ));
        }
        // The view conforms to the schema, and an event's data key is its
        // topic.
        if let Err(e) = s.check_type(schema_type_of(kind), &file["value"], name) {
            failures.push(e);
        }
        if let Some(topic) = v.topic {
            let data = if kind == "Event" {
                &file["value"]["data"]
            } else {
                &file["value"]
            };
            if one_key(data).0 != topic {
                failures.push(format!("{name}: data key is not the topic {topic}"));
            }
        }
    }
    assert!(failures.is_empty(), "{hint}:\n{}", failures.join("\n"));
}

/// The topic frame is what `Event::topic` returns, and the Event payload
/// round-trips through the store's encoding of `data`.
#[test]
fn event_payload_is_the_data_map() {
    for (i, data) in events(true).into_iter().enumerate() {
        let e = event(i as u64 + 1, data.clone());
        assert_eq!(e.topic(), data.topic());
        let whole = view(&e);
        assert_eq!(whole["data"], view(&data));
        let back: EventData = decode(&encode(&data)).unwrap();
        assert_eq!(back, data);
    }
}
