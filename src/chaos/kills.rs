//! The kill loop: which member dies when, and waiting for the survivors.

use super::*;

use crate::client::Client;
use crate::paths::Workspace;
use crate::primary_record::PrimaryRecord;
use crate::protocol::{EventData, Method, TaskRecord, TaskStatus};
use crate::store::Reader;
use std::sync::Arc;
use std::time::{Duration, Instant};

// The kill loop

/// What the kill loop did.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) primary: usize,
    pub(super) secondary: usize,
    /// New primaries killed while (or right after) promoting.
    pub(super) promoting: usize,
    /// Primaries that died between COMMIT and reply (the crash hook).
    pub(super) at_commit: usize,
    /// ... of which before they had published `primary.json`.
    pub(super) before_record: usize,
    pub(super) probes: usize,
    /// SIGKILL of a primary → a write acknowledged by a later primary.
    pub(super) failover_ms: Vec<f64>,
}

impl Tally {
    pub(super) fn kills(&self) -> usize {
        self.primary + self.secondary + self.promoting + self.at_commit
    }
}

/// How the mid-promotion kill spots the new primary.
#[derive(Debug, Clone, Copy)]
pub(super) enum Trigger {
    /// Its `instance.promoted` is committed (epoch bumped; not bound yet).
    Store,
    /// It published `primary.json` (bound, adopting tasks).
    Record,
}

/// Everything the kill loop works with.
pub(super) struct Chaos {
    pub(super) cl: Cluster,
    pub(super) client: Client,
    pub(super) shared: Arc<Shared>,
    pub(super) rng: Rng,
    pub(super) tally: Tally,
    pub(super) blocker: String,
    pub(super) clock: Clock,
    pub(super) kills: usize,
    pub(super) duration: Option<Duration>,
    pub(super) keep: bool,
}

impl Chaos {
    /// Rounds until the kill budget or the time is spent; the error of a
    /// round (the cluster stopped doing its job) ends the loop.
    pub(super) async fn kill_loop(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let remaining = match self.duration {
                Some(d) if started.elapsed() >= d => return Ok(()),
                Some(_) => None,
                None if self.tally.kills() >= self.kills => return Ok(()),
                None => Some(self.kills - self.tally.kills()),
            };
            self.round(remaining).await?;
        }
    }

    /// One round: let some writes through — usually a few dozen, so that
    /// kills come in quick succession; sometimes a few hundred, so that
    /// shell tasks finish and are reported between kills — then kill the
    /// primary (most often), a secondary, or the primary and then its
    /// successor while it promotes.
    pub(super) async fn round(&mut self, remaining: Option<usize>) -> Result<(), String> {
        let dwell = if self.rng.below(4) == 0 { 400 } else { 40 };
        let writes = 5 + self.rng.below(dwell) as usize;
        self.wait_for_acks(self.shared.acked() + writes).await?;
        let roll = self.rng.below(100);
        let double_fits = remaining.is_none_or(|r| r >= 2);
        if roll < 60 || (roll >= 85 && !double_fits) {
            self.kill_primary().await
        } else if roll < 70 {
            self.kill_at_commit().await
        } else if roll < 85 {
            self.kill_secondary().await
        } else {
            let trigger = if self.rng.below(2) == 0 {
                Trigger::Store
            } else {
                Trigger::Record
            };
            self.kill_promoting(trigger).await
        }
    }

    /// Waits until the clients' acknowledged writes reach `target`: the
    /// grove must keep accepting writes between kills.
    pub(super) async fn wait_for_acks(&self, target: usize) -> Result<(), String> {
        let until = Instant::now() + DEADLINE;
        while self.shared.acked() < target {
            if Instant::now() > until {
                return Err(format!(
                    "writes stalled: {} of {target} acknowledged after {} s",
                    self.shared.acked(),
                    DEADLINE.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// The primary to kill: it must be a live member of ours, since every
    /// round starts once the grove acknowledged writes again.
    pub(super) fn current_primary(&self) -> Result<PrimaryRecord, String> {
        self.cl
            .primary()
            .ok_or_else(|| "primary.json names no live member of ours".to_string())
    }

    /// "kill 7/20" or "kill 7-8/20" (without the total for --duration).
    pub(super) fn kill_label(&self, n: usize) -> String {
        let k = self.tally.kills();
        match (n, self.duration) {
            (1, None) => format!("kill {}/{}", k + 1, self.kills),
            (_, None) => format!("kill {}-{}/{}", k + 1, k + n, self.kills),
            (1, Some(_)) => format!("kill {}", k + 1),
            (_, Some(_)) => format!("kill {}-{}", k + 1, k + n),
        }
    }

    /// The common case: the primary dies; a write must get through soon.
    pub(super) async fn kill_primary(&mut self) -> Result<(), String> {
        let rec = self.current_primary()?;
        let label = self.kill_label(1);
        self.cl.kill(rec.pid)?;
        let t0 = Instant::now();
        if self.cl.live_pids().is_empty() {
            self.cl.refill()?;
        }
        let epoch = self.probe().await?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        self.tally.failover_ms.push(ms);
        self.tally.primary += 1;
        self.clock.say(format!(
            "{label}: primary pid {} (epoch {}) → a write acknowledged {ms:.1} ms later (epoch {epoch})",
            rec.pid, rec.epoch
        ));
        self.settle().await
    }

    /// The primary dies after committing a write and before answering it —
    /// the one moment where only the ledger prevents a double apply. A
    /// random SIGKILL almost never lands there, so the write itself asks
    /// for it: a test build's primary (the members run this binary) that
    /// commits a task with this prompt exits at once. The client resends the
    /// same id to the next primary and must get the recorded reply; the
    /// store must hold one task for it.
    #[cfg(feature = "test-hooks")]
    pub(super) async fn kill_at_commit(&mut self) -> Result<(), String> {
        let rec = self.current_primary()?;
        let label = self.kill_label(1);
        self.tally.probes += 1;
        let id = format!("chaos-probe-{}", self.tally.probes);
        let prompt = crate::test_hooks::CRASH_AFTER_COMMIT_PROMPT.to_string();
        let task = tagged(prompt, &id, vec![self.blocker.clone()]);
        let t0 = Instant::now();
        create(&mut self.client, &self.shared, &id, task, Kind::Probe, None).await?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let epoch = self.client.epoch();
        // A killed process releases its election lock (its newest fd) before
        // it finishes exiting: the next primary may answer while the old one
        // is still tearing down its other files. Wait for it to be gone.
        let gone_by = Instant::now() + EXIT_GRACE;
        while crate::proc::running(rec.pid) && Instant::now() < gone_by {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if crate::proc::running(rec.pid) || epoch <= rec.epoch {
            return Err(format!(
                "the crash-after-commit hook did not fire (primary pid {} still runs; reply from epoch {epoch})",
                rec.pid
            ));
        }
        self.cl.forget(rec.pid);
        // Not a failover sample: the clock started before the death.
        self.tally.at_commit += 1;
        self.clock.say(format!(
            "{label}: primary pid {} (epoch {}) died between COMMIT and reply → the resent write acknowledged {ms:.1} ms after it was first sent (epoch {epoch})",
            rec.pid, rec.epoch
        ));
        self.settle().await
    }

    /// Without the crash hook (a shipped build), the closest thing: a
    /// SIGKILL of the primary at a random moment.
    #[cfg(not(feature = "test-hooks"))]
    pub(super) async fn kill_at_commit(&mut self) -> Result<(), String> {
        self.kill_primary().await
    }

    /// A follower dies: the grove must not even notice, beyond its
    /// replacement joining.
    pub(super) async fn kill_secondary(&mut self) -> Result<(), String> {
        let primary = self.current_primary()?;
        let victims: Vec<u32> = self
            .cl
            .live_pids()
            .into_iter()
            .filter(|p| *p != primary.pid)
            .collect();
        if victims.is_empty() {
            return self.kill_primary().await;
        }
        let victim = victims[self.rng.below(victims.len() as u64) as usize];
        let label = self.kill_label(1);
        self.cl.kill(victim)?;
        self.tally.secondary += 1;
        self.clock.say(format!(
            "{label}: secondary pid {victim} (epoch {})",
            primary.epoch
        ));
        self.settle().await
    }

    /// Kills the primary, then its successor the moment it shows itself
    /// (per `trigger`), while a probe write waits for whoever comes next.
    pub(super) async fn kill_promoting(&mut self, trigger: Trigger) -> Result<(), String> {
        let rec = self.current_primary()?;
        let label = self.kill_label(2);
        let seq0 = Reader::open(&self.cl.ws().db_path())
            .and_then(|r| r.last_seq())
            .map_err(|e| e.to_string())?;
        self.cl.kill(rec.pid)?;
        let t0 = Instant::now();
        self.tally.probes += 1;
        let probe_id = format!("chaos-probe-{}", self.tally.probes);
        let probe = tagged(
            format!("chaos probe {probe_id}"),
            &probe_id,
            vec![self.blocker.clone()],
        );
        // Disjoint borrows: the probe uses the client, the watcher the cluster.
        let (client, shared, cl) = (&mut self.client, &self.shared, &mut self.cl);
        let (probed, second) = tokio::join!(
            async {
                let r = create(client, shared, &probe_id, probe, Kind::Probe, None).await;
                (r, t0.elapsed().as_secs_f64() * 1000.0, client.epoch())
            },
            kill_successor(cl, rec.epoch, seq0, trigger)
        );
        let (new_pid, new_epoch, early) = second?;
        let (probe_result, ms, epoch) = probed;
        probe_result?;
        self.tally.primary += 1;
        self.tally.promoting += 1;
        self.tally.before_record += early as usize;
        self.tally.failover_ms.push(ms);
        self.clock.say(format!(
            "{label}: primary pid {} (epoch {}), then pid {new_pid} promoting to epoch {new_epoch} \
             ({}) → a write acknowledged {ms:.1} ms after the first kill (epoch {epoch})",
            rec.pid,
            rec.epoch,
            if early {
                "before it published primary.json"
            } else {
                "right after it published primary.json"
            }
        ));
        self.settle().await
    }

    /// The write sent right after a kill: the failover as a client feels it.
    pub(super) async fn probe(&mut self) -> Result<u64, String> {
        self.tally.probes += 1;
        let id = format!("chaos-probe-{}", self.tally.probes);
        let task = tagged(format!("chaos probe {id}"), &id, vec![self.blocker.clone()]);
        create(&mut self.client, &self.shared, &id, task, Kind::Probe, None).await?;
        Ok(self.client.epoch())
    }

    /// Brings the member count back and waits until every live member —
    /// newcomers and survivors re-registering with a new primary — works.
    pub(super) async fn settle(&mut self) -> Result<(), String> {
        self.cl.refill()?;
        let live = self.cl.live_pids();
        self.cl.wait_ready(&live).await
    }
}

/// Watches for the primary after `old_epoch` and SIGKILLs it as soon as
/// `trigger` sees it. Starts a replacement at once if that left no member,
/// so that the probe write can succeed. Returns its pid, epoch, and whether
/// it died before publishing `primary.json`.
pub(super) async fn kill_successor(
    cl: &mut Cluster,
    old_epoch: u64,
    seq0: u64,
    trigger: Trigger,
) -> Result<(u32, u64, bool), String> {
    let until = Instant::now() + DEADLINE;
    let reader = Reader::open(&cl.ws().db_path()).map_err(|e| e.to_string())?;
    loop {
        let found = match trigger {
            Trigger::Store => promoted_after(&reader, seq0, old_epoch)?,
            Trigger::Record => PrimaryRecord::read(cl.ws())
                .filter(|r| r.epoch > old_epoch)
                .map(|r| (r.pid, r.epoch)),
        };
        if let Some((pid, epoch)) = found {
            let early = PrimaryRecord::read(cl.ws()).is_none_or(|r| r.epoch < epoch);
            cl.kill(pid)?;
            if cl.live_pids().is_empty() {
                cl.refill()?;
            }
            return Ok((pid, epoch, early));
        }
        if Instant::now() > until {
            return Err(format!(
                "no member promoted after epoch {old_epoch} within {} s",
                DEADLINE.as_secs()
            ));
        }
        tokio::time::sleep(WATCH_POLL).await;
    }
}

/// The first `instance.promoted` after `seq0` with an epoch above
/// `old_epoch`: committed by the promotion's first transaction, before the
/// new primary binds its sockets.
pub(super) fn promoted_after(
    reader: &Reader,
    seq0: u64,
    old_epoch: u64,
) -> Result<Option<(u32, u64)>, String> {
    let mut from = seq0 + 1;
    loop {
        let page = reader.events_from(from, 1000).map_err(|e| e.to_string())?;
        let Some(last) = page.last().map(|e| e.seq) else {
            return Ok(None);
        };
        for e in &page {
            if let EventData::Promoted { pid, epoch, .. } = &e.data
                && *epoch > old_epoch
            {
                return Ok(Some((*pid, *epoch)));
            }
        }
        from = last + 1;
    }
}

// ---------------------------------------------------------------------------
// The end: wind down, then verify

/// Cancels the blocker (every pending write then fails with it) and waits
/// until every task is terminal.
pub(super) async fn wind_down(client: &mut Client, blocker: &str) -> Result<(), String> {
    let cancel = Method::TaskCancel {
        id: blocker.to_string(),
    };
    call_until_acked(client, "chaos-cancel-blocker", cancel, SETTLE)
        .await
        .map_err(|e| format!("cancelling the blocker: {e}"))?;
    Ok(())
}

/// Polls the store until no task is pending, queued, running or paused.
/// Names the open tasks once when that takes long: a slow end is a finding
/// worth a look even when the deadline holds.
pub(super) async fn wait_terminal(
    ws: &Workspace,
    since: Instant,
    clock: &Clock,
) -> Result<(), String> {
    let until = since + SETTLE;
    let mut told = false;
    loop {
        let open = open_tasks(ws)?;
        if open.is_empty() {
            return Ok(());
        }
        if !told && since.elapsed() > Duration::from_secs(5) {
            told = true;
            clock.say(format!(
                "{} tasks still open 5 s after the cancel, e.g. {}",
                open.len(),
                examples(&open)
            ));
        }
        if Instant::now() > until {
            return Err(format!(
                "{} tasks still not terminal {} s after the blocker was cancelled, e.g. {}",
                open.len(),
                SETTLE.as_secs(),
                examples(&open)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Tasks not in a final state.
pub(super) fn open_tasks(ws: &Workspace) -> Result<Vec<TaskRecord>, String> {
    let reader = Reader::open(&ws.db_path()).map_err(|e| e.to_string())?;
    let mut open = Vec::new();
    for status in [
        TaskStatus::Running,
        TaskStatus::Queued,
        TaskStatus::Paused,
        TaskStatus::Pending,
    ] {
        let filter = crate::store::TaskFilter {
            status: Some(status),
            ..Default::default()
        };
        open.extend(reader.tasks(&filter).map_err(|e| e.to_string())?);
    }
    Ok(open)
}

/// The first few open tasks, described.
pub(super) fn examples(open: &[TaskRecord]) -> String {
    let some: Vec<String> = open.iter().take(3).map(describe).collect();
    some.join("; ")
}

/// One line about a task, for diagnostics.
pub(super) fn describe(t: &TaskRecord) -> String {
    let age = |ms: Option<u64>| {
        ms.map(|at| {
            format!(
                "{:.1} s",
                crate::protocol::now_ms().saturating_sub(at) as f64 / 1000.0
            )
        })
        .unwrap_or_else(|| "-".into())
    };
    format!(
        "{} {} (started {} ago, updated {} ago, run {}, pid {:?}): {}",
        t.id,
        t.status.as_str(),
        age(t.started_at),
        age(Some(t.updated_at)),
        t.run_id.as_deref().unwrap_or("-"),
        t.pid,
        t.spec.prompt
    )
}
