//! `/api/branches`: list (filter by chain, city, active, text), create (chain admins), read,
//! and the live numbers of one branch (`/stats`).

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use super::auth::{Action, Caller};
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::page::{PageParams, check_optional_text, check_range, check_text, ok, paged};
use super::{ApiState, audit};

/// The JSON schema of a branch.
pub fn schema() -> Value {
    json!({ "type": "object", "properties": {
        "id": { "type": "string", "format": "uuid" },
        "chain_id": { "type": "string", "format": "uuid" },
        "name": { "type": "string" }, "branch_code": { "type": "string" },
        "address": { "type": "string", "nullable": true },
        "city": { "type": "string", "nullable": true },
        "latitude": { "type": "number", "nullable": true },
        "longitude": { "type": "number", "nullable": true },
        "active": { "type": "boolean" },
        "created_at": { "type": "string", "format": "date-time" },
        "updated_at": { "type": "string", "format": "date-time" } } })
}

/// The body schema of `POST /api/branches`.
pub fn body_schema() -> Value {
    json!({ "type": "object", "additionalProperties": false,
        "required": ["chain_id", "name", "branch_code"], "properties": {
        "chain_id": { "type": "string", "format": "uuid" },
        "name": { "type": "string", "minLength": 1, "maxLength": 255 },
        "branch_code": { "type": "string", "minLength": 1, "maxLength": 50 },
        "address": { "type": "string", "maxLength": 1000 },
        "city": { "type": "string", "maxLength": 100 },
        "latitude": { "type": "number", "minimum": -90, "maximum": 90 },
        "longitude": { "type": "number", "minimum": -180, "maximum": 180 },
        "active": { "type": "boolean" } } })
}

/// The JSON schema of `/stats`.
pub fn stats_schema() -> Value {
    json!({ "type": "object", "properties": {
        "branch_id": { "type": "string", "format": "uuid" },
        "carts": { "type": "object", "additionalProperties": { "type": "integer" } },
        "carts_total": { "type": "integer" },
        "devices": { "type": "object", "properties": {
            "total": { "type": "integer" }, "online": { "type": "integer" },
            "offline": { "type": "integer" }, "revoked": { "type": "integer" } } },
        "rentals": { "type": "object", "properties": {
            "active": { "type": "integer" }, "overdue": { "type": "integer" },
            "started_today": { "type": "integer" }, "returned_today": { "type": "integer" } } },
        "open_anomalies": { "type": "integer" } } })
}

#[derive(Debug, Serialize)]
struct Branch {
    id: Uuid,
    chain_id: Uuid,
    name: String,
    branch_code: String,
    address: Option<String>,
    city: Option<String>,
    latitude: Option<f64>,
    longitude: Option<f64>,
    active: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn branch_of(row: &PgRow) -> Branch {
    Branch {
        id: row.get("id"),
        chain_id: row.get("chain_id"),
        name: row.get("name"),
        branch_code: row.get("branch_code"),
        address: row.get("address"),
        city: row.get("city"),
        latitude: row.get("latitude"),
        longitude: row.get("longitude"),
        active: row.get("active"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

const SELECT: &str = "SELECT b.id, b.chain_id, b.name, b.branch_code, b.address, b.city, \
    b.latitude::float8 AS latitude, b.longitude::float8 AS longitude, b.active, b.created_at, \
    b.updated_at FROM branches b WHERE ($1 OR b.chain_id = ANY($2) OR b.id = ANY($3))";

/// Filters of `GET /api/branches`.
#[derive(Debug, Deserialize)]
pub struct BranchFilter {
    chain_id: Option<Uuid>,
    city: Option<String>,
    active: Option<bool>,
    q: Option<String>,
}

/// `GET /api/branches`.
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    Query(page): Query<PageParams>,
    Query(filter): Query<BranchFilter>,
) -> Result<Json<Value>, ApiError> {
    let page = page.resolve()?;
    check_optional_text("city", filter.city.as_deref(), 100)?;
    check_optional_text("q", filter.q.as_deref(), 255)?;
    let s = caller.sql();
    let pattern = filter
        .q
        .map(|q| format!("%{}%", q.replace(['%', '_', '\\'], "")));
    let filtered = format!(
        "{SELECT} AND ($4::uuid IS NULL OR b.chain_id = $4) AND ($5::text IS NULL OR b.city = $5) \
         AND ($6::bool IS NULL OR b.active = $6) \
         AND ($7::text IS NULL OR b.name ILIKE $7 OR b.branch_code ILIKE $7)"
    );
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM ({filtered}) t"))
        .bind(s.all)
        .bind(&s.chains)
        .bind(&s.branches)
        .bind(filter.chain_id)
        .bind(&filter.city)
        .bind(filter.active)
        .bind(&pattern)
        .fetch_one(&state.pool)
        .await?;
    let rows = sqlx::query(&format!(
        "{filtered} ORDER BY b.name, b.id LIMIT $8 OFFSET $9"
    ))
    .bind(s.all)
    .bind(&s.chains)
    .bind(&s.branches)
    .bind(filter.chain_id)
    .bind(&filter.city)
    .bind(filter.active)
    .bind(&pattern)
    .bind(page.limit())
    .bind(page.offset())
    .fetch_all(&state.pool)
    .await?;
    Ok(paged(rows.iter().map(branch_of).collect(), page, total))
}

async fn fetch(state: &ApiState, id: Uuid) -> Result<Branch, ApiError> {
    let row = sqlx::query(&format!("{SELECT} AND b.id = $4"))
        .bind(true)
        .bind(Vec::<Uuid>::new())
        .bind(Vec::<Uuid>::new())
        .bind(id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("branch"))?;
    Ok(branch_of(&row))
}

/// `GET /api/branches/{id}`.
pub async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    caller.branch(&state.pool, id, Action::Read).await?;
    Ok(ok(fetch(&state, id).await?))
}

/// Body of `POST /api/branches`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBranch {
    chain_id: Uuid,
    name: String,
    branch_code: String,
    address: Option<String>,
    city: Option<String>,
    latitude: Option<f64>,
    longitude: Option<f64>,
    active: Option<bool>,
}

/// `POST /api/branches` (platform admins, the chain's admins).
pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewBranch>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller
        .chain(&state.pool, body.chain_id, Action::CreateBranch)
        .await?;
    check_text("name", &body.name, 255)?;
    check_text("branch_code", &body.branch_code, 50)?;
    check_optional_text("address", body.address.as_deref(), 1000)?;
    check_optional_text("city", body.city.as_deref(), 100)?;
    check_range("latitude", body.latitude, -90.0, 90.0)?;
    check_range("longitude", body.longitude, -180.0, 180.0)?;
    let mut tx = state.pool.begin().await?;
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO branches (chain_id, name, branch_code, address, city, latitude, longitude, \
         active) VALUES ($1, $2, $3, $4, $5, $6::float8, $7::float8, $8) RETURNING id",
    )
    .bind(body.chain_id)
    .bind(body.name.trim())
    .bind(body.branch_code.trim())
    .bind(&body.address)
    .bind(&body.city)
    .bind(body.latitude)
    .bind(body.longitude)
    .bind(body.active.unwrap_or(true))
    .fetch_one(&mut *tx)
    .await?;
    audit::record(
        &mut *tx,
        &caller,
        "branch.create",
        Some(body.chain_id),
        Some(id),
        Some(&format!("branch/{id}")),
        json!({ "name": body.name, "branch_code": body.branch_code }),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, ok(fetch(&state, id).await?)))
}

/// `GET /api/branches/{id}/stats`.
pub async fn stats(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    caller.branch(&state.pool, id, Action::Read).await?;
    let carts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM carts WHERE branch_id = $1 GROUP BY status ORDER BY status",
    )
    .bind(id)
    .fetch_all(&state.pool)
    .await?;
    let devices = sqlx::query(
        "SELECT count(*), count(*) FILTER (WHERE status = 'online' AND revoked_at IS NULL), \
         count(*) FILTER (WHERE revoked_at IS NOT NULL) FROM devices WHERE branch_id = $1",
    )
    .bind(id)
    .fetch_one(&state.pool)
    .await?;
    let rentals = sqlx::query(
        "SELECT count(*) FILTER (WHERE status = 'active'), \
         count(*) FILTER (WHERE status = 'active' AND expected_return < now()), \
         count(*) FILTER (WHERE start_time >= date_trunc('day', now())), \
         count(*) FILTER (WHERE actual_return >= date_trunc('day', now())) \
         FROM rentals WHERE branch_id = $1",
    )
    .bind(id)
    .fetch_one(&state.pool)
    .await?;
    let anomalies: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM anomalies WHERE branch_id = $1 AND resolved_at IS NULL",
    )
    .bind(id)
    .fetch_one(&state.pool)
    .await?;
    let total: i64 = devices.get(0);
    let online: i64 = devices.get(1);
    let revoked: i64 = devices.get(2);
    Ok(ok(json!({
        "branch_id": id,
        "carts": carts.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "carts_total": carts.iter().map(|(_, n)| n).sum::<i64>(),
        "devices": { "total": total, "online": online, "offline": total - online - revoked,
                     "revoked": revoked },
        "rentals": { "active": rentals.get::<i64, _>(0), "overdue": rentals.get::<i64, _>(1),
                     "started_today": rentals.get::<i64, _>(2),
                     "returned_today": rentals.get::<i64, _>(3) },
        "open_anomalies": anomalies,
    })))
}
