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
    out
}
