//! Who is asking, and what they may see and do: the one place scope is enforced.
//!
//! [`Caller`] is an extractor: it finds the session cookie or bearer token, loads the user
//! (role and scope) and counts writes against the per-user write limit. Every handler then goes
//! through it: lists bind [`Caller::sql`] (`$all`, `$chains`, `$branches`) into a fixed filter,
//! and single resources are fetched with [`Caller::branch`], [`Caller::chain`] or
//! [`Caller::device`], which answer 404 for anything outside the scope (a foreign resource and
//! a missing one look the same) and 403 only for what the caller may see but not change.

use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{Method, header};
use serde_json::json;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::ApiState;
use super::error::ApiError;
use crate::users::{self, Principal, Role, Scope};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "cartwise_session";

/// What a caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read anything in scope.
    Read,
    /// Create a chain.
    CreateChain,
    /// Change a chain.
    UpdateChain,
    /// Delete a chain.
    DeleteChain,
    /// Create a branch in a chain.
    CreateBranch,
    /// Register a device (get an enrollment code).
    RegisterDevice,
    /// Set a device's desired firmware.
    SetFirmware,
    /// Assign a cart to a shopper or force its return; take a post out of service or back;
    /// leave a note.
    CartIntent,
    /// Unlock a post for maintenance.
    MaintenanceUnlock,
    /// Change a branch's settings (rental minutes, OTP policy, kiosk language).
    BranchSettings,
    /// Create, change or disable users.
    ManageUsers,
    /// Read the audit log.
    ReadAudit,
}

impl Action {
    /// How a refusal names the action.
    pub fn describe(self) -> &'static str {
        match self {
            Action::Read => "read this",
            Action::CreateChain => "create chains",
            Action::UpdateChain => "change this chain",
            Action::DeleteChain => "delete chains",
            Action::CreateBranch => "create branches",
            Action::RegisterDevice => "register devices",
            Action::SetFirmware => "set device firmware",
            Action::CartIntent => "assign or return carts",
            Action::MaintenanceUnlock => "unlock posts for maintenance",
            Action::BranchSettings => "change branch settings",
            Action::ManageUsers => "manage users",
            Action::ReadAudit => "read the audit log",
        }
    }
}

/// Whether `role` may do `action` on something inside its scope.
pub fn permits(role: Role, action: Action) -> bool {
    use Action as A;
    match role {
        Role::PlatformAdmin => true,
        Role::ChainAdmin => !matches!(action, A::CreateChain | A::DeleteChain),
        Role::BranchManager => matches!(
            action,
            A::Read | A::CartIntent | A::MaintenanceUnlock | A::BranchSettings
        ),
        Role::Technician => matches!(
            action,
            A::Read | A::RegisterDevice | A::SetFirmware | A::MaintenanceUnlock
        ),
        Role::Viewer => action == A::Read,
    }
}

/// Whether `role` sees shoppers' phone numbers unmasked.
pub fn sees_pii(role: Role) -> bool {
    matches!(
        role,
        Role::PlatformAdmin | Role::ChainAdmin | Role::BranchManager
    )
}

/// The scope as SQL parameters: a row is visible when `$all OR chain_id = ANY($chains) OR
/// branch_id = ANY($branches)`.
#[derive(Debug, Clone)]
pub struct ScopeSql {
    /// Everything is visible.
    pub all: bool,
    /// Whole chains visible.
    pub chains: Vec<Uuid>,
    /// Single branches visible.
    pub branches: Vec<Uuid>,
}

/// Where a branch-level resource lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// Its chain.
    pub chain: Uuid,
    /// Its branch.
    pub branch: Uuid,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user.
    pub principal: Principal,
    /// The credential used (to end it at logout).
    pub token: String,
    /// The client's address, if known.
    pub ip: Option<String>,
}

/// The client's address as the server saw it (no proxy header is trusted).
pub fn client_ip(parts: &Parts) -> Option<String> {
    parts
        .extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip().to_string())
}

/// The client's address as an extractor (never rejects).
#[derive(Debug, Clone)]
pub struct ClientIp(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(parts)))
    }
}

fn credential(parts: &Parts) -> Option<String> {
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(|token| token.trim().to_owned());
    bearer.or_else(|| {
        parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == SESSION_COOKIE)
            .map(|(_, value)| value.to_owned())
    })
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let token = credential(parts).ok_or_else(ApiError::unauthenticated)?;
        let principal = users::principal_for_token(&state.pool, &token)
            .await?
            .ok_or_else(ApiError::unauthenticated)?;
        if !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
            state
                .limits
                .writes
                .hit(&principal.user_id.to_string(), Instant::now())
                .map_err(ApiError::rate_limited)?;
        }
        Ok(Caller {
            principal,
            token,
            ip: client_ip(parts),
        })
    }
}

impl Caller {
    /// The role.
    pub fn role(&self) -> Role {
        self.principal.role
    }

    /// The scope as SQL parameters.
    pub fn sql(&self) -> ScopeSql {
        match &self.principal.scope {
            Scope::All => ScopeSql {
                all: true,
                chains: Vec::new(),
                branches: Vec::new(),
            },
            Scope::Chain(chain) => ScopeSql {
                all: false,
                chains: vec![*chain],
                branches: Vec::new(),
            },
            Scope::Branches(branches) => ScopeSql {
                all: false,
                chains: Vec::new(),
                branches: branches.clone(),
            },
        }
    }

    /// Whether phone numbers are shown unmasked.
    pub fn sees_pii(&self) -> bool {
        sees_pii(self.role())
    }

    /// A phone number as this caller may see it.
    pub fn phone(&self, phone: Option<String>) -> Option<String> {
        phone.map(|p| {
            if self.sees_pii() {
                p
            } else {
                users::mask_phone(&p)
            }
        })
    }

    /// 403 unless the role may do `action` at all (for actions without a target).
    pub fn require(&self, action: Action) -> Result<(), ApiError> {
        if permits(self.role(), action) {
            Ok(())
        } else {
            Err(ApiError::forbidden(action.describe()))
        }
    }

    /// 403 unless the role may do `action` at all, recording a refused write in the audit log.
    pub async fn require_audited(
        &self,
        pool: &PgPool,
        action: Action,
        target: &str,
    ) -> Result<(), ApiError> {
        self.permit(pool, action, None, None, target).await
    }

    /// The branch `id` if visible (else 404), and `action` permitted on it (else 403).
    pub async fn branch(&self, pool: &PgPool, id: Uuid, action: Action) -> Result<Place, ApiError> {
        let s = self.sql();
        let chain: Option<Uuid> = sqlx::query_scalar(
            "SELECT chain_id FROM branches WHERE id = $1 \
             AND ($2 OR chain_id = ANY($3) OR id = ANY($4))",
        )
        .bind(id)
        .bind(s.all)
        .bind(&s.chains)
        .bind(&s.branches)
        .fetch_optional(pool)
        .await?;
        let place = Place {
            chain: chain.ok_or_else(|| ApiError::not_found("branch"))?,
            branch: id,
        };
        self.permit(
            pool,
            action,
            Some(place.chain),
            Some(id),
            &format!("branch/{id}"),
        )
        .await?;
        Ok(place)
    }

    /// The chain `id` if visible (else 404: a chain is visible to whoever sees one of its
    /// branches), and `action` permitted on it (else 403).
    pub async fn chain(&self, pool: &PgPool, id: Uuid, action: Action) -> Result<(), ApiError> {
        let s = self.sql();
        let visible: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM chains c WHERE c.id = $1 AND ($2 OR c.id = ANY($3) \
             OR EXISTS (SELECT 1 FROM branches b WHERE b.chain_id = c.id AND b.id = ANY($4))))",
        )
        .bind(id)
        .bind(s.all)
        .bind(&s.chains)
        .bind(&s.branches)
        .fetch_one(pool)
        .await?;
        if !visible {
            return Err(ApiError::not_found("chain"));
        }
        // A branch-scoped user sees its chain but acts only on its branches.
        let whole_chain = matches!(self.principal.scope, Scope::All | Scope::Chain(_));
        if action != Action::Read && !whole_chain {
            self.deny(pool, action, Some(id), None, &format!("chain/{id}"))
                .await;
            return Err(ApiError::forbidden(action.describe()));
        }
        self.permit(pool, action, Some(id), None, &format!("chain/{id}"))
            .await
    }

    /// The device `id` if visible (else 404), and `action` permitted on it (else 403).
    pub async fn device(&self, pool: &PgPool, id: Uuid, action: Action) -> Result<Place, ApiError> {
        let s = self.sql();
        let row = sqlx::query(
            "SELECT b.chain_id, b.id FROM devices d JOIN branches b ON b.id = d.branch_id \
             WHERE d.id = $1 AND ($2 OR b.chain_id = ANY($3) OR b.id = ANY($4))",
        )
        .bind(id)
        .bind(s.all)
        .bind(&s.chains)
        .bind(&s.branches)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| ApiError::not_found("device"))?;
        let place = Place {
            chain: row.get(0),
            branch: row.get(1),
        };
        self.permit(
            pool,
            action,
            Some(place.chain),
            Some(place.branch),
            &format!("device/{id}"),
        )
        .await?;
        Ok(place)
    }

    async fn permit(
        &self,
        pool: &PgPool,
        action: Action,
        chain: Option<Uuid>,
        branch: Option<Uuid>,
        target: &str,
    ) -> Result<(), ApiError> {
        if permits(self.role(), action) {
            return Ok(());
        }
        self.deny(pool, action, chain, branch, target).await;
        Err(ApiError::forbidden(action.describe()))
    }

    /// Records a refused write in the audit log (best effort: the refusal stands either way).
    async fn deny(
        &self,
        pool: &PgPool,
        action: Action,
        chain: Option<Uuid>,
        branch: Option<Uuid>,
        target: &str,
    ) {
        if action == Action::Read {
            return;
        }
        let detail = json!({ "refused": action.describe(), "role": self.role().as_str() });
        if let Err(error) =
            super::audit::record(pool, self, "denied", chain, branch, Some(target), detail).await
        {
            tracing::warn!(%error, "recording a refused request in the audit log failed");
        }
    }
}
