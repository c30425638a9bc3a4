//! `/api/branches/{branch_id}/carts` and `/rentals`: carts of a branch, and its active rentals,
//! history and statistics. Phone numbers are masked for roles without PII access.

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use super::ApiState;
use super::auth::{Action, Caller};
use super::error::ApiError;
use super::extract::ApiPath;
use super::page::{PageParams, check_optional_text, check_time, ok, paged};

/// The JSON schema of a cart.
pub fn cart_schema() -> Value {
    json!({ "type": "object", "properties": {
        "id": { "type": "string", "format": "uuid" },
        "branch_id": { "type": "string", "format": "uuid" },
        "controller_id": { "type": "string", "format": "uuid", "nullable": true },
        "cart_number": { "type": "integer" }, "locker_id": { "type": "integer" },
        "status": { "type": "string" }, "is_locked": { "type": "boolean" },
        "assigned_to": { "type": "string", "nullable": true,
            "description": "the shopper's phone, masked for roles without PII access" },
        "last_used": { "type": "string", "format": "date-time", "nullable": true },
        "maintenance_notes": { "type": "string", "nullable": true },
        "updated_at": { "type": "string", "format": "date-time" } } })
}

/// The JSON schema of a rental.
pub fn rental_schema() -> Value {
    json!({ "type": "object", "properties": {
        "id": { "type": "string", "format": "uuid" },
        "cart_id": { "type": "string", "format": "uuid" },
        "cart_number": { "type": "integer" },
        "branch_id": { "type": "string", "format": "uuid" },
        "user_phone": { "type": "string",
            "description": "masked for roles without PII access" },
        "start_time": { "type": "string", "format": "date-time" },
        "expected_return": { "type": "string", "format": "date-time" },
        "actual_return": { "type": "string", "format": "date-time", "nullable": true },
        "status": { "type": "string" },
        "overdue": { "type": "boolean" },
        "duration_minutes": { "type": "integer", "nullable": true },
        "time_trusted": { "type": "boolean" } } })
}

/// The JSON schema of rental statistics.
pub fn stats_schema() -> Value {
    json!({ "type": "object", "properties": {
        "total": { "type": "integer" },
        "by_status": { "type": "object", "additionalProperties": { "type": "integer" } },
        "late": { "type": "integer" },
        "average_duration_minutes": { "type": "number", "nullable": true },
        "per_day": { "type": "array", "items": { "type": "object", "properties": {
            "day": { "type": "string", "format": "date" }, "rentals": { "type": "integer" } } } } } })
}

#[derive(Debug, Serialize)]
struct Cart {
    id: Uuid,
    branch_id: Uuid,
    controller_id: Option<Uuid>,
    cart_number: i32,
    locker_id: i32,
    status: String,
    is_locked: bool,
    assigned_to: Option<String>,
    last_used: Option<DateTime<Utc>>,
    maintenance_notes: Option<String>,
    updated_at: DateTime<Utc>,
}

fn cart_of(caller: &Caller, row: &PgRow) -> Cart {
    Cart {
        id: row.get("id"),
        branch_id: row.get("branch_id"),
        controller_id: row.get("controller_id"),
        cart_number: row.get("cart_number"),
        locker_id: row.get("locker_id"),
        status: row.get("status"),
        is_locked: row.get("is_locked"),
        assigned_to: caller.phone(row.get("assigned_to")),
        last_used: row.get("last_used"),
        maintenance_notes: row.get("maintenance_notes"),
        updated_at: row.get("updated_at"),
    }
}

const CART_COLUMNS: &str = "id, branch_id, controller_id, cart_number, locker_id, status, \
    is_locked, assigned_to, last_used, maintenance_notes, updated_at";

/// Filters of the cart list.
#[derive(Debug, Deserialize)]
pub struct CartFilter {
    status: Option<String>,
}

/// `GET /api/branches/{branch_id}/carts`.
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(branch): ApiPath<Uuid>,
    Query(page): Query<PageParams>,
    Query(filter): Query<CartFilter>,
) -> Result<Json<Value>, ApiError> {
    caller.branch(&state.pool, branch, Action::Read).await?;
    let page = page.resolve()?;
    check_optional_text("status", filter.status.as_deref(), 20)?;
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM carts WHERE branch_id = $1 AND ($2::text IS NULL OR status = $2)",
    )
    .bind(branch)
    .bind(&filter.status)
    .fetch_one(&state.pool)
    .await?;
    let rows = sqlx::query(&format!(
        "SELECT {CART_COLUMNS} FROM carts WHERE branch_id = $1 \
         AND ($2::text IS NULL OR status = $2) ORDER BY cart_number LIMIT $3 OFFSET $4"
    ))
    .bind(branch)
    .bind(&filter.status)
    .bind(page.limit())
    .bind(page.offset())
    .fetch_all(&state.pool)
    .await?;
    Ok(paged(
        rows.iter().map(|row| cart_of(&caller, row)).collect(),
        page,
        total,
    ))
}

/// `GET /api/branches/{branch_id}/carts/{id}`.
pub async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath((branch, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<Json<Value>, ApiError> {
    caller.branch(&state.pool, branch, Action::Read).await?;
    let row = sqlx::query(&format!(
        "SELECT {CART_COLUMNS} FROM carts WHERE branch_id = $1 AND id = $2"
    ))
    .bind(branch)
    .bind(id)
    .fetch_optional(&state.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("cart"))?;
    Ok(ok(cart_of(&caller, &row)))
}

#[derive(Debug, Serialize)]
struct Rental {
    id: Uuid,
    cart_id: Uuid,
    cart_number: i32,
    branch_id: Uuid,
    user_phone: Option<String>,
    start_time: DateTime<Utc>,
    expected_return: DateTime<Utc>,
    actual_return: Option<DateTime<Utc>>,
    status: String,
    overdue: bool,
    duration_minutes: Option<i32>,
    time_trusted: bool,
}

fn rental_of(caller: &Caller, row: &PgRow) -> Rental {
    Rental {
        id: row.get("id"),
        cart_id: row.get("cart_id"),
        cart_number: row.get("cart_number"),
        branch_id: row.get("branch_id"),
        user_phone: caller.phone(row.get("user_phone")),
        start_time: row.get("start_time"),
        expected_return: row.get("expected_return"),
        actual_return: row.get("actual_return"),
        status: row.get("status"),
        overdue: row.get("overdue"),
        duration_minutes: row.get("duration_minutes"),
        time_trusted: row.get("time_trusted"),
    }
}

const RENTAL_SELECT: &str = "SELECT r.id, r.cart_id, c.cart_number, r.branch_id, r.user_phone, \
    r.start_time, r.expected_return, r.actual_return, r.status, \
    (r.status = 'active' AND r.expected_return < now()) AS overdue, r.duration_minutes, \
    r.time_trusted FROM rentals r JOIN carts c ON c.id = r.cart_id WHERE r.branch_id = $1";

/// Filters of the active rentals.
#[derive(Debug, Deserialize)]
pub struct ActiveFilter {
    overdue: Option<bool>,
}

/// `GET /api/branches/{branch_id}/rentals/active`.
pub async fn active(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(branch): ApiPath<Uuid>,
    Query(page): Query<PageParams>,
    Query(filter): Query<ActiveFilter>,
) -> Result<Json<Value>, ApiError> {
    caller.branch(&state.pool, branch, Action::Read).await?;
    let page = page.resolve()?;
    let filtered = format!(
        "{RENTAL_SELECT} AND r.status = 'active' \
         AND ($2::bool IS NULL OR (r.expected_return < now()) = $2)"
    );
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM ({filtered}) t"))
        .bind(branch)
        .bind(filter.overdue)
        .fetch_one(&state.pool)
        .await?;
    let rows = sqlx::query(&format!(
        "{filtered} ORDER BY r.expected_return, r.id LIMIT $3 OFFSET $4"
    ))
    .bind(branch)
    .bind(filter.overdue)
    .bind(page.limit())
    .bind(page.offset())
    .fetch_all(&state.pool)
    .await?;
    Ok(paged(
        rows.iter().map(|row| rental_of(&caller, row)).collect(),
        page,
        total,
    ))
}

/// Filters of the rental history and statistics.
#[derive(Debug, Deserialize)]
pub struct HistoryFilter {
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    status: Option<String>,
    phone: Option<String>,
    cart_number: Option<i32>,
}

impl HistoryFilter {
    fn check(&self, caller: &Caller) -> Result<(), ApiError> {
        check_time("since", self.since)?;
        check_time("until", self.until)?;
        check_optional_text("status", self.status.as_deref(), 20)?;
        check_optional_text("phone", self.phone.as_deref(), 20)?;
        if self.phone.is_some() && !caller.sees_pii() {
            return Err(ApiError::forbidden("search rentals by phone number"));
        }
        Ok(())
    }
}

/// `GET /api/branches/{branch_id}/rentals/history`: newest first.
pub async fn history(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(branch): ApiPath<Uuid>,
    Query(page): Query<PageParams>,
    Query(filter): Query<HistoryFilter>,
) -> Result<Json<Value>, ApiError> {
    caller.branch(&state.pool, branch, Action::Read).await?;
    let page = page.resolve()?;
    filter.check(&caller)?;
    let filtered = format!(
        "{RENTAL_SELECT} AND ($2::timestamptz IS NULL OR r.start_time >= $2) \
         AND ($3::timestamptz IS NULL OR r.start_time < $3) \
         AND ($4::text IS NULL OR r.status = $4) AND ($5::text IS NULL OR r.user_phone = $5) \
         AND ($6::int IS NULL OR c.cart_number = $6)"
    );
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM ({filtered}) t"))
        .bind(branch)
        .bind(filter.since)
        .bind(filter.until)
        .bind(&filter.status)
        .bind(&filter.phone)
        .bind(filter.cart_number)
        .fetch_one(&state.pool)
        .await?;
    let rows = sqlx::query(&format!(
        "{filtered} ORDER BY r.start_time DESC, r.id DESC LIMIT $7 OFFSET $8"
    ))
    .bind(branch)
    .bind(filter.since)
    .bind(filter.until)
    .bind(&filter.status)
    .bind(&filter.phone)
    .bind(filter.cart_number)
    .bind(page.limit())
    .bind(page.offset())
    .fetch_all(&state.pool)
    .await?;
    Ok(paged(
        rows.iter().map(|row| rental_of(&caller, row)).collect(),
        page,
        total,
    ))
}

/// Window of the statistics.
#[derive(Debug, Deserialize)]
pub struct StatsFilter {
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

/// `GET /api/branches/{branch_id}/rentals/stats`: counts over `[since, until)` (default: the
/// last 30 days), per status and per day.
pub async fn stats(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(branch): ApiPath<Uuid>,
    Query(filter): Query<StatsFilter>,
) -> Result<Json<Value>, ApiError> {
    caller.branch(&state.pool, branch, Action::Read).await?;
    check_time("since", filter.since)?;
    check_time("until", filter.until)?;
    let until = filter.until.unwrap_or_else(Utc::now);
    let since = filter
        .since
        .unwrap_or_else(|| until - chrono::Duration::days(30));
    if until - since > chrono::Duration::days(366) || since > until {
        return Err(ApiError::invalid(
            "since",
            "the window must run forwards and span at most 366 days",
        ));
    }
    let by_status: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM rentals WHERE branch_id = $1 AND start_time >= $2 \
         AND start_time < $3 GROUP BY status ORDER BY status",
    )
    .bind(branch)
    .bind(since)
    .bind(until)
    .fetch_all(&state.pool)
    .await?;
    let summary = sqlx::query(
        "SELECT count(*) FILTER (WHERE actual_return > expected_return \
                                  OR status = 'returned_late'), \
                avg(duration_minutes)::float8 \
         FROM rentals WHERE branch_id = $1 AND start_time >= $2 AND start_time < $3",
    )
    .bind(branch)
    .bind(since)
    .bind(until)
    .fetch_one(&state.pool)
    .await?;
    let per_day: Vec<(chrono::NaiveDate, i64)> = sqlx::query_as(
        "SELECT (start_time AT TIME ZONE 'UTC')::date AS day, count(*) FROM rentals \
         WHERE branch_id = $1 AND start_time >= $2 AND start_time < $3 GROUP BY day ORDER BY day",
    )
    .bind(branch)
    .bind(since)
    .bind(until)
    .fetch_all(&state.pool)
    .await?;
    Ok(ok(json!({
        "since": since,
        "until": until,
        "total": by_status.iter().map(|(_, n)| n).sum::<i64>(),
        "by_status": by_status.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "late": summary.get::<i64, _>(0),
        "average_duration_minutes": summary.get::<Option<f64>, _>(1),
        "per_day": per_day.into_iter()
            .map(|(day, n)| json!({ "day": day, "rentals": n })).collect::<Vec<_>>(),
    })))
}
