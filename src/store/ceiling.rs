//! SQLite's own work for grove's writes, measured apart from everything
//! else grove does (see docs/design.md, Measuring): the rows a pending
//! `task.create` writes — the task row with its indexes, its dependency
//! edge both ways, its `task.created` event and its ledger entry — through
//! grove's schema, pragmas and statements, with values of the same sizes,
//! in a tight loop on one connection with the checkpointer beside it (as
//! the store thread has it). Left out, because they are grove's work and
//! not SQLite's: the ledger look-up, the admission, the dependency's status
//! read, the savepoint, encoding the event and the reply (encoded once
//! here, for a task id of the real length), the in-flight marker, and the
//! channel, socket and decoding around it all. Nothing grove adds to a
//! write can make it cheaper than this.

use super::StoreError;
use crate::protocol::{EventData, ReplyBody, TaskRecord, TaskSpec, encode, now_ms};
use rusqlite::params;
use std::time::Instant;

/// What [`rows_rate`] measured.
pub struct RowsRate {
    /// Writes per second over the whole loop, checkpoints included.
    pub rate: f64,
    /// Each transaction's duration, in milliseconds (its writes, its
    /// `COMMIT` and the checkpoint work between transactions).
    pub commits_ms: Vec<f64>,
}

/// `writes` pending `task.create`s' rows, `per_commit` to a transaction,
/// into a fresh store at `db`.
pub fn rows_rate(
    db: &std::path::Path,
    writes: usize,
    per_commit: usize,
) -> Result<RowsRate, StoreError> {
    let mut conn = super::open_read_write(db, 0)?;
    let now = now_ms();
    let blocker = TaskRecord::new(
        "0".repeat(32),
        TaskSpec {
            prompt: "sleep 3600".into(),
            engine: "shell".into(),
            ..Default::default()
        },
        now,
    );
    super::rows::insert(&conn, &blocker)?;
    // A task id has 32 hex digits: the encoded event and reply are of the
    // real size.
    let template = TaskRecord::new(
        "f".repeat(32),
        TaskSpec {
            prompt: "bench write".into(),
            engine: "shell".into(),
            tags: vec!["bench".into()],
            dependencies: vec![blocker.id.clone()],
            ..Default::default()
        },
        now,
    );
    let payload = encode(&EventData::TaskCreated {
        task: template.clone(),
    });
    let reply = encode(&super::txn::WriteResult::Ok(ReplyBody::Task(Box::new(
        template.clone(),
    ))));
    // As the store thread does: the checkpoints' bulk on their own thread.
    let mut wal = super::upkeep::Checkpoints::take_over(&mut conn);
    // A digest of the real width (SQLite stores 0 in no bytes at all).
    let digest = 0x5eed_f00d_cafe_d00d_u64 as i64;
    let mut commits_ms = Vec::with_capacity(writes / per_commit.max(1) + 1);
    let started = Instant::now();
    let mut done = 0;
    let mut batch = 0u64;
    while done < writes {
        let commit_started = Instant::now();
        batch += 1;
        let prefix = (batch.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52) as u16;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for _ in 0..per_commit.min(writes - done) {
            let mut task = template.clone();
            let mut id = uuid::Uuid::new_v4().simple().to_string();
            id.replace_range(..3, &format!("{prefix:03x}"));
            task.id = id;
            task.created_at = now_ms();
            task.updated_at = task.created_at;
            super::rows::insert(&tx, &task)?;
            tx.prepare_cached(
                "INSERT INTO events (epoch, at, topic, payload, task_id) VALUES (?1, ?2, ?3, ?4, NULL)",
            )?
            .execute(params![1, task.created_at as i64, "task.created", &payload])?;
            tx.prepare_cached(
                "INSERT INTO ledger (request_id, from_instance, method, at, reply, digest)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                uuid::Uuid::now_v7().to_string(),
                "bench-writer-00",
                "task.create",
                task.created_at as i64,
                &reply,
                digest
            ])?;
            done += 1;
        }
        tx.commit()?;
        wal.checkpoint_if_due(&conn);
        commits_ms.push(commit_started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(RowsRate {
        rate: done as f64 / started.elapsed().as_secs_f64(),
        commits_ms,
    })
}
