//! A branch's configuration from the cloud: rental minutes, the sign-in policy while SMS is
//! unavailable, and the kiosk's default language.
//!
//! A setting belongs to the branch but is carried out by its devices, so `PUT
//! /api/branches/{branch_id}/settings` turns one request into one intent per setting and per
//! unrevoked device of the branch (`set_rental_minutes`, `set_otp_policy`, `set_language`),
//! all written in one transaction and audited once (`branch.settings`, listing them) by
//! `crate::intents::create_for_branch`. `GET` shows, per setting, the newest value asked for
//! and where each device stands with it (pending, applied, failed, expired).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cartwise_schema::BranchId;
use cartwise_sync_core::intents::{IntentKind, KioskLanguage, OtpFallback, RENTAL_MINUTES_MAX};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::ApiState;
use super::auth::{Action, Caller};
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::intents::intent_error;
use super::live::{intent_schema, view};
use super::page::ok;
use crate::intents::{self, Actor, ActorKind, BatchAudit, Intent, IntentFilter};

/// The settings' names as the API and the audit log write them, with their intent kinds.
const SETTINGS: [(&str, &str); 3] = [
    ("rental_minutes", "set_rental_minutes"),
    ("when_sms_unavailable", "set_otp_policy"),
    ("language", "set_language"),
];

/// The body schema of a settings change (any subset, at least one).
pub fn body_schema() -> Value {
    json!({ "type": "object", "additionalProperties": false, "minProperties": 1,
        "properties": {
        "rental_minutes": { "type": "integer", "minimum": 1, "maximum": RENTAL_MINUTES_MAX,
            "description": "how long a new rental may last before it is overdue" },
        "when_sms_unavailable": { "type": "string", "enum": ["refuse", "token"],
            "description": "sign-in while SMS cannot be sent: refuse everyone, or accept a valid shopper token" },
        "language": { "type": "string", "enum": ["he", "en"],
            "description": "the kiosk's language when a request names none" } } })
}

/// The JSON schema of a branch's settings as last asked for.
pub fn schema() -> Value {
    let setting = json!({ "type": "object", "nullable": true, "properties": {
        "value": { "description": "the value last asked for" },
        "requested_by": { "type": "string" },
        "requested_at": { "type": "string", "format": "date-time" },
        "devices": { "type": "array", "items": intent_schema() } } });
    json!({ "type": "object", "properties": {
        "rental_minutes": setting,
        "when_sms_unavailable": setting,
        "language": setting } })
}

/// Body of a settings change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    rental_minutes: Option<i64>,
    when_sms_unavailable: Option<String>,
    language: Option<String>,
}

impl Settings {
    /// The intent kinds the body asks for, checked.
    fn kinds(&self) -> Result<Vec<IntentKind>, ApiError> {
        let mut kinds = Vec::new();
        if let Some(minutes) = self.rental_minutes {
            let minutes = u32::try_from(minutes)
                .ok()
                .filter(|m| (1..=RENTAL_MINUTES_MAX).contains(m))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "rental_minutes",
                        format!("rental_minutes must be 1 to {RENTAL_MINUTES_MAX} (a week)"),
                    )
                })?;
            kinds.push(IntentKind::SetRentalMinutes { minutes });
        }
        if let Some(policy) = &self.when_sms_unavailable {
            let when_sms_unavailable = OtpFallback::parse(policy).ok_or_else(|| {
                ApiError::invalid(
                    "when_sms_unavailable",
                    "when_sms_unavailable must be refuse or token",
                )
            })?;
            kinds.push(IntentKind::SetOtpPolicy {
                when_sms_unavailable,
            });
        }
        if let Some(language) = &self.language {
            let language = KioskLanguage::parse(language)
                .ok_or_else(|| ApiError::invalid("language", "language must be he or en"))?;
            kinds.push(IntentKind::SetLanguage { language });
        }
        if kinds.is_empty() {
            return Err(ApiError::invalid(
                "rental_minutes",
                "name at least one of rental_minutes, when_sms_unavailable and language",
            ));
        }
        Ok(kinds)
    }
}

/// The setting's name and value for an intent kind, if it is a branch setting.
fn setting(kind: &IntentKind) -> Option<(&'static str, Value)> {
    match kind {
        IntentKind::SetRentalMinutes { minutes } => Some(("rental_minutes", json!(minutes))),
        IntentKind::SetOtpPolicy {
            when_sms_unavailable,
        } => Some(("when_sms_unavailable", json!(when_sms_unavailable.as_str()))),
        IntentKind::SetLanguage { language } => Some(("language", json!(language.as_str()))),
        _ => None,
    }
}

/// `PUT /api/branches/{branch_id}/settings`: one intent per setting and device, atomically.
pub async fn put(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(branch): ApiPath<Uuid>,
    ApiJson(body): ApiJson<Settings>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let kinds = body.kinds()?;
    let place = caller
        .branch(&state.pool, branch, Action::BranchSettings)
        .await?;
    let request: serde_json::Map<String, Value> = kinds
        .iter()
        .filter_map(setting)
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let actor = Actor {
        kind: ActorKind::User,
        name: caller.principal.login.clone(),
    };
    let mut detail = Value::Object(request);
    if let (Some(ip), Some(map)) = (&caller.ip, detail.as_object_mut()) {
        map.insert("ip".to_owned(), json!(ip));
    }
    let batch = BatchAudit {
        action: "branch.settings",
        target: format!("branch/{}", place.branch),
        request: detail,
    };
    let created = intents::create_for_branch(
        &state.pool,
        BranchId::from_uuid(place.branch),
        &kinds,
        None,
        &actor,
        &batch,
    )
    .await
    .map_err(intent_error)?;
    Ok((
        StatusCode::ACCEPTED,
        ok(created.iter().map(view).collect::<Vec<_>>()),
    ))
}

/// `GET /api/branches/{branch_id}/settings`: per setting, the newest value asked for and each
/// device's intent for it.
pub async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(branch): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    caller.branch(&state.pool, branch, Action::Read).await?;
    let filter = IntentFilter {
        branch: Some(BranchId::from_uuid(branch)),
        ..IntentFilter::default()
    };
    let list = intents::list(&state.pool, &filter)
        .await
        .map_err(intent_error)?;
    let mut out = serde_json::Map::new();
    for (name, kind) in SETTINGS {
        // Newest first: the newest request is the intents created with the first one's time.
        let of_kind: Vec<&Intent> = list.iter().filter(|i| i.kind.as_str() == kind).collect();
        let value = of_kind.first().map(|newest| {
            let same: Vec<Value> = of_kind
                .iter()
                .filter(|i| i.created_at == newest.created_at && i.created_by == newest.created_by)
                .map(|i| view(i))
                .collect();
            json!({
                "value": setting(&newest.kind).map(|(_, v)| v),
                "requested_by": newest.created_by,
                "requested_at": newest.created_at,
                "devices": same,
            })
        });
        out.insert(name.to_owned(), value.unwrap_or(Value::Null));
    }
    Ok(ok(Value::Object(out)))
}
