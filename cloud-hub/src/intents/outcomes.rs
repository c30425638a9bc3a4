//! Outcomes up: a device's answers to its intents (the `outcomes` map of its own document)
//! projected onto the `intents` rows, each pending intent moved once and audited.

use cartwise_schema::DeviceId;
use cartwise_sync_core::facts::{OutcomeFact, OutcomeStatus};
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{IntentError, IntentStatus, db};

/// What one outcome projection did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OutcomesProjected {
    /// Intents that left `pending`.
    pub changed: u64,
    /// Outcomes refused (for another device's intent or an unknown intent), with the reason.
    pub refused: Vec<String>,
    /// Outcomes that contradict an outcome already recorded (the first one stays).
    pub conflicts: Vec<String>,
}

impl IntentStatus {
    fn from_outcome(status: OutcomeStatus) -> Self {
        match status {
            OutcomeStatus::Applied => IntentStatus::Applied,
            OutcomeStatus::Failed => IntentStatus::Failed,
            OutcomeStatus::Expired => IntentStatus::Expired,
        }
    }
}

/// Projects `device`'s outcomes in their own transaction; see [`project_outcomes_in`].
pub async fn project_outcomes(
    pool: &PgPool,
    device: DeviceId,
    outcomes: &[OutcomeFact],
) -> Result<OutcomesProjected, IntentError> {
    let mut tx = pool.begin().await.map_err(db("projecting outcomes"))?;
    let out = project_outcomes_in(&mut tx, device, outcomes)
        .await
        .map_err(db("projecting outcomes"))?;
    tx.commit().await.map_err(db("projecting outcomes"))?;
    Ok(out)
}

/// Moves `device`'s intents to the outcome its document records, inside the caller's
/// transaction (the device projection's). Idempotent: only a `pending` intent changes (and is
/// audited as `intent.applied`, `intent.failed` or `intent.expired`); an outcome for another
/// device's intent or an unknown intent is refused, and an outcome that contradicts the one
/// recorded is kept out; each of those is audited once, however often the document replays.
pub async fn project_outcomes_in(
    conn: &mut PgConnection,
    device: DeviceId,
    outcomes: &[OutcomeFact],
) -> Result<OutcomesProjected, sqlx::Error> {
    let mut out = OutcomesProjected::default();
    if outcomes.is_empty() {
        return Ok(out);
    }
    let scope: Option<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT d.branch_id, b.chain_id FROM devices d JOIN branches b ON b.id = d.branch_id
         WHERE d.id = $1",
    )
    .bind(device.as_uuid())
    .fetch_optional(&mut *conn)
    .await?;
    let audit = Audit {
        device,
        branch: scope.map(|s| s.0),
        chain: scope.map(|s| s.1),
    };
    for outcome in outcomes {
        let id = outcome.intent;
        let target = id.to_string();
        let row: Option<(Uuid, String)> =
            sqlx::query_as("SELECT device_id, status FROM intents WHERE id = $1 FOR UPDATE")
                .bind(id.as_uuid())
                .fetch_optional(&mut *conn)
                .await?;
        let Some((addressed, current)) = row else {
            let reason = format!("outcome for intent {id}, which the hub does not hold");
            audit
                .once(conn, "intent.outcome_refused", &target, &reason)
                .await?;
            out.refused.push(reason);
            continue;
        };
        if addressed != *device.as_uuid() {
            let reason =
                format!("outcome for intent {id}, which is addressed to device {addressed}");
            audit
                .once(conn, "intent.outcome_refused", &target, &reason)
                .await?;
            out.refused.push(reason);
            continue;
        }
        let status = IntentStatus::from_outcome(outcome.status);
        if current == status.as_str() {
            continue;
        }
        if current != IntentStatus::Pending.as_str() {
            let reason =
                format!("intent {id} is {current}; the device's document now says {status}");
            audit
                .once(conn, "intent.outcome_conflict", &target, &reason)
                .await?;
            out.conflicts.push(reason);
            continue;
        }
        let at = DateTime::from_timestamp_millis(outcome.wall).unwrap_or_else(Utc::now);
        let changed = sqlx::query(
            "UPDATE intents SET status = $2, outcome_detail = $3, outcome_at = $4
             WHERE id = $1 AND status = 'pending'",
        )
        .bind(id.as_uuid())
        .bind(status.as_str())
        .bind(&outcome.detail)
        .bind(at)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if changed > 0 {
            out.changed += changed;
            audit
                .write(
                    conn,
                    &format!("intent.{status}"),
                    &target,
                    json!({ "detail": outcome.detail, "at": at.to_rfc3339(), "hlc": outcome.hlc }),
                )
                .await?;
        }
    }
    Ok(out)
}

/// Audit rows written on behalf of a device's outcomes.
struct Audit {
    device: DeviceId,
    branch: Option<Uuid>,
    chain: Option<Uuid>,
}

impl Audit {
    async fn write(
        &self,
        conn: &mut PgConnection,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO audit_log (actor_kind, actor_id, chain_id, branch_id, action, target, detail)
             VALUES ('device', $1, $2, $3, $4, $5, $6)",
        )
        .bind(self.device.to_string())
        .bind(self.chain)
        .bind(self.branch)
        .bind(action)
        .bind(target)
        .bind(detail)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Writes the row unless this device already has one with this action and target.
    async fn once(
        &self,
        conn: &mut PgConnection,
        action: &str,
        target: &str,
        reason: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO audit_log (actor_kind, actor_id, chain_id, branch_id, action, target, detail)
             SELECT 'device', $1, $2, $3, $4, $5, $6
             WHERE NOT EXISTS (SELECT 1 FROM audit_log
                               WHERE target = $5 AND action = $4 AND actor_id = $1)",
        )
        .bind(self.device.to_string())
        .bind(self.chain)
        .bind(self.branch)
        .bind(action)
        .bind(target)
        .bind(json!({ "reason": reason }))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}
