//! A task blocked in a wait lends its `max_parallel` slot for as long as it
//! waits (see docs/design.md, Slot loans): the children it waits for can
//! then run even when waiting parents hold every slot. Used by every wait
//! of a task on tasks: the MCP `wait` tool and the reruns that wait, and
//! `grove wait`, `spawn --wait` and `run` inside a task.

use super::Grove;
use crate::protocol::Method;
use crate::store::tasks::slot_loans::RENEW_EVERY_MS;
use std::future::Future;
use std::time::Duration;

/// How long taking the slot back may hold up the end of a wait: the loan
/// lapses on its own anyway (`slot_loans::LOAN_MS`).
const GIVE_BACK_WITHIN: Duration = Duration::from_secs(2);
/// How long a renewal may hold up the wait (it is not polled meanwhile).
const RENEW_WITHIN: Duration = Duration::from_secs(5);

/// Runs `wait` with the slot of `task` lent: `task` is the task this
/// process runs inside (`None`: not inside a task of this workspace, and
/// nothing is lent). A task that is not running lends nothing (a refusal
/// is not the wait's business).
pub async fn while_waiting<F: Future>(
    grove: &dyn Grove,
    task: Option<String>,
    wait: F,
) -> F::Output {
    let Some(id) = task else {
        return wait.await;
    };
    if !lend(grove, &id, true).await {
        return wait.await;
    }
    let mut wait = std::pin::pin!(wait);
    let renew_every = Duration::from_millis(RENEW_EVERY_MS);
    let mut lent = true;
    let out = loop {
        tokio::select! {
            out = &mut wait => break out,
            _ = tokio::time::sleep(renew_every), if lent => {
                // Awaited here, not in the `select!`: a renewal dropped
                // mid-flight could land after the slot was taken back.
                // A refused one (the task no longer runs) stops renewing.
                lent = tokio::time::timeout(RENEW_WITHIN, lend(grove, &id, true))
                    .await
                    .unwrap_or(true);
            }
        }
    };
    if tokio::time::timeout(GIVE_BACK_WITHIN, lend(grove, &id, false))
        .await
        .is_err()
    {
        tracing::debug!("taking the slot of {id} back timed out; the loan lapses");
    }
    out
}

/// One `task.lend_slot`; whether it was applied.
async fn lend(grove: &dyn Grove, id: &str, lend: bool) -> bool {
    let method = Method::TaskLendSlot {
        id: id.to_string(),
        lend,
    };
    match grove.call(method).await {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!("task.lend_slot {id} {lend}: {e}");
            false
        }
    }
}
