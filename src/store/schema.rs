//! Versioned schema migrations. Only a primary runs them: a
//! secondary's connection is read-only and could not anyway.

use super::StoreError;
use rusqlite::{Connection, OptionalExtension};

/// Each entry upgrades the schema from version `index` to `index + 1`.
/// Never edit a released migration; append a new one.
const MIGRATIONS: &[&str] = &[
    // v1: the substrate.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('epoch', 0);

    CREATE TABLE tasks (
        id             TEXT PRIMARY KEY,
        prompt         TEXT NOT NULL,
        engine         TEXT NOT NULL,
        model          TEXT,
        work_dir       TEXT,
        persona        TEXT,
        status         TEXT NOT NULL,
        failure_reason TEXT,
        dependencies   TEXT NOT NULL DEFAULT '[]',
        tags           TEXT NOT NULL DEFAULT '[]',
        priority       INTEGER NOT NULL DEFAULT 0,
        timeout_ms     INTEGER,
        progress_pct   INTEGER,
        progress_text  TEXT,
        exit_code      INTEGER,
        pid            INTEGER,
        session_id     TEXT,
        created_at     INTEGER NOT NULL,
        updated_at     INTEGER NOT NULL,
        started_at     INTEGER,
        finished_at    INTEGER,
        retry_of       TEXT,
        attempt        INTEGER NOT NULL DEFAULT 1,
        extra_args     TEXT NOT NULL DEFAULT '[]',
        env            TEXT NOT NULL DEFAULT '{}',
        run_id         TEXT
    );
    CREATE INDEX tasks_status ON tasks (status);
    CREATE INDEX tasks_session ON tasks (session_id);

    CREATE TABLE events (
        seq     INTEGER PRIMARY KEY,
        epoch   INTEGER NOT NULL,
        at      INTEGER NOT NULL,
        topic   TEXT NOT NULL,
        payload BLOB NOT NULL
    );

    CREATE TABLE ledger (
        request_id    TEXT PRIMARY KEY,
        from_instance TEXT NOT NULL,
        method        TEXT NOT NULL,
        at            INTEGER NOT NULL,
        reply         BLOB NOT NULL
    );

    CREATE TABLE members (
        instance_id TEXT PRIMARY KEY,
        pid         INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        started_at  INTEGER NOT NULL,
        joined_at   INTEGER NOT NULL,
        epoch       INTEGER NOT NULL
    );
    "#,
    // v2: ACP sessions (their tasks carry session_id).
    r#"
    CREATE TABLE sessions (
        id         TEXT PRIMARY KEY,
        cwd        TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    "#,
    // v3: dependency edges, indexed by dependency: finding a task's
    // dependents must not scan every task (cancel of a task with thousands
    // of dependents cascades through all of them in one transaction).
    r#"
    CREATE TABLE task_deps (
        task_id TEXT NOT NULL,
        dep_id  TEXT NOT NULL,
        PRIMARY KEY (task_id, dep_id)
    );
    CREATE INDEX task_deps_dep ON task_deps (dep_id);
    INSERT OR IGNORE INTO task_deps (task_id, dep_id)
        SELECT tasks.id, json_each.value FROM tasks, json_each(tasks.dependencies);
    "#,
    // v4: keys that were being applied when a primary crashed, and how
    // often (see `crash_guard`): a request that crashes two primaries is
    // refused instead of crashing every successor in turn.
    r#"
    CREATE TABLE suspect_requests (
        request_id TEXT PRIMARY KEY,
        crashes    INTEGER NOT NULL,
        at         INTEGER NOT NULL
    );
    "#,
    // v5: a digest of each ledgered request, so that an id reused for a
    // different request is refused rather than answered with the first
    // reply. Older rows keep NULL and are trusted.
    r#"
    ALTER TABLE ledger ADD COLUMN digest INTEGER;
    "#,
    // v6: ACP sessions kept open between turns, a task's own permission
    // policy; and the task an event is about, for the events that make up
    // a conversation (agent updates, controls): read by task through the
    // index, and kept by retention while their task exists, so that a
    // transcript can always be replayed whole.
    r#"
    ALTER TABLE tasks ADD COLUMN keep_session INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN permissions TEXT;
    ALTER TABLE events ADD COLUMN task_id TEXT;
    CREATE INDEX events_task ON events (task_id, seq) WHERE task_id IS NOT NULL;
    "#,
    // v7: the task's git worktree (TaskRecord.worktree as JSON text: base
    // commit, branch, path), NULL for a task that runs in the workspace.
    r#"
    ALTER TABLE tasks ADD COLUMN worktree TEXT;
    "#,
    // v8: delegation. A task spawned from inside a task records its parent
    // (children are looked up by parent: list, fan-out, cancel --tree), asks
    // for a conclusion, and keeps the one it reached (JSON).
    r#"
    ALTER TABLE tasks ADD COLUMN parent_id TEXT;
    ALTER TABLE tasks ADD COLUMN want_conclusion INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN conclusion TEXT;
    CREATE INDEX tasks_parent ON tasks (parent_id) WHERE parent_id IS NOT NULL;
    "#,
    // v9: durable awaits. A parent's intent to be resumed with its
    // children's results: one pending row per parent, kept after it fires
    // (state, settled_at) for `grove awaits --all`, deleted with its parent.
    r#"
    CREATE TABLE awaits (
        id TEXT PRIMARY KEY,
        parent_id TEXT NOT NULL,
        children TEXT NOT NULL,
        policy TEXT NOT NULL,
        quorum INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        deadline INTEGER NOT NULL,
        state TEXT NOT NULL,
        settled_at INTEGER
    );
    CREATE UNIQUE INDEX awaits_pending ON awaits (parent_id) WHERE state = 'pending';
    CREATE INDEX awaits_deadline ON awaits (deadline) WHERE state = 'pending';
    "#,
    // v10: delegation counters (warm reuse of shared agents, resurrections,
    // live injections): rows, so that they outlive every process.
    r#"
    CREATE TABLE counters (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    "#,
    // v11: goals. One row per goal, keyed by its task's id, advanced in the
    // commit of each iteration's end; `prompt` is the first iteration's
    // (a CLI engine's next run gets it again with the last conclusion),
    // `best_progress` what a stall is measured against. Deleted with its
    // task.
    r#"
    CREATE TABLE goals (
        id TEXT PRIMARY KEY,
        objective TEXT NOT NULL,
        prompt TEXT NOT NULL,
        status TEXT NOT NULL,
        iteration INTEGER NOT NULL,
        max_iterations INTEGER NOT NULL,
        max_duration_ms INTEGER NOT NULL,
        stall_after INTEGER NOT NULL,
        stalls INTEGER NOT NULL,
        session INTEGER NOT NULL,
        progress REAL,
        best_progress REAL,
        response TEXT,
        next_step TEXT,
        blocked_reason TEXT,
        created_at INTEGER NOT NULL,
        deadline INTEGER NOT NULL,
        finished_at INTEGER
    );
    CREATE INDEX goals_deadline ON goals (deadline) WHERE status = 'running';
    "#,
    // v12: promotions. What each promotion measured — the election lock
    // won (wall clock), lock won → serving, and the previous primary's last
    // heartbeat as the new primary heard it — so that failover history
    // shows measured durations rather than gaps between stored events.
    r#"
    CREATE TABLE promotions (
        epoch             INTEGER PRIMARY KEY,
        instance_id       TEXT NOT NULL,
        lock_won_at       INTEGER NOT NULL,
        takeover_us       INTEGER,
        prev_instance_id  TEXT,
        prev_heartbeat_at INTEGER
    );
    "#,
    // v13: fewer pages written per task.create (each is a WAL frame, and
    // frames are most of a write's cost). The ledger and the dependency
    // edges are keyed by what they are looked up by, so their rows live in
    // that key's b-tree (`WITHOUT ROWID`) instead of a rowid table plus a
    // key index; the session index holds only tasks that have a session.
    r#"
    CREATE TABLE ledger_v13 (
        request_id    TEXT PRIMARY KEY,
        from_instance TEXT NOT NULL,
        method        TEXT NOT NULL,
        at            INTEGER NOT NULL,
        reply         BLOB NOT NULL,
        digest        INTEGER
    ) WITHOUT ROWID;
    INSERT INTO ledger_v13 (request_id, from_instance, method, at, reply, digest)
        SELECT request_id, from_instance, method, at, reply, digest FROM ledger;
    DROP TABLE ledger;
    ALTER TABLE ledger_v13 RENAME TO ledger;

    CREATE TABLE task_deps_v13 (
        task_id TEXT NOT NULL,
        dep_id  TEXT NOT NULL,
        PRIMARY KEY (task_id, dep_id)
    ) WITHOUT ROWID;
    INSERT INTO task_deps_v13 (task_id, dep_id) SELECT task_id, dep_id FROM task_deps;
    DROP TABLE task_deps;
    ALTER TABLE task_deps_v13 RENAME TO task_deps;
    CREATE INDEX task_deps_dep ON task_deps (dep_id);

    DROP INDEX tasks_session;
    CREATE INDEX tasks_session ON tasks (session_id) WHERE session_id IS NOT NULL;
    "#,
    // v14: dependency edges ordered by when their dependent was created.
    // Keyed by the dependent's random id, each new task's edge and its
    // entry in the dependency index landed on a page of their own: two of
    // the ~5.7 WAL pages a `task.create` with a dependency wrote, which no
    // batch shared. Led by the dependent's `created_at` (set once, never
    // changed), a batch's edges append to the same last pages of both.
    // Every lookup knows the dependent's record, so `task_at` costs none.
    r#"
    CREATE TABLE task_deps_v14 (
        task_at INTEGER NOT NULL,
        task_id TEXT NOT NULL,
        dep_id  TEXT NOT NULL,
        PRIMARY KEY (task_at, task_id, dep_id)
    ) WITHOUT ROWID;
    INSERT INTO task_deps_v14 (task_at, task_id, dep_id)
        SELECT COALESCE(t.created_at, 0), d.task_id, d.dep_id
        FROM task_deps d LEFT JOIN tasks t ON t.id = d.task_id;
    DROP TABLE task_deps;
    ALTER TABLE task_deps_v14 RENAME TO task_deps;
    CREATE INDEX task_deps_dep ON task_deps (dep_id, task_at);
    "#,
    // v15: a spawned task's delegation level, kept when it is created. The
    // level was only ever walked up the parent chain, and a purged
    // ancestor cut the walk short: its children's children came out
    // shallower than they are, past `max_delegation_depth`. No row
    // (top-level tasks, and tasks made before): the walk alone decides. A
    // table of its own: the tasks table holds TaskRecord's fields only (the
    // IPC contract), and only spawned tasks need a row.
    r#"
    CREATE TABLE task_depths (
        id    TEXT PRIMARY KEY,
        depth INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // v16: slot loans. A running task blocked in a wait for its children
    // lends its `max_parallel` slot: one row per waiter (a task may wait
    // in several tool calls at once), for the run it waits in, until
    // `until` (Unix ms), renewed while it waits (see `tasks::slot_loans`).
    // A table of its own, like v15's: the tasks table holds TaskRecord's
    // fields only.
    r#"
    CREATE TABLE slot_loans (
        id     TEXT NOT NULL,
        waiter TEXT NOT NULL,
        run_id TEXT NOT NULL,
        until  INTEGER NOT NULL,
        PRIMARY KEY (id, waiter)
    ) WITHOUT ROWID;
    "#,
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the schema up to `SCHEMA_VERSION`, each step in its own
/// transaction. Refuses a database written by a newer grove.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version as i64 + 1)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [version as i64 + 1],
        )?;
        tx.commit()?;
    }
    Ok(())
}

pub fn read_meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory store migrated up to `version` only, as an older grove
    /// left it.
    fn store_at(version: usize) -> Connection {
        let conn = Connection::open_in_memory().expect("in-memory database");
        for sql in &MIGRATIONS[..version] {
            conn.execute_batch(sql).expect("the older migrations");
        }
        conn.pragma_update(None, "user_version", version as i64)
            .expect("user_version");
        conn
    }

    /// v13 rebuilds the ledger and the dependency edges: what a store of
    /// v12 held must be there after it, in the new tables.
    #[test]
    fn v13_keeps_the_ledger_and_the_edges() {
        let mut conn = store_at(12);
        conn.execute_batch(
            "INSERT INTO ledger (request_id, from_instance, method, at, reply, digest)
                 VALUES ('r1', 'me', 'task.create', 5, x'c0', 7);
             INSERT INTO task_deps (task_id, dep_id) VALUES ('t2', 't1');",
        )
        .unwrap();
        migrate(&mut conn).expect("v13");
        let ledger: (String, i64, Vec<u8>, i64) = conn
            .query_row(
                "SELECT method, at, reply, digest FROM ledger WHERE request_id = 'r1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(ledger, ("task.create".into(), 5, vec![0xc0], 7));
        let dep: String = conn
            .query_row(
                "SELECT task_id FROM task_deps WHERE dep_id = 't1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(dep, "t2");
        for table in ["ledger", "task_deps"] {
            let sql: String = conn
                .query_row(
                    "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [table],
                    |r| r.get(0),
                )
                .unwrap();
            assert!(sql.contains("WITHOUT ROWID"), "{table}: {sql}");
        }
    }

    /// v14 keys the edges by their dependent's creation time: each edge of
    /// a v13 store is there after it, under its dependent's `created_at`,
    /// and found through the dependency index as before.
    #[test]
    fn v14_orders_the_edges_by_their_dependents_creation() {
        let mut conn = store_at(13);
        conn.execute_batch(
            "INSERT INTO tasks (id, prompt, engine, status, created_at, updated_at)
                 VALUES ('t1', 'a', 'shell', 'completed', 100, 100),
                        ('t2', 'b', 'shell', 'pending', 500, 500);
             INSERT INTO task_deps (task_id, dep_id) VALUES ('t2', 't1');",
        )
        .unwrap();
        migrate(&mut conn).expect("v14");
        let edge: (i64, String, String) = conn
            .query_row("SELECT task_at, task_id, dep_id FROM task_deps", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(edge, (500, "t2".into(), "t1".into()));
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT task_id FROM task_deps WHERE dep_id = 't1'",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(
            plan.contains("task_deps_dep"),
            "dependents are scanned: {plan}"
        );
    }
}
