//! Events: what the primary publishes on its PUB socket, and (the durable
//! ones) appends to the store's event log in the same transaction as the
//! change they report.

use super::ControlKind;
use super::{GoalRecord, MemberInfo, TaskRecord};
use serde::{Deserialize, Serialize};

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
    /// `data` as the store thread encoded it into the event log, carried
    /// to the publisher with the event; not on the wire.
    #[serde(skip)]
    pub stored: StoredData,
}

impl Event {
    /// An event without stored bytes (transient, or read back).
    pub fn new(seq: u64, epoch: u64, at: u64, data: EventData) -> Event {
        Event {
            seq,
            epoch,
            at,
            data,
            stored: StoredData::default(),
        }
    }

    pub fn topic(&self) -> &'static str {
        self.data.topic()
    }

    /// The event as published: written around its stored data when it has
    /// them (see `codec::encode_event_from`), encoded whole otherwise.
    pub fn to_frame(&self) -> Vec<u8> {
        match &self.stored.0 {
            Some(data) => super::encode_event_from(self.seq, self.epoch, self.at, data),
            None => super::encode(self),
        }
    }
}

/// An event's `data` as the store thread encoded it for the event log: the
/// publisher writes the frame around these bytes instead of encoding the
/// event (its task record, most of it) again on the event loop (see
/// docs/design.md, Serving as primary). Two events are equal whatever
/// their stored bytes: those are `data` in another form.
#[derive(Clone, Default)]
pub struct StoredData(pub Option<std::sync::Arc<[u8]>>);

impl PartialEq for StoredData {
    fn eq(&self, _: &StoredData) -> bool {
        true
    }
}

impl std::fmt::Debug for StoredData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(bytes) => write!(f, "<{} bytes>", bytes.len()),
            None => f.write_str("-"),
        }
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
    /// One update of an ACP agent's session (`task.agent_updates`).
    #[serde(rename = "task.agent_update")]
    TaskAgentUpdate {
        id: String,
        run_id: String,
        kind: String,
        acp: String,
    },
    /// A steering control for a task's shim (`task.control`); its `seq` is
    /// the control's id, which the shim applies once.
    #[serde(rename = "task.control")]
    TaskControlled {
        id: String,
        run_id: String,
        kind: ControlKind,
        #[serde(default)]
        option: Option<String>,
        #[serde(default)]
        text: Option<String>,
        /// An answer's permission request (its `ask` number), as the store
        /// bound it: the shim applies it to that request only.
        #[serde(default)]
        ask: Option<u64>,
    },
    /// A goal changed: created, an iteration ended, or it ended.
    #[serde(rename = "goal.updated")]
    GoalUpdated { goal: GoalRecord },
    /// A running task lent its slot while it waits (`lent`), or took it
    /// back (`task.lend_slot`). Renewals of a loan are not events.
    #[serde(rename = "task.slot")]
    TaskSlot {
        id: String,
        run_id: String,
        lent: bool,
    },
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
    "task.agent_update",
    "task.control",
    "goal.updated",
    "task.slot",
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
            EventData::TaskAgentUpdate { .. } => "task.agent_update",
            EventData::TaskControlled { .. } => "task.control",
            EventData::GoalUpdated { .. } => "goal.updated",
            EventData::TaskSlot { .. } => "task.slot",
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
