//! What a branch's live view needs beyond the generic resources: its devices with their sync
//! lag, its open anomalies, its recent intents with the devices' outcomes, and per-post
//! intents (take a post out of service or back, unlock it for maintenance, leave a note).
//!
//! Sync lag is how far behind the hub's copy of a device may be: the seconds since the
//! device's last heartbeat and since its last sync session's state was saved
//! (`sync_peer_states.updated_at`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cartwise_schema::{BranchId, DeviceId};
use cartwise_sync_core::intents::IntentKind;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;
use uuid::Uuid;

use super::ApiState;
use super::auth::{Action, Caller};
use super::devices::OFFLINE_AFTER_SECS;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::intents::intent_error;
use super::page::ok;
use crate::intents::{self, Actor, ActorKind, Intent, IntentFilter, IntentRequest};

/// Intents a branch's list shows, newest first.
pub const INTENTS_SHOWN_MAX: i64 = 100;
/// Open anomalies a branch's list shows, newest first.
pub const ANOMALIES_SHOWN_MAX: i64 = 200;
/// The longest note text.
pub const NOTE_LEN_MAX: usize = 500;

/// The JSON schema of a branch's device with its sync lag.
pub fn device_schema() -> Value {
    json!({ "type": "object", "properties": {
        "id": { "type": "string", "format": "uuid" },
        "device_name": { "type": "string" },
        "status": { "type": "string", "enum": ["online", "offline", "revoked"] },
        "firmware_version": { "type": "string", "nullable": true },
        "last_heartbeat": { "type": "string", "format": "date-time", "nullable": true },
        "seconds_since_heartbeat": { "type": "integer", "nullable": true },
        "last_sync": { "type": "string", "format": "date-time", "nullable": true },
        "sync_lag_seconds": { "type": "integer", "nullable": true,
            "description": "seconds since the device's last sync session saved its state" },
        "pending_intents": { "type": "integer" } } })
}

/// The JSON schema of an open anomaly.
pub fn anomaly_schema() -> Value {
    json!({ "type": "object", "properties": {
        "device_id": { "type": "string", "format": "uuid" },
        "kind": { "type": "string" },
        "cart_number": { "type": "integer", "nullable": true },
        "detail": { "type": "string" },
        "at": { "type": "string", "format": "date-time" } } })
}

/// The JSON schema of an intent with its outcome.
pub fn intent_schema() -> Value {
    json!({ "type": "object", "properties": {
        "id": { "type": "string", "format": "uuid" },
        "kind": { "type": "string" },
        "device_id": { "type": "string", "format": "uuid" },
        "device_name": { "type": "string" },
        "post": { "type": "integer", "nullable": true },
        "status": { "type": "string", "enum": ["pending", "applied", "failed", "expired"] },
        "outcome_detail": { "type": "string", "nullable": true },
        "outcome_at": { "type": "string", "format": "date-time", "nullable": true },
        "created_by": { "type": "string" },
        "created_at": { "type": "string", "format": "date-time" },
        "updated_at": { "type": "string", "format": "date-time" } } })
}

/// The body schema of a post intent.
pub fn post_intent_schema() -> Value {
    json!({ "type": "object", "additionalProperties": false, "required": ["kind", "post"],
        "properties": {
        "post": { "type": "integer", "minimum": 1, "maximum": 65535 },
        "kind": { "type": "string",
            "enum": ["out_of_service", "in_service", "unlock", "note"] },
        "text": { "type": "string", "minLength": 1, "maxLength": NOTE_LEN_MAX,
            "description": "the note (kind note only)" } } })
}

/// `GET /api/branches/{branch_id}/devices`.
pub async fn devices(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(branch): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    caller.branch(&state.pool, branch, Action::Read).await?;
    let rows = sqlx::query(
        "SELECT d.id, d.device_name, d.status, d.revoked_at IS NOT NULL AS revoked, \
           d.firmware_version, d.last_heartbeat, \
           extract(epoch FROM now() - d.last_heartbeat)::bigint AS since, \
           s.last_sync, extract(epoch FROM now() - s.last_sync)::bigint AS lag, \
           (SELECT count(*) FROM intents i WHERE i.device_id = d.id AND i.status = 'pending') \
             AS pending \
         FROM devices d \
         LEFT JOIN LATERAL (SELECT max(updated_at) AS last_sync FROM sync_peer_states p \
           WHERE p.peer_id = d.id) s ON true \
         WHERE d.branch_id = $1 ORDER BY d.device_name, d.id",
    )
    .bind(branch)
    .fetch_all(&state.pool)
    .await?;
    let list: Vec<Value> = rows
        .iter()
        .map(|row| {
            let since: Option<i64> = row.get("since");
            let shown = if row.get::<bool, _>("revoked") {
                "revoked"
            } else if row.get::<String, _>("status") == "online"
                && since.is_some_and(|s| s <= OFFLINE_AFTER_SECS)
            {
                "online"
            } else {
                "offline"
            };
            json!({
                "id": row.get::<Uuid, _>("id"),
                "device_name": row.get::<String, _>("device_name"),
                "status": shown,
                "firmware_version": row.get::<Option<String>, _>("firmware_version"),
                "last_heartbeat": row.get::<Option<DateTime<Utc>>, _>("last_heartbeat"),
                "seconds_since_heartbeat": since,
                "last_sync": row.get::<Option<DateTime<Utc>>, _>("last_sync"),
                "sync_lag_seconds": row.get::<Option<i64>, _>("lag"),
                "pending_intents": row.get::<i64, _>("pending"),
            })
        })
        .collect();
    Ok(ok(list))
}

/// `GET /api/branches/{branch_id}/anomalies`: the open ones, newest first.
pub async fn anomalies(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(branch): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    caller.branch(&state.pool, branch, Action::Read).await?;
    let rows = sqlx::query(
        "SELECT device_id, kind, cart_number, detail, at FROM anomalies \
         WHERE branch_id = $1 AND resolved_at IS NULL ORDER BY at DESC LIMIT $2",
    )
    .bind(branch)
    .bind(ANOMALIES_SHOWN_MAX)
    .fetch_all(&state.pool)
    .await?;
    let list: Vec<Value> = rows
        .iter()
        .map(|row| {
            json!({
                "device_id": row.get::<Uuid, _>("device_id"),
                "kind": row.get::<String, _>("kind"),
                "cart_number": row.get::<Option<i32>, _>("cart_number"),
                "detail": row.get::<String, _>("detail"),
                "at": row.get::<DateTime<Utc>, _>("at"),
            })
        })
        .collect();
    Ok(ok(list))
}

/// An intent with its outcome as the live view shows it.
pub(crate) fn view(intent: &Intent) -> Value {
    json!({
        "id": intent.id.to_string(),
        "kind": intent.kind.as_str(),
        "device_id": intent.device.as_uuid(),
        "device_name": intent.device_name,
        "post": intent.kind.post(),
        "status": intent.status.as_str(),
        "outcome_detail": intent.outcome_detail,
        "outcome_at": intent.outcome_at,
        "created_by": intent.created_by,
        "created_at": intent.created_at,
        "updated_at": intent.updated_at,
    })
}

/// `GET /api/branches/{branch_id}/intents`: the newest, with their status and outcome.
pub async fn intents(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(branch): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    caller.branch(&state.pool, branch, Action::Read).await?;
    let filter = IntentFilter {
        branch: Some(BranchId::from_uuid(branch)),
        limit: Some(INTENTS_SHOWN_MAX),
        ..IntentFilter::default()
    };
    let list = intents::list(&state.pool, &filter)
        .await
        .map_err(intent_error)?;
    Ok(ok(list.iter().map(view).collect::<Vec<_>>()))
}

/// Body of a post intent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostIntent {
    kind: String,
    post: u16,
    text: Option<String>,
}

/// `POST /api/branches/{branch_id}/intents`: an intent about one post, to the
/// device whose controller holds it.
pub async fn post_intent(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(branch): ApiPath<Uuid>,
    ApiJson(body): ApiJson<PostIntent>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let post = body.post;
    if post == 0 {
        return Err(ApiError::invalid("post", "posts are numbered from 1"));
    }
    // A maintenance unlock is also a technician's; the rest is a manager's.
    let action = if body.kind == "unlock" {
        Action::MaintenanceUnlock
    } else {
        Action::CartIntent
    };
    let place = caller.branch(&state.pool, branch, action).await?;
    let kind = match (body.kind.as_str(), body.text) {
        ("out_of_service", None) => IntentKind::OutOfService { post },
        ("in_service", None) => IntentKind::InService { post },
        ("unlock", None) => IntentKind::UnlockPost { post },
        ("note", Some(text)) => {
            let text = text.trim().to_owned();
            if text.is_empty() || text.chars().count() > NOTE_LEN_MAX || text.contains('\0') {
                return Err(ApiError::invalid(
                    "text",
                    format!("a note is 1 to {NOTE_LEN_MAX} characters"),
                ));
            }
            IntentKind::Note {
                post: Some(post),
                text,
            }
        }
        ("note", None) => return Err(ApiError::invalid("text", "a note needs its text")),
        ("out_of_service" | "in_service" | "unlock", Some(_)) => {
            return Err(ApiError::invalid("text", "only a note has text"));
        }
        _ => {
            return Err(ApiError::invalid(
                "kind",
                "kind is out_of_service, in_service, unlock or note",
            ));
        }
    };
    let device: Option<Option<Uuid>> = sqlx::query_scalar(
        "SELECT k.device_id FROM carts c LEFT JOIN controllers k ON k.id = c.controller_id \
         WHERE c.branch_id = $1 AND c.cart_number = $2",
    )
    .bind(branch)
    .bind(i32::from(post))
    .fetch_optional(&state.pool)
    .await?;
    let device = match device.ok_or_else(|| ApiError::not_found("post"))? {
        Some(device) => device,
        // No controller on record: the branch's only device, if it has one (the intent's own
        // check then asks that device's reported posts).
        None => {
            let devices: Vec<Uuid> = sqlx::query_scalar(
                "SELECT id FROM devices WHERE branch_id = $1 AND revoked_at IS NULL LIMIT 2",
            )
            .bind(branch)
            .fetch_all(&state.pool)
            .await?;
            match devices.as_slice() {
                [only] => *only,
                _ => {
                    return Err(ApiError::conflict(
                        "no device owns this post (it has no controller)",
                    ));
                }
            }
        }
    };
    let request = IntentRequest {
        device: DeviceId::from_uuid(device),
        branch: Some(BranchId::from_uuid(place.branch)),
        kind,
        expires_in: None,
    };
    let actor = Actor {
        kind: ActorKind::User,
        name: caller.principal.login.clone(),
    };
    let intent = intents::create(&state.pool, request, &actor)
        .await
        .map_err(intent_error)?;
    Ok((StatusCode::ACCEPTED, ok(view(&intent))))
}
