//! `/api/auth`: password login (a session cookie for the dashboard, optionally a bearer token
//! for the API), logout, and who am I. Login is rate-limited per login name and per client
//! address; every attempt is audited.

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

use super::ApiState;
use super::auth::{Action, Caller, ClientIp, SESSION_COOKIE, permits, sees_pii};
use super::error::ApiError;
use super::extract::ApiJson;
use super::page::ok;
use crate::users::{self, CredentialKind, LOGIN_LEN_MAX, PASSWORD_LEN_MAX, Role, Scope};

/// The body schema of login.
pub fn login_schema() -> Value {
    json!({ "type": "object", "additionalProperties": false,
        "required": ["login", "password"], "properties": {
        "login": { "type": "string", "minLength": 1, "maxLength": LOGIN_LEN_MAX },
        "password": { "type": "string", "minLength": 1, "maxLength": PASSWORD_LEN_MAX },
        "issue_token": { "type": "boolean", "default": false,
            "description": "also return a bearer token for the API" } } })
}

/// The JSON schema of `me`.
pub fn me_schema() -> Value {
    json!({ "type": "object", "properties": {
        "user_id": { "type": "string", "format": "uuid" },
        "login": { "type": "string" },
        "role": { "type": "string", "enum": Role::ALL.map(Role::as_str) },
        "scope": { "type": "object", "properties": {
            "all": { "type": "boolean" },
            "chain_id": { "type": "string", "format": "uuid", "nullable": true },
            "branch_ids": { "type": "array", "items": { "type": "string", "format": "uuid" } } } },
        "pii": { "type": "boolean" },
        "may": { "type": "array", "items": { "type": "string" } },
        "token": { "type": "string", "description": "only from login with issue_token" },
        "token_expires_at": { "type": "string", "format": "date-time" } } })
}

/// Body of login.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    login: String,
    password: String,
    #[serde(default)]
    issue_token: bool,
}

fn me(principal: &users::Principal) -> Value {
    let (all, chain, branches) = match &principal.scope {
        Scope::All => (true, None, Vec::new()),
        Scope::Chain(chain) => (false, Some(*chain), Vec::new()),
        Scope::Branches(branches) => (false, None, branches.clone()),
    };
    let may: Vec<&str> = [
        (Action::CreateChain, "create_chain"),
        (Action::UpdateChain, "update_chain"),
        (Action::DeleteChain, "delete_chain"),
        (Action::CreateBranch, "create_branch"),
        (Action::RegisterDevice, "register_device"),
        (Action::SetFirmware, "set_firmware"),
        (Action::CartIntent, "cart_intent"),
        (Action::MaintenanceUnlock, "maintenance_unlock"),
        (Action::BranchSettings, "branch_settings"),
        (Action::ManageUsers, "manage_users"),
        (Action::ReadAudit, "read_audit"),
    ]
    .into_iter()
    .filter(|(action, _)| permits(principal.role, *action))
    .map(|(_, name)| name)
    .collect();
    json!({
        "user_id": principal.user_id,
        "login": principal.login,
        "role": principal.role.as_str(),
        "scope": { "all": all, "chain_id": chain, "branch_ids": branches },
        "pii": sees_pii(principal.role),
        "may": may,
    })
}

/// `POST /api/auth/login`.
pub async fn login(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<Login>,
) -> Result<Response, ApiError> {
    let ip = ip.unwrap_or_else(|| "unknown".to_owned());
    if body.login.is_empty() || body.login.len() > LOGIN_LEN_MAX || body.login.contains('\0') {
        return Err(ApiError::invalid(
            "login",
            "login must be 1 to 100 characters",
        ));
    }
    if body.password.is_empty() || body.password.len() > PASSWORD_LEN_MAX {
        return Err(ApiError::invalid(
            "password",
            "password must be 1 to 256 characters",
        ));
    }
    let now = Instant::now();
    state
        .limits
        .login_ip
        .hit(&ip, now)
        .map_err(ApiError::rate_limited)?;
    state
        .limits
        .login
        .hit(&body.login.to_lowercase(), now)
        .map_err(ApiError::rate_limited)?;
    let Some(user) = users::authenticate(&state.pool, &body.login, &body.password).await? else {
        sqlx::query(
            "INSERT INTO audit_log (actor_kind, actor_id, action, detail) \
             VALUES ('anonymous', $1, 'auth.login_failed', $2)",
        )
        .bind(&body.login)
        .bind(json!({ "ip": ip }))
        .execute(&state.pool)
        .await?;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong login or password",
        ));
    };
    let (session, session_expires) =
        users::issue_credential(&state.pool, user.user_id, CredentialKind::Session).await?;
    let principal = users::principal_for_token(&state.pool, &session)
        .await?
        .ok_or_else(ApiError::unauthenticated)?;
    let mut data = me(&principal);
    data["session_expires_at"] = json!(session_expires);
    if body.issue_token {
        let (token, expires) =
            users::issue_credential(&state.pool, user.user_id, CredentialKind::ApiToken).await?;
        data["token"] = json!(token);
        data["token_expires_at"] = json!(expires);
    }
    let (chain, branch) = scope_columns(&principal.scope);
    sqlx::query(
        "INSERT INTO audit_log (actor_kind, actor_id, chain_id, branch_id, action, detail) \
         VALUES ('user', $1, $2, $3, 'auth.login', $4)",
    )
    .bind(&principal.login)
    .bind(chain)
    .bind(branch)
    .bind(json!({ "ip": ip, "token": body.issue_token }))
    .execute(&state.pool)
    .await?;
    let max_age = users::SESSION_TTL.as_secs();
    let secure = if state.config.secure_cookie {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    );
    let mut response = ok(data).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

fn scope_columns(scope: &Scope) -> (Option<uuid::Uuid>, Option<uuid::Uuid>) {
    match scope {
        Scope::All => (None, None),
        Scope::Chain(chain) => (Some(*chain), None),
        Scope::Branches(branches) if branches.len() == 1 => (None, branches.first().copied()),
        Scope::Branches(_) => (None, None),
    }
}

/// `POST /api/auth/logout`: ends the credential used (cookie or token).
pub async fn logout(State(state): State<ApiState>, caller: Caller) -> Result<Response, ApiError> {
    users::revoke_credential(&state.pool, &caller.token).await?;
    let chain: Option<uuid::Uuid> = sqlx::query("SELECT chain_id FROM users WHERE id = $1")
        .bind(caller.principal.user_id)
        .fetch_optional(&state.pool)
        .await?
        .and_then(|row| row.get(0));
    super::audit::record(
        &state.pool,
        &caller,
        "auth.logout",
        chain,
        None,
        None,
        json!({}),
    )
    .await?;
    let mut response = ok(json!({ "logged_out": true })).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("cartwise_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(response)
}

/// `GET /api/auth/me`.
pub async fn whoami(caller: Caller) -> Json<Value> {
    ok(me(&caller.principal))
}
