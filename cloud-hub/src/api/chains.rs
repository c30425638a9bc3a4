//! `/api/chains`: list, create (platform admins), read, change (chain admins of the chain),
//! delete (platform admins; refused while the chain has rentals).

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
use super::page::{PageParams, check_optional_text, check_text, ok, paged};
use super::{ApiState, audit};

/// The JSON schema of a chain.
pub fn schema() -> Value {
    json!({ "type": "object", "properties": {
        "id": { "type": "string", "format": "uuid" }, "name": { "type": "string" },
        "slug": { "type": "string" }, "description": { "type": "string", "nullable": true },
        "active": { "type": "boolean" }, "branch_count": { "type": "integer" },
        "created_at": { "type": "string", "format": "date-time" },
        "updated_at": { "type": "string", "format": "date-time" } } })
}

/// The body schema of create (all required but description/active) and update (any).
pub fn body_schema(create: bool) -> Value {
    let mut schema = json!({ "type": "object", "additionalProperties": false, "properties": {
        "name": { "type": "string", "minLength": 1, "maxLength": 255 },
        "slug": { "type": "string", "pattern": "^[a-z0-9-]{1,100}$" },
        "description": { "type": "string", "maxLength": 4000, "nullable": true },
        "active": { "type": "boolean" } } });
    if create {
        schema["required"] = json!(["name", "slug"]);
    }
    schema
}

#[derive(Debug, Serialize)]
struct Chain {
    id: Uuid,
    name: String,
    slug: String,
    description: Option<String>,
    active: bool,
    branch_count: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn chain_of(row: &PgRow) -> Chain {
    Chain {
        id: row.get("id"),
        name: row.get("name"),
        slug: row.get("slug"),
        description: row.get("description"),
        active: row.get("active"),
        branch_count: row.get("branch_count"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

/// Visible chains, each with the count of its branches the caller sees.
const SELECT: &str = "SELECT c.id, c.name, c.slug, c.description, c.active, c.created_at, \
    c.updated_at, (SELECT count(*) FROM branches b WHERE b.chain_id = c.id \
      AND ($1 OR b.chain_id = ANY($2) OR b.id = ANY($3))) AS branch_count \
    FROM chains c WHERE ($1 OR c.id = ANY($2) OR EXISTS (SELECT 1 FROM branches b \
      WHERE b.chain_id = c.id AND b.id = ANY($3)))";

/// Filters of `GET /api/chains`.
#[derive(Debug, Deserialize)]
pub struct ChainFilter {
    active: Option<bool>,
    q: Option<String>,
}

/// `GET /api/chains`.
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    Query(page): Query<PageParams>,
    Query(filter): Query<ChainFilter>,
) -> Result<Json<Value>, ApiError> {
    let page = page.resolve()?;
    check_optional_text("q", filter.q.as_deref(), 255)?;
    let s = caller.sql();
    let pattern = filter
        .q
        .map(|q| format!("%{}%", q.replace(['%', '_', '\\'], "")));
    let filtered = format!(
        "{SELECT} AND ($4::bool IS NULL OR c.active = $4) \
         AND ($5::text IS NULL OR c.name ILIKE $5 OR c.slug ILIKE $5)"
    );
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM ({filtered}) t"))
        .bind(s.all)
        .bind(&s.chains)
        .bind(&s.branches)
        .bind(filter.active)
        .bind(&pattern)
        .fetch_one(&state.pool)
        .await?;
    let rows = sqlx::query(&format!(
        "{filtered} ORDER BY c.name, c.id LIMIT $6 OFFSET $7"
    ))
    .bind(s.all)
    .bind(&s.chains)
    .bind(&s.branches)
    .bind(filter.active)
    .bind(&pattern)
    .bind(page.limit())
    .bind(page.offset())
    .fetch_all(&state.pool)
    .await?;
    Ok(paged(rows.iter().map(chain_of).collect(), page, total))
}

async fn fetch(state: &ApiState, caller: &Caller, id: Uuid) -> Result<Chain, ApiError> {
    let s = caller.sql();
    let row = sqlx::query(&format!("{SELECT} AND c.id = $4"))
        .bind(s.all)
        .bind(&s.chains)
        .bind(&s.branches)
        .bind(id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("chain"))?;
    Ok(chain_of(&row))
}

/// `GET /api/chains/{id}`.
pub async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    Ok(ok(fetch(&state, &caller, id).await?))
}

/// Body of `POST /api/chains` and `PUT /api/chains/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainBody {
    name: Option<String>,
    slug: Option<String>,
    #[serde(default, deserialize_with = "super::extract::double_option")]
    description: Option<Option<String>>,
    active: Option<bool>,
}

impl ChainBody {
    fn check(&self) -> Result<(), ApiError> {
        if let Some(name) = &self.name {
            check_text("name", name, 255)?;
        }
        if let Some(slug) = &self.slug {
            let good = !slug.is_empty()
                && slug.len() <= 100
                && slug
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !good {
                return Err(ApiError::invalid(
                    "slug",
                    "slug must be 1 to 100 characters of a-z, 0-9 and '-'",
                ));
            }
        }
        check_optional_text(
            "description",
            self.description.clone().flatten().as_deref(),
            4000,
        )
    }
}

/// `POST /api/chains` (platform admins).
pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(body): ApiJson<ChainBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Action::CreateChain)?;
    body.check()?;
    let (Some(name), Some(slug)) = (&body.name, &body.slug) else {
        return Err(ApiError::invalid("name", "name and slug are required"));
    };
    let mut tx = state.pool.begin().await?;
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO chains (name, slug, description, active) VALUES ($1, $2, $3, $4) \
         RETURNING id",
    )
    .bind(name.trim())
    .bind(slug)
    .bind(body.description.clone().flatten())
    .bind(body.active.unwrap_or(true))
    .fetch_one(&mut *tx)
    .await?;
    audit::record(
        &mut *tx,
        &caller,
        "chain.create",
        Some(id),
        None,
        Some(&format!("chain/{id}")),
        json!({ "name": name, "slug": slug }),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, ok(fetch(&state, &caller, id).await?)))
}

/// `PUT /api/chains/{id}` (platform admins, the chain's admins).
pub async fn update(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ChainBody>,
) -> Result<Json<Value>, ApiError> {
    caller.chain(&state.pool, id, Action::UpdateChain).await?;
    body.check()?;
    let mut tx = state.pool.begin().await?;
    sqlx::query(
        "UPDATE chains SET name = coalesce($2, name), slug = coalesce($3, slug), \
         description = CASE WHEN $4 THEN $5 ELSE description END, \
         active = coalesce($6, active) WHERE id = $1",
    )
    .bind(id)
    .bind(body.name.as_deref().map(str::trim))
    .bind(&body.slug)
    .bind(body.description.is_some())
    .bind(body.description.clone().flatten())
    .bind(body.active)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut *tx,
        &caller,
        "chain.update",
        Some(id),
        None,
        Some(&format!("chain/{id}")),
        json!({ "name": body.name, "slug": body.slug, "active": body.active,
                "description": body.description }),
    )
    .await?;
    tx.commit().await?;
    Ok(ok(fetch(&state, &caller, id).await?))
}

/// `DELETE /api/chains/{id}` (platform admins; 409 while rentals refer to it).
pub async fn delete(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    caller.chain(&state.pool, id, Action::DeleteChain).await?;
    let mut tx = state.pool.begin().await?;
    let rentals: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM rentals r JOIN branches b ON b.id = r.branch_id \
         WHERE b.chain_id = $1)",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    if rentals {
        return Err(ApiError::conflict(
            "the chain has rentals on record; set active=false instead of deleting it",
        ));
    }
    sqlx::query("DELETE FROM chains WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut *tx,
        &caller,
        "chain.delete",
        Some(id),
        None,
        Some(&format!("chain/{id}")),
        json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(ok(json!({ "id": id, "deleted": true })))
}
