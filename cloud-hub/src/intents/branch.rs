//! Branch-level settings (`set_rental_minutes`, `set_otp_policy`, `set_language`) sent to
//! every device of a branch in one transaction, audited once.

use std::time::Duration;

use cartwise_schema::{BranchId, DeviceId};
use cartwise_sync_core::intents::{CREATED_BY_LEN_MAX, IntentKind};
use chrono::Utc;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Actor, Intent, IntentError, IntentRequest, db, get, try_create_all};

/// How a batch of intents is audited: one row for the whole request.
#[derive(Debug, Clone)]
pub struct BatchAudit {
    /// The audit action, e.g. `branch.settings`.
    pub action: &'static str,
    /// The audit target, e.g. `branch/<uuid>`.
    pub target: String,
    /// What was asked, as the caller sent it.
    pub request: serde_json::Value,
}

/// Sends each of `kinds` (branch-level settings) to every unrevoked device of `branch`: one
/// intent per device and kind, all written in one transaction (document, rows, one audit row
/// `batch.action` listing them), so either every device gets the setting or none does. A
/// branch without devices is refused ([`IntentError::NoDevices`]); a refusal is audited once.
pub async fn create_for_branch(
    pool: &PgPool,
    branch: BranchId,
    kinds: &[IntentKind],
    expires_in: Option<Duration>,
    actor: &Actor,
    batch: &BatchAudit,
) -> Result<Vec<Intent>, IntentError> {
    let result = async {
        if kinds.is_empty() {
            return Err(IntentError::Invalid(
                "name at least one setting to change".into(),
            ));
        }
        if let Some(kind) = kinds.iter().find(|k| k.post().is_some()) {
            return Err(IntentError::Invalid(format!(
                "{} is about one post, not a branch setting",
                kind.as_str()
            )));
        }
        let devices: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM devices WHERE branch_id = $1 AND revoked_at IS NULL ORDER BY id",
        )
        .bind(branch.as_uuid())
        .fetch_all(pool)
        .await
        .map_err(db("listing the branch's devices"))?;
        if devices.is_empty() {
            return Err(IntentError::NoDevices(branch));
        }
        let requests: Vec<IntentRequest> = devices
            .iter()
            .flat_map(|device| {
                kinds.iter().map(|kind| IntentRequest {
                    device: DeviceId::from_uuid(*device),
                    branch: Some(branch),
                    kind: kind.clone(),
                    expires_in,
                })
            })
            .collect();
        try_create_all(pool, &requests, actor, Utc::now(), Some(batch)).await
    }
    .await;
    match result {
        Ok(ids) => {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(get(pool, id).await?);
            }
            Ok(out)
        }
        Err(error) => {
            if error.is_refusal() {
                audit_branch_refusal(pool, branch, kinds, actor, &error).await;
            }
            Err(error)
        }
    }
}

/// Records a refused branch-level request (best effort).
async fn audit_branch_refusal(
    pool: &PgPool,
    branch: BranchId,
    kinds: &[IntentKind],
    actor: &Actor,
    error: &IntentError,
) {
    let result = sqlx::query(
        "INSERT INTO audit_log (actor_kind, actor_id, chain_id, branch_id, action, target, detail)
         SELECT $1, $2, b.chain_id, b.id, 'intent.refused', $4, $5
         FROM branches b WHERE b.id = $3",
    )
    .bind(actor.kind.as_str())
    .bind(
        actor
            .name
            .chars()
            .take(CREATED_BY_LEN_MAX)
            .collect::<String>(),
    )
    .bind(branch.as_uuid())
    .bind(format!("branch/{branch}"))
    .bind(json!({
        "kinds": kinds.iter().map(IntentKind::as_str).collect::<Vec<_>>(),
        "reason": error.to_string(),
    }))
    .execute(pool)
    .await;
    if let Err(error) = result {
        tracing::error!(%error, "writing the audit log failed");
    }
}
