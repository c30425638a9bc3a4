//! The technician log: every use of a technician credential on this device (a LAN session, a
//! remote bus command, a bundle exported or imported, intents applied from a bundle), allowed
//! or refused, recorded in SQLite (`technician_log`, bounded by [`TECHNICIAN_LOG_ROWS_MAX`])
//! and in the live document's `technician_log` map (the newest
//! [`TECHNICIAN_LOG_LIVE_MAX`] entries) in one transaction, so it reaches the hub's audit log
//! with the device's facts. Also the bundle sequence numbers (`bundle_seqs`).

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT, ReadDoc, Value};
use cartwise_sync_core::facts::{TECHNICIAN_LOG_LIVE_MAX, TechnicianLogEntry, keys};
use rusqlite::{Connection, OptionalExtension, params};

use super::Engine;
use crate::store::StoreError;

/// Entries kept in SQLite; past this the oldest go.
pub const TECHNICIAN_LOG_ROWS_MAX: i64 = 10_000;
/// Refusals of credentials this device cannot verify (another chain's: it holds no other
/// chain's CA) recorded per hour; past it they are only traced, so whoever is on the LAN
/// cannot push genuine entries out of the live log with made-up certificates.
pub const UNVERIFIED_REFUSALS_PER_HOUR_MAX: i64 = 20;
/// How the detail of such a refusal starts (and how they are counted).
pub const UNVERIFIED_REFUSAL_PREFIX: &str = "unverified credential: ";
const HOUR_MS: i64 = 3_600_000;

/// What a technician did (or tried to do) on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TechAction {
    /// A LAN session with the technician's laptop.
    LanSession,
    /// A remote bus scan.
    BusScan,
    /// A remote bus status read.
    BusStatus,
    /// A remote unlock.
    BusUnlock,
    /// A facts bundle written for the technician.
    BundleExport,
    /// A bundle brought by the technician.
    BundleImport,
    /// Intents (and ledger acknowledgements) applied from a hub bundle.
    IntentsApplied,
}

impl TechAction {
    /// The log's action name (`cartwise_sync_core::facts::TECHNICIAN_ACTIONS`).
    pub const fn as_str(self) -> &'static str {
        match self {
            TechAction::LanSession => "lan_session",
            TechAction::BusScan => "bus_scan",
            TechAction::BusStatus => "bus_status",
            TechAction::BusUnlock => "bus_unlock",
            TechAction::BundleExport => "bundle_export",
            TechAction::BundleImport => "bundle_import",
            TechAction::IntentsApplied => "intents_applied",
        }
    }
}

/// Which bundle sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleSeq {
    /// The last sequence given to a facts bundle this device produced.
    Facts,
    /// The highest hub intents bundle applied here.
    Intents,
}

impl BundleSeq {
    const fn as_str(self) -> &'static str {
        match self {
            BundleSeq::Facts => "facts",
            BundleSeq::Intents => "intents",
        }
    }
}

fn doc_error(error: automerge::AutomergeError) -> StoreError {
    StoreError::Rejected(format!("technician log: {error}"))
}

/// Writes `entry` into the document's `technician_log` and keeps only the newest
/// [`TECHNICIAN_LOG_LIVE_MAX`] (by time, then id: UUIDv7 strings sort by their millisecond).
pub(crate) fn put_live_entry(
    doc: &mut AutoCommit,
    entry: &TechnicianLogEntry,
) -> Result<(), StoreError> {
    use keys::techlog as k;
    let log = match doc.get(ROOT, keys::TECHNICIAN_LOG).map_err(doc_error)? {
        Some((Value::Object(ObjType::Map), obj)) => obj,
        _ => doc
            .put_object(ROOT, keys::TECHNICIAN_LOG, ObjType::Map)
            .map_err(doc_error)?,
    };
    let obj = doc
        .put_object(&log, entry.id.as_str(), ObjType::Map)
        .map_err(doc_error)?;
    let technician = entry.technician.map(|t| t.to_string()).unwrap_or_default();
    doc.put(&obj, k::AT, entry.at_ms).map_err(doc_error)?;
    doc.put(&obj, k::TECHNICIAN, technician)
        .map_err(doc_error)?;
    doc.put(&obj, k::ACTION, entry.action.as_str())
        .map_err(doc_error)?;
    doc.put(&obj, k::OUTCOME, entry.outcome.as_str())
        .map_err(doc_error)?;
    doc.put(&obj, k::DETAIL, entry.detail.as_str())
        .map_err(doc_error)?;
    if doc.keys(&log).count() <= TECHNICIAN_LOG_LIVE_MAX {
        return Ok(());
    }
    let mut ids: Vec<(i64, String)> = doc
        .keys(&log)
        .map(|id| {
            let at = match doc.get(&log, id.as_str()) {
                Ok(Some((Value::Object(ObjType::Map), entry))) => match doc.get(&entry, k::AT) {
                    Ok(Some((Value::Scalar(value), _))) => value.as_i64().unwrap_or(0),
                    _ => 0,
                },
                _ => 0,
            };
            (at, id)
        })
        .collect();
    let excess = ids.len().saturating_sub(TECHNICIAN_LOG_LIVE_MAX);
    ids.sort();
    for (_, old) in ids.iter().take(excess) {
        doc.delete(&log, old.as_str()).map_err(doc_error)?;
    }
    Ok(())
}

fn insert_row(conn: &Connection, entry: &TechnicianLogEntry) -> Result<(), StoreError> {
    conn.execute(
        "INSERT OR IGNORE INTO technician_log (id, at_ms, technician, action, outcome, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            entry.id,
            entry.at_ms,
            entry.technician.map(|t| t.to_string()).unwrap_or_default(),
            entry.action,
            entry.outcome,
            entry.detail,
        ],
    )?;
    conn.execute(
        "DELETE FROM technician_log WHERE id IN (
             SELECT id FROM technician_log ORDER BY rowid DESC LIMIT -1 OFFSET ?1)",
        params![TECHNICIAN_LOG_ROWS_MAX],
    )?;
    Ok(())
}

/// Refusals of unverifiable credentials recorded at or after `since_ms`.
fn unverified_refusals_since(conn: &Connection, since_ms: i64) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT count(*) FROM technician_log
         WHERE outcome = 'refused' AND at_ms >= ?1 AND substr(detail, 1, ?2) = ?3",
        params![
            since_ms,
            UNVERIFIED_REFUSAL_PREFIX.len(),
            UNVERIFIED_REFUSAL_PREFIX
        ],
        |r| r.get(0),
    )?)
}

/// Reads a bundle sequence number (0 when none was recorded).
pub(crate) fn bundle_seq(conn: &Connection, which: BundleSeq) -> Result<u64, StoreError> {
    let seq: Option<i64> = conn
        .query_row(
            "SELECT seq FROM bundle_seqs WHERE kind = ?1",
            params![which.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
}

fn set_bundle_seq(conn: &Connection, which: BundleSeq, seq: u64) -> Result<(), StoreError> {
    let seq = i64::try_from(seq)
        .map_err(|_| StoreError::Rejected(format!("bundle sequence {seq} is out of range")))?;
    conn.execute(
        "INSERT INTO bundle_seqs (kind, seq) VALUES (?1, ?2)
         ON CONFLICT (kind) DO UPDATE SET seq = max(seq, excluded.seq)",
        params![which.as_str(), seq],
    )?;
    Ok(())
}

impl Engine {
    /// Records one use of a technician credential (in SQLite and the live document, one
    /// transaction) and returns the entry.
    pub async fn log_technician(
        &self,
        technician: Option<uuid::Uuid>,
        action: TechAction,
        allowed: bool,
        detail: impl Into<String>,
    ) -> Result<TechnicianLogEntry, StoreError> {
        let detail = detail.into();
        if !allowed {
            tracing::warn!(action = action.as_str(), ?technician, %detail, "technician refused");
        } else {
            tracing::info!(action = action.as_str(), ?technician, %detail, "technician");
        }
        let entry = self
            .record_technician(technician, action, allowed, detail, false)
            .await?;
        entry.ok_or_else(|| StoreError::Rejected("technician log entry not recorded".into()))
    }

    /// Records the refusal of a credential this device cannot verify (one naming another
    /// chain), its detail prefixed with [`UNVERIFIED_REFUSAL_PREFIX`], unless
    /// [`UNVERIFIED_REFUSALS_PER_HOUR_MAX`] were recorded in the past hour (then it is only
    /// traced and `None` is returned).
    pub async fn log_unverified_technician(
        &self,
        technician: Option<uuid::Uuid>,
        action: TechAction,
        detail: impl Into<String>,
    ) -> Result<Option<TechnicianLogEntry>, StoreError> {
        let detail = format!("{UNVERIFIED_REFUSAL_PREFIX}{}", detail.into());
        let entry = self
            .record_technician(technician, action, false, detail.clone(), true)
            .await?;
        if entry.is_some() {
            tracing::warn!(action = action.as_str(), ?technician, %detail, "technician refused");
        } else {
            tracing::warn!(action = action.as_str(), ?technician, %detail,
                "technician refused (not logged: {UNVERIFIED_REFUSALS_PER_HOUR_MAX} such refusals in the past hour)");
        }
        Ok(entry)
    }

    /// One technician log entry in SQLite and the live document, in one transaction; with
    /// `capped`, none when the hour's unverified refusals are used up.
    async fn record_technician(
        &self,
        technician: Option<uuid::Uuid>,
        action: TechAction,
        allowed: bool,
        detail: String,
        capped: bool,
    ) -> Result<Option<TechnicianLogEntry>, StoreError> {
        let reading = self.clock.read();
        let id = self.new_rental_id(reading.wall.get()).to_string();
        self.store
            .transact(move |tx, state| {
                let at_ms = state.timeline.corrected_reading(&reading).get();
                if capped
                    && unverified_refusals_since(tx, at_ms.saturating_sub(HOUR_MS))?
                        >= UNVERIFIED_REFUSALS_PER_HOUR_MAX
                {
                    return Ok(None);
                }
                state.stamp(tx, reading)?;
                let entry = TechnicianLogEntry {
                    id,
                    at_ms: state.timeline.corrected_reading(&reading).get(),
                    technician,
                    action: action.as_str().to_string(),
                    outcome: if allowed { "allowed" } else { "refused" }.to_string(),
                    detail,
                };
                insert_row(tx, &entry)?;
                put_live_entry(state.live.doc_mut(), &entry)?;
                state.finish(tx)?;
                Ok(Some(entry))
            })
            .await
    }

    /// The newest `limit` entries of the technician log (newest first, in recording order).
    pub async fn technician_log(&self, limit: u32) -> Result<Vec<TechnicianLogEntry>, StoreError> {
        self.store
            .read(move |conn, _| {
                let mut stmt = conn.prepare(
                    "SELECT id, at_ms, technician, action, outcome, detail FROM technician_log
                     ORDER BY rowid DESC LIMIT ?1",
                )?;
                let rows = stmt.query_map(params![limit], |r| {
                    let technician: String = r.get(2)?;
                    Ok(TechnicianLogEntry {
                        id: r.get(0)?,
                        at_ms: r.get(1)?,
                        technician: uuid::Uuid::parse_str(&technician).ok(),
                        action: r.get(3)?,
                        outcome: r.get(4)?,
                        detail: r.get(5)?,
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    /// Takes the next facts-bundle sequence number (durably, so it never repeats).
    pub async fn next_facts_seq(&self) -> Result<u64, StoreError> {
        self.store
            .transact(|tx, _| {
                let next = bundle_seq(tx, BundleSeq::Facts)?.saturating_add(1);
                set_bundle_seq(tx, BundleSeq::Facts, next)?;
                Ok(next)
            })
            .await
    }

    /// The highest hub intents bundle sequence applied here (0 for none).
    pub async fn intents_seq_applied(&self) -> Result<u64, StoreError> {
        self.store
            .read(|conn, _| bundle_seq(conn, BundleSeq::Intents))
            .await
    }

    /// Records that the hub intents bundle `seq` was applied (never lowers the mark).
    pub async fn note_intents_seq(&self, seq: u64) -> Result<(), StoreError> {
        self.store
            .transact(move |tx, _| set_bundle_seq(tx, BundleSeq::Intents, seq))
            .await
    }
}

#[cfg(test)]
mod tests {
    use cartwise_sync_core::facts::read_device_doc;

    use super::*;

    fn entry(n: u32) -> TechnicianLogEntry {
        TechnicianLogEntry {
            id: format!("01a1ffeb-fcae-72a9-aa32-{n:012x}"),
            at_ms: i64::from(n),
            technician: None,
            action: "bus_scan".into(),
            outcome: "allowed".into(),
            detail: format!("entry {n}"),
        }
    }

    #[test]
    fn the_live_log_keeps_the_newest_entries_only() {
        let mut doc = AutoCommit::new();
        let total = u32::try_from(TECHNICIAN_LOG_LIVE_MAX).unwrap() + 5;
        for n in 0..total {
            put_live_entry(&mut doc, &entry(n)).unwrap();
        }
        let log = read_device_doc(&doc).technician_log;
        assert_eq!(log.len(), TECHNICIAN_LOG_LIVE_MAX);
        assert!(log.iter().all(|e| e.at_ms >= 5), "the oldest five left");
        assert!(log.iter().any(|e| e.at_ms == i64::from(total - 1)));
    }

    #[test]
    fn unverified_refusals_are_counted_by_their_prefix_within_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open_connection(&dir.path().join("edge.db")).unwrap();
        let refusal = |n: u32, detail: String| TechnicianLogEntry {
            outcome: "refused".into(),
            detail,
            ..entry(n)
        };
        insert_row(
            &conn,
            &refusal(1, format!("{UNVERIFIED_REFUSAL_PREFIX}chain B")),
        )
        .unwrap();
        insert_row(
            &conn,
            &refusal(5, format!("{UNVERIFIED_REFUSAL_PREFIX}chain C")),
        )
        .unwrap();
        insert_row(&conn, &refusal(6, "expired".into())).unwrap();
        insert_row(&conn, &entry(7)).unwrap();
        assert_eq!(unverified_refusals_since(&conn, 0).unwrap(), 2);
        assert_eq!(
            unverified_refusals_since(&conn, 2).unwrap(),
            1,
            "the window"
        );
        assert_eq!(unverified_refusals_since(&conn, 6).unwrap(), 0);
    }

    #[test]
    fn the_sqlite_log_is_bounded_and_sequences_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open_connection(&dir.path().join("edge.db")).unwrap();
        for n in 0..3 {
            insert_row(&conn, &entry(n)).unwrap();
        }
        insert_row(&conn, &entry(2)).unwrap();
        let count: i64 = conn
            .query_row("SELECT count(*) FROM technician_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 3, "an entry is recorded once");
        assert_eq!(bundle_seq(&conn, BundleSeq::Intents).unwrap(), 0);
        set_bundle_seq(&conn, BundleSeq::Intents, 7).unwrap();
        set_bundle_seq(&conn, BundleSeq::Intents, 3).unwrap();
        assert_eq!(bundle_seq(&conn, BundleSeq::Intents).unwrap(), 7);
        assert_eq!(bundle_seq(&conn, BundleSeq::Facts).unwrap(), 0);
    }
}
