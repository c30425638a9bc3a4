//! `/api/telemetry/{devices,branches,chains}/{id}`: a device's, branch's or chain's telemetry,
//! newest first, filtered by event type and time.

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::Row;
use uuid::Uuid;

use super::ApiState;
use super::auth::{Action, Caller};
use super::error::ApiError;
use super::extract::ApiPath;
use super::page::{PageParams, check_optional_text, check_time, paged};

/// The JSON schema of a telemetry row.
pub fn schema() -> Value {
    json!({ "type": "object", "properties": {
        "id": { "type": "integer" },
        "device_id": { "type": "string", "format": "uuid" },
        "branch_id": { "type": "string", "format": "uuid" },
        "event_type": { "type": "string" },
        "event_data": { "type": "object" },
        "timestamp": { "type": "string", "format": "date-time" } } })
}

/// Filters of every telemetry list.
#[derive(Debug, Deserialize)]
pub struct TelemetryFilter {
    event_type: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
struct Event {
    id: i64,
    device_id: Uuid,
    branch_id: Uuid,
    event_type: String,
    event_data: Value,
    timestamp: DateTime<Utc>,
}

/// Which rows: one device's, one branch's or one chain's.
#[derive(Debug, Clone, Copy)]
enum Of {
    Device(Uuid),
    Branch(Uuid),
    Chain(Uuid),
}

async fn list(
    state: &ApiState,
    caller: &Caller,
    of: Of,
    page: PageParams,
    filter: TelemetryFilter,
) -> Result<Json<Value>, ApiError> {
    let page = page.resolve()?;
    check_optional_text("event_type", filter.event_type.as_deref(), 50)?;
    check_time("since", filter.since)?;
    check_time("until", filter.until)?;
    let (column, id) = match of {
        Of::Device(id) => ("t.device_id", id),
        Of::Branch(id) => ("d.branch_id", id),
        Of::Chain(id) => ("b.chain_id", id),
    };
    // The scope applies to every row too: a branch manager sees only its branches' telemetry
    // in its chain's list.
    let s = caller.sql();
    let filtered = format!(
        "FROM telemetry t JOIN devices d ON d.id = t.device_id JOIN branches b ON b.id = d.branch_id \
         WHERE {column} = $1 AND ($2 OR b.chain_id = ANY($3) OR b.id = ANY($4)) \
         AND ($5::text IS NULL OR t.event_type = $5) \
         AND ($6::timestamptz IS NULL OR t.\"timestamp\" >= $6) \
         AND ($7::timestamptz IS NULL OR t.\"timestamp\" < $7)"
    );
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) {filtered}"))
        .bind(id)
        .bind(s.all)
        .bind(&s.chains)
        .bind(&s.branches)
        .bind(&filter.event_type)
        .bind(filter.since)
        .bind(filter.until)
        .fetch_one(&state.pool)
        .await?;
    let rows = sqlx::query(&format!(
        "SELECT t.id, t.device_id, d.branch_id, t.event_type, t.event_data, t.\"timestamp\" \
         {filtered} ORDER BY t.\"timestamp\" DESC, t.id DESC LIMIT $8 OFFSET $9"
    ))
    .bind(id)
    .bind(s.all)
    .bind(&s.chains)
    .bind(&s.branches)
    .bind(&filter.event_type)
    .bind(filter.since)
    .bind(filter.until)
    .bind(page.limit())
    .bind(page.offset())
    .fetch_all(&state.pool)
    .await?;
    let items = rows
        .iter()
        .map(|row| Event {
            id: row.get(0),
            device_id: row.get(1),
            branch_id: row.get(2),
            event_type: row.get(3),
            event_data: row.get(4),
            timestamp: row.get(5),
        })
        .collect();
    Ok(paged(items, page, total))
}

/// `GET /api/telemetry/devices/{id}`.
pub async fn device(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    Query(page): Query<PageParams>,
    Query(filter): Query<TelemetryFilter>,
) -> Result<Json<Value>, ApiError> {
    caller.device(&state.pool, id, Action::Read).await?;
    list(&state, &caller, Of::Device(id), page, filter).await
}

/// `GET /api/telemetry/branches/{id}`.
pub async fn branch(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    Query(page): Query<PageParams>,
    Query(filter): Query<TelemetryFilter>,
) -> Result<Json<Value>, ApiError> {
    caller.branch(&state.pool, id, Action::Read).await?;
    list(&state, &caller, Of::Branch(id), page, filter).await
}

/// `GET /api/telemetry/chains/{id}`.
pub async fn chain(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    Query(page): Query<PageParams>,
    Query(filter): Query<TelemetryFilter>,
) -> Result<Json<Value>, ApiError> {
    caller.chain(&state.pool, id, Action::Read).await?;
    list(&state, &caller, Of::Chain(id), page, filter).await
}
