//! `grove demo`: grove proving itself in under 30 seconds, with nothing but
//! this binary. A primary and three secondaries run as real processes on a
//! fresh temporary workspace; a small DAG of shell tasks is spawned from
//! different members; the primary is SIGKILLed mid-run; then every claim is
//! checked against the store and the members' own event logs — not asserted
//! by text. Exit 0 only if every check held.

use crate::client::Client;
use crate::local_cluster::LocalCluster;
use crate::protocol::{EventData, Method, NewTask, ReplyBody, TaskStatus};
use crate::stats::{Clock, read_seqs};
use crate::store::Reader;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Step {
    name: &'static str,
    script: &'static str,
    deps: &'static [&'static str],
    expect_exit: i32,
}

/// A build pipeline in miniature. Each step reports its own progress with
/// `grove progress` from inside the task, as an agent would.
const PIPELINE: &[Step] = &[
    Step {
        name: "build",
        script: "grove progress 30 compiling; sleep 1; grove progress 90 linking; sleep 0.5; echo built",
        deps: &[],
        expect_exit: 0,
    },
    Step {
        name: "lint",
        script: "grove progress 50 checking; sleep 2; echo 'lint: 2 warnings'",
        deps: &[],
        expect_exit: 0,
    },
    Step {
        name: "unit-tests",
        script: "for i in 1 2 3 4 5; do grove progress $((i * 20)) \"suite $i/5\"; sleep 0.6; done; echo '128 passed'",
        deps: &["build"],
        expect_exit: 0,
    },
    Step {
        name: "flaky-check",
        script: "sleep 2.5; echo 'flaky: 1 failure' >&2; exit 3",
        deps: &["build"],
        expect_exit: 3,
    },
    Step {
        name: "package",
        script: "grove progress 50 archiving; sleep 1; echo packaged",
        deps: &["unit-tests", "lint"],
        expect_exit: 0,
    },
];

pub async fn run() -> i32 {
    match demo().await {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            errln!("grove demo: {e}");
            1
        }
    }
}

async fn demo() -> Result<bool, String> {
    let clock = Clock(Instant::now());
    let mut c =
        LocalCluster::with_config("heartbeat_ms = 100\nmax_parallel = 4\nkill_grace_ms = 500\n")?;
    clock.say(format!("workspace {}", c.ws.root.display()));
    let logs: Vec<PathBuf> = (0..4)
        .map(|i| c.dir.path().join(format!("member-{i}.events")))
        .collect();
    let first = c.spawn_member_logged(Some(&logs[0]))?;
    let mut windows: Vec<Client> = (1..=4)
        .map(|i| c.client(&format!("demo-window-{i}")))
        .collect();
    let info = crate::client::wait_for_primary(&mut windows[0], Duration::from_secs(20))
        .await
        .map_err(|e| e.to_string())?;
    clock.say(format!("primary  pid {first} (epoch {})", info.epoch));
    let mut members = vec![first];
    for log in &logs[1..] {
        members.push(c.spawn_member_logged(Some(log))?);
    }
    c.wait_registered(3, info.epoch, first).await?;
    clock.say(format!(
        "secondaries pids {:?} registered and following",
        &members[1..]
    ));

    // The demo's own view of the event stream, to narrate and to check.
    let mut sub = crate::subscriber::subscribe(&c.ws, 1);

    let mut ids: BTreeMap<&str, String> = BTreeMap::new();
    let mut names: BTreeMap<String, &str> = BTreeMap::new();
    for (i, step) in PIPELINE.iter().enumerate() {
        let window = i % windows.len();
        let new = NewTask {
            prompt: step.script.to_string(),
            dependencies: step.deps.iter().map(|d| ids[d].clone()).collect(),
            tags: vec!["demo".into(), step.name.into()],
            ..Default::default()
        };
        let reply = windows[window]
            .call(Method::TaskCreate(new))
            .await
            .map_err(|e| e.to_string())?;
        let ReplyBody::Task(task) = reply else {
            return Err("unexpected reply to task.create".into());
        };
        clock.say(format!(
            "window {} spawned {:<12} {} {}",
            window + 1,
            step.name,
            &task.id[..8],
            if step.deps.is_empty() {
                String::new()
            } else {
                format!("(after {})", step.deps.join(", "))
            }
        ));
        names.insert(task.id.clone(), step.name);
        ids.insert(step.name, task.id.clone());
    }

    // Narrate until the build is done and the tests run, then kill.
    let mut seen_seqs = Vec::new();
    let mut killed_at: Option<Instant> = None;
    let mut promoted: Option<(u32, u64)> = None;
    let mut failover_ms = None;
    let mut done = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while done < PIPELINE.len() {
        if Instant::now() > deadline {
            return Err("the pipeline did not finish within 60 s".into());
        }
        let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(5), sub.events.recv()).await
        else {
            continue;
        };
        if event.seq > 0 {
            seen_seqs.push(event.seq);
        }
        match &event.data {
            EventData::TaskUpdated { task } => {
                let name = names.get(&task.id).copied().unwrap_or("?");
                match task.status {
                    TaskStatus::Running if task.progress_pct.is_some() => clock.say(format!(
                        "  {name:<12} {:>3}% {}",
                        task.progress_pct.unwrap_or(0),
                        task.progress_text.as_deref().unwrap_or("")
                    )),
                    TaskStatus::Running if task.pid.is_none() => {
                        clock.say(format!("  {name:<12} running"))
                    }
                    s if s.is_terminal() => {
                        if name != "after-kill" {
                            done += 1;
                        }
                        clock.say(format!(
                            "  {name:<12} {} (exit code {})",
                            s.as_str(),
                            task.exit_code.map(|c| c.to_string()).unwrap_or("-".into())
                        ));
                    }
                    _ => {}
                }
                let tests_running = name == "unit-tests" && task.status == TaskStatus::Running;
                if tests_running && killed_at.is_none() {
                    clock.say(format!(
                        ">>> kill -9 the primary (pid {first}) while 3 tasks run"
                    ));
                    unsafe { libc::kill(first as i32, libc::SIGKILL) };
                    killed_at = Some(Instant::now());
                    c.reap();
                    // A window writes as soon as a new primary accepts it.
                    let probe = NewTask {
                        prompt: "echo written after the failover".into(),
                        tags: vec!["demo".into(), "after-failover".into()],
                        ..Default::default()
                    };
                    let reply = windows[3]
                        .call(Method::TaskCreate(probe))
                        .await
                        .map_err(|e| e.to_string())?;
                    let ms = killed_at.map(|k| k.elapsed().as_secs_f64() * 1000.0);
                    failover_ms = ms;
                    if let ReplyBody::Task(t) = reply {
                        names.insert(t.id.clone(), "after-kill");
                        ids.insert("after-failover", t.id.clone());
                    }
                    clock.say(format!(
                        ">>> a write was accepted {:.1} ms after the kill",
                        ms.unwrap_or(0.0)
                    ));
                }
            }
            EventData::Promoted { pid, epoch, .. } if killed_at.is_some() => {
                promoted = Some((*pid, *epoch));
                clock.say(format!(">>> pid {pid} promoted itself: epoch {epoch}"));
            }
            _ => {}
        }
    }
    // The extra write must finish too.
    let all: Vec<String> = ids.values().cloned().collect();
    let outcome = crate::waiter::wait(
        &c.ws,
        &all,
        crate::waiter::Policy::All,
        Some(Duration::from_secs(30)),
        |_| {},
    )
    .await?;

    outln!();
    outln!("checks:");
    let mut ok = true;
    let mut check = |passed: bool, what: String| {
        outln!("  [{}] {what}", if passed { "ok" } else { "FAILED" });
        ok &= passed;
    };
    let reader = Reader::open(&c.ws.db_path()).map_err(|e| e.to_string())?;
    check(
        promoted.is_some_and(|(_, e)| e == info.epoch + 1),
        format!(
            "exactly one promotion after the kill: {}",
            promoted
                .map(|(p, e)| format!("pid {p}, epoch {e}"))
                .unwrap_or("none".into())
        ),
    );
    check(
        failover_ms.is_some(),
        format!(
            "failover measured: kill → write accepted in {:.1} ms",
            failover_ms.unwrap_or(f64::NAN)
        ),
    );
    for step in PIPELINE {
        let t = reader.task(&ids[step.name]).map_err(|e| e.to_string())?;
        let code = t.as_ref().and_then(|t| t.exit_code);
        check(
            t.as_ref().is_some_and(|t| t.status.is_terminal()) && code == Some(step.expect_exit),
            format!(
                "{:<12} finished with its true exit code {} (recorded: {})",
                step.name,
                step.expect_exit,
                code.map(|c| c.to_string()).unwrap_or("none".into())
            ),
        );
    }
    check(
        !outcome.timed_out,
        "every task reached a final state".to_string(),
    );
    let stored = reader
        .tasks(&Default::default())
        .map_err(|e| e.to_string())?;
    let lost: Vec<&String> = ids
        .values()
        .filter(|id| !stored.iter().any(|t| &t.id == *id))
        .collect();
    check(
        lost.is_empty() && stored.len() == ids.len(),
        format!(
            "no acknowledged write lost: {} acknowledged, {} stored",
            ids.len(),
            stored.len()
        ),
    );
    let last = reader.last_seq().map_err(|e| e.to_string())?;
    check(
        contiguous(&seen_seqs, 1),
        format!(
            "the demo's subscriber saw events 1..{} with no gap",
            seen_seqs.last().copied().unwrap_or(0)
        ),
    );
    // Survivors must have caught up to the end of the log.
    for (i, log) in logs.iter().enumerate().skip(1) {
        let seqs = read_seqs(log);
        let first_seq = seqs.first().copied().unwrap_or(0);
        let caught_up = wait_until_seq(log, last).await;
        check(
            caught_up && contiguous(&read_seqs(log), first_seq),
            format!(
                "secondary {} (pid {}) saw every event from {first_seq} to {last}, none missed",
                i, members[i]
            ),
        );
    }
    let integrity = reader.integrity_check().map_err(|e| e.to_string())?;
    check(
        integrity == "ok",
        format!("PRAGMA integrity_check: {integrity}"),
    );
    drop(reader);
    drop(sub);
    // Stop the members gracefully, then make sure nothing is left.
    for pid in &members[1..] {
        unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
    }
    let stop_deadline = Instant::now() + Duration::from_secs(10);
    while members.iter().any(|p| crate::proc::running(*p)) && Instant::now() < stop_deadline {
        c.reap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.reap();
    check(
        !members.iter().any(|p| crate::proc::running(*p)),
        "every process the demo started has exited".into(),
    );
    if !ok && std::env::var_os("GROVE_DEMO_KEEP").is_some() {
        let kept = c.dir.path().to_path_buf();
        std::mem::forget(c);
        outln!("kept {} for inspection", kept.display());
    }
    outln!();
    outln!(
        "{} in {:.1} s",
        if ok {
            "all checks passed"
        } else {
            "SOME CHECKS FAILED"
        },
        clock.0.elapsed().as_secs_f64()
    );
    Ok(ok)
}

async fn wait_until_seq(path: &std::path::Path, last: u64) -> bool {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if read_seqs(path).last().is_some_and(|s| *s >= last) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn contiguous(seqs: &[u64], from: u64) -> bool {
    seqs.first().is_some_and(|f| *f == from) && seqs.windows(2).all(|w| w[1] == w[0] + 1)
}
