//! Slot loans (`tasks::slot_loans`): a running task blocked in a wait is
//! not counted as holding a slot, for its current run, while its loan is
//! renewed; and nothing else changes.

use super::{Exit, Store};
use crate::protocol::{ErrorCode, EventData, Method, TaskStatus};
use crate::store::tasks::InternalOp;

fn start(s: &mut Store, id: &str, run: &str) -> bool {
    let op = InternalOp::Start {
        id: id.into(),
        run_id: run.into(),
        max_parallel: 1,
    };
    s.internal(&op).result.is_ok()
}

fn lend(s: &mut Store, id: &str, lend: bool) -> Vec<EventData> {
    let out = s.apply(&Method::TaskLendSlot {
        id: id.into(),
        lend,
    });
    out.result.expect("task.lend_slot applied");
    out.events.into_iter().map(|e| e.data).collect()
}

fn slot_event(id: &str, run: &str, lent: bool) -> EventData {
    EventData::TaskSlot {
        id: id.into(),
        run_id: run.into(),
        lent,
    }
}

#[test]
fn a_lent_slot_lets_a_queued_task_start_and_taking_it_back_holds_the_next() {
    let mut s = Store::new();
    let (parent, child, other) = (s.create(&[]).id, s.create(&[]).id, s.create(&[]).id);
    assert!(start(&mut s, &parent, "p1"));
    assert!(
        !start(&mut s, &child, "c1"),
        "the parent holds the only slot"
    );

    assert_eq!(
        lend(&mut s, &parent, true),
        [slot_event(&parent, "p1", true)]
    );
    assert!(start(&mut s, &child, "c1"), "the lent slot is free");
    assert!(!start(&mut s, &other, "o1"), "the child holds it now");
    assert!(
        lend(&mut s, &parent, true).is_empty(),
        "a renewal is no event"
    );

    assert_eq!(
        lend(&mut s, &parent, false),
        [slot_event(&parent, "p1", false)]
    );
    assert!(lend(&mut s, &parent, false).is_empty(), "nothing was lent");
    s.ok(super::exit_method(&child, "c1", Exit::Code0));
    assert!(
        !start(&mut s, &other, "o1"),
        "the parent holds its slot again"
    );
    assert_eq!(s.status(&parent), Some(TaskStatus::Running));
}

#[test]
fn a_loan_counts_only_while_in_force_for_the_running_run() {
    let mut s = Store::new();
    let (parent, child) = (s.create(&[]).id, s.create(&[]).id);
    assert!(start(&mut s, &parent, "p1"));
    lend(&mut s, &parent, true);
    let set = |s: &Store, sql: &str| s.conn.execute(sql, []).expect("update the loan");

    set(&s, "UPDATE slot_loans SET until = 1");
    assert!(!start(&mut s, &child, "c1"), "a lapsed loan lends nothing");
    // Set far ahead (the clock was set back since): not trusted either.
    set(&s, "UPDATE slot_loans SET until = 32503680000000");
    assert!(!start(&mut s, &child, "c1"), "a loan beyond its length");
    lend(&mut s, &parent, true);
    set(&s, "UPDATE slot_loans SET run_id = 'an-earlier-run'");
    assert!(!start(&mut s, &child, "c1"), "another run's loan");
    lend(&mut s, &parent, true);
    s.ok(Method::TaskPause { id: parent.clone() });
    assert!(!start(&mut s, &child, "c1"), "a paused task holds its slot");
    s.ok(Method::TaskResume {
        id: parent.clone(),
        instructions: None,
        changes: Default::default(),
    });
    assert!(start(&mut s, &child, "c1"), "running again, still lent");
}

#[test]
fn only_a_running_task_lends_and_a_deleted_task_leaves_no_loan() {
    let mut s = Store::new();
    let queued = s.create(&[]).id;
    let refused = s.apply(&Method::TaskLendSlot {
        id: queued.clone(),
        lend: true,
    });
    let e = refused.result.expect_err("a queued task holds no slot");
    assert_eq!(e.code, ErrorCode::Conflict, "{e:?}");
    assert!(
        lend(&mut s, &queued, false).is_empty(),
        "giving back is fine"
    );
    let missing = s.apply(&Method::TaskLendSlot {
        id: "f".repeat(32),
        lend: true,
    });
    assert_eq!(missing.result.unwrap_err().code, ErrorCode::NotFound);

    let t = s.create(&[]).id;
    s.start(&t, "t1");
    lend(&mut s, &t, true);
    s.ok(Method::TaskDelete {
        id: t.clone(),
        force: true,
    });
    let rows: i64 = (s.conn)
        .query_row("SELECT COUNT(*) FROM slot_loans", [], |r| r.get(0))
        .expect("count loans");
    assert_eq!(rows, 0);
}
