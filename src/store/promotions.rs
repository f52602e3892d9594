//! What each promotion measured, kept with its epoch (`promotions` table):
//! when the new primary won the election lock (wall clock), how long it
//! took from there to serving (CLOCK_MONOTONIC, the same stamps `grove
//! bench failover` reads), and the previous primary's last heartbeat as
//! this member heard it. The row is written in the promotion's own
//! transaction, with the epoch and `instance.promoted`; the takeover is
//! only known once the member serves, so its first store batch completes
//! the row. A primary that died before serving leaves it without one.

use super::StoreError;
use crate::protocol::EventData;
use rusqlite::{Connection, OptionalExtension, params};

/// Rows kept: promotions are rare, but a workspace lives long.
const KEPT: i64 = 1000;

/// A primary's last heartbeat, as a member's own event stream delivered
/// it (`at` is the primary's own stamp).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    pub instance_id: String,
    pub epoch: u64,
    pub at: u64,
}

/// What a promotion knows when it commits its epoch.
#[derive(Debug, Clone, Default)]
pub struct LockWon {
    /// Unix ms when the election lock was won.
    pub at: u64,
    /// The last heartbeat this member heard, of whatever primary.
    pub heard: Option<Heard>,
}

/// Records promotion `epoch`. The heartbeat is kept only when it is the
/// previous epoch's: one heard from an older primary says nothing about
/// the one this member replaces.
pub fn record(
    tx: &Connection,
    epoch: u64,
    previous_epoch: u64,
    instance_id: &str,
    won: &LockWon,
) -> rusqlite::Result<()> {
    let heard = won.heard.as_ref().filter(|h| h.epoch == previous_epoch);
    tx.execute(
        "INSERT OR REPLACE INTO promotions
         (epoch, instance_id, lock_won_at, prev_instance_id, prev_heartbeat_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            epoch as i64,
            instance_id,
            won.at as i64,
            heard.map(|h| h.instance_id.as_str()),
            heard.map(|h| h.at as i64),
        ],
    )?;
    tx.execute(
        "DELETE FROM promotions WHERE epoch <= ?1",
        [epoch as i64 - KEPT],
    )?;
    Ok(())
}

/// The promotion of `epoch` is serving, `takeover_us` after it won the lock.
pub fn served(tx: &Connection, epoch: u64, takeover_us: u64) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE promotions SET takeover_us = ?2 WHERE epoch = ?1",
        params![epoch as i64, takeover_us as i64],
    )?;
    Ok(())
}

/// A promotion as the board shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Promotion {
    pub seq: u64,
    pub at: u64,
    pub instance_id: String,
    pub pid: u32,
    pub epoch: u64,
    /// The primary before handed over (`instance.shutdown` came just before).
    pub handover: bool,
    /// Milliseconds since the event before it: an upper bound of the
    /// failover, for promotions recorded before they were measured.
    pub after_ms: Option<u64>,
    /// Unix ms when the election lock was won (measured).
    pub lock_won_at: Option<u64>,
    /// Lock won → serving, milliseconds (measured; absent when this
    /// primary never served, or the promotion predates the measurement).
    pub takeover_ms: Option<f64>,
    /// The previous primary and its last heartbeat heard by this member.
    pub prev_instance_id: Option<String>,
    pub prev_heartbeat_at: Option<u64>,
    /// The lock was won this long after that heartbeat.
    pub lock_after_heartbeat_ms: Option<u64>,
}

/// The last `limit` promotions, newest first, from the event log with
/// their measurements.
pub fn read(conn: &Connection, limit: usize) -> Result<Vec<Promotion>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT e.seq, e.at, e.payload, p.lock_won_at, p.takeover_us,
                p.prev_instance_id, p.prev_heartbeat_at
         FROM events e LEFT JOIN promotions p ON p.epoch = e.epoch
         WHERE e.topic = 'instance.promoted' ORDER BY e.seq DESC LIMIT ?1",
    )?;
    type Row = (
        i64,
        i64,
        Vec<u8>,
        Option<i64>,
        Option<i64>,
        Option<String>,
        Option<i64>,
    );
    let rows: Vec<Row> = stmt
        .query_map([limit as i64], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    let mut before = conn
        .prepare_cached("SELECT at, topic FROM events WHERE seq < ?1 ORDER BY seq DESC LIMIT 1")?;
    let mut out = Vec::new();
    for (seq, at, payload, won, takeover_us, prev_instance_id, prev_heartbeat) in rows {
        let Ok(EventData::Promoted {
            instance_id,
            pid,
            epoch,
        }) = crate::protocol::decode_stored::<EventData>(&payload)
        else {
            continue;
        };
        let prev: Option<(i64, String)> = before
            .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let lock_won_at = won.map(|w| w as u64);
        let prev_heartbeat_at = prev_heartbeat.map(|h| h as u64);
        out.push(Promotion {
            seq: seq as u64,
            at: at as u64,
            instance_id,
            pid,
            epoch,
            handover: prev.as_ref().is_some_and(|(_, t)| t == "instance.shutdown"),
            after_ms: prev.map(|(p, _)| (at - p).max(0) as u64),
            lock_won_at,
            takeover_ms: takeover_us.map(|us| us as f64 / 1000.0),
            prev_instance_id,
            prev_heartbeat_at,
            lock_after_heartbeat_ms: lock_won_at
                .zip(prev_heartbeat_at)
                .map(|(w, h)| w.saturating_sub(h)),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn promoted(conn: &Connection, epoch: u64, instance_id: &str) {
        let data = EventData::Promoted {
            instance_id: instance_id.into(),
            pid: 1,
            epoch,
        };
        crate::store::txn::append_event(conn, epoch, data).unwrap();
    }

    #[test]
    fn a_promotion_keeps_its_measurements_and_only_the_previous_epochs_heartbeat() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::schema::migrate(&mut conn).unwrap();
        let heard = |epoch| Heard {
            instance_id: "old".into(),
            epoch,
            at: 1_000,
        };
        // Epoch 2 heard epoch 1's primary; epoch 3 heard only epoch 1's.
        for (epoch, heard) in [(2, heard(1)), (3, heard(1))] {
            promoted(&conn, epoch, "new");
            let won = LockWon {
                at: 1_250,
                heard: Some(heard),
            };
            record(&conn, epoch, epoch - 1, "new", &won).unwrap();
        }
        served(&conn, 2, 1_500).unwrap();
        let list = read(&conn, 10).unwrap();
        let (three, two) = (&list[0], &list[1]);
        assert_eq!(two.takeover_ms, Some(1.5));
        assert_eq!(two.lock_won_at, Some(1_250));
        assert_eq!(two.prev_instance_id.as_deref(), Some("old"));
        assert_eq!(two.lock_after_heartbeat_ms, Some(250));
        // Never served; no heartbeat of its predecessor was heard.
        assert_eq!(three.takeover_ms, None);
        assert_eq!(three.prev_heartbeat_at, None);
        assert_eq!(three.lock_after_heartbeat_ms, None);
    }
}
