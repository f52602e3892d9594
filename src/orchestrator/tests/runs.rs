//! What a pass does to the runs it supervises and to unconfirmed ones.

use super::*;

#[test]
fn a_finished_run_is_finalized_from_its_exit_record() {
    let mut f = facts();
    let mut r = run("t", TaskStatus::Running);
    r.alive = false;
    r.exit = Some(exit("t", 3));
    f.runs = vec![r];
    let d = decide(&f);
    let [Action::Finish { task_id, exit }] = d.actions.as_slice() else {
        panic!("{:?}", d.actions);
    };
    assert_eq!(task_id, "t");
    assert_eq!(exit.run_id, "r-t");
    assert_eq!(exit.exit_code, Some(3));
    assert_eq!(exit.outcome, ExitOutcome::Exited);
}

#[test]
fn a_run_gone_without_an_exit_record_is_lost() {
    let mut f = facts();
    let mut r = run("t", TaskStatus::Running);
    r.alive = false;
    f.runs = vec![r];
    assert_eq!(
        decide(&f).actions,
        [Action::Lost {
            task_id: "t".into(),
            run_id: "r-t".into(),
            shim_pid: 4242,
        }]
    );
}

#[test]
fn a_live_run_that_matches_its_row_is_left_alone() {
    let mut f = facts();
    f.runs = vec![run("t", TaskStatus::Running)];
    assert!(decide(&f).actions.is_empty());
}

#[test]
fn unwanted_runs_are_killed_once() {
    // Cancelled (directly or by a cascade from a failed dependency),
    // deleted, or superseded by a newer run of a retried task.
    let cancelled = run("cancelled", TaskStatus::Cancelled);
    let mut deleted = run("deleted", TaskStatus::Running);
    deleted.row = RowFact::Gone;
    let mut superseded = run("superseded", TaskStatus::Running);
    superseded.row = RowFact::Present(Row {
        status: TaskStatus::Running,
        run_id: Some("a-newer-run".into()),
        pid: None,
    });
    let mut f = facts();
    f.runs = vec![cancelled, deleted, superseded];
    let d = decide(&f);
    let killed: Vec<&str> = d
        .actions
        .iter()
        .map(|a| match a {
            Action::Kill { task_id, shim_pid } => {
                assert_eq!(*shim_pid, 4242);
                task_id.as_str()
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(killed, ["cancelled", "deleted", "superseded"]);

    for r in &mut f.runs {
        r.kill_sent = true;
    }
    assert!(decide(&f).actions.is_empty(), "a kill is sent once");
}

#[test]
fn a_run_that_ended_by_itself_is_not_killed() {
    // Completed or failed with this run: the shim is on its way out.
    let mut f = facts();
    f.runs = vec![
        run("ok", TaskStatus::Completed),
        run("bad", TaskStatus::Failed),
    ];
    assert!(decide(&f).actions.is_empty());
}

#[test]
fn an_unreadable_row_does_nothing_to_its_run() {
    let mut f = facts();
    let mut r = run("t", TaskStatus::Running);
    r.row = RowFact::Unreadable;
    f.runs = vec![r];
    assert!(decide(&f).actions.is_empty());
}

#[test]
fn pause_and_resume_are_told_once() {
    let mut f = facts();
    f.runs = vec![run("t", TaskStatus::Paused)];
    let pause = Action::Sync {
        task_id: "t".into(),
        pause: true,
    };
    assert_eq!(decide(&f).actions, [pause]);
    f.runs[0].told_paused = Some(true);
    assert!(decide(&f).actions.is_empty());

    f.runs[0].row = RowFact::Present(Row {
        status: TaskStatus::Running,
        run_id: Some("r-t".into()),
        pid: Some(7),
    });
    let resume = Action::Sync {
        task_id: "t".into(),
        pause: false,
    };
    assert_eq!(decide(&f).actions, [resume]);
}

#[test]
fn an_adopted_run_is_told_its_state_once_whatever_it_is() {
    // The old primary may have died between committing a pause and
    // signalling it.
    let mut f = facts();
    f.runs = vec![run("t", TaskStatus::Running)];
    f.runs[0].told_paused = None;
    assert_eq!(
        decide(&f).actions,
        [Action::Sync {
            task_id: "t".into(),
            pause: false,
        }]
    );
}

#[test]
fn an_older_shim_is_paused_through_its_agents_group() {
    let mut f = facts();
    let mut r = run("t", TaskStatus::Paused);
    r.record.as_mut().unwrap().pauses_itself = false;
    f.runs = vec![r];
    assert_eq!(
        decide(&f).actions,
        [Action::SignalAgent {
            task_id: "t".into(),
            pgid: 7,
            pause: true,
        }]
    );
    // Before its agent exists it cannot be told: nothing, and asked again.
    f.runs[0].record = Some(RunRecord {
        pauses_itself: false,
        ..record("t", None)
    });
    assert!(decide(&f).actions.is_empty());
}

#[test]
fn the_agents_pid_is_recorded_when_the_shim_reports_it() {
    let mut f = facts();
    let mut r = run("t", TaskStatus::Running);
    r.record = Some(record("t", Some(555)));
    f.runs = vec![r];
    assert_eq!(
        decide(&f).actions,
        [Action::SetPid {
            task_id: "t".into(),
            run_id: "r-t".into(),
            pid: 555,
        }]
    );
    // Not for a row that ended, nor for a run the row is no longer about.
    f.runs[0].row = RowFact::Present(Row {
        status: TaskStatus::Completed,
        run_id: Some("r-t".into()),
        pid: None,
    });
    assert!(decide(&f).actions.is_empty());
}

#[test]
fn an_unconfirmed_run_is_adopted_when_its_shim_lives() {
    let mut f = facts();
    let alive = Trace::Alive {
        shim_pid: 10,
        shim_start: 11,
    };
    f.unconfirmed = vec![unconfirmed("t", alive, f.now + SECOND)];
    let d = decide(&f);
    assert_eq!(
        d.actions,
        [Action::Adopt {
            task_id: "t".into(),
            run_id: "r-t".into(),
            shim_pid: 10,
            shim_start: 11,
        }]
    );
    assert!(d.still_unconfirmed.is_empty());
}

#[test]
fn an_unconfirmed_run_that_ended_is_finalized_or_lost() {
    let mut f = facts();
    let finished = Trace::Ended {
        shim_pid: 10,
        exit: Some(exit("a", 0)),
    };
    let vanished = Trace::Ended {
        shim_pid: 12,
        exit: None,
    };
    f.unconfirmed = vec![
        unconfirmed("a", finished, f.now + SECOND),
        unconfirmed("b", vanished, f.now + SECOND),
    ];
    let d = decide(&f);
    assert!(matches!(&d.actions[0], Action::Finish { task_id, .. } if task_id == "a"));
    assert_eq!(
        d.actions[1],
        Action::Lost {
            task_id: "b".into(),
            run_id: "r-b".into(),
            shim_pid: 12,
        }
    );
    assert!(d.still_unconfirmed.is_empty());
}

#[test]
fn a_run_that_never_showed_is_requeued_after_the_grace() {
    let mut f = facts();
    f.unconfirmed = vec![unconfirmed("t", Trace::Nothing, f.now + SECOND)];
    let d = decide(&f);
    assert!(d.actions.is_empty(), "still within the grace");
    assert_eq!(d.still_unconfirmed, ["t"]);

    f.now += 2 * SECOND;
    let d = decide(&f);
    assert_eq!(
        d.actions,
        [Action::Requeue {
            task_id: "t".into(),
            run_id: "r-t".into(),
        }]
    );
    assert!(d.still_unconfirmed.is_empty());
}
