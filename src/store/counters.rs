//! Delegation counters: how often a delegated task reused a warm agent,
//! fell back to an agent of its own, or failed on the warm path, and how
//! often a parent was resumed or fed results mid-turn. They are rows (one
//! per name), bumped inside the transaction of the write they count, so
//! that they are exact across restarts and failovers: a write applied once
//! counts once.

use crate::protocol::WarmUse;
use rusqlite::{Connection, params};
use std::collections::BTreeMap;

/// Every counter, in the order `grove stats` shows them.
pub const NAMES: &[&str] = &[
    "warm_attempts",
    "warm_hits",
    "warm_failures",
    "cold_fallbacks",
    "cap_rejections",
    "resurrections",
    "live_injections",
];

/// Adds `by` to counter `name` (created at 0). Call it inside the
/// transaction of the write being counted.
pub fn bump(tx: &Connection, name: &str, by: u64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO counters (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
    )?
    .execute(params![name, by as i64])?;
    Ok(())
}

/// What a run's use of a warm agent adds to the counters.
pub fn count_warm(tx: &Connection, warm: WarmUse) -> rusqlite::Result<()> {
    bump(tx, "warm_attempts", 1)?;
    let more: &[&str] = match warm {
        WarmUse::Hit => &["warm_hits"],
        WarmUse::Started => &[],
        WarmUse::CapReached => &["cap_rejections", "cold_fallbacks"],
        WarmUse::NoTarget => &["cold_fallbacks"],
        WarmUse::Failed => &["warm_failures"],
    };
    for name in more {
        bump(tx, name, 1)?;
    }
    Ok(())
}

/// Every counter (0 when never bumped) and `warm_hit_rate`, hits over
/// attempts (0 before any attempt). A store older than the counters
/// table reads as all zeros.
pub fn read(conn: &Connection) -> rusqlite::Result<BTreeMap<String, serde_json::Value>> {
    let mut out: BTreeMap<String, serde_json::Value> =
        NAMES.iter().map(|n| (n.to_string(), 0.into())).collect();
    let stored: rusqlite::Result<Vec<(String, i64)>> = conn
        .prepare("SELECT name, value FROM counters")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect());
    let stored = match stored {
        Ok(rows) => rows,
        Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => vec![],
        Err(e) => return Err(e),
    };
    for (name, value) in stored {
        out.insert(name, value.into());
    }
    let get = |n: &str| out.get(n).and_then(|v| v.as_f64()).unwrap_or(0.0);
    let (hits, attempts) = (get("warm_hits"), get("warm_attempts"));
    let rate = if attempts > 0.0 { hits / attempts } else { 0.0 };
    out.insert("warm_hit_rate".into(), serde_json::json!(rate));
    Ok(out)
}
