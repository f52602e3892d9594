//! Creating the store when two promotions race to it (see `create`).

use crate::store::{Reader, open_read_write};

/// Two promotions may run at once on one workspace: one begun on a lock
/// file that was replaced meanwhile (it gives up only before its commit)
/// and the one on the new lock, in the same process or not. When both
/// find no store, each creates one; neither may destroy the files of the
/// store the other already opened, or what the other commits goes into
/// files nobody else sees.
#[test]
fn two_promotions_creating_the_store_at_once_share_one() {
    for round in 0..40 {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("grove.db");
        let start = std::sync::Arc::new(std::sync::Barrier::new(2));
        let writers: Vec<_> = (0..2)
            .map(|i| {
                let (db, start) = (db.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let conn = open_read_write(&db, 0).expect("open the store");
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES (?1, 1)",
                        [format!("writer-{i}")],
                    )
                    .expect("write");
                    conn
                })
            })
            .collect();
        let conns: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        let reader = Reader::open(&db).expect("reader");
        let seen: i64 = reader
            .conn
            .query_row(
                "SELECT count(*) FROM meta WHERE key LIKE 'writer-%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            seen, 2,
            "round {round}: a writer's commit is not in the store"
        );
        drop(conns);
    }
}

/// A store deleted between grove's look at it and SQLite's open is
/// reported as such, and not made again empty by SQLite: an empty
/// `grove.db` is refused as damage by every later member, so one
/// `rm -rf .grove` racing a promotion bricked the workspace.
#[test]
fn a_store_deleted_before_its_open_is_not_made_again_empty() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("grove.db");
    drop(open_read_write(&db, 0).expect("create the store"));
    std::fs::remove_file(&db).unwrap();
    match crate::store::open_existing(&db) {
        Err(crate::store::StoreError::Vanished(path)) => assert!(path.ends_with("grove.db")),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a store that is not there"),
    }
    assert!(!db.exists(), "SQLite made the store again");
}
