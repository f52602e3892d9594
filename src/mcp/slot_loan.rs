//! A task blocked in a wait for its children lends its `max_parallel` slot
//! for as long as it waits (see docs/design.md, Slot loans): the children
//! can then run even when waiting parents hold every slot. Every wait of a
//! task on tasks goes through here: the MCP `wait` tool and the MCP reruns
//! that wait, and `grove wait`, `spawn --wait`, `run` (and the commands
//! that wait like them) inside a task.

use super::Grove;
use crate::protocol::Method;
use crate::store::tasks::slot_loans::RENEW_EVERY_MS;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// How long the end of a wait may be held up by taking the slot back (and
/// by a renewal still in flight, which must land first): the loan lapses
/// on its own anyway (`slot_loans::LOAN_MS`).
const GIVE_BACK_WITHIN: Duration = Duration::from_secs(2);

/// Who lends: the task this process runs inside and the run it waits in.
#[derive(Debug, Clone)]
pub struct Lender {
    task: String,
    run: String,
}

impl Lender {
    /// `task`: the caller's task (`GROVE_TASK_ID`) when it is a task of
    /// this workspace; the run is `GROVE_RUN_ID`, which the shim gives the
    /// agent and its MCP servers. Either missing: nothing is lent.
    pub fn of(task: Option<String>) -> Option<Lender> {
        let run = std::env::var("GROVE_RUN_ID")
            .ok()
            .filter(|r| !r.is_empty())?;
        Some(Lender { task: task?, run })
    }
}

/// Runs `wait` with the slot of `lender`'s task lent (nothing lent without
/// a lender). The lends run beside the wait, never holding it up: the
/// first at once, then one every `RENEW_EVERY_MS` after the last one
/// answered, whatever that answer was (a refusal only says the loan does
/// not count now). When the wait ends, a lend still in flight lands first,
/// then the slot is taken back.
pub async fn while_waiting<F: Future>(
    grove: &dyn Grove,
    lender: Option<Lender>,
    wait: F,
) -> F::Output {
    let Some(lender) = lender else {
        return wait.await;
    };
    let waiter = uuid::Uuid::new_v4().simple().to_string();
    let lending = Lending::register(&lender, &waiter);
    let lend = |on: bool| {
        let method = Method::TaskLendSlot {
            id: lender.task.clone(),
            run_id: lender.run.clone(),
            waiter: waiter.clone(),
            lend: on,
        };
        async move {
            if let Err(e) = grove.call(method).await {
                tracing::debug!("task.lend_slot {on}: {e}");
            }
        }
    };
    let mut wait = std::pin::pin!(wait);
    let mut in_flight: Option<Pin<Box<dyn Future<Output = ()> + Send + '_>>> =
        Some(Box::pin(lend(true)));
    let renew_every = Duration::from_millis(RENEW_EVERY_MS);
    let mut next = tokio::time::Instant::now() + renew_every;
    let out = loop {
        tokio::select! {
            out = &mut wait => break out,
            // Never dropped mid-flight (a lend landing after the slot was
            // taken back would lend it again): the client's own timeouts
            // end a call to a primary that does not answer.
            _ = async { in_flight.as_mut().expect("in flight").await }, if in_flight.is_some() => {
                in_flight = None;
                next = tokio::time::Instant::now() + renew_every;
            }
            _ = tokio::time::sleep_until(next), if in_flight.is_none() => {
                in_flight = Some(Box::pin(lend(true)));
            }
        }
    };
    let give_back = async {
        if let Some(lending) = in_flight {
            lending.await;
        }
        lend(false).await;
    };
    if tokio::time::timeout(GIVE_BACK_WITHIN, give_back)
        .await
        .is_err()
    {
        tracing::debug!(
            "taking the slot of {} back timed out; its loan lapses",
            lender.task
        );
    }
    lending.finish();
    out
}

/// The loans of this process's waits in progress (task, run, waiter), so
/// that a process ending in the middle of a wait takes its slots back
/// ([`give_back_all`]) instead of leaving them lent until they lapse: a
/// `grove mcp` whose client went away or that was told to stop, a
/// `grove wait` stopped by SIGTERM, while the task works on.
static LENDING: std::sync::Mutex<Vec<(String, String, String)>> = std::sync::Mutex::new(Vec::new());

/// One entry of [`LENDING`], removed once its wait took the slot back. A
/// wait dropped in the middle (its process ending, its caller stopped)
/// leaves its entry for [`give_back_all`].
struct Lending(String);

impl Lending {
    fn register(lender: &Lender, waiter: &str) -> Lending {
        let mut all = LENDING.lock().unwrap_or_else(|e| e.into_inner());
        all.push((lender.task.clone(), lender.run.clone(), waiter.to_string()));
        Lending(waiter.to_string())
    }

    fn finish(self) {
        let mut all = LENDING.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|(_, _, waiter)| *waiter != self.0);
    }
}

/// Takes back the slot of every wait of this process still lending, within
/// [`GIVE_BACK_WITHIN`]: for a process about to end in the middle of its
/// waits. Whatever is not taken back by then lapses on its own.
pub async fn give_back_all(grove: &dyn Grove) {
    let loans = LENDING.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let back = futures::future::join_all(loans.into_iter().map(|(task, run, waiter)| {
        let method = Method::TaskLendSlot {
            id: task,
            run_id: run,
            waiter,
            lend: false,
        };
        async move {
            if let Err(e) = grove.call(method).await {
                tracing::debug!("task.lend_slot false at the end: {e}");
            }
        }
    }));
    let _ = tokio::time::timeout(GIVE_BACK_WITHIN, back).await;
}

/// Resolves with the first of `signals` (SIGTERM, SIGINT, SIGHUP) this
/// process gets, never when none can be listened for.
pub async fn stop_signal(signals: &[i32]) -> i32 {
    use tokio::signal::unix::{SignalKind, signal};
    let mut streams = Vec::new();
    for &number in signals {
        if let Ok(s) = signal(SignalKind::from_raw(number)) {
            streams.push((s, number));
        }
    }
    if streams.is_empty() {
        return std::future::pending().await;
    }
    let waits = streams.iter_mut().map(|(s, number)| {
        let number = *number;
        Box::pin(async move {
            s.recv().await;
            number
        })
    });
    futures::future::select_all(waits).await.0
}
