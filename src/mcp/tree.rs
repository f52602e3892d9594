//! Cancelling a task with every unfinished task below it: the MCP `cancel`
//! tool with `tree`, `grove cancel --tree`, and `grove delegate-run`
//! cancelling the task it follows in another workspace (see
//! docs/design.md, Delegation).

use super::Grove;
use crate::protocol::Method;
use crate::store::Reader;

/// What [`cancel_with_descendants`] did.
#[derive(Debug, Default)]
pub struct Cancelled {
    pub cancelled: Vec<String>,
    /// Tasks that could not be cancelled, each with why.
    pub failed: Vec<String>,
}

/// Passes over the tree at most: each finds tasks created since the one
/// before, which the delegation limits keep finite anyway.
const MAX_PASSES: usize = 20;

/// Cancels task `id` (which must exist), then every unfinished task below
/// it, parents before their children (a cancelled task spawns no more: the
/// store refuses it). The tree is read again until a pass finds nothing new
/// to cancel, so that a child created while the walk ran is not missed.
/// One task that cannot be cancelled does not stop the walk: the rest are
/// cancelled, and the failures are returned beside them. `key`: the first
/// cancel's request id. An error only when the store cannot be read.
pub async fn cancel_with_descendants(
    grove: &dyn Grove,
    id: &str,
    key: Option<&str>,
) -> Result<Cancelled, String> {
    let mut done = Cancelled::default();
    let mut tried = std::collections::HashSet::new();
    let reader = Reader::open(&grove.workspace().db_path()).map_err(|e| e.to_string())?;
    let root =
        (reader.task(id).map_err(|e| e.to_string())?).ok_or_else(|| format!("no task {id}"))?;
    let mut todo = vec![(root, key)];
    for _ in 0..MAX_PASSES {
        for (t, key) in todo.drain(..) {
            if t.status.is_terminal() || !tried.insert(t.id.clone()) {
                continue;
            }
            let method = Method::TaskCancel { id: t.id.clone() };
            match grove.call_keyed(method, key).await {
                Ok(_) => done.cancelled.push(t.id),
                // Finished or deleted meanwhile: nothing left to cancel.
                Err(e) if e.contains("already") || e.contains("no task") => {}
                Err(e) => done.failed.push(format!("{}: {e}", t.id)),
            }
        }
        let below = reader.descendants(id).map_err(|e| e.to_string())?;
        todo = (below.into_iter().map(|(_, t)| (t, None)))
            .filter(|(t, _)| !t.status.is_terminal() && !tried.contains(&t.id))
            .collect();
        if todo.is_empty() {
            return Ok(done);
        }
    }
    // Still growing after every pass: said, not left unseen.
    done.failed.push(format!(
        "{} more below {id}: tasks kept being created while they were cancelled; cancel the tree again",
        todo.len()
    ));
    Ok(done)
}
