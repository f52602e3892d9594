//! The one mapping between the `tasks` table and the record, and the
//! schema's refusal of a newer store.

use crate::protocol::{FailureReason, TaskRecord, TaskSpec, TaskStatus};
use crate::store::{StoreError, rows, schema};
use rusqlite::Connection;

fn store() -> Connection {
    let mut conn = Connection::open_in_memory().expect("in-memory database");
    schema::migrate(&mut conn).expect("migrations");
    conn
}

/// Every field set to a value other than its default, so that a column
/// written but not read back (or read from the wrong column) shows.
fn full_record() -> TaskRecord {
    let spec = TaskSpec {
        prompt: "cargo test".into(),
        engine: "claude".into(),
        model: Some("sonnet".into()),
        work_dir: Some("/w".into()),
        persona: Some("reviewer".into()),
        dependencies: vec![],
        tags: vec!["ci".into(), "nightly".into()],
        priority: -5,
        timeout_ms: Some(600_000),
        session_id: Some("sess-1".into()),
        extra_args: vec!["--max-turns".into(), "5".into()],
        env: [("CI".to_string(), "1".to_string())].into(),
        keep_session: true,
        permissions: Some(crate::protocol::PermissionPolicy::AllowReads),
        worktree: Some(crate::protocol::Worktree::for_task("t1", "a".repeat(40))),
        parent_id: Some("p1".into()),
        want_conclusion: true,
    };
    TaskRecord {
        status: TaskStatus::Failed,
        failure_reason: Some(FailureReason::Timeout),
        progress_pct: Some(80),
        progress_text: Some("tests".into()),
        exit_code: Some(124),
        pid: Some(4242),
        updated_at: 9_000,
        started_at: Some(2_000),
        finished_at: Some(9_000),
        retry_of: Some("old".into()),
        attempt: 3,
        run_id: Some("run-1".into()),
        conclusion: Some(crate::protocol::Conclusion::from_status(
            TaskStatus::Failed,
            Some(FailureReason::Timeout),
            Some("slow"),
        )),
        ..TaskRecord::new("t1".into(), spec, 1_000)
    }
}

#[test]
fn a_record_reads_back_as_it_was_written() {
    let conn = store();
    let task = full_record();
    rows::insert(&conn, &task).unwrap();
    assert_eq!(rows::get(&conn, "t1").unwrap(), Some(task.clone()));
    let fresh = TaskRecord::new("t2".into(), TaskSpec::default(), 5);
    rows::insert(&conn, &fresh).unwrap();
    assert_eq!(rows::get(&conn, "t2").unwrap(), Some(fresh));
}

#[test]
fn an_update_writes_the_run_state_and_the_prompt() {
    let conn = store();
    let fresh = TaskRecord::new("t1".into(), full_record().spec, 1_000);
    rows::insert(&conn, &fresh).unwrap();
    let mut changed = TaskRecord {
        id: "t1".into(),
        ..full_record()
    };
    changed.spec.prompt = "cargo test\n\nand clippy".into();
    rows::update(&conn, &changed).unwrap();
    assert_eq!(rows::get(&conn, "t1").unwrap(), Some(changed));
}

#[test]
fn a_bad_column_is_named() {
    let conn = store();
    rows::insert(&conn, &full_record()).unwrap();
    conn.execute("UPDATE tasks SET tags = 'not json'", [])
        .unwrap();
    let err = rows::get(&conn, "t1").unwrap_err();
    assert_eq!(
        err.to_string(),
        "corrupt row in the store: task t1: bad tags"
    );
    conn.execute("UPDATE tasks SET status = 'sleeping'", [])
        .unwrap();
    let err = rows::get(&conn, "t1").unwrap_err();
    assert_eq!(
        err.to_string(),
        "corrupt row in the store: task t1: bad status"
    );
}

#[test]
fn a_store_from_a_newer_grove_is_refused_by_name() {
    let mut conn = store();
    let newer = schema::SCHEMA_VERSION + 1;
    conn.pragma_update(None, "user_version", newer).unwrap();
    let err = schema::migrate(&mut conn).unwrap_err();
    assert!(
        matches!(err, StoreError::TooNew { found, .. } if found == newer),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "the store has schema version {newer}, newer than this grove ({}); upgrade grove",
            schema::SCHEMA_VERSION
        )
    );
}

/// The orchestrator asks for each slot-holding status in turn through one
/// cached statement; binding another status must not parse and plan it
/// again (see `stable_plans`).
#[test]
fn a_cached_task_query_is_not_prepared_again_for_each_status() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("grove.db");
    let _writer = crate::store::open_read_write(&path, 0).expect("store");
    let reader = crate::store::Reader::open(&path).expect("reader");
    let statuses = [TaskStatus::Running, TaskStatus::Waiting, TaskStatus::Paused];
    for status in statuses.iter().cycle().take(9) {
        let filter = crate::store::TaskFilter {
            status: Some(*status),
            ..Default::default()
        };
        reader.tasks(&filter).expect("tasks");
    }
    let stmt = (reader.conn)
        .prepare_cached("SELECT * FROM tasks WHERE 1 AND status = ? ORDER BY rowid")
        .expect("the cached statement");
    assert_eq!(stmt.get_status(rusqlite::StatementStatus::Run), 9);
    assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
}
