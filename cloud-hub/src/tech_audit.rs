//! The technician log of a device document (every use of a technician credential on a Pi,
//! allowed or refused) written into `audit_log` when the document reaches the hub: one row per
//! entry, action `technician.<action>`, actor the technician, target the device. Each entry is
//! audited once (`technician_log_audited`, keyed by device and entry id), however often the
//! document arrives and by whichever path (the Pi's own session or a technician's push).

use cartwise_schema::{BranchId, DeviceId};
use cartwise_sync_core::facts::TechnicianLogEntry;
use serde_json::json;
use sqlx::PgConnection;

/// Longest action name audited (longer ones are cut; `audit_log.action` is 80 characters).
const ACTION_LEN_MAX: usize = 64;
/// Longest detail text kept.
const DETAIL_LEN_MAX: usize = 1024;

/// Audits the entries of `entries` not audited yet, inside the caller's transaction. Returns
/// how many were new.
pub async fn record_log(
    conn: &mut PgConnection,
    device: DeviceId,
    branch: BranchId,
    entries: &[TechnicianLogEntry],
) -> Result<u64, sqlx::Error> {
    if entries.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = entries.iter().map(|entry| entry.id.as_str()).collect();
    let fresh: Vec<String> = sqlx::query_scalar(
        "INSERT INTO technician_log_audited (device_id, entry_id) \
         SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING RETURNING entry_id",
    )
    .bind(device.as_uuid())
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut written = 0;
    for entry in entries.iter().filter(|entry| fresh.contains(&entry.id)) {
        let action: String = format!("technician.{}", entry.action)
            .chars()
            .take(ACTION_LEN_MAX)
            .collect();
        let actor = entry
            .technician
            .map_or_else(|| "unknown".to_owned(), |id| id.to_string());
        let detail: String = entry.detail.chars().take(DETAIL_LEN_MAX).collect();
        sqlx::query(
            "INSERT INTO audit_log (actor_kind, actor_id, chain_id, branch_id, action, target, detail) \
             SELECT 'technician', $1, b.chain_id, b.id, $2, $3, $4 FROM branches b WHERE b.id = $5",
        )
        .bind(&actor)
        .bind(&action)
        .bind(device.to_string())
        .bind(json!({
            "outcome": entry.outcome,
            "detail": detail,
            "entry": entry.id,
            "at_ms": entry.at_ms,
            "device": device.to_string(),
            "source": "device technician log",
        }))
        .bind(branch.as_uuid())
        .execute(&mut *conn)
        .await?;
        written += 1;
    }
    Ok(written)
}
