//! Slot loans (`tasks::slot_loans`): a running task blocked in a wait for
//! its children is not counted as holding a slot, for the run it waits in,
//! while a waiter's loan is renewed and a child may still need a slot; and
//! nothing else changes.

use super::{Exit, Store, expect_task};
use crate::protocol::{ErrorCode, EventData, Method, NewTask};
use crate::store::tasks::InternalOp;

fn start(s: &mut Store, id: &str, run: &str) -> bool {
    let op = InternalOp::Start {
        id: id.into(),
        run_id: run.into(),
        max_parallel: 1,
    };
    s.internal(&op).result.is_ok()
}

fn child_of(s: &mut Store, parent: &str) -> String {
    let new = NewTask {
        prompt: "true".into(),
        engine: Some("agent".into()),
        parent_id: Some(parent.into()),
        ..Default::default()
    };
    expect_task(s.apply(&Method::TaskCreate(new)).result).id
}

fn lend_method(id: &str, run: &str, waiter: &str, lend: bool) -> Method {
    Method::TaskLendSlot {
        id: id.into(),
        run_id: run.into(),
        waiter: waiter.into(),
        lend,
    }
}

/// Applies a lend that must succeed; the events it appended.
fn lend(s: &mut Store, id: &str, run: &str, waiter: &str, on: bool) -> Vec<EventData> {
    let out = s.apply(&lend_method(id, run, waiter, on));
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
fn a_lent_slot_lets_a_child_start_until_the_last_waiter_takes_it_back() {
    let mut s = Store::new();
    let parent = s.create(&[]).id;
    let other = s.create(&[]).id;
    assert!(start(&mut s, &parent, "p1"));
    let child = child_of(&mut s, &parent);
    assert!(
        !start(&mut s, &child, "c1"),
        "the parent holds the only slot"
    );

    let lent = slot_event(&parent, "p1", true);
    assert_eq!(lend(&mut s, &parent, "p1", "w1", true), [lent]);
    assert!(start(&mut s, &child, "c1"), "the lent slot is free");
    assert!(!start(&mut s, &other, "o1"), "the child holds it now");
    assert!(
        lend(&mut s, &parent, "p1", "w1", true).is_empty(),
        "a renewal"
    );
    assert!(
        lend(&mut s, &parent, "p1", "w2", true).is_empty(),
        "a second waiter"
    );
    assert!(
        lend(&mut s, &parent, "p1", "w1", false).is_empty(),
        "w2 still waits"
    );
    let back = slot_event(&parent, "p1", false);
    assert_eq!(lend(&mut s, &parent, "p1", "w2", false), [back]);
    assert!(
        lend(&mut s, &parent, "p1", "w2", false).is_empty(),
        "nothing lent"
    );
    s.ok(super::exit_method(&child, "c1", Exit::Code0));
    assert!(
        !start(&mut s, &other, "o1"),
        "the parent holds its slot again"
    );
}

#[test]
fn a_loan_counts_only_while_in_force() {
    let mut s = Store::new();
    let parent = s.create(&[]).id;
    let other = s.create(&[]).id;
    assert!(start(&mut s, &parent, "p1"));
    let child = child_of(&mut s, &parent);
    lend(&mut s, &parent, "p1", "w", true);
    let set = |s: &Store, sql: &str| s.conn.execute(sql, []).expect("update the loan");

    set(&s, "UPDATE slot_loans SET until = 1");
    assert!(!start(&mut s, &child, "c1"), "a lapsed loan lends nothing");
    // Set far ahead (the clock was set back since): not trusted either.
    set(&s, "UPDATE slot_loans SET until = 32503680000000");
    assert!(!start(&mut s, &child, "c1"), "a loan beyond its length");
    lend(&mut s, &parent, "p1", "w", true);
    s.ok(Method::TaskPause { id: parent.clone() });
    assert!(!start(&mut s, &child, "c1"), "a paused task holds its slot");
    s.ok(Method::TaskResume {
        id: parent.clone(),
        instructions: None,
        changes: Default::default(),
    });
    assert!(start(&mut s, &child, "c1"), "running again, still lent");
    // Its children ended: the task waits for nothing of its own.
    s.ok(super::exit_method(&child, "c1", Exit::Code0));
    assert!(!start(&mut s, &other, "o1"), "no unfinished child");
}

#[test]
fn only_a_running_task_lends_for_the_run_it_runs() {
    let mut s = Store::new();
    let t = s.create(&[]).id;
    let refused = |s: &mut Store, m: Method| s.apply(&m).result.expect_err("refused").code;
    assert_eq!(
        refused(&mut s, lend_method(&t, "r1", "w", true)),
        ErrorCode::Conflict,
        "a queued task holds no slot"
    );
    assert!(
        lend(&mut s, &t, "r1", "w", false).is_empty(),
        "giving back is fine"
    );
    let missing = "f".repeat(32);
    assert_eq!(
        refused(&mut s, lend_method(&missing, "r1", "w", true)),
        ErrorCode::NotFound
    );
    s.start(&t, "t2");
    let out = s.apply(&lend_method(&t, "t1", "w", true));
    let e = out.result.expect_err("a waiter of an earlier run");
    assert!(e.message.contains("in run t2, not t1"), "{e:?}");
    lend(&mut s, &t, "t2", "w", true);
    s.ok(Method::TaskDelete {
        id: t.clone(),
        force: true,
    });
    let rows: i64 = (s.conn)
        .query_row("SELECT COUNT(*) FROM slot_loans", [], |r| r.get(0))
        .expect("count loans");
    assert_eq!(rows, 0, "a deleted task's loans go with it");
}

/// The slot events of an outcome.
fn slot_events(out: super::Outcome) -> Vec<EventData> {
    out.events
        .into_iter()
        .map(|e| e.data)
        .filter(|d| matches!(d, EventData::TaskSlot { .. }))
        .collect()
}

#[test]
fn a_run_that_ends_or_is_queued_again_takes_its_lent_slot_back_with_an_event() {
    let mut s = Store::new();
    let ended = s.create(&[]).id;
    assert!(start(&mut s, &ended, "e1"));
    child_of(&mut s, &ended);
    lend(&mut s, &ended, "e1", "w", true);
    let out = s.apply(&super::exit_method(&ended, "e1", Exit::Code0));
    assert_eq!(slot_events(out), [slot_event(&ended, "e1", false)]);

    let requeued = s.create(&[]).id;
    assert!(start(&mut s, &requeued, "r1"));
    child_of(&mut s, &requeued);
    lend(&mut s, &requeued, "r1", "w", true);
    let out = s.internal(&InternalOp::Requeue {
        id: requeued.clone(),
        run_id: "r1".into(),
    });
    assert_eq!(slot_events(out), [slot_event(&requeued, "r1", false)]);

    // A loan that lapsed ended long ago: no event for it now.
    let lapsed = s.create(&[]).id;
    assert!(start(&mut s, &lapsed, "l1"));
    child_of(&mut s, &lapsed);
    lend(&mut s, &lapsed, "l1", "w", true);
    (s.conn)
        .execute("UPDATE slot_loans SET until = 1", [])
        .expect("lapse the loan");
    let out = s.apply(&super::exit_method(&lapsed, "l1", Exit::Code1));
    assert!(slot_events(out).is_empty());
    let rows: i64 = (s.conn)
        .query_row("SELECT COUNT(*) FROM slot_loans", [], |r| r.get(0))
        .expect("count loans");
    assert_eq!(rows, 0, "ended runs keep no loans");
}

/// A task that waits with no unfinished child of its own (`grove wait` on
/// another's task) lends nothing, and no `task.slot` says it did.
#[test]
fn a_task_without_an_unfinished_child_lends_nothing() {
    let mut s = Store::new();
    let t = s.create(&[]).id;
    assert!(start(&mut s, &t, "t1"));
    assert!(lend(&mut s, &t, "t1", "w", true).is_empty(), "no event");
    let rows: i64 = (s.conn)
        .query_row("SELECT COUNT(*) FROM slot_loans", [], |r| r.get(0))
        .expect("count loans");
    assert_eq!(rows, 0, "no loan");
    child_of(&mut s, &t);
    assert_eq!(
        lend(&mut s, &t, "t1", "w", true),
        [slot_event(&t, "t1", true)]
    );
}

fn start_with(s: &mut Store, id: &str, run: &str, max_parallel: usize) -> Result<(), String> {
    let op = InternalOp::Start {
        id: id.into(),
        run_id: run.into(),
        max_parallel,
    };
    s.internal(&op).result.map(|_| ()).map_err(|e| e.message)
}

/// A lent slot goes to the lender's children: an older unrelated task
/// queued ahead of them does not take it (and then run over the limit
/// once the slot is taken back); it still takes a slot nobody keeps.
#[test]
fn a_lent_slot_is_kept_for_the_lenders_children() {
    let mut s = Store::new();
    let parent = s.create(&[]).id;
    let other = s.create(&[]).id;
    assert!(start(&mut s, &parent, "p1"));
    let child = child_of(&mut s, &parent);
    let second = child_of(&mut s, &parent);
    lend(&mut s, &parent, "p1", "w", true);

    let e = start_with(&mut s, &other, "o1", 1).expect_err("kept for the children");
    assert!(e.contains("kept for the children"), "{e}");
    assert_eq!(
        start_with(&mut s, &other, "o1", 2),
        Ok(()),
        "a slot nobody keeps"
    );
    assert_eq!(start_with(&mut s, &child, "c1", 2), Ok(()), "the kept slot");
    assert!(
        start_with(&mut s, &second, "c2", 2).is_err(),
        "one slot lent, one child in it"
    );
    // The child in the slot lends it on to its own child: the slot is the
    // child's now, so the parent keeps nothing for its second child.
    let grandchild = child_of(&mut s, &child);
    lend(&mut s, &child, "c1", "w", true);
    assert_eq!(start_with(&mut s, &grandchild, "g1", 2), Ok(()));
}

/// A lender keeps nothing while none of its children can start: they wait
/// for dependencies, one of which may be what must run in the slot.
#[test]
fn a_lender_keeps_no_slot_for_children_that_cannot_start() {
    let mut s = Store::new();
    let dependency = s.create(&[]).id;
    let parent = s.create(&[]).id;
    assert!(start(&mut s, &parent, "p1"));
    let new = NewTask {
        prompt: "true".into(),
        engine: Some("agent".into()),
        parent_id: Some(parent.clone()),
        dependencies: vec![dependency.clone()],
        ..Default::default()
    };
    expect_task(s.apply(&Method::TaskCreate(new)).result);
    lend(&mut s, &parent, "p1", "w", true);
    assert_eq!(start_with(&mut s, &dependency, "d1", 1), Ok(()));
}
