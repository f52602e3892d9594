//! Which queued tasks a pass starts.

use super::*;

#[test]
fn an_idle_workspace_starts_nothing_and_does_not_tick() {
    let d = decide(&facts());
    assert_eq!(d, Decision::default());
}

#[test]
fn priority_first_then_creation_order() {
    let mut f = facts();
    f.max_parallel = 3;
    f.slots = Some(Slots {
        held: 0,
        queued: vec![
            queued("old-low", 0),
            queued("mid", 5),
            queued("new-low", 0),
            queued("high", 9),
        ],
        ..Default::default()
    });
    assert_eq!(started(&decide(&f)), ["high", "mid", "old-low"]);
}

#[test]
fn never_more_than_max_parallel() {
    let mut f = facts();
    f.max_parallel = 4;
    f.slots = Some(Slots {
        held: 3,
        queued: vec![queued("a", 0), queued("b", 0), queued("c", 0)],
        ..Default::default()
    });
    assert_eq!(started(&decide(&f)), ["a"]);

    // Full (or over, after `max_parallel` was lowered): nothing starts.
    for held in [4, 6] {
        f.slots.as_mut().unwrap().held = held;
        assert!(started(&decide(&f)).is_empty(), "held {held}");
    }
}

#[test]
fn a_paused_task_with_a_run_keeps_its_slot() {
    // The observer counts paused-with-a-run as held: one running and one
    // paused at max_parallel 2 leave no room, so resuming never exceeds it.
    let mut f = facts();
    f.runs = vec![
        run("running", TaskStatus::Running),
        run("paused", TaskStatus::Paused),
    ];
    f.runs[1].told_paused = Some(true);
    f.slots = Some(Slots {
        held: 2,
        queued: vec![queued("waiting", 0)],
        ..Default::default()
    });
    let d = decide(&f);
    assert!(started(&d).is_empty());
    assert!(others(&d).is_empty(), "{:?}", d.actions);
}

#[test]
fn only_queued_tasks_start_so_dependents_wait() {
    // A task whose dependencies are unfinished is `pending`, which the
    // observer never lists: only what the store released as `queued`
    // is started, and it starts on the pass after its release.
    let mut f = facts();
    f.slots = Some(Slots {
        held: 0,
        queued: Vec::new(),
        ..Default::default()
    });
    assert!(started(&decide(&f)).is_empty());
    f.slots = Some(Slots {
        held: 0,
        queued: vec![queued("released-dependent", 0)],
        ..Default::default()
    });
    assert_eq!(started(&decide(&f)), ["released-dependent"]);
}

#[test]
fn an_unreadable_store_starts_nothing_and_retries_on_the_tick() {
    let mut f = facts();
    f.slots = None;
    let d = decide(&f);
    assert!(d.actions.is_empty());
    assert!(d.retry);
}

#[test]
fn finalizing_comes_before_starting() {
    // The executor queues store writes in the decision's order: a slot the
    // finished run frees is free when the start asks the store for it.
    let mut f = facts();
    let mut done = run("done", TaskStatus::Running);
    done.alive = false;
    done.exit = Some(exit("done", 0));
    f.runs = vec![done];
    f.slots = Some(Slots {
        held: 0,
        queued: vec![queued("next", 0)],
        ..Default::default()
    });
    let d = decide(&f);
    assert!(matches!(d.actions[0], Action::Finish { .. }));
    assert_eq!(
        d.actions[1],
        Action::Start {
            task_id: "next".into()
        }
    );
}

#[test]
fn a_run_that_ended_frees_its_slot_in_the_same_pass() {
    // Full at max_parallel 2, but one shim is gone while its row still
    // says running: its end is committed before the starts, so one queued
    // task starts now, after the finish, not one pass later.
    let mut f = facts();
    f.runs = vec![
        run("ended", TaskStatus::Running),
        run("live", TaskStatus::Running),
    ];
    f.runs[0].alive = false;
    f.runs[0].exit = Some(exit("ended", 0));
    f.slots = Some(Slots {
        held: 2,
        queued: vec![queued("next", 0), queued("later", 0)],
        ..Default::default()
    });
    let d = decide(&f);
    assert_eq!(started(&d), ["next"]);
    let finish = d
        .actions
        .iter()
        .position(|a| matches!(a, Action::Finish { .. }));
    let start = d
        .actions
        .iter()
        .position(|a| matches!(a, Action::Start { .. }));
    assert!(
        finish.unwrap() < start.unwrap(),
        "the finish comes first: {:?}",
        d.actions
    );

    // Its row already ended (or is about another run): no slot to free.
    for row in [
        RowFact::Present(Row {
            status: TaskStatus::Completed,
            run_id: Some("r-ended".into()),
            pid: None,
        }),
        RowFact::Present(Row {
            status: TaskStatus::Running,
            run_id: Some("r-other".into()),
            pid: None,
        }),
        RowFact::Gone,
        RowFact::Unreadable,
    ] {
        f.runs[0].row = row.clone();
        assert!(started(&decide(&f)).is_empty(), "{row:?}");
    }
}

fn child(id: &str, parent: &str) -> Queued {
    Queued {
        parent: Some(parent.into()),
        ..queued(id, 0)
    }
}

fn kept(lender: &str, child: &str) -> Reserved {
    Reserved {
        lender: lender.into(),
        child: child.into(),
        priority: 0,
    }
}

#[test]
fn a_lent_slot_goes_to_the_lenders_child_not_the_queues_head() {
    let mut f = facts();
    f.max_parallel = 1;
    f.slots = Some(Slots {
        held: 0,
        queued: vec![queued("older", 9), child("child", "parent")],
        lent: vec!["parent".into()],
        reserved: vec![kept("parent", "child")],
    });
    assert_eq!(started(&decide(&f)), ["child"]);

    // A second slot nobody keeps goes to the queue's head as before.
    f.max_parallel = 2;
    assert_eq!(started(&decide(&f)), ["older", "child"]);

    // A child beyond the queue's head is started from the lender's list.
    f.max_parallel = 1;
    f.slots.as_mut().unwrap().queued = vec![queued("older", 9)];
    assert_eq!(started(&decide(&f)), ["child"]);

    // Full: even the kept slot waits for the count to come down.
    f.slots.as_mut().unwrap().held = 1;
    assert!(started(&decide(&f)).is_empty());
}

#[test]
fn one_lent_slot_starts_one_child() {
    let mut f = facts();
    f.max_parallel = 1;
    f.slots = Some(Slots {
        held: 0,
        queued: vec![child("first", "parent"), child("second", "parent")],
        lent: vec!["parent".into()],
        reserved: vec![kept("parent", "first")],
    });
    assert_eq!(started(&decide(&f)), ["first"]);
}
