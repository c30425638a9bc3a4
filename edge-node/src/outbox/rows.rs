//! The outbox's rows in SQLite: inserting, reading the engine's events log for anomalies,
//! evicting past the bound and keeping the drop report and the bookkeeping. Every function
//! runs inside the flush's one transaction.

use std::collections::BTreeSet;
use std::sync::Mutex;

use cartwise_schema::{BootId, ClockReading};
use rusqlite::{OptionalExtension, Transaction, params};
use serde_json::json;

use super::{
    DROPPED_KIND, EVENTS_TAP_MAX, Inner, KIND_LEN_MAX, META_DROPPED_TOTAL, META_EVENTS_CURSOR,
    Pending, Priority, cut, lock, stamped,
};
use crate::store::StoreError;

pub(super) fn insert(tx: &Transaction<'_>, pending: &Pending) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO outbox (priority, kind, data, wall_ms, boot, mono_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        pending.priority as i64,
        pending.kind,
        pending.data,
        pending.wall_ms,
        pending.boot.to_string(),
        i64::try_from(pending.mono_ms).unwrap_or(i64::MAX),
    ])?;
    Ok(())
}

/// Reads the events log past the cursor (at most [`EVENTS_TAP_MAX`] rows), turns its
/// anomalies into fault rows and moves the cursor; returns how many rows it wrote.
pub(super) fn tap_events(tx: &Transaction<'_>, shared: &Mutex<Inner>) -> Result<usize, StoreError> {
    let cursor: i64 = meta(tx, META_EVENTS_CURSOR)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let rows = {
        let mut stmt = tx.prepare_cached(
            "SELECT seq, kind, data, post, rental_id, wall_ms, boot, mono_ms FROM events
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![cursor, EVENTS_TAP_MAX as i64], |row| {
            Ok(LoggedEvent {
                seq: row.get(0)?,
                kind: row.get(1)?,
                data: row.get(2)?,
                post: row.get(3)?,
                rental: row.get(4)?,
                wall_ms: row.get(5)?,
                boot: row.get(6)?,
                mono_ms: row.get(7)?,
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    let Some(newest) = rows.last().map(|row| row.seq) else {
        return Ok(0);
    };
    let mut written = 0;
    for event in rows.into_iter().filter(|event| event.kind == "anomaly") {
        let Some(pending) = event.into_fault() else {
            continue;
        };
        let pending = stamped(&mut lock(shared), pending);
        insert(tx, &pending)?;
        written += 1;
    }
    set_meta(tx, META_EVENTS_CURSOR, &newest.to_string())?;
    Ok(written)
}

/// One row of the engine's events log.
struct LoggedEvent {
    seq: i64,
    kind: String,
    data: String,
    post: Option<i64>,
    rental: Option<String>,
    wall_ms: i64,
    boot: String,
    mono_ms: i64,
}

impl LoggedEvent {
    /// The fault event of a logged anomaly, with the clocks the engine stamped it with.
    fn into_fault(self) -> Option<Pending> {
        let boot = BootId::parse(&self.boot).ok()?;
        let logged: serde_json::Value = serde_json::from_str(&self.data).unwrap_or(json!({}));
        let anomaly = logged
            .get("anomaly")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unknown");
        Some(Pending {
            priority: Priority::Fault,
            kind: cut(&format!("anomaly.{anomaly}"), KIND_LEN_MAX),
            data: json!({
                "post": self.post,
                "rental": self.rental,
                "detail": logged.get("detail"),
                "events_seq": self.seq,
            })
            .to_string(),
            wall_ms: self.wall_ms,
            boot,
            mono_ms: u64::try_from(self.mono_ms).unwrap_or(0),
        })
    }
}

/// Deletes the lowest priority, oldest rows past `rows_max` (never the drop report), adding
/// them to `dropped` by priority.
pub(super) fn evict(
    tx: &Transaction<'_>,
    rows_max: u64,
    dropped: &mut [u64; 3],
) -> Result<(), StoreError> {
    let rows: i64 = tx.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
    let over = u64::try_from(rows).unwrap_or(0).saturating_sub(rows_max);
    if over == 0 {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(
        "DELETE FROM outbox WHERE id IN (
             SELECT id FROM outbox WHERE kind != ?1 ORDER BY priority ASC, id ASC LIMIT ?2)
         RETURNING priority",
    )?;
    let gone = stmt.query_map(
        params![DROPPED_KIND, i64::try_from(over).unwrap_or(i64::MAX)],
        |r| r.get::<_, i64>(0),
    )?;
    for priority in gone {
        dropped[Priority::from_db(priority?).index()] += 1;
    }
    Ok(())
}

/// Adds `dropped` to the unsent drop report (or starts one) and to the lifetime total.
pub(super) fn record_drops(
    tx: &Transaction<'_>,
    shared: &Mutex<Inner>,
    in_flight: &BTreeSet<i64>,
    dropped: [u64; 3],
    now: ClockReading,
) -> Result<(), StoreError> {
    let total: u64 = meta(tx, META_DROPPED_TOTAL)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let sum: u64 = dropped.iter().sum();
    set_meta(tx, META_DROPPED_TOTAL, &(total + sum).to_string())?;
    tracing::warn!(
        dropped = sum,
        "the telemetry outbox is full; dropped the lowest priority, oldest events"
    );
    let existing: Option<(i64, String)> = tx
        .query_row(
            "SELECT id, data FROM outbox WHERE kind = ?1 ORDER BY id DESC LIMIT 1",
            [DROPPED_KIND],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let count = |report: &serde_json::Value, key: &str| {
        report
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    match existing {
        Some((id, data)) if !in_flight.contains(&id) => {
            let report: serde_json::Value = serde_json::from_str(&data).unwrap_or(json!({}));
            let updated = drop_report([
                count(&report, "status") + dropped[0],
                count(&report, "telemetry") + dropped[1],
                count(&report, "fault") + dropped[2],
            ]);
            tx.execute(
                "UPDATE outbox SET data = ?1 WHERE id = ?2",
                params![updated.to_string(), id],
            )?;
        }
        _ => {
            let pending = Pending {
                priority: Priority::Telemetry,
                kind: DROPPED_KIND.to_owned(),
                data: drop_report(dropped).to_string(),
                wall_ms: now.wall.get(),
                boot: now.boot,
                mono_ms: now.mono.get(),
            };
            let pending = stamped(&mut lock(shared), pending);
            insert(tx, &pending)?;
        }
    }
    Ok(())
}

fn drop_report(dropped: [u64; 3]) -> serde_json::Value {
    json!({
        "dropped": dropped.iter().sum::<u64>(),
        "status": dropped[0],
        "telemetry": dropped[1],
        "fault": dropped[2],
    })
}

pub(super) fn meta(conn: &rusqlite::Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM outbox_meta WHERE key = ?1", [key], |r| {
        r.get(0)
    })
    .optional()
}

pub(super) fn set_meta(
    conn: &rusqlite::Connection,
    key: &str,
    value: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO outbox_meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}
