//! `/api/users`: who may use the hub, managed by admins.
//!
//! - Platform admins manage every user; a chain admin manages the users of its chain only (a
//!   user of another chain, or a platform admin, reads as 404) and cannot make anyone a
//!   platform admin or move a user to another chain. Everyone else is refused (403, audited).
//! - `DELETE` disables (users stay, so the audit log keeps naming them) and ends every session
//!   and token of the user at once; so does a new password. A disabled user can be enabled
//!   again with `PUT {"active": true}`.
//! - Nobody disables, demotes or rescopes themself (409), so the last admin cannot lock the
//!   chain out by mistake.
//! - Passwords are never returned, and never written into the audit log.
//! - Every change is audited in the same transaction as the change.

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
use super::page::{PageParams, check_optional_text, ok, paged};
use super::{ApiState, audit};
use crate::users::{
    self, LOGIN_LEN_MAX, NewUser, PASSWORD_LEN_MAX, PASSWORD_LEN_MIN, Role, Scope, UserError,
};

/// The most branches one user may be scoped to.
pub const USER_BRANCHES_MAX: usize = 1000;

/// The JSON schema of a user as the API shows it (never a password).
pub fn schema() -> Value {
    json!({ "type": "object", "properties": {
        "id": { "type": "string", "format": "uuid" },
        "login": { "type": "string" },
        "role": { "type": "string", "enum": Role::ALL.map(Role::as_str) },
        "chain_id": { "type": "string", "format": "uuid", "nullable": true },
        "branch_ids": { "type": "array", "items": { "type": "string", "format": "uuid" } },
        "active": { "type": "boolean" },
        "created_at": { "type": "string", "format": "date-time" },
        "updated_at": { "type": "string", "format": "date-time" } } })
}

/// The body schema of create (login, password, role required) and update (any).
pub fn body_schema(create: bool) -> Value {
    let mut schema = json!({ "type": "object", "additionalProperties": false, "properties": {
        "login": { "type": "string", "minLength": 1, "maxLength": LOGIN_LEN_MAX,
            "pattern": "^[A-Za-z0-9._@-]+$" },
        "password": { "type": "string", "minLength": PASSWORD_LEN_MIN,
            "maxLength": PASSWORD_LEN_MAX, "writeOnly": true },
        "role": { "type": "string", "enum": Role::ALL.map(Role::as_str) },
        "chain_id": { "type": "string", "format": "uuid", "nullable": true,
            "description": "required for every role but platform_admin (a chain admin's own chain by default)" },
        "branch_ids": { "type": "array", "maxItems": USER_BRANCHES_MAX,
            "items": { "type": "string", "format": "uuid" },
            "description": "the branches of a branch manager, technician or branch viewer" },
        "active": { "type": "boolean" } } });
    if create {
        schema["required"] = json!(["login", "password", "role"]);
    } else {
        if let Some(properties) = schema["properties"].as_object_mut() {
            properties.remove("login");
        }
    }
    schema
}

#[derive(Debug, Serialize)]
struct User {
    id: Uuid,
    login: String,
    role: String,
    chain_id: Option<Uuid>,
    branch_ids: Vec<Uuid>,
    active: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn user_of(row: &PgRow) -> User {
    User {
        id: row.get("id"),
        login: row.get("login"),
        role: row.get("role"),
        chain_id: row.get("chain_id"),
        branch_ids: row.get("branch_ids"),
        active: row.get("active"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

/// Users the caller manages: `$1` is the chain a chain admin is limited to (NULL: all).
const SELECT: &str = "SELECT u.id, u.login, u.role, u.chain_id, u.active, u.created_at, \
    u.updated_at, COALESCE((SELECT array_agg(ub.branch_id ORDER BY ub.branch_id) \
      FROM user_branches ub WHERE ub.user_id = u.id), '{}') AS branch_ids \
    FROM users u WHERE ($1::uuid IS NULL OR u.chain_id = $1)";

/// The chain a manager of users is limited to (`None`: all), or 403 for anyone else.
async fn managed_chain(
    state: &ApiState,
    caller: &Caller,
    target: &str,
) -> Result<Option<Uuid>, ApiError> {
    caller
        .require_audited(&state.pool, Action::ManageUsers, target)
        .await?;
    match &caller.principal.scope {
        Scope::All => Ok(None),
        Scope::Chain(chain) => Ok(Some(*chain)),
        // `permits` gives ManageUsers only to platform and chain admins, whose scopes are above.
        Scope::Branches(_) => Err(ApiError::forbidden(Action::ManageUsers.describe())),
    }
}

fn user_error(error: UserError) -> ApiError {
    match error {
        UserError::BadRole(_) => ApiError::invalid("role", error.to_string()),
        UserError::BadLogin => ApiError::invalid("login", error.to_string()),
        UserError::BadPassword => ApiError::invalid("password", error.to_string()),
        UserError::BadScope(_) => ApiError::invalid("chain_id", error.to_string()),
        UserError::LoginTaken(_) => ApiError::conflict(error.to_string()),
        UserError::Db { source, .. } => ApiError::from(source),
        UserError::Hash(_) => ApiError::internal(error),
    }
}

/// Filters of `GET /api/users`.
#[derive(Debug, Deserialize)]
pub struct UserFilter {
    role: Option<String>,
    active: Option<bool>,
    q: Option<String>,
}

/// `GET /api/users`.
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    Query(page): Query<PageParams>,
    Query(filter): Query<UserFilter>,
) -> Result<Json<Value>, ApiError> {
    let page = page.resolve()?;
    let chain = managed_chain(&state, &caller, "users").await?;
    check_optional_text("q", filter.q.as_deref(), LOGIN_LEN_MAX)?;
    let role = filter
        .role
        .as_deref()
        .map(Role::parse)
        .transpose()
        .map_err(user_error)?;
    let pattern = filter
        .q
        .map(|q| format!("%{}%", q.replace(['%', '_', '\\'], "")));
    let filtered = format!(
        "{SELECT} AND ($2::text IS NULL OR u.role = $2) AND ($3::bool IS NULL OR u.active = $3) \
         AND ($4::text IS NULL OR u.login ILIKE $4)"
    );
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM ({filtered}) t"))
        .bind(chain)
        .bind(role.map(Role::as_str))
        .bind(filter.active)
        .bind(&pattern)
        .fetch_one(&state.pool)
        .await?;
    let rows = sqlx::query(&format!(
        "{filtered} ORDER BY u.login, u.id LIMIT $5 OFFSET $6"
    ))
    .bind(chain)
    .bind(role.map(Role::as_str))
    .bind(filter.active)
    .bind(&pattern)
    .bind(page.limit())
    .bind(page.offset())
    .fetch_all(&state.pool)
    .await?;
    Ok(paged(rows.iter().map(user_of).collect(), page, total))
}

async fn fetch<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    chain: Option<Uuid>,
    id: Uuid,
) -> Result<User, ApiError> {
    let row = sqlx::query(&format!("{SELECT} AND u.id = $2"))
        .bind(chain)
        .bind(id)
        .fetch_optional(executor)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    Ok(user_of(&row))
}

/// `GET /api/users/{id}`.
pub async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let chain = managed_chain(&state, &caller, &format!("user/{id}")).await?;
    Ok(ok(fetch(&state.pool, chain, id).await?))
}

/// Body of `POST /api/users` and `PUT /api/users/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    login: Option<String>,
    password: Option<String>,
    role: Option<String>,
    #[serde(default, deserialize_with = "super::extract::double_option")]
    chain_id: Option<Option<Uuid>>,
    branch_ids: Option<Vec<Uuid>>,
    active: Option<bool>,
}

impl UserBody {
    fn role(&self) -> Result<Option<Role>, ApiError> {
        self.role
            .as_deref()
            .map(Role::parse)
            .transpose()
            .map_err(user_error)
    }

    fn check(&self) -> Result<(), ApiError> {
        if self
            .branch_ids
            .as_ref()
            .is_some_and(|b| b.len() > USER_BRANCHES_MAX)
        {
            return Err(ApiError::invalid(
                "branch_ids",
                format!("at most {USER_BRANCHES_MAX} branches"),
            ));
        }
        if let Some(password) = &self.password
            && (password.chars().count() < PASSWORD_LEN_MIN || password.len() > PASSWORD_LEN_MAX)
        {
            return Err(user_error(UserError::BadPassword));
        }
        Ok(())
    }
}

/// Refuses what a chain admin may not give: the platform admin role, another chain.
async fn check_grant(
    state: &ApiState,
    caller: &Caller,
    limit: Option<Uuid>,
    role: Role,
    chain: Option<Uuid>,
    target: &str,
) -> Result<(), ApiError> {
    let Some(own) = limit else { return Ok(()) };
    if role == Role::PlatformAdmin {
        audit::record(
            &state.pool,
            caller,
            "denied",
            Some(own),
            None,
            Some(target),
            json!({ "refused": "grant platform_admin", "role": caller.role().as_str() }),
        )
        .await?;
        return Err(ApiError::forbidden("make platform admins"));
    }
    if chain != Some(own) {
        // Another chain is outside the caller's scope: it reads as missing.
        return Err(ApiError::not_found("chain"));
    }
    Ok(())
}

/// `POST /api/users`.
pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(body): ApiJson<UserBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let limit = managed_chain(&state, &caller, "users").await?;
    body.check()?;
    let role = body
        .role()?
        .ok_or_else(|| ApiError::invalid("role", "role is required"))?;
    let (Some(login), Some(password)) = (&body.login, &body.password) else {
        return Err(ApiError::invalid(
            "login",
            "login, password and role are required",
        ));
    };
    if body.active.is_some() {
        return Err(ApiError::invalid(
            "active",
            "a new user is active; disable it afterwards",
        ));
    }
    // A chain admin's users are of its chain unless it says otherwise.
    let chain = body.chain_id.unwrap_or(match role {
        Role::PlatformAdmin => None,
        _ => limit,
    });
    let branches = body.branch_ids.clone().unwrap_or_default();
    check_grant(&state, &caller, limit, role, chain, "users").await?;
    users::check_login(login).map_err(user_error)?;
    users::check_scope(role, chain, &branches).map_err(user_error)?;
    let password = password.clone();
    let hash = tokio::task::spawn_blocking(move || users::hash_password(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(user_error)?;
    let new = NewUser {
        login: login.clone(),
        password: String::new(),
        role,
        chain,
        branches: branches.clone(),
    };
    let mut tx = state.pool.begin().await?;
    let id = users::add_user_in(&mut tx, &new, &hash)
        .await
        .map_err(user_error)?;
    audit::record(
        &mut *tx,
        &caller,
        "user.created",
        chain,
        None,
        Some(&format!("user/{id}")),
        json!({ "login": login, "role": role.as_str(), "chain_id": chain, "branch_ids": branches }),
    )
    .await?;
    let user = fetch(&mut *tx, None, id).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, ok(user)))
}

/// `PUT /api/users/{id}`: role, scope, active, password (any of them).
pub async fn update(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UserBody>,
) -> Result<Json<Value>, ApiError> {
    let target = format!("user/{id}");
    let limit = managed_chain(&state, &caller, &target).await?;
    body.check()?;
    if body.login.is_some() {
        return Err(ApiError::invalid(
            "login",
            "a login cannot change; create another user",
        ));
    }
    let current = fetch(&state.pool, limit, id).await?;
    let current_role = Role::parse(&current.role).map_err(user_error)?;
    let role = body.role()?.unwrap_or(current_role);
    let chain = match body.chain_id {
        Some(chain) => chain,
        None if role == Role::PlatformAdmin => None,
        None => current.chain_id,
    };
    let branches = match &body.branch_ids {
        Some(branches) => branches.clone(),
        None if matches!(role, Role::BranchManager | Role::Technician | Role::Viewer)
            && chain == current.chain_id =>
        {
            current.branch_ids.clone()
        }
        None => Vec::new(),
    };
    let rescoped = role != current_role || chain != current.chain_id || {
        let mut a = branches.clone();
        a.sort();
        a.dedup();
        a != current.branch_ids
    };
    if id == caller.principal.user_id && (rescoped || body.active == Some(false)) {
        return Err(ApiError::conflict(
            "you cannot disable, demote or rescope yourself; ask another admin",
        ));
    }
    check_grant(&state, &caller, limit, role, chain, &target).await?;
    users::check_scope(role, chain, &branches).map_err(user_error)?;
    let hash = match body.password.clone() {
        Some(password) => Some(
            tokio::task::spawn_blocking(move || users::hash_password(&password))
                .await
                .map_err(ApiError::internal)?
                .map_err(user_error)?,
        ),
        None => None,
    };
    let mut tx = state.pool.begin().await?;
    users::check_scope_exists(&mut tx, chain, &branches)
        .await
        .map_err(user_error)?;
    let active = body.active.unwrap_or(current.active);
    sqlx::query(
        "UPDATE users SET role = $2, chain_id = $3, active = $4, \
         password_hash = COALESCE($5, password_hash) WHERE id = $1",
    )
    .bind(id)
    .bind(role.as_str())
    .bind(chain)
    .bind(active)
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    users::set_branches(&mut tx, id, &branches)
        .await
        .map_err(user_error)?;
    let ended = if !active || hash.is_some() {
        users::revoke_all_credentials(&mut tx, id)
            .await
            .map_err(user_error)?
    } else {
        0
    };
    audit::record(
        &mut *tx,
        &caller,
        "user.updated",
        chain.or(current.chain_id),
        None,
        Some(&target),
        json!({
            "login": current.login,
            "role": role.as_str(),
            "chain_id": chain,
            "branch_ids": branches,
            "active": active,
            "password_changed": hash.is_some(),
            "credentials_ended": ended,
        }),
    )
    .await?;
    let user = fetch(&mut *tx, None, id).await?;
    tx.commit().await?;
    Ok(ok(user))
}

/// `DELETE /api/users/{id}`: disables the user and ends its sessions and tokens.
pub async fn disable(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let target = format!("user/{id}");
    let limit = managed_chain(&state, &caller, &target).await?;
    let current = fetch(&state.pool, limit, id).await?;
    if id == caller.principal.user_id {
        return Err(ApiError::conflict(
            "you cannot disable yourself; ask another admin",
        ));
    }
    let mut tx = state.pool.begin().await?;
    sqlx::query("UPDATE users SET active = false WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let ended = users::revoke_all_credentials(&mut tx, id)
        .await
        .map_err(user_error)?;
    audit::record(
        &mut *tx,
        &caller,
        "user.disabled",
        current.chain_id,
        None,
        Some(&target),
        json!({ "login": current.login, "credentials_ended": ended }),
    )
    .await?;
    let user = fetch(&mut *tx, None, id).await?;
    tx.commit().await?;
    Ok(ok(user))
}
