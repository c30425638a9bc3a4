//! The API of technicians on site (`crate::technicians`): a technician signs in and obtains its
//! credential for a key its laptop generated, downloads each branch's hub-signed intents
//! bundle, and pushes the facts bundles it carried from Pis.
//!
//! - `POST /api/technicians/credentials` `{csr_pem, hours?, branches?, technician?}`: a
//!   technician for itself; platform and chain admins on behalf of `technician` (login or id).
//! - `GET /api/technicians/branches/{branch_id}/bundle`: `application/octet-stream`.
//! - `POST /api/technicians/push`: the bundle's bytes as the body (up to
//!   `BUNDLE_LEN_MAX`); `{applied, replay, device, seq, docs, message}`.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cartwise_schema::BranchId;
use cartwise_sync_core::bundle::BUNDLE_LEN_MAX;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::ApiState;
use super::auth::{Action, Caller};
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::openapi::{ApiBuilder, Op};
use super::page::ok;
use crate::technicians::{self, Pusher, TechError};
use crate::users::Role;

/// Adds the technician routes to the API.
pub trait TechnicianRoutes {
    /// The builder with the technician routes.
    fn technician_routes(self) -> Self;
}

impl TechnicianRoutes for ApiBuilder {
    fn technician_routes(self) -> Self {
        use axum::http::Method as M;
        self.add(
            Op {
                body: Some(credential_body_schema()),
                data: credential_schema(),
                ..super::op(
                    M::POST,
                    "/technicians/credentials",
                    "technicians",
                    "Issue a technician credential (one certificate per branch) for the laptop's key",
                )
            },
            post(credentials),
        )
        .add(
            Op {
                data: json!({ "type": "string", "format": "binary" }),
                ..super::op(
                    M::GET,
                    "/technicians/branches/{branch_id}/bundle",
                    "technicians",
                    "The branch's hub-signed intents bundle (application/octet-stream)",
                )
            },
            get(bundle),
        )
        .add(
            Op {
                data: push_schema(),
                ..super::op(
                    M::POST,
                    "/technicians/push",
                    "technicians",
                    "Push a Pi's signed facts bundle (application/octet-stream body)",
                )
            },
            post(push).layer(DefaultBodyLimit::max(BUNDLE_LEN_MAX)),
        )
    }
}

fn credential_body_schema() -> Value {
    json!({ "type": "object", "additionalProperties": false, "required": ["csr_pem"], "properties": {
        "csr_pem": { "type": "string", "description": "PKCS#10 request (PEM) signed by the laptop's new key" },
        "hours": { "type": "integer", "minimum": 1, "maximum": 168, "description": "validity, default 12" },
        "branches": { "type": "array", "items": { "type": "string", "format": "uuid" } },
        "technician": { "type": "string", "description": "admins: the technician's login or id" } } })
}

fn credential_schema() -> Value {
    json!({ "type": "object", "properties": {
        "technician_id": { "type": "string", "format": "uuid" },
        "login": { "type": "string" },
        "chain_id": { "type": "string", "format": "uuid" },
        "issued_at_ms": { "type": "integer" },
        "not_after_ms": { "type": "integer" },
        "branches": { "type": "array", "items": { "type": "object" } },
        "chain_ca_pem": { "type": "string" },
        "platform_ca_pem": { "type": "string" } } })
}

fn push_schema() -> Value {
    json!({ "type": "object", "properties": {
        "applied": { "type": "boolean" },
        "replay": { "type": "boolean" },
        "device": { "type": "string", "format": "uuid" },
        "seq": { "type": "integer" },
        "docs": { "type": "integer" },
        "message": { "type": "string" } } })
}

/// The body of `POST /technicians/credentials`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRequest {
    csr_pem: String,
    #[serde(default)]
    hours: Option<u32>,
    #[serde(default)]
    branches: Option<Vec<Uuid>>,
    #[serde(default)]
    technician: Option<String>,
}

fn api_error(error: TechError) -> ApiError {
    let message = error.to_string();
    match error {
        TechError::UnknownUser(_) => ApiError::not_found("technician"),
        TechError::NotTechnician(_)
        | TechError::Disabled(_)
        | TechError::Revoked(_)
        | TechError::Scope(_)
        | TechError::Device(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", message),
        TechError::Hours(_) => ApiError::invalid("hours", message),
        TechError::Csr(_) => ApiError::invalid("csr_pem", message),
        TechError::Bundle(_) | TechError::Merge { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bundle_refused", message)
        }
        TechError::Pki(_) | TechError::Db(_) => ApiError::internal(message),
    }
}

async fn credentials(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(body): ApiJson<CredentialRequest>,
) -> Result<Response, ApiError> {
    let principal = &caller.principal;
    let who = match (&body.technician, principal.role) {
        (None, Role::Technician) => principal.user_id.to_string(),
        (Some(who), Role::PlatformAdmin | Role::ChainAdmin) => {
            let tech = technicians::technician(&state.pool, who)
                .await
                .map_err(api_error)?;
            caller
                .chain(&state.pool, tech.chain, Action::ManageUsers)
                .await?;
            tech.user_id.to_string()
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only a technician (for itself) or an admin (naming the technician) obtains technician credentials",
            ));
        }
    };
    let issued = technicians::issue(
        &state.pool,
        &who,
        &body.csr_pem,
        body.hours,
        body.branches.as_deref(),
        &principal.login,
    )
    .await
    .map_err(api_error)?;
    Ok((StatusCode::CREATED, ok(issued)).into_response())
}

async fn bundle(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(branch_id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    let place = caller.branch(&state.pool, branch_id, Action::Read).await?;
    let scope = technicians::carry_scope(&state.pool, caller.principal.user_id)
        .await
        .map_err(api_error)?;
    if !scope.contains(&place.branch) {
        return Err(ApiError::forbidden("carry this branch's data"));
    }
    let bytes = technicians::intents_bundle(
        &state.pool,
        BranchId::from_uuid(place.branch),
        Some(caller.principal.user_id),
    )
    .await
    .map_err(api_error)?;
    let mut response = bytes.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

async fn push(
    State(state): State<ApiState>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    let pusher = Pusher {
        user_id: caller.principal.user_id,
        login: caller.principal.login.clone(),
        branches: technicians::carry_scope(&state.pool, caller.principal.user_id)
            .await
            .map_err(api_error)?,
    };
    let outcome = technicians::push(&state.pool, &pusher, &body)
        .await
        .map_err(api_error)?;
    Ok(ok(outcome).into_response())
}
