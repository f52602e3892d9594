//! Handover: SIGTERM the primary (a window closing, a logout) and time
//! until a client's write is acknowledged by the new primary, and until
//! every surviving secondary has re-registered with it.
//!
//! A graceful primary finishes its queued writes, records
//! `instance.shutdown`, closes its sockets and only then releases the lock,
//! so the write may land on it or wait for the successor; only a write
//! acknowledged at the new epoch stops the clock. The baseline is the same
//! kernel flock handoff as failover's, but triggered by SIGTERM (whose
//! default action ends the holder): the floor for "signal → lock moved".

use super::Row;
use super::failover::{Baseline, flock_handoffs, flock_row, rounds};
use super::stats::quantile;

/// Secondaries following the primary, as in failover's middle size.
const SECONDARIES: usize = 3;

pub async fn run(count: usize) -> Result<Vec<Row>, String> {
    let flock = flock_handoffs(count, libc::SIGTERM)?;
    let baseline = Baseline {
        name: "raw flock handoff (SIGTERM → waiter)",
        p50: quantile(&flock, 0.5),
    };
    let s = rounds(SECONDARIES, count, libc::SIGTERM).await?;
    let mut rows = vec![s.write_row("handover", "SIGTERM", &baseline, "p50 ≤ 20 ms")];
    rows.extend(s.all_row("handover", "SIGTERM", &baseline, None));
    rows.push(flock_row("handover", "raw flock handoff, SIGTERM", &flock));
    Ok(rows)
}
