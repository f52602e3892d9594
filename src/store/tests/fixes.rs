//! One scenario per fault the table and the model found, each failing on
//! the code before its fix.

use super::{Exit, Store, expect_task};
use crate::protocol::{ErrorCode, EventData, FailureReason, Method, NewTask, TaskStatus};
use crate::store::tasks::InternalOp;

fn events_about(events: &[crate::protocol::Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.data {
            EventData::TaskUpdated { task } | EventData::TaskCreated { task } => {
                Some(task.id.clone())
            }
            EventData::TaskDeleted { id } => Some(id.clone()),
            _ => None,
        })
        .collect()
}

/// A relaunched task that fails at once (its own dependency is gone) must
/// fail the dependents its completion had released; they stayed queued,
/// and would have run, although their dependency had failed.
#[test]
fn a_relaunch_that_fails_at_once_fails_released_dependents() {
    let mut s = Store::new();
    let d = s.create(&[]).id;
    let x = s.create(&[&d]).id;
    let y = s.create(&[&x]).id;
    s.run(&d, "d1", Exit::Code0);
    s.run(&x, "x1", Exit::Code0);
    assert_eq!(s.status(&y), Some(TaskStatus::Queued));
    // d runs again and is deleted before completing: x's input is gone.
    s.ok(Method::TaskRelaunch {
        id: d.clone(),
        instructions: None,
        changes: Default::default(),
    });
    s.ok(Method::TaskDelete {
        id: d,
        force: false,
    });
    let x_now = expect_task(
        s.apply(&Method::TaskRelaunch {
            id: x,
            instructions: None,
            changes: Default::default(),
        })
        .result,
    );
    assert_eq!(x_now.status, TaskStatus::Failed);
    let y = s.task(&y).unwrap();
    assert_eq!(
        (y.status, y.failure_reason),
        (TaskStatus::Failed, Some(FailureReason::DependencyFailed))
    );
}

/// Relaunching one failed dependency must not touch a dependent that
/// another failed dependency still fails: it used to be rewritten (new
/// `finished_at`, an event waking its waiters) for nothing.
#[test]
fn rearming_leaves_a_dependent_another_dependency_still_fails() {
    let mut s = Store::new();
    let a = s.create(&[]).id;
    let b = s.create(&[]).id;
    let c = s.create(&[&a, &b]).id;
    s.ok(Method::TaskCancel { id: b });
    s.run(&a, "a1", Exit::Code1);
    let c_before = s.task(&c).unwrap();
    let out = s.apply(&Method::TaskRelaunch {
        id: a.clone(),
        instructions: None,
        changes: Default::default(),
    });
    assert!(out.result.is_ok());
    assert_eq!(events_about(&out.events), vec![a]);
    assert_eq!(s.task(&c).unwrap(), c_before);
}

/// A completed dependency that was purged stays satisfied for a retry too:
/// the retry was refused with "unknown dependency".
#[test]
fn a_retry_keeps_a_purged_completed_dependency_satisfied() {
    let mut s = Store::new();
    let d = s.create(&[]).id;
    let t = s.create(&[&d]).id;
    s.run(&d, "d1", Exit::Code0);
    s.run(&t, "t1", Exit::Code1);
    s.ok(Method::TaskPurge { id: d.clone() });
    let again = expect_task(s.apply(&Method::TaskRetry { id: t.clone() }).result);
    assert_eq!(again.status, TaskStatus::Queued);
    assert_eq!(again.retry_of.as_deref(), Some(t.as_str()));
    assert!(
        again.spec.dependencies.is_empty(),
        "{:?}",
        again.spec.dependencies
    );
}

/// A run that never started, on a task paused meanwhile, was left on the
/// task: it held a `max_parallel` slot and no one would ever end it.
#[test]
fn requeueing_a_paused_run_that_never_started_frees_its_slot() {
    let mut s = Store::new();
    let a = s.create(&[]).id;
    let b = s.create(&[]).id;
    let start = |id: &str, run: &str| InternalOp::Start {
        id: id.into(),
        run_id: run.into(),
        max_parallel: 1,
    };
    s.ok_internal(start(&a, "a1"));
    s.ok(Method::TaskPause { id: a.clone() });
    assert!(
        s.internal(&start(&b, "b1")).result.is_err(),
        "a keeps its slot"
    );
    s.ok_internal(InternalOp::Requeue {
        id: a.clone(),
        run_id: "a1".into(),
    });
    let a_now = s.task(&a).unwrap();
    assert_eq!((a_now.status, a_now.run_id), (TaskStatus::Paused, None));
    s.ok_internal(start(&b, "b1"));
    // Resumed, it waits for a slot like a task paused before it started.
    s.ok(Method::TaskResume {
        id: a.clone(),
        instructions: None,
        changes: Default::default(),
    });
    assert_eq!(s.status(&a), Some(TaskStatus::Queued));
}

/// A requeued run waits again, so a dependency that failed since (it was
/// relaunched after the run started) fails it like any waiting task.
#[test]
fn a_requeued_run_fails_when_a_dependency_failed_since() {
    let mut s = Store::new();
    let d = s.create(&[]).id;
    let t = s.create(&[&d]).id;
    s.run(&d, "d1", Exit::Code0);
    s.start(&t, "t1");
    s.ok(Method::TaskRelaunch {
        id: d.clone(),
        instructions: None,
        changes: Default::default(),
    });
    s.run(&d, "d2", Exit::Code1);
    assert_eq!(
        s.status(&t),
        Some(TaskStatus::Running),
        "a started task runs on"
    );
    s.ok_internal(InternalOp::Requeue {
        id: t.clone(),
        run_id: "t1".into(),
    });
    let t = s.task(&t).unwrap();
    assert_eq!(
        (t.status, t.failure_reason, t.run_id),
        (
            TaskStatus::Failed,
            Some(FailureReason::DependencyFailed),
            None
        )
    );
}

/// Purging a finished ancestor cut the walk up the parent chain short: the
/// level of a task spawned below it came out shallower than it is, and a
/// chain of agents could spawn past `max_delegation_depth`.
#[test]
fn purging_ancestors_keeps_the_delegation_level_of_their_descendants() {
    let mut s = Store::new();
    let child_of = |s: &mut Store, parent: &str| {
        let new = NewTask {
            prompt: "true".into(),
            parent_id: Some(parent.to_string()),
            ..Default::default()
        };
        s.apply(&Method::TaskCreate(new)).result
    };
    let a = s.create(&[]).id;
    let b = expect_task(child_of(&mut s, &a)).id;
    let c = expect_task(child_of(&mut s, &b)).id;
    s.run(&a, "a1", Exit::Code0);
    s.run(&b, "b1", Exit::Code0);
    s.ok(Method::TaskPurge { id: a });
    s.ok(Method::TaskPurge { id: b });
    // c stands at 2 (the default limit is 4): its child at 3, and one more
    // at 4, the last level allowed.
    let d = expect_task(child_of(&mut s, &c)).id;
    let e = expect_task(child_of(&mut s, &d)).id;
    let Err(refused) = child_of(&mut s, &e) else {
        panic!("a child of a task 4 levels down was created");
    };
    assert!(
        refused.message.contains("delegation too deep") && refused.message.contains("4 levels"),
        "{}",
        refused.message
    );
}

/// A prompt with a NUL byte was accepted, then failed to start as a
/// `spawn_error` naming nothing the user did: refused when written.
#[test]
fn a_prompt_with_a_nul_byte_is_refused_when_written() {
    let mut s = Store::new();
    let out = s.apply(&Method::TaskCreate(crate::protocol::NewTask {
        prompt: "echo a\0b".into(),
        ..Default::default()
    }));
    let err = out.result.expect_err("refused");
    assert_eq!(err.code, crate::protocol::ErrorCode::InvalidParams);
    assert!(err.message.contains("NUL"), "{}", err.message);
    assert_eq!(s.count(), 0);
}

/// An await's results were appended to a finished parent's prompt when it
/// was rerun: a shell parent's prompt is a command line, so the children's
/// words would have run as commands (and refusing them would refuse the
/// child's end). A shell parent is rerun as it was.
#[test]
fn a_shell_parent_is_resumed_without_its_childrens_words_in_its_command() {
    let mut s = Store::new();
    let (parent, child) = parent_awaiting_a_child(&mut s, "echo parent", "shell");
    // The child's end commits, and the parent runs again, as it was.
    s.run(&child, "c1", Exit::Code0);
    let p = s.task(&parent).unwrap();
    assert_eq!(p.spec.prompt, "echo parent");
    assert_eq!(p.status, crate::protocol::TaskStatus::Queued, "{p:?}");
}

/// An agent's conclusion is whatever it wrote: one of ~1 MB (a thousand
/// artifacts) made every event about its task bigger than a frame, which
/// no follower could read, and the parent awaiting it was never resumed.
/// A record keeps its texts bounded, and a results prompt stays within
/// its bound however big the conclusions are.
#[test]
fn a_huge_conclusion_is_kept_bounded_and_its_events_fit_a_frame() {
    use crate::protocol::{Conclusion, ConclusionSource, ConclusionStatus, TaskExit};
    let mut s = Store::new();
    let parent = s.create(&[]).id;
    let t = expect_task(
        s.apply(&Method::TaskCreate(NewTask {
            prompt: "true".into(),
            engine: Some("agent".into()),
            parent_id: Some(parent),
            ..Default::default()
        }))
        .result,
    )
    .id;
    s.start(&t, "r1");
    let huge = Conclusion {
        status: ConclusionStatus::Success,
        summary: "s".repeat(900_000),
        artifacts: vec!["a".repeat(1000); 1000],
        follow_up: vec!["f".repeat(5000); 10],
        confidence: None,
        source: ConclusionSource::Reported,
        error: None,
        progress: None,
        next_step: Some("n".repeat(100_000)),
        blocked_reason: None,
    };
    let out = s.apply(&Method::TaskFinished(TaskExit {
        id: t.clone(),
        run_id: "r1".into(),
        outcome: crate::protocol::ExitOutcome::Exited,
        exit_code: Some(0),
        signal: None,
        message: Some("m".repeat(100_000)),
        conclusion: Some(huge),
        warm: None,
    }));
    out.result.expect("a task's end is never refused");
    for e in &out.events {
        let frame = crate::protocol::encode(&e.data).len();
        assert!(
            frame < crate::protocol::MAX_FRAME_BYTES / 2,
            "{frame} bytes"
        );
    }
    let kept = s.task(&t).unwrap().conclusion.unwrap();
    assert!(kept.summary.len() < 40_000 && kept.summary.ends_with("bytes cut)"));
    assert_eq!(kept.artifacts.len(), 32);
    // The results prompt of two such children stays within its 64 KiB.
    let child = |id: &str| crate::store::tasks::awaits::Child {
        id: id.to_string(),
        task: s.task(&t),
        ended: true,
    };
    let children = vec![child("c1"), child("c2")];
    let rec = crate::protocol::AwaitRecord {
        id: "a".into(),
        parent_id: "p".into(),
        children: vec!["c1".into(), "c2".into()],
        policy: crate::protocol::AwaitPolicy::All,
        quorum: 2,
        created_at: 0,
        deadline: 0,
        state: crate::protocol::AwaitState::Satisfied,
        settled_at: None,
    };
    let prompt = crate::store::tasks::awaits::results_prompt(&rec, &children, rec.state);
    assert!(prompt.len() <= 64 * 1024, "{} bytes", prompt.len());
}

/// A prompt longer than a record keeps is refused where it is sent.
#[test]
fn a_prompt_longer_than_a_record_keeps_is_refused() {
    let mut s = Store::new();
    let out = s.apply(&Method::TaskCreate(NewTask {
        prompt: "x".repeat(crate::protocol::MAX_PROMPT_BYTES + 1),
        ..Default::default()
    }));
    let err = out.result.expect_err("refused");
    assert!(err.message.contains("more than the"), "{}", err.message);
}

/// An await's results are appended to a finished parent's prompt at each
/// resurrection; once the prompt passed what a record keeps, the relaunch
/// inside the child's end was refused, and so the child's end itself (and
/// its cancel), for good. The prompt is fitted instead: never refused.
#[test]
fn a_childs_end_is_never_refused_for_its_parents_prompt_length() {
    use crate::protocol::MAX_PROMPT_BYTES;
    let mut s = Store::new();
    let long = "p".repeat(MAX_PROMPT_BYTES - 10);
    let (parent, child) = parent_awaiting_a_child(&mut s, &long, "agent");
    s.run(&child, "c1", Exit::Code0);
    let p = s.task(&parent).unwrap();
    assert!(p.spec.prompt.len() <= MAX_PROMPT_BYTES);
    assert!(
        p.spec.prompt.contains("earlier text cut"),
        "the cut is said"
    );
    assert!(
        p.spec
            .prompt
            .contains(&format!("[delegated-result {child}"))
    );
    // A user's relaunch that would pass the bound is refused, with why.
    let out = s.apply(&Method::TaskRelaunch {
        id: child.clone(),
        instructions: Some("x".repeat(MAX_PROMPT_BYTES)),
        changes: Default::default(),
    });
    assert!(
        out.result
            .expect_err("refused")
            .message
            .contains("more than the")
    );
}

/// A parent (`prompt`, `engine`) that ran, awaited its one child and
/// ended its run: the child's end fires the await. (parent, child)
fn parent_awaiting_a_child(s: &mut Store, prompt: &str, engine: &str) -> (String, String) {
    let create =
        |s: &mut Store, new: NewTask| expect_task(s.apply(&Method::TaskCreate(new)).result).id;
    let parent = create(
        s,
        NewTask {
            prompt: prompt.into(),
            engine: Some(engine.into()),
            ..Default::default()
        },
    );
    s.start(&parent, "p1");
    let child = create(
        s,
        NewTask {
            prompt: "true".into(),
            parent_id: Some(parent.clone()),
            ..Default::default()
        },
    );
    awaits_then_ends_its_run(s, &parent, &child);
    (parent, child)
}

/// `parent`, running as run `p1`, awaits its one `child`, then its run
/// ends: the child's end fires the await.
fn awaits_then_ends_its_run(s: &mut Store, parent: &str, child: &str) {
    use crate::protocol::{AwaitPolicy, AwaitSpec};
    s.ok(Method::TaskAwait(AwaitSpec {
        parent_id: parent.into(),
        children: vec![child.into()],
        policy: AwaitPolicy::All,
        quorum: None,
        timeout_ms: None,
    }));
    s.ok(super::exit_method(parent, "p1", Exit::Code0));
}

/// A cancelled task's agent may still be ending when it spawns, retries or
/// relaunches a child (its tools can): the child would run on unseen after
/// `cancel --tree` read the tree. All refused.
#[test]
fn nothing_new_runs_below_a_cancelled_task() {
    let mut s = Store::new();
    let parent = s.create(&[]).id;
    s.start(&parent, "p1");
    let child = |parent: &str| {
        Method::TaskCreate(NewTask {
            prompt: "true".into(),
            engine: Some("agent".into()),
            parent_id: Some(parent.into()),
            ..Default::default()
        })
    };
    let first = expect_task(s.apply(&child(&parent)).result).id;
    s.run(&first, "f1", Exit::Code1);
    s.ok(Method::TaskCancel { id: parent.clone() });
    let relaunch = Method::TaskRelaunch {
        id: first.clone(),
        instructions: None,
        changes: Default::default(),
    };
    for method in [
        child(&parent),
        Method::TaskRetry { id: first.clone() },
        relaunch,
    ] {
        let refused = s.apply(&method).result.expect_err("refused");
        assert_eq!(refused.code, ErrorCode::Conflict, "{refused:?}");
        assert!(refused.message.contains("was cancelled"), "{refused:?}");
    }
    assert_eq!(s.status(&first), Some(TaskStatus::Failed));
}

/// A task's spec beside its prompt is bounded where it is created, by a
/// bound on its encoded size computed without encoding it on the store
/// thread: never below what it encodes to, and a spec past the bound is
/// refused, saying why.
#[test]
fn a_spec_too_big_for_a_frame_is_refused_by_its_size_bound() {
    let mut s = Store::new();
    let parent = s.create(&[]).id;
    let new = NewTask {
        prompt: "é".repeat(300),
        engine: Some("agent".into()),
        model: Some("m".into()),
        work_dir: Some("/w".into()),
        tags: vec!["t".into(); 40],
        extra_args: vec!["--flag".into(); 40],
        env: (0..40).map(|i| (format!("K{i}"), "v".repeat(i))).collect(),
        parent_id: Some(parent),
        ..Default::default()
    };
    let task = expect_task(s.apply(&Method::TaskCreate(new.clone())).result);
    let encoded = crate::protocol::encode(&task.spec).len();
    let bound = crate::store::tasks::spec_size_bound(&task.spec);
    assert!(
        bound >= encoded,
        "bound {bound} below the encoded {encoded}"
    );
    let huge = NewTask {
        env: [("BIG".to_string(), "x".repeat(700 * 1024))].into(),
        ..new
    };
    let refused = s
        .apply(&Method::TaskCreate(huge))
        .result
        .expect_err("refused");
    assert_eq!(refused.code, ErrorCode::InvalidParams, "{refused:?}");
    assert!(
        refused.message.contains("pass large values through a file"),
        "{refused:?}"
    );
}

/// An await on a child that pursues a goal in runs (a CLI engine's goal)
/// waits for the goal, not for its first run: the child's first run ending
/// fired the parent's await, before the goal rerun it, so the parent went
/// on with an iteration's partial result as the child's.
#[test]
fn an_await_on_a_cli_goal_child_waits_for_the_goal_to_end() {
    use crate::protocol::{Conclusion, ConclusionSource, ConclusionStatus, GoalSpec, GoalStatus};
    let mut s = Store::new();
    let parent = s.create(&[]).id;
    s.start(&parent, "p1");
    let goal = s.ok(Method::GoalCreate(GoalSpec {
        task: NewTask {
            prompt: "reach it".into(),
            engine: Some("agent".into()),
            parent_id: Some(parent.clone()),
            ..Default::default()
        },
        max_iterations: 5,
        max_duration_ms: 3_600_000,
        stall_after: 3,
    }));
    let child = match goal {
        crate::protocol::ReplyBody::Goal(g) => g.id,
        other => panic!("expected a goal, got {other:?}"),
    };
    awaits_then_ends_its_run(&mut s, &parent, &child);
    let state = |s: &Store| -> String {
        s.conn
            .query_row(
                "SELECT state FROM awaits WHERE parent_id = ?1",
                [&parent],
                |r| r.get(0),
            )
            .expect("the await")
    };
    let iteration = |s: &mut Store, run: &str, status: ConclusionStatus, progress: f64| {
        s.start(&child, run);
        let Method::TaskFinished(mut exit) = super::exit_method(&child, run, Exit::Code0) else {
            unreachable!()
        };
        exit.conclusion = Some(Conclusion {
            status,
            summary: format!("{run} done"),
            artifacts: vec![],
            follow_up: vec![],
            confidence: None,
            source: ConclusionSource::Reported,
            error: None,
            progress: Some(progress),
            next_step: None,
            blocked_reason: None,
        });
        s.ok(Method::TaskFinished(exit));
    };
    iteration(&mut s, "c1", ConclusionStatus::Partial, 40.0);
    assert_eq!(s.status(&child), Some(TaskStatus::Queued), "rerun");
    assert_eq!(state(&s), "pending", "fired at the goal's first iteration");
    iteration(&mut s, "c2", ConclusionStatus::Success, 100.0);
    let goal = crate::store::tasks::goals::get(&s.conn, &child)
        .unwrap()
        .unwrap();
    assert_eq!(goal.status, GoalStatus::Completed);
    assert_eq!(state(&s), "satisfied");
    let resumed = s.task(&parent).unwrap();
    assert!(
        resumed.spec.prompt.contains("c2 done") && !resumed.spec.prompt.contains("c1 done"),
        "{}",
        resumed.spec.prompt
    );
}
