//! The group commit (`commit_batch`), in-process: one transaction for a
//! batch, a refused write undone alone and its refusal recorded, a request
//! id applied at most once, a poisoned orchestrator operation refused,
//! events in seq order.

use super::{
    Admission, Guard, Job, LedgerKey, ReplyTo, WriteResult, apply_idempotent, commit_batch,
    rehearse,
};
use crate::protocol::{
    ErrorCode, Event, EventData, Method, NewTask, ReplyBody, encode, request_digest,
};
use crate::store::crash_guard::InFlight;
use crate::store::tasks::InternalOp;
use rusqlite::Connection;
use tokio::sync::oneshot;

fn store() -> Connection {
    let mut conn = Connection::open_in_memory().expect("in-memory database");
    crate::store::schema::migrate(&mut conn).expect("migrations");
    conn
}

fn create(prompt: &str) -> Method {
    Method::TaskCreate(NewTask {
        prompt: prompt.into(),
        ..Default::default()
    })
}

fn write(request_id: &str, method: Method) -> Job {
    Job::Write {
        request_id: request_id.into(),
        from: "test".into(),
        digest: request_digest(&method),
        method,
        reply: ReplyTo::Waiter(oneshot::channel().0),
    }
}

fn internal(op: InternalOp) -> Job {
    Job::Internal {
        op,
        reply: ReplyTo::Waiter(oneshot::channel().0),
    }
}

fn guard(dir: &tempfile::TempDir, poisoned: &[String]) -> Guard {
    Guard {
        in_flight: InFlight::open(&dir.path().join("grove.db")),
        poisoned: poisoned.iter().cloned().collect(),
        suspects: Default::default(),
        admission: admit_all(),
    }
}

fn admit_all() -> Admission {
    Box::new(|_, _| Ok(Default::default()))
}

/// Refuses every create whose prompt is "refuse me", counting its calls.
fn picky(calls: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Admission {
    Box::new(move |method, _| {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match method {
            Method::TaskCreate(new) if new.prompt == "refuse me" => Err(
                crate::protocol::WireError::new(ErrorCode::InvalidParams, "no such engine"),
            ),
            _ => Ok(Default::default()),
        }
    })
}

fn count(conn: &Connection, table: &str) -> i64 {
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .expect("count")
}

fn task_id(r: &WriteResult) -> String {
    match r {
        Ok(ReplyBody::Task(t)) => t.id.clone(),
        other => panic!("expected a task, got {other:?}"),
    }
}

#[test]
fn one_batch_one_commit_each_write_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = store();
    let start_of = |id: &str| InternalOp::Start {
        id: id.into(),
        run_id: "r1".into(),
        max_parallel: 10,
    };
    let poisoned = start_of("poisoned");
    let mut batch = vec![
        write("req-1", create("one")),
        write("req-2", Method::TaskCancel { id: "nope".into() }),
        write("req-1", create("one")),
        write("req-1", create("a different request")),
        internal(start_of("nope")),
        internal(poisoned.clone()),
        write("req-3", create("two")),
    ];
    let mut shutdown = None;
    let (done, events) = commit_batch(
        &mut conn,
        7,
        &mut batch,
        &mut shutdown,
        &guard(&dir, &[poisoned.key()]),
        &[],
    )
    .expect("commit");
    assert!(batch.is_empty(), "every job answered");
    let results: Vec<_> = done.into_iter().map(|d| d.result).collect();
    let first = task_id(&results[0]);
    assert_eq!(results[1].as_ref().unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(
        task_id(&results[2]),
        first,
        "a resend gets the recorded reply"
    );
    assert_eq!(
        results[3].as_ref().unwrap_err().code,
        ErrorCode::IdempotencyConflict
    );
    assert_eq!(results[4].as_ref().unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(results[5].as_ref().unwrap_err().code, ErrorCode::Internal);
    let second = task_id(&results[6]);
    // Two tasks, two creations: nothing applied twice, nothing refused left.
    assert_eq!(count(&conn, "tasks"), 2);
    assert_created(&events, &[&first, &second]);
    // Refusals of writes are recorded too: a resend gets the same answer.
    assert_eq!(count(&conn, "ledger"), 3);
}

/// The store thread's rehearsal at its start leaves no trace: no task, no
/// ledger entry, and the next event still takes the next `seq`.
#[test]
fn the_rehearsal_of_a_write_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = store();
    rehearse(&mut conn, 3);
    rehearse(&mut conn, 3);
    for table in ["tasks", "events", "ledger", "task_deps"] {
        assert_eq!(count(&conn, table), 0, "{table} after the rehearsal");
    }
    let mut batch = vec![write("req-1", create("after the rehearsal"))];
    let (_, events) =
        commit_batch(&mut conn, 3, &mut batch, &mut None, &guard(&dir, &[]), &[]).expect("commit");
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1]);
    assert_eq!(count(&conn, "tasks"), 1);
}

fn assert_created(events: &[Event], ids: &[&str]) {
    let created: Vec<&str> = events
        .iter()
        .map(|e| match &e.data {
            EventData::TaskCreated { task } => task.id.as_str(),
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    assert_eq!(created, ids);
    for pair in events.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1, "seqs in order, no gap");
    }
    assert!(events.iter().all(|e| e.epoch == 7));
}

#[test]
fn a_shutdown_is_recorded_last_and_answered_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = store();
    let (tx, _rx) = oneshot::channel();
    let mut batch = vec![
        write("req-1", create("one")),
        Job::Shutdown {
            instance_id: "me".into(),
            done: tx,
        },
    ];
    let mut shutdown = None;
    let (done, events) = commit_batch(
        &mut conn,
        7,
        &mut batch,
        &mut shutdown,
        &guard(&dir, &[]),
        &[],
    )
    .unwrap();
    assert_eq!(done.len(), 1);
    assert!(shutdown.is_some());
    assert!(matches!(
        events.last().map(|e| &e.data),
        Some(EventData::Shutdown { .. })
    ));
}

#[test]
fn a_committed_batch_acquits_its_suspects_in_its_own_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = store();
    conn.execute(
        "INSERT INTO suspect_requests (request_id, crashes, at) VALUES ('req-1', 1, 0)",
        [],
    )
    .unwrap();
    let mut batch = vec![write("req-1", create("one"))];
    let mut shutdown = None;
    let acquit = ["req-1".to_string()];
    commit_batch(
        &mut conn,
        7,
        &mut batch,
        &mut shutdown,
        &guard(&dir, &[]),
        &acquit,
    )
    .unwrap();
    let left: i64 = conn
        .query_row("SELECT COUNT(*) FROM suspect_requests", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "applied without a crash: no longer suspect");
}

#[test]
fn a_refused_write_undoes_its_partial_effects() {
    let mut conn = store();
    let tx = conn.transaction().unwrap();
    let mut events = Vec::new();
    let mut method = Method::TaskCreate(NewTask {
        prompt: " ".into(),
        ..Default::default()
    });
    let digest = request_digest(&method);
    let key = LedgerKey {
        request_id: "req-1",
        from: "test",
        digest,
    };
    let (result, encoded) =
        apply_idempotent(&tx, 7, &key, &mut method, &admit_all(), &mut events).unwrap();
    assert_eq!(encoded, Some(encode(&result)), "answered as recorded");
    assert_eq!(result.unwrap_err().code, ErrorCode::InvalidParams);
    assert!(events.is_empty());
    tx.commit().unwrap();
    assert_eq!(count(&conn, "tasks"), 0);
    assert_eq!(count(&conn, "events"), 0);
    assert_eq!(count(&conn, "ledger"), 1);
}

/// A write the admission refuses is answered with its error and leaves no
/// trace (no ledger row: a retry after the user fixed the cause can
/// succeed); a write the ledger already holds is answered from it without
/// being checked again.
#[test]
fn admission_runs_only_for_new_writes_and_its_refusal_is_not_recorded() {
    let mut conn = store();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let admission = picky(calls.clone());
    let mut events = Vec::new();
    let tx = conn.transaction().unwrap();
    let mut refused = create("refuse me");
    let key = LedgerKey {
        request_id: "req-refused",
        from: "test",
        digest: request_digest(&refused),
    };
    let (result, encoded) =
        apply_idempotent(&tx, 7, &key, &mut refused, &admission, &mut events).unwrap();
    assert_eq!(result.unwrap_err().code, ErrorCode::InvalidParams);
    assert_eq!(encoded, None, "not recorded, so not answered as recorded");

    let mut fine = create("echo hi");
    let key = LedgerKey {
        request_id: "req-fine",
        from: "test",
        digest: request_digest(&fine),
    };
    let first = apply_idempotent(&tx, 7, &key, &mut fine, &admission, &mut events).unwrap();
    let again = apply_idempotent(&tx, 7, &key, &mut fine, &admission, &mut events).unwrap();
    assert_eq!(task_id(&first.0), task_id(&again.0));
    // The retry is answered with the bytes the ledger recorded.
    assert_eq!(first.1, Some(encode(&first.0)));
    assert_eq!(first.1, again.1);
    tx.commit().unwrap();
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the retry was checked again"
    );
    assert_eq!(
        count(&conn, "ledger"),
        1,
        "only the admitted write is recorded"
    );
    assert_eq!(count(&conn, "tasks"), 1);
}

/// A live task's conversation outlives the event retention (its transcript
/// is replayed whole); other events, and a deleted task's conversation, do
/// not; each prune scans only what aged since the last one.
#[test]
fn retention_keeps_the_conversation_of_a_live_task() {
    use crate::protocol::{AgentUpdate, AgentUpdates};
    let dir = tempfile::tempdir().unwrap();
    let mut conn = store();
    let mut shutdown = None;
    let mut commit = |conn: &mut Connection, jobs: Vec<Job>| {
        let mut batch = jobs;
        let (done, _) =
            commit_batch(conn, 1, &mut batch, &mut shutdown, &guard(&dir, &[]), &[]).unwrap();
        done.into_iter().map(|d| d.result).collect::<Vec<_>>()
    };
    let kept = task_id(&commit(&mut conn, vec![write("a", create("kept"))])[0]);
    let gone = task_id(&commit(&mut conn, vec![write("b", create("gone"))])[0]);
    for id in [&kept, &gone] {
        let run_id = format!("run-{id}");
        conn.execute(
            "UPDATE tasks SET run_id = ?1 WHERE id = ?2",
            [run_id.as_str(), id.as_str()],
        )
        .unwrap();
        let updates = Method::TaskAgentUpdates(AgentUpdates {
            id: id.clone(),
            run_id,
            batch: 1,
            updates: vec![AgentUpdate {
                kind: "agent_message_chunk".into(),
                acp: "{}".into(),
            }],
        });
        commit(&mut conn, vec![write(&format!("u-{id}"), updates)]);
    }
    commit(
        &mut conn,
        vec![write(
            "del",
            Method::TaskDelete {
                id: gone.clone(),
                force: true,
            },
        )],
    );
    for i in 0..20 {
        commit(&mut conn, vec![write(&format!("w{i}"), create("filler"))]);
    }
    let conversation = |conn: &Connection, id: &str| -> i64 {
        conn.query_row(
            "SELECT COUNT(*) FROM events WHERE task_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
    };
    let retention = super::Retention {
        events: 5,
        ledger_ms: u64::MAX / 4,
    };
    let mut floor = 0;
    let (pruned, _) = crate::store::upkeep::prune(&conn, retention, &mut floor).unwrap();
    assert!(pruned > 0);
    assert_eq!(conversation(&conn, &kept), 1, "a live task's update stays");
    assert_eq!(conversation(&conn, &gone), 0, "a deleted task's goes");
    let left: i64 = conn
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 5 + 1, "the retention and the kept update");
    let last: i64 = conn
        .query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        floor,
        last - 5,
        "the next prune starts where this one ended"
    );
}

/// `ping`'s WAL page count: each commit adds the frames it appended, and
/// the first commit after taking over only sets the count (the WAL may
/// hold an earlier primary's frames). Other tests commit in parallel, so
/// only growth is checked.
#[test]
fn commits_count_the_wal_pages_they_append() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut conn = crate::store::open_read_write(&dir.path().join("grove.db"), 0).expect("store");
    let _checkpoints = super::super::upkeep::Checkpoints::take_over(&mut conn);
    conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'epoch'", [])
        .expect("first commit");
    let before = super::WAL_PAGES.load(Ordering::Relaxed);
    conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'epoch'", [])
        .expect("second commit");
    let after = super::WAL_PAGES.load(Ordering::Relaxed);
    assert!(after > before, "a commit that changed a page counted none");
}

/// A promotion whose member gave the win up before it committed (the
/// `proceed` check, asked last inside the transaction) leaves nothing: the
/// same epoch, no `instance.promoted`, no promotion row; the next one takes
/// the very next epoch.
#[test]
fn a_promotion_given_up_before_its_commit_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grove.db");
    let won = crate::store::promotions::LockWon { at: 1, heard: None };
    let first = super::promote(&path, "first", 1, 0, &won, &|| true).expect("promoted");
    assert_eq!(first.epoch, 1);
    drop(first);
    let reader = crate::store::Reader::open(&path).unwrap();
    let seq = reader.last_seq().unwrap();
    let given_up = super::promote(&path, "given-up", 2, 0, &won, &|| false);
    assert!(
        matches!(given_up, Err(crate::store::StoreError::Unavailable(_))),
        "refused"
    );
    assert_eq!(reader.epoch().unwrap(), 1, "the epoch is not taken");
    assert_eq!(reader.last_seq().unwrap(), seq, "no event appended");
    let next = super::promote(&path, "next", 3, 0, &won, &|| true).expect("promoted");
    assert_eq!(next.epoch, 2, "the next promotion takes the next epoch");
}

/// The tasks one batch creates share the first three hex digits of their
/// ids (their id-index entries then share a page), and differ after them;
/// outside a batch, and from one batch to the next, the start is random.
#[test]
fn a_batchs_task_ids_share_their_start_and_nothing_more() {
    std::thread::spawn(|| {
        assert_eq!(super::batch_id_prefix(), None, "no batch yet");
        let dir = tempfile::tempdir().unwrap();
        let mut conn = store();
        let mut starts = std::collections::HashSet::new();
        for batch_no in 1..=8u64 {
            super::BATCH.with(|b| b.set(batch_no));
            let mut batch: Vec<Job> = (0..5)
                .map(|i| write(&format!("req-{batch_no}-{i}"), create("x")))
                .collect();
            let (done, _) =
                commit_batch(&mut conn, 1, &mut batch, &mut None, &guard(&dir, &[]), &[])
                    .expect("commit");
            let ids: Vec<String> = done.iter().map(|d| task_id(&d.result)).collect();
            let prefix = format!("{:03x}", super::batch_id_prefix().expect("in a batch"));
            for id in &ids {
                assert_eq!(id.len(), 32, "{id}");
                assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
                assert!(id.starts_with(&prefix), "{id} in a batch of {prefix}");
            }
            let rests: std::collections::HashSet<_> = ids.iter().map(|id| &id[3..]).collect();
            assert_eq!(rests.len(), ids.len(), "distinct after the start: {ids:?}");
            starts.insert(prefix);
        }
        // Eight batches on one start would be a 1 in 4096^7 chance.
        assert!(
            starts.len() > 1,
            "every batch started its ids the same: {starts:?}"
        );
    })
    .join()
    .expect("test thread");
}

/// A run's end, once committed, has the store thread sync its WAL (on a
/// thread of its own: nobody waits for it). Creating and starting a task
/// ask for none: checked once both are answered, which catches a sync
/// they asked for only if it was already done (it usually is).
#[test]
fn a_committed_run_end_is_followed_by_a_wal_sync() {
    use crate::protocol::{ExitOutcome, TaskExit};
    use crate::store::wal_sync::tests::syncs_of;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("grove.db");
    let won = crate::store::promotions::LockWon { at: 1, heard: None };
    let promotion = super::promote(&db, "test", 1, 0, &won, &|| true).unwrap();
    let (events_tx, mut events_rx) = tokio::sync::mpsc::channel(64);
    let drain = std::thread::spawn(move || while events_rx.blocking_recv().is_some() {});
    let retention = super::Retention {
        events: 1000,
        ledger_ms: 3_600_000,
    };
    let store = super::spawn(
        promotion,
        events_tx,
        retention,
        Box::new(|| true),
        admit_all(),
    )
    .unwrap();
    let ask = |job: &dyn Fn(ReplyTo) -> Job| {
        let (tx, rx) = oneshot::channel();
        store.jobs.send(job(ReplyTo::Waiter(tx))).unwrap();
        rx.blocking_recv().expect("answered")
    };
    let id = task_id(&ask(&|reply| Job::Write {
        request_id: "create".into(),
        from: "test".into(),
        digest: 0,
        method: Method::TaskCreate(NewTask {
            prompt: "true".into(),
            ..Default::default()
        }),
        reply,
    }));
    ask(&|reply| Job::Internal {
        op: InternalOp::Start {
            id: id.clone(),
            run_id: "r1".into(),
            max_parallel: 1,
        },
        reply,
    })
    .expect("started");
    assert_eq!(syncs_of(&db), 0, "a creation or a start synced the WAL");
    ask(&|reply| Job::Write {
        request_id: "finished".into(),
        from: "test".into(),
        digest: 0,
        method: Method::TaskFinished(TaskExit {
            id: id.clone(),
            run_id: "r1".into(),
            outcome: ExitOutcome::Exited,
            exit_code: Some(0),
            signal: None,
            message: None,
            conclusion: None,
            warm: None,
        }),
        reply,
    })
    .expect("the run's end recorded");
    let deadline = Instant::now() + Duration::from_secs(10);
    while syncs_of(&db) == 0 {
        assert!(Instant::now() < deadline, "no WAL sync after a run's end");
        std::thread::sleep(Duration::from_millis(1));
    }
    store.join();
    drain.join().unwrap();
}
