//! `/api/devices`: register (an enrollment code and what the Pi needs to enroll), read, status,
//! and the HTTP heartbeat for devices that cannot speak QUIC.
//!
//! The heartbeat is authenticated by the device's own certificate, as on QUIC: the request
//! carries the certificate (`x-cartwise-device-cert`, base64 DER), a time
//! (`x-cartwise-timestamp`, Unix ms, within `HEARTBEAT_SKEW_MAX` of the hub's clock) and an
//! ECDSA P-256 signature (`x-cartwise-device-signature`, base64) by the certificate's key over
//! [`heartbeat_message`]. The certificate must verify against its chain's CA, name the device
//! of the path, and be on record and unrevoked.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use cartwise_schema::DeviceId;
use cartwise_sync_core::identity::{
    ChainCaRegistry, EnrollUrl, PeerIdentity, inspect_certificate, parse_sha256_fingerprint,
};
use chrono::{DateTime, Utc};
use rustls::pki_types::{CertificateDer, UnixTime};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;
use uuid::Uuid;

use super::auth::{Action, Caller};
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::page::{check_optional_text, check_text, ok};
use super::{ApiState, audit};
use crate::{enroll, pki};

/// How far a heartbeat's timestamp may be from the hub's clock.
pub const HEARTBEAT_SKEW_MAX: Duration = Duration::from_secs(300);
/// The longest heartbeat body.
pub const HEARTBEAT_BODY_MAX: usize = 4 * 1024;
/// Seconds without a heartbeat after which a device counts as offline.
pub const OFFLINE_AFTER_SECS: i64 = 90;

/// The heartbeat header with the certificate.
pub const CERT_HEADER: &str = "x-cartwise-device-cert";
/// The heartbeat header with the signature.
pub const SIGNATURE_HEADER: &str = "x-cartwise-device-signature";
/// The heartbeat header with the time.
pub const TIMESTAMP_HEADER: &str = "x-cartwise-timestamp";

/// What a heartbeat's signature covers.
pub fn heartbeat_message(device: Uuid, timestamp_ms: i64, body: &[u8]) -> Vec<u8> {
    let digest: String = Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("cartwise-heartbeat-v1\n{device}\n{timestamp_ms}\n{digest}").into_bytes()
}

/// The JSON schema of a device.
pub fn schema() -> Value {
    json!({ "type": "object", "properties": {
        "id": { "type": "string", "format": "uuid" },
        "branch_id": { "type": "string", "format": "uuid" },
        "chain_id": { "type": "string", "format": "uuid" },
        "device_name": { "type": "string" },
        "mac_address": { "type": "string", "nullable": true },
        "serial_number": { "type": "string", "nullable": true },
        "status": { "type": "string" },
        "last_heartbeat": { "type": "string", "format": "date-time", "nullable": true },
        "firmware_version": { "type": "string", "nullable": true },
        "ip_address": { "type": "string", "nullable": true },
        "revoked_at": { "type": "string", "format": "date-time", "nullable": true },
        "created_at": { "type": "string", "format": "date-time" },
        "updated_at": { "type": "string", "format": "date-time" } } })
}

/// The JSON schema of `/status`.
pub fn status_schema() -> Value {
    json!({ "type": "object", "properties": {
        "id": { "type": "string", "format": "uuid" },
        "status": { "type": "string", "enum": ["online", "offline", "revoked", "not_enrolled"] },
        "last_heartbeat": { "type": "string", "format": "date-time", "nullable": true },
        "seconds_since_heartbeat": { "type": "integer", "nullable": true },
        "firmware_version": { "type": "string", "nullable": true },
        "enrolled": { "type": "boolean" },
        "certificate_not_after": { "type": "string", "format": "date-time", "nullable": true },
        "last_sync": { "type": "string", "format": "date-time", "nullable": true },
        "pending_intents": { "type": "integer" },
        "open_anomalies": { "type": "integer" } } })
}

/// The body schema of `POST /api/devices/register`.
pub fn register_schema() -> Value {
    json!({ "type": "object", "additionalProperties": false,
        "required": ["branch_id", "device_name"], "properties": {
        "branch_id": { "type": "string", "format": "uuid" },
        "device_name": { "type": "string", "minLength": 1, "maxLength": 255 },
        "expires_in_minutes": { "type": "integer", "minimum": 1, "maximum": 43200 } } })
}

/// The JSON schema of a registration's answer.
pub fn registered_schema() -> Value {
    json!({ "type": "object", "properties": {
        "device_id": { "type": "string", "format": "uuid" },
        "branch_id": { "type": "string", "format": "uuid" },
        "chain_id": { "type": "string", "format": "uuid" },
        "code": { "type": "string" },
        "expires_at": { "type": "string", "format": "date-time" },
        "hub": { "type": "string" },
        "ca_sha256": { "type": "string" },
        "enroll_url": { "type": "string" },
        "qr": { "type": "string" },
        "command": { "type": "string" } } })
}

/// The body schema of the heartbeat.
pub fn heartbeat_schema() -> Value {
    json!({ "type": "object", "additionalProperties": false, "properties": {
        "firmware_version": { "type": "string", "maxLength": 50 },
        "ip_address": { "type": "string", "maxLength": 45 } } })
}

/// `GET /api/devices/{id}`.
pub async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let place = caller.device(&state.pool, id, Action::Read).await?;
    let row = sqlx::query(
        "SELECT device_name, mac_address, serial_number, status, last_heartbeat, \
         firmware_version, ip_address, revoked_at, created_at, updated_at \
         FROM devices WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("device"))?;
    Ok(ok(json!({
        "id": id,
        "branch_id": place.branch,
        "chain_id": place.chain,
        "device_name": row.get::<String, _>(0),
        "mac_address": row.get::<Option<String>, _>(1),
        "serial_number": row.get::<Option<String>, _>(2),
        "status": row.get::<String, _>(3),
        "last_heartbeat": row.get::<Option<DateTime<Utc>>, _>(4),
        "firmware_version": row.get::<Option<String>, _>(5),
        "ip_address": row.get::<Option<String>, _>(6),
        "revoked_at": row.get::<Option<DateTime<Utc>>, _>(7),
        "created_at": row.get::<DateTime<Utc>, _>(8),
        "updated_at": row.get::<DateTime<Utc>, _>(9),
    })))
}

/// `GET /api/devices/{id}/status`.
pub async fn status(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    caller.device(&state.pool, id, Action::Read).await?;
    let row = sqlx::query(
        "SELECT d.status, d.last_heartbeat, \
           extract(epoch FROM now() - d.last_heartbeat)::bigint, d.firmware_version, \
           d.revoked_at IS NOT NULL, \
           (SELECT max(not_after) FROM device_certificates c \
              WHERE c.device_id = d.id AND c.revoked_at IS NULL), \
           (SELECT max(updated_at) FROM sync_peer_states s WHERE s.peer_id = d.id), \
           (SELECT count(*) FROM intents i WHERE i.device_id = d.id AND i.status = 'pending'), \
           (SELECT count(*) FROM anomalies a WHERE a.device_id = d.id AND a.resolved_at IS NULL) \
         FROM devices d WHERE d.id = $1",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("device"))?;
    let since: Option<i64> = row.get(2);
    let revoked: bool = row.get(4);
    let not_after: Option<DateTime<Utc>> = row.get(5);
    let shown = if revoked {
        "revoked"
    } else if not_after.is_none() {
        "not_enrolled"
    } else if row.get::<String, _>(0) == "online" && since.is_some_and(|s| s <= OFFLINE_AFTER_SECS)
    {
        "online"
    } else {
        "offline"
    };
    Ok(ok(json!({
        "id": id,
        "status": shown,
        "last_heartbeat": row.get::<Option<DateTime<Utc>>, _>(1),
        "seconds_since_heartbeat": since,
        "firmware_version": row.get::<Option<String>, _>(3),
        "enrolled": not_after.is_some(),
        "certificate_not_after": not_after,
        "last_sync": row.get::<Option<DateTime<Utc>>, _>(6),
        "pending_intents": row.get::<i64, _>(7),
        "open_anomalies": row.get::<i64, _>(8),
    })))
}

/// Body of `POST /api/devices/register`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    branch_id: Uuid,
    device_name: String,
    expires_in_minutes: Option<u32>,
}

/// `POST /api/devices/register`: creates the device and its one-time enrollment code.
pub async fn register(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(body): ApiJson<Register>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let place = caller
        .branch(&state.pool, body.branch_id, Action::RegisterDevice)
        .await?;
    check_text("device_name", &body.device_name, 255)?;
    let ttl = match body.expires_in_minutes {
        None => enroll::CODE_TTL_DEFAULT,
        Some(minutes) => Duration::from_secs(u64::from(minutes) * 60),
    };
    if ttl < Duration::from_secs(60) || ttl > enroll::CODE_TTL_MAX {
        return Err(ApiError::invalid(
            "expires_in_minutes",
            "expires_in_minutes must be 1 to 43200 (30 days)",
        ));
    }
    let code: String = sqlx::query_scalar("SELECT branch_code FROM branches WHERE id = $1")
        .bind(body.branch_id)
        .fetch_one(&state.pool)
        .await?;
    let new = enroll::add_device(&state.pool, &code, &body.device_name, ttl)
        .await
        .map_err(enroll_error)?;
    let ca = pki::load_or_create_platform_ca(&state.pool)
        .await
        .map_err(ApiError::internal)?;
    let ca_sha256 = ca.sha256_hex();
    let url = EnrollUrl {
        hub: state.config.hub_quic_addr.clone(),
        code: new.code.grouped(),
        ca_sha256: parse_sha256_fingerprint(&ca_sha256).map_err(ApiError::internal)?,
    }
    .to_string();
    let device = *new.device.as_uuid();
    audit::record(
        &state.pool,
        &caller,
        "device.register",
        Some(place.chain),
        Some(place.branch),
        Some(&format!("device/{device}")),
        json!({ "device_name": body.device_name, "code_expires_at": new.expires_at }),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        ok(json!({
            "device_id": device,
            "branch_id": place.branch,
            "chain_id": place.chain,
            "code": new.code.grouped(),
            "expires_at": new.expires_at,
            "hub": state.config.hub_quic_addr,
            "ca_sha256": ca_sha256,
            "enroll_url": url,
            "qr": url,
            "command": format!("cartwise-edge enroll --url '{url}'"),
        })),
    ))
}

fn enroll_error(error: enroll::EnrollError) -> ApiError {
    use enroll::EnrollError as E;
    match error {
        E::BadName | E::BadExpiry => ApiError::new(
            StatusCode::BAD_REQUEST,
            "validation_failed",
            error.to_string(),
        ),
        E::UnknownBranch(_) | E::UnknownDevice(_) => ApiError::not_found("branch"),
        other => ApiError::internal(other),
    }
}

/// Body of the heartbeat.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    firmware_version: Option<String>,
    ip_address: Option<String>,
}

fn device_unauthenticated(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "device_unauthenticated",
        format!("the device could not be authenticated: {why}"),
    )
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, ApiError> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| device_unauthenticated(&format!("the {name} header is missing")))
}

/// Checks the heartbeat's certificate and signature; the device's verified identity.
async fn authenticate_device(
    state: &ApiState,
    device: Uuid,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<PeerIdentity, ApiError> {
    let der = BASE64
        .decode(header(headers, CERT_HEADER)?)
        .map_err(|_| device_unauthenticated("the certificate is not base64"))?;
    let signature = BASE64
        .decode(header(headers, SIGNATURE_HEADER)?)
        .map_err(|_| device_unauthenticated("the signature is not base64"))?;
    let timestamp: i64 = header(headers, TIMESTAMP_HEADER)?
        .parse()
        .map_err(|_| device_unauthenticated("the timestamp is not Unix milliseconds"))?;
    let now_ms = Utc::now().timestamp_millis();
    let skew = i64::try_from(HEARTBEAT_SKEW_MAX.as_millis()).unwrap_or(i64::MAX);
    if timestamp.abs_diff(now_ms) > skew.unsigned_abs() {
        return Err(device_unauthenticated(
            "the timestamp is more than 5 minutes from the hub's clock",
        ));
    }
    let cert = CertificateDer::from(der);
    let identity = PeerIdentity::from_cert_der(&cert)
        .map_err(|_| device_unauthenticated("not a device certificate"))?;
    if *identity.device.as_uuid() != device {
        return Err(device_unauthenticated(
            "the certificate is another device's",
        ));
    }
    let registry = ChainCaRegistry::new();
    for (chain, ca) in pki::load_chain_cas(&state.pool)
        .await
        .map_err(ApiError::internal)?
    {
        if chain == identity.chain {
            registry.insert(chain, ca).map_err(ApiError::internal)?;
        }
    }
    let now = UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(now_ms / 1000).unwrap_or(0),
    ));
    registry
        .verify(&cert, &[], now)
        .map_err(|_| device_unauthenticated("the certificate does not verify"))?;
    let info = inspect_certificate(&cert)
        .map_err(|_| device_unauthenticated("the certificate does not parse"))?;
    match pki::check_device_allowed(&state.pool, &identity, &info.serial_hex)
        .await
        .map_err(ApiError::internal)?
    {
        Ok(()) => {}
        Err(refusal) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "device_refused",
                format!("the device may not connect: {refusal:?}"),
            ));
        }
    }
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
        .map_err(|_| device_unauthenticated("the certificate does not parse"))?;
    let public_key = parsed.public_key().subject_public_key.data.to_vec();
    let message = heartbeat_message(device, timestamp, body);
    let verified = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .mapping
        .iter()
        .filter(|(scheme, _)| *scheme == rustls::SignatureScheme::ECDSA_NISTP256_SHA256)
        .flat_map(|(_, algorithms)| algorithms.iter())
        .any(|algorithm| {
            algorithm
                .verify_signature(&public_key, &message, &signature)
                .is_ok()
        });
    if !verified {
        return Err(device_unauthenticated("the signature does not verify"));
    }
    Ok(identity)
}

/// `POST /api/devices/{id}/heartbeat`: marks the device online (device credentials only).
pub async fn heartbeat(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<Uuid>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    if body.len() > HEARTBEAT_BODY_MAX {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("a heartbeat body is at most {HEARTBEAT_BODY_MAX} bytes"),
        ));
    }
    let identity = authenticate_device(&state, id, &headers, &body).await?;
    let beat: Heartbeat = if body.is_empty() {
        Heartbeat {
            firmware_version: None,
            ip_address: None,
        }
    } else {
        serde_json::from_slice(&body).map_err(|error| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", error.to_string())
        })?
    };
    check_optional_text("firmware_version", beat.firmware_version.as_deref(), 50)?;
    check_optional_text("ip_address", beat.ip_address.as_deref(), 45)?;
    let at: DateTime<Utc> = sqlx::query_scalar(
        "UPDATE devices SET status = 'online', last_heartbeat = now(), \
         firmware_version = coalesce($2, firmware_version), ip_address = coalesce($3, ip_address) \
         WHERE id = $1 RETURNING last_heartbeat",
    )
    .bind(id)
    .bind(&beat.firmware_version)
    .bind(&beat.ip_address)
    .fetch_optional(&state.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("device"))?;
    sqlx::query(
        "INSERT INTO telemetry (device_id, event_type, event_data) VALUES ($1, 'heartbeat', $2)",
    )
    .bind(id)
    .bind(json!({ "via": "http", "firmware_version": beat.firmware_version }))
    .execute(&state.pool)
    .await?;
    let device = DeviceId::from_uuid(id);
    tracing::debug!(%device, chain = %identity.chain, "http heartbeat");
    Ok(ok(
        json!({ "id": id, "status": "online", "last_heartbeat": at }),
    ))
}
