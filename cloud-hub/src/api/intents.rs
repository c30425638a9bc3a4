//! The API's intents to the owning device: lend a cart to a shopper at the counter (a remote
//! unlock for someone without the kiosk), force a cart's return (a manager's word), and the
//! desired firmware of a device. Each goes through `crate::intents::create`, which writes the
//! branch's intents document, the `intents` row and the audit row in one transaction; the
//! device carries it out when it next syncs and answers with its outcome.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cartwise_schema::{BranchId, DeviceId, Phone};
use cartwise_sync_core::intents::IntentKind;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;
use uuid::Uuid;

use super::ApiState;
use super::auth::{Action, Caller, Place};
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::page::ok;
use crate::intents::{self, Actor, ActorKind, Intent, IntentError, IntentRequest};

/// How long a counter lend may still be carried out unless the caller says otherwise: a cart
/// must not open long after the shopper left the counter.
pub const ASSIGN_EXPIRES_IN_DEFAULT: Duration = Duration::from_secs(10 * 60);

/// The JSON schema of an intent as the API answers it.
pub fn schema() -> Value {
    json!({ "type": "object", "properties": {
        "id": { "type": "string", "format": "uuid" },
        "kind": { "type": "string" },
        "device_id": { "type": "string", "format": "uuid" },
        "branch_id": { "type": "string", "format": "uuid" },
        "post": { "type": "integer", "nullable": true },
        "status": { "type": "string", "enum": ["pending", "applied", "failed", "expired"] },
        "created_by": { "type": "string" },
        "created_at": { "type": "string", "format": "date-time" },
        "expires_at": { "type": "string", "format": "date-time", "nullable": true } } })
}

/// The body schema of assign.
pub fn assign_schema() -> Value {
    json!({ "type": "object", "additionalProperties": false, "required": ["phone"],
        "description": "the cart by cart_id or cart_number, or only device_id to let the device choose",
        "properties": {
        "phone": { "type": "string", "description": "the shopper's mobile, e.g. 050-1234567 or +972501234567" },
        "cart_id": { "type": "string", "format": "uuid" },
        "cart_number": { "type": "integer", "minimum": 1 },
        "device_id": { "type": "string", "format": "uuid" },
        "expires_in_minutes": { "type": "integer", "minimum": 1, "maximum": 43200 } } })
}

/// The body schema of return.
pub fn return_schema() -> Value {
    json!({ "type": "object", "additionalProperties": false, "properties": {
        "cart_id": { "type": "string", "format": "uuid" },
        "cart_number": { "type": "integer", "minimum": 1 },
        "expires_in_minutes": { "type": "integer", "minimum": 1, "maximum": 43200 } } })
}

/// The body schema of firmware.
pub fn firmware_schema() -> Value {
    json!({ "type": "object", "additionalProperties": false, "required": ["version"],
        "properties": { "version": { "type": "string", "minLength": 1, "maxLength": 50 },
        "expires_in_minutes": { "type": "integer", "minimum": 1, "maximum": 43200 } } })
}

fn view(intent: &Intent) -> Value {
    json!({
        "id": intent.id.to_string(),
        "kind": intent.kind.as_str(),
        "device_id": intent.device.as_uuid(),
        "branch_id": intent.branch.as_uuid(),
        "post": intent.kind.post(),
        "status": intent.status.as_str(),
        "created_by": intent.created_by,
        "created_at": intent.created_at,
        "expires_at": intent.expires_at,
    })
}

/// An intent refusal as the API answers it.
pub(crate) fn intent_error(error: IntentError) -> ApiError {
    match error {
        IntentError::UnknownDevice(_) | IntentError::WrongBranch { .. } => {
            ApiError::not_found("device")
        }
        IntentError::UnknownBranch(_) => ApiError::not_found("branch"),
        IntentError::UnknownIntent(_) => ApiError::not_found("intent"),
        IntentError::DeviceRevoked(_)
        | IntentError::UnknownPost { .. }
        | IntentError::NoDevices(_) => ApiError::conflict(error.to_string()),
        IntentError::Invalid(_) | IntentError::BadExpiry | IntentError::BadStatus(_) => {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "validation_failed",
                error.to_string(),
            )
        }
        IntentError::Corrupt { .. } | IntentError::Db { .. } => ApiError::internal(error),
    }
}

fn expires_in(
    minutes: Option<u32>,
    default: Option<Duration>,
) -> Result<Option<Duration>, ApiError> {
    match minutes {
        None => Ok(default),
        Some(m) if (1..=43_200).contains(&m) => Ok(Some(Duration::from_secs(u64::from(m) * 60))),
        Some(_) => Err(ApiError::invalid(
            "expires_in_minutes",
            "expires_in_minutes must be 1 to 43200 (30 days)",
        )),
    }
}

async fn create(
    state: &ApiState,
    caller: &Caller,
    place: Place,
    device: Uuid,
    kind: IntentKind,
    expires_in: Option<Duration>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request = IntentRequest {
        device: DeviceId::from_uuid(device),
        branch: Some(BranchId::from_uuid(place.branch)),
        kind,
        expires_in,
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

/// The cart named by id or number in `branch`, and the device that owns it (its controller's).
async fn owned_cart(
    state: &ApiState,
    branch: Uuid,
    cart_id: Option<Uuid>,
    cart_number: Option<i32>,
) -> Result<(u16, Uuid), ApiError> {
    if cart_id.is_some() == cart_number.is_some() {
        return Err(ApiError::invalid(
            "cart_id",
            "name the cart by exactly one of cart_id and cart_number",
        ));
    }
    let row = sqlx::query(
        "SELECT c.cart_number, k.device_id FROM carts c \
         LEFT JOIN controllers k ON k.id = c.controller_id \
         WHERE c.branch_id = $1 AND ($2::uuid IS NULL OR c.id = $2) \
         AND ($3::int IS NULL OR c.cart_number = $3)",
    )
    .bind(branch)
    .bind(cart_id)
    .bind(cart_number)
    .fetch_optional(&state.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("cart"))?;
    let post = u16::try_from(row.get::<i32, _>(0))
        .map_err(|_| ApiError::conflict("the cart's number is not a post number"))?;
    let device: Option<Uuid> = row.get(1);
    let device = device.ok_or_else(|| {
        ApiError::conflict(
            "no device owns this cart (it has no controller); assign it at the kiosk",
        )
    })?;
    Ok((post, device))
}

/// Body of assign.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assign {
    phone: String,
    cart_id: Option<Uuid>,
    cart_number: Option<i32>,
    device_id: Option<Uuid>,
    expires_in_minutes: Option<u32>,
}

/// `POST /api/branches/{branch_id}/carts/assign`.
pub async fn assign(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(branch): ApiPath<Uuid>,
    ApiJson(body): ApiJson<Assign>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let place = caller
        .branch(&state.pool, branch, Action::CartIntent)
        .await?;
    if body.phone.len() > 32 {
        return Err(ApiError::invalid("phone", "not a mobile number"));
    }
    let phone =
        Phone::parse(&body.phone).map_err(|error| ApiError::invalid("phone", error.to_string()))?;
    let expires = expires_in(body.expires_in_minutes, Some(ASSIGN_EXPIRES_IN_DEFAULT))?;
    let (post, device) = match (body.cart_id, body.cart_number, body.device_id) {
        (None, None, Some(device)) => (None, device),
        (None, None, None) => {
            return Err(ApiError::invalid(
                "cart_id",
                "name the cart (cart_id or cart_number) or the device (device_id)",
            ));
        }
        (cart_id, cart_number, device_id) => {
            let (post, owner) = owned_cart(&state, branch, cart_id, cart_number).await?;
            if device_id.is_some_and(|d| d != owner) {
                return Err(ApiError::invalid(
                    "device_id",
                    "the cart belongs to another device",
                ));
            }
            (Some(post), owner)
        }
    };
    let kind = IntentKind::AssignCart {
        post,
        phone: phone.as_e164().to_owned(),
    };
    create(&state, &caller, place, device, kind, expires).await
}

/// Body of return.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Return {
    cart_id: Option<Uuid>,
    cart_number: Option<i32>,
    expires_in_minutes: Option<u32>,
}

/// `POST /api/branches/{branch_id}/carts/return`.
pub async fn force_return(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(branch): ApiPath<Uuid>,
    ApiJson(body): ApiJson<Return>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let place = caller
        .branch(&state.pool, branch, Action::CartIntent)
        .await?;
    let expires = expires_in(body.expires_in_minutes, None)?;
    let (post, device) = owned_cart(&state, branch, body.cart_id, body.cart_number).await?;
    create(
        &state,
        &caller,
        place,
        device,
        IntentKind::ForceReturn { post },
        expires,
    )
    .await
}

/// Body of firmware.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firmware {
    version: String,
    expires_in_minutes: Option<u32>,
}

/// `PUT /api/devices/{id}/firmware`: records the desired version as an intent.
pub async fn firmware(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(device): ApiPath<Uuid>,
    ApiJson(body): ApiJson<Firmware>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let place = caller
        .device(&state.pool, device, Action::SetFirmware)
        .await?;
    let expires = expires_in(body.expires_in_minutes, None)?;
    let kind = IntentKind::SetFirmware {
        version: body.version.trim().to_owned(),
    };
    kind.validate()
        .map_err(|error| ApiError::invalid("version", error.to_string()))?;
    create(&state, &caller, place, device, kind, expires).await
}
