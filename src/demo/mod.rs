//! `grove demo`: grove proving itself in under 30 seconds, with nothing but
//! this binary. A primary and three secondaries run as real processes on a
//! fresh temporary workspace; a small DAG of shell tasks and an agent
//! conversation (conversation.rs) and a goal the agent pursues over three
//! turns (goal.rs) are spawned from different members; the
//! primary is SIGKILLed mid-run; then every claim is checked against the
//! store and the members' own event logs — not asserted by text. Exit 0
//! only if every check held.

mod conversation;
mod goal;

use crate::client::Client;
use crate::local_cluster::LocalCluster;
use crate::protocol::{EventData, Method, NewTask, ReplyBody, TaskStatus};
use crate::stats::{Clock, read_seqs};
use crate::store::Reader;
use conversation::Conversation;
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

/// Cluster settings: fast heartbeats so the narration is live, room for the
/// pipeline's parallel steps, a short kill grace.
const CONFIG: &str = "heartbeat_ms = 100\nmax_parallel = 4\nkill_grace_ms = 500\n";
/// The whole pipeline must be done within this (it takes ~6 s).
const PIPELINE_DEADLINE: Duration = Duration::from_secs(60);
/// How long to wait for the last writes and for the members to stop.
const WIND_DOWN: Duration = Duration::from_secs(30);
const STOP_DEADLINE: Duration = Duration::from_secs(10);

async fn demo() -> Result<bool, String> {
    let mut d = Demo::start().await?;
    d.spawn_pipeline().await?;
    let story = d.narrate_and_kill().await?;
    let ok = d.check(&story).await?;
    d.finish(ok);
    Ok(ok)
}

/// The running demo: its cluster, the windows that write, what was spawned.
struct Demo {
    clock: Clock,
    c: LocalCluster,
    /// The members' own event logs (the first is the primary's).
    logs: Vec<PathBuf>,
    members: Vec<u32>,
    windows: Vec<Client>,
    first_epoch: u64,
    sub: crate::subscriber::Subscription,
    ids: BTreeMap<&'static str, String>,
    names: BTreeMap<String, &'static str>,
    agent: Option<Conversation>,
    goal: Option<goal::Goal>,
}

/// What happened while the pipeline ran.
#[derive(Default)]
struct Story {
    seen_seqs: Vec<u64>,
    /// The progress last narrated per task: a row saved again for another
    /// reason (its pid recorded) must not print the same line twice.
    last_progress: BTreeMap<String, (Option<u8>, Option<String>)>,
    killed_at: Option<Instant>,
    promoted: Option<(u32, u64)>,
    failover_ms: Option<f64>,
    done: usize,
}

impl Demo {
    /// A primary and three secondaries, registered and following.
    async fn start() -> Result<Demo, String> {
        let clock = Clock::start();
        let config = format!("{CONFIG}{}", conversation::engine_config()?);
        let mut c = LocalCluster::with_config(&config)?;
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
        let sub = crate::subscriber::subscribe(&c.ws, 1);
        Ok(Demo {
            clock,
            c,
            logs,
            members,
            windows,
            first_epoch: info.epoch,
            sub,
            ids: BTreeMap::new(),
            names: BTreeMap::new(),
            agent: None,
            goal: None,
        })
    }

    /// Each step from another window, as separate editors would.
    async fn spawn_pipeline(&mut self) -> Result<(), String> {
        for (i, step) in PIPELINE.iter().enumerate() {
            let window = i % self.windows.len();
            let new = NewTask {
                prompt: step.script.to_string(),
                dependencies: step.deps.iter().map(|d| self.ids[d].clone()).collect(),
                tags: vec!["demo".into(), step.name.into()],
                ..Default::default()
            };
            let reply = self.windows[window]
                .call(Method::TaskCreate(new))
                .await
                .map_err(|e| e.to_string())?;
            let ReplyBody::Task(task) = reply else {
                return Err("unexpected reply to task.create".into());
            };
            let after = if step.deps.is_empty() {
                String::new()
            } else {
                format!("(after {})", step.deps.join(", "))
            };
            self.clock.say(format!(
                "window {} spawned {:<12} {} {after}",
                window + 1,
                step.name,
                &task.id[..8],
            ));
            self.names.insert(task.id.clone(), step.name);
            self.ids.insert(step.name, task.id.clone());
        }
        let agent = Conversation::start(&mut self.windows[2]).await?;
        self.clock.say(format!(
            "window 3 spawned {:<12} {} (an ACP agent, its session kept)",
            "agent",
            &agent.id[..8]
        ));
        self.names.insert(agent.id.clone(), "agent");
        self.ids.insert("agent", agent.id.clone());
        self.agent = Some(agent);
        let goal = goal::Goal::start(&mut self.windows[1]).await?;
        self.clock.say(format!(
            "window 2 set a   {:<12} {} (the agent pursues it over turns, until it reports success)",
            "goal",
            &goal.id[..8]
        ));
        self.names.insert(goal.id.clone(), "goal");
        self.ids.insert("goal", goal.id.clone());
        self.goal = Some(goal);
        Ok(())
    }

    /// Narrates the events until the pipeline is done; kills the primary
    /// the moment the unit tests run.
    async fn narrate_and_kill(&mut self) -> Result<Story, String> {
        let mut story = Story::default();
        let deadline = Instant::now() + PIPELINE_DEADLINE;
        // The pipeline's steps, the agent's conversation and its goal.
        while story.done < PIPELINE.len() + 2 {
            if Instant::now() > deadline {
                return Err("the pipeline did not finish within 60 s".into());
            }
            let next = tokio::time::timeout(Duration::from_secs(5), self.sub.events.recv()).await;
            let Ok(Some(event)) = next else {
                continue;
            };
            if event.seq > 0 {
                story.seen_seqs.push(event.seq);
            }
            match &event.data {
                EventData::TaskUpdated { task } => {
                    let name = self.names.get(&task.id).copied().unwrap_or("?");
                    self.narrate(name, task, &mut story);
                    if name == "agent"
                        && let Some(agent) = self.agent.as_mut()
                        && let Some(line) = agent.on_update(&mut self.windows[2], task).await?
                    {
                        self.clock.say(format!("  {name:<12} {line}"));
                    }
                    let tests_running = name == "unit-tests" && task.status == TaskStatus::Running;
                    if tests_running && story.killed_at.is_none() {
                        self.kill_primary(&mut story).await?;
                    }
                }
                EventData::GoalUpdated { goal } => {
                    if let Some(line) = self.goal.as_mut().and_then(|g| g.on_update(goal)) {
                        self.clock.say(format!("  {:<12} {line}", "goal"));
                    }
                }
                EventData::Promoted { pid, epoch, .. } if story.killed_at.is_some() => {
                    story.promoted = Some((*pid, *epoch));
                    self.clock
                        .say(format!(">>> pid {pid} promoted itself: epoch {epoch}"));
                }
                _ => {}
            }
        }
        Ok(story)
    }

    fn narrate(&self, name: &str, task: &crate::protocol::TaskRecord, story: &mut Story) {
        match task.status {
            TaskStatus::Running if task.progress_pct.is_some() => {
                let progress = (task.progress_pct, task.progress_text.clone());
                if story.last_progress.get(&task.id) == Some(&progress) {
                    return;
                }
                self.clock.say(format!(
                    "  {name:<12} {:>3}% {}",
                    task.progress_pct.unwrap_or(0),
                    task.progress_text.as_deref().unwrap_or("")
                ));
                story.last_progress.insert(task.id.clone(), progress);
            }
            TaskStatus::Running if task.pid.is_none() => {
                self.clock.say(format!("  {name:<12} running"))
            }
            s if s.is_terminal() => {
                if name != "after-kill" {
                    story.done += 1;
                }
                self.clock.say(format!(
                    "  {name:<12} {} (exit code {})",
                    s.as_str(),
                    task.exit_code.map(|c| c.to_string()).unwrap_or("-".into())
                ));
            }
            _ => {}
        }
    }

    /// `kill -9` of the primary, then a write from a window, timed: the
    /// failover as a user sees it.
    async fn kill_primary(&mut self, story: &mut Story) -> Result<(), String> {
        let first = self.members[0];
        self.clock.say(format!(
            ">>> kill -9 the primary (pid {first}) while 3 tasks and an agent's turn run"
        ));
        unsafe { libc::kill(first as i32, libc::SIGKILL) };
        let killed_at = Instant::now();
        story.killed_at = Some(killed_at);
        self.c.reap();
        // A window writes as soon as a new primary accepts it.
        let probe = NewTask {
            prompt: "echo written after the failover".into(),
            tags: vec!["demo".into(), "after-failover".into()],
            ..Default::default()
        };
        let reply = self.windows[3]
            .call(Method::TaskCreate(probe))
            .await
            .map_err(|e| e.to_string())?;
        let ms = killed_at.elapsed().as_secs_f64() * 1000.0;
        story.failover_ms = Some(ms);
        if let ReplyBody::Task(t) = reply {
            self.names.insert(t.id.clone(), "after-kill");
            self.ids.insert("after-failover", t.id.clone());
        }
        self.clock.say(format!(
            ">>> a write was accepted {ms:.1} ms after the kill"
        ));
        Ok(())
    }

    /// Every claim, checked against the store, the members' own event logs
    /// and `/proc`.
    async fn check(&mut self, story: &Story) -> Result<bool, String> {
        // The extra write must finish too.
        let all: Vec<String> = self.ids.values().cloned().collect();
        let policy = crate::waiter::Policy::All;
        let outcome =
            crate::waiter::wait(&self.c.ws, &all, policy, Some(WIND_DOWN), |_| {}).await?;
        outln!();
        outln!("checks:");
        let mut checks = Checks { ok: true };
        let reader = Reader::open(&self.c.ws.db_path()).map_err(|e| e.to_string())?;
        checks.check(
            story
                .promoted
                .is_some_and(|(_, e)| e == self.first_epoch + 1),
            format!(
                "exactly one promotion after the kill: {}",
                story
                    .promoted
                    .map(|(p, e)| format!("pid {p}, epoch {e}"))
                    .unwrap_or("none".into())
            ),
        );
        checks.check(
            story.failover_ms.is_some(),
            format!(
                "failover measured: kill → write accepted in {:.1} ms",
                story.failover_ms.unwrap_or(f64::NAN)
            ),
        );
        self.check_tasks(&reader, &mut checks, outcome.timed_out)?;
        if let Some(agent) = &self.agent {
            let (passed, what) = agent.check(&reader)?;
            checks.check(passed, what);
        }
        if let Some(goal) = &self.goal {
            let (passed, what) = goal.check(&reader)?;
            checks.check(passed, what);
        }
        self.check_events(&reader, story, &mut checks).await?;
        let integrity = reader.integrity_check().map_err(|e| e.to_string())?;
        checks.check(
            integrity == "ok",
            format!("PRAGMA integrity_check: {integrity}"),
        );
        drop(reader);
        self.stop_members().await;
        let members = &self.members;
        checks.check(
            !members.iter().any(|p| crate::proc::running(*p)),
            "every process the demo started has exited".into(),
        );
        Ok(checks.ok)
    }

    /// True exit codes, nothing lost.
    fn check_tasks(
        &self,
        reader: &Reader,
        checks: &mut Checks,
        timed_out: bool,
    ) -> Result<(), String> {
        for step in PIPELINE {
            let t = reader
                .task(&self.ids[step.name])
                .map_err(|e| e.to_string())?;
            let code = t.as_ref().and_then(|t| t.exit_code);
            checks.check(
                t.as_ref().is_some_and(|t| t.status.is_terminal())
                    && code == Some(step.expect_exit),
                format!(
                    "{:<12} finished with its true exit code {} (recorded: {})",
                    step.name,
                    step.expect_exit,
                    code.map(|c| c.to_string()).unwrap_or("none".into())
                ),
            );
        }
        checks.check(!timed_out, "every task reached a final state".to_string());
        let stored = reader
            .tasks(&Default::default())
            .map_err(|e| e.to_string())?;
        let lost = self
            .ids
            .values()
            .filter(|id| !stored.iter().any(|t| &t.id == *id))
            .count();
        checks.check(
            lost == 0 && stored.len() == self.ids.len(),
            format!(
                "no acknowledged write lost: {} acknowledged, {} stored",
                self.ids.len(),
                stored.len()
            ),
        );
        Ok(())
    }

    /// No gap in the demo's own stream; every survivor caught up.
    async fn check_events(
        &self,
        reader: &Reader,
        story: &Story,
        checks: &mut Checks,
    ) -> Result<(), String> {
        let last = reader.last_seq().map_err(|e| e.to_string())?;
        checks.check(
            contiguous(&story.seen_seqs, 1),
            format!(
                "the demo's subscriber saw events 1..{} with no gap",
                story.seen_seqs.last().copied().unwrap_or(0)
            ),
        );
        for (i, log) in self.logs.iter().enumerate().skip(1) {
            let seqs = read_seqs(log);
            let first_seq = seqs.first().copied().unwrap_or(0);
            let caught_up = wait_until_seq(log, last).await;
            checks.check(
                caught_up && contiguous(&read_seqs(log), first_seq),
                format!(
                    "secondary {} (pid {}) saw every event from {first_seq} to {last}, none missed",
                    i, self.members[i]
                ),
            );
        }
        Ok(())
    }

    /// SIGTERM to the survivors, and reap them.
    async fn stop_members(&mut self) {
        for pid in &self.members[1..] {
            unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_DEADLINE;
        while self.members.iter().any(|p| crate::proc::running(*p)) && Instant::now() < deadline {
            self.c.reap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.c.reap();
    }

    fn finish(self, ok: bool) {
        if !ok && std::env::var_os("GROVE_DEMO_KEEP").is_some() {
            let kept = self.c.dir.path().to_path_buf();
            std::mem::forget(self.c);
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
            self.clock.0.elapsed().as_secs_f64()
        );
    }
}

/// Prints each check as it is decided; remembers whether all held.
struct Checks {
    ok: bool,
}

impl Checks {
    fn check(&mut self, passed: bool, what: String) {
        outln!("  [{}] {what}", if passed { "ok" } else { "FAILED" });
        self.ok &= passed;
    }
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
