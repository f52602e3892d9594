//! SQLite's own work for grove's writes, measured apart from everything
//! else grove does (see docs/design.md, Measuring): the exact rows a
//! pending `task.create` writes — the task row with its indexes, its
//! dependency edge, its `task.created` event and its ledger entry — through
//! grove's schema, pragmas and statements, in a tight loop on one
//! connection. Payloads are encoded once beforehand; ids are made as the
//! store thread makes them. No ledger look-up, admission, savepoint,
//! channel, socket or decoding stands around them, so nothing grove adds
//! can be faster than this.

use super::StoreError;
use crate::protocol::{EventData, ReplyBody, TaskRecord, TaskSpec, encode, now_ms};
use rusqlite::params;
use std::time::Instant;

/// Writes/s of `writes` pending `task.create`s' rows, `per_commit` to a
/// transaction, into a fresh store at `db`.
pub fn rows_rate(
    db: &std::path::Path,
    writes: usize,
    per_commit: usize,
) -> Result<f64, StoreError> {
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
    let template = TaskRecord::new(
        String::new(),
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
    let started = Instant::now();
    let mut done = 0;
    let mut batch = 0u64;
    while done < writes {
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
                "bench",
                "task.create",
                task.created_at as i64,
                &reply,
                0
            ])?;
            done += 1;
        }
        tx.commit()?;
        wal.checkpoint_if_due(&conn);
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}
