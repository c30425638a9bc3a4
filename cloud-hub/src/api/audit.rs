//! The audit log: every write and every intent through the API is recorded (refused writes
//! too), and admins read it, scoped: a chain admin sees its chain's rows only.

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgExecutor, Row};
use uuid::Uuid;

use super::ApiState;
use super::auth::{Action, Caller};
use super::error::ApiError;
use super::page::{PageParams, check_text, check_time, paged};

/// Appends one row to the audit log for `caller`.
pub async fn record<'e>(
    executor: impl PgExecutor<'e>,
    caller: &Caller,
    action: &str,
    chain: Option<Uuid>,
    branch: Option<Uuid>,
    target: Option<&str>,
    mut detail: Value,
) -> Result<(), sqlx::Error> {
    if let (Some(ip), Some(map)) = (&caller.ip, detail.as_object_mut()) {
        map.insert("ip".to_owned(), json!(ip));
    }
    sqlx::query(
        "INSERT INTO audit_log (actor_kind, actor_id, chain_id, branch_id, action, target, detail) \
         VALUES ('user', $1, $2, $3, $4, $5, $6)",
    )
    .bind(&caller.principal.login)
    .bind(chain)
    .bind(branch)
    .bind(action)
    .bind(target)
    .bind(detail)
    .execute(executor)
    .await?;
    Ok(())
}

/// Filters of `GET /api/audit`.
#[derive(Debug, Deserialize)]
pub struct AuditFilter {
    chain_id: Option<Uuid>,
    branch_id: Option<Uuid>,
    actor: Option<String>,
    action: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

/// One audit row.
#[derive(Debug, Serialize)]
pub struct AuditEntry {
    id: i64,
    at: DateTime<Utc>,
    actor_kind: String,
    actor_id: String,
    chain_id: Option<Uuid>,
    branch_id: Option<Uuid>,
    action: String,
    target: Option<String>,
    detail: Value,
}

/// `GET /api/audit`: newest first.
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    Query(page): Query<PageParams>,
    Query(filter): Query<AuditFilter>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Action::ReadAudit)?;
    let page = page.resolve()?;
    check_time("since", filter.since)?;
    check_time("until", filter.until)?;
    if let Some(actor) = &filter.actor {
        check_text("actor", actor, 255)?;
    }
    if let Some(action) = &filter.action {
        check_text("action", action, 80)?;
    }
    let s = caller.sql();
    let filter_sql = "FROM audit_log WHERE ($1 OR chain_id = ANY($2) OR branch_id = ANY($3)) \
        AND ($4::uuid IS NULL OR chain_id = $4) AND ($5::uuid IS NULL OR branch_id = $5) \
        AND ($6::text IS NULL OR actor_id = $6) AND ($7::text IS NULL OR action = $7) \
        AND ($8::timestamptz IS NULL OR at >= $8) AND ($9::timestamptz IS NULL OR at < $9)";
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) {filter_sql}"))
        .bind(s.all)
        .bind(&s.chains)
        .bind(&s.branches)
        .bind(filter.chain_id)
        .bind(filter.branch_id)
        .bind(&filter.actor)
        .bind(&filter.action)
        .bind(filter.since)
        .bind(filter.until)
        .fetch_one(&state.pool)
        .await?;
    let rows = sqlx::query(&format!(
        "SELECT id, at, actor_kind, actor_id, chain_id, branch_id, action, target, detail \
         {filter_sql} ORDER BY at DESC, id DESC LIMIT $10 OFFSET $11"
    ))
    .bind(s.all)
    .bind(&s.chains)
    .bind(&s.branches)
    .bind(filter.chain_id)
    .bind(filter.branch_id)
    .bind(&filter.actor)
    .bind(&filter.action)
    .bind(filter.since)
    .bind(filter.until)
    .bind(page.limit())
    .bind(page.offset())
    .fetch_all(&state.pool)
    .await?;
    let items: Vec<AuditEntry> = rows
        .into_iter()
        .map(|row| AuditEntry {
            id: row.get(0),
            at: row.get(1),
            actor_kind: row.get(2),
            actor_id: row.get(3),
            chain_id: row.get(4),
            branch_id: row.get(5),
            action: row.get(6),
            target: row.get(7),
            detail: row.get(8),
        })
        .collect();
    Ok(paged(items, page, total))
}
