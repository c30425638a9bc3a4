//! People who use the hub: users with a role and a scope, Argon2id password hashes, dashboard
//! sessions and API tokens.
//!
//! A session or token is 32 random bytes shown once (hex); only its SHA-256 is stored, so a
//! database reader cannot act as a user. Each user keeps at most `CREDENTIALS_PER_USER_MAX`
//! live credentials: issuing one more drops the oldest.

use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use chrono::{DateTime, Utc};
use rand::Rng;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// Live credentials (sessions and tokens together) one user may hold.
pub const CREDENTIALS_PER_USER_MAX: i64 = 20;
/// How long a dashboard session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// How long an API token lasts.
pub const API_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The shortest password accepted.
pub const PASSWORD_LEN_MIN: usize = 10;
/// The longest password accepted (hashing cost is bounded by it).
pub const PASSWORD_LEN_MAX: usize = 256;
/// The longest login name.
pub const LOGIN_LEN_MAX: usize = 100;

/// What a user may do; each role has a scope (see `Scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything, everywhere.
    PlatformAdmin,
    /// Everything within one chain but creating or deleting chains.
    ChainAdmin,
    /// Reads its branches, sees phone numbers, assigns and force-returns carts.
    BranchManager,
    /// Reads its branches (phones masked), registers devices, sets firmware.
    Technician,
    /// Reads its scope (everything, a chain or branches), phones masked.
    Viewer,
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Role; 5] = [
        Role::PlatformAdmin,
        Role::ChainAdmin,
        Role::BranchManager,
        Role::Technician,
        Role::Viewer,
    ];

    /// The name stored and shown (`platform_admin`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::PlatformAdmin => "platform_admin",
            Role::ChainAdmin => "chain_admin",
            Role::BranchManager => "branch_manager",
            Role::Technician => "technician",
            Role::Viewer => "viewer",
        }
    }

    /// Parses a stored or typed role name.
    pub fn parse(text: &str) -> Result<Self, UserError> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| UserError::BadRole(text.to_owned()))
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a user may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every chain.
    All,
    /// One chain and everything in it.
    Chain(Uuid),
    /// These branches (of one chain).
    Branches(Vec<Uuid>),
}

/// An authenticated user, as every request sees it.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user's id.
    pub user_id: Uuid,
    /// The login name.
    pub login: String,
    /// The role.
    pub role: Role,
    /// What the user may see.
    pub scope: Scope,
}

/// Why a user operation failed. Messages go to admins at the command line or over the API.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// Not one of the five roles.
    #[error(
        "unknown role {0:?}: expected platform_admin, chain_admin, branch_manager, technician or viewer"
    )]
    BadRole(String),
    /// The login is empty, too long or has unusual characters.
    #[error("the login must be 1 to 100 characters of letters, digits, '.', '_', '-' or '@'")]
    BadLogin,
    /// The password is too short or too long.
    #[error("the password must be 10 to 256 characters")]
    BadPassword,
    /// The role needs a chain, or must not have one.
    #[error("{0}")]
    BadScope(String),
    /// Another user has this login.
    #[error("a user with the login {0:?} already exists")]
    LoginTaken(String),
    /// Hashing failed (never for valid input).
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// Postgres failed.
    #[error("database error during {what}: {source}")]
    Db {
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> UserError {
    move |source| UserError::Db { what, source }
}

/// A user to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Login name.
    pub login: String,
    /// Plain password (hashed before it is stored).
    pub password: String,
    /// Role.
    pub role: Role,
    /// The chain (required for chain admins, branch managers, technicians; optional for viewers).
    pub chain: Option<Uuid>,
    /// Branches (required for branch managers and technicians; optional for viewers).
    pub branches: Vec<Uuid>,
}

/// Checks a login name's shape.
pub fn check_login(login: &str) -> Result<(), UserError> {
    let ok = !login.is_empty()
        && login.len() <= LOGIN_LEN_MAX
        && login
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok { Ok(()) } else { Err(UserError::BadLogin) }
}

/// Hashes `password` with Argon2id (default parameters) and a fresh 16-byte salt.
pub fn hash_password(password: &str) -> Result<String, UserError> {
    if password.chars().count() < PASSWORD_LEN_MIN || password.len() > PASSWORD_LEN_MAX {
        return Err(UserError::BadPassword);
    }
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| UserError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

/// Whether `password` matches the stored PHC `hash` (false for a malformed hash).
pub fn verify_password(hash: &str, password: &str) -> bool {
    if password.len() > PASSWORD_LEN_MAX {
        return false;
    }
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Creates a user; checks that the role and scope fit together and the branches are the chain's.
pub async fn add_user(pool: &PgPool, new: &NewUser) -> Result<Uuid, UserError> {
    check_login(&new.login)?;
    check_scope(new.role, new.chain, &new.branches)?;
    let hash = hash_password(&new.password)?;
    let mut tx = pool.begin().await.map_err(db("adding a user"))?;
    let id = add_user_in(&mut tx, new, &hash).await?;
    tx.commit().await.map_err(db("adding a user"))?;
    Ok(id)
}

/// [`add_user`] inside the caller's transaction, with the password already hashed
/// ([`hash_password`], slow: call it outside the transaction).
pub async fn add_user_in(
    conn: &mut sqlx::PgConnection,
    new: &NewUser,
    hash: &str,
) -> Result<Uuid, UserError> {
    check_login(&new.login)?;
    check_scope(new.role, new.chain, &new.branches)?;
    check_scope_exists(conn, new.chain, &new.branches).await?;
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO users (login, password_hash, role, chain_id) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (login) DO NOTHING RETURNING id",
    )
    .bind(&new.login)
    .bind(hash)
    .bind(new.role.as_str())
    .bind(new.chain)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db("adding a user"))?
    .ok_or_else(|| UserError::LoginTaken(new.login.clone()))?;
    set_branches(conn, id, &new.branches).await?;
    Ok(id)
}

/// Replaces the branches a user is scoped to.
pub async fn set_branches(
    conn: &mut sqlx::PgConnection,
    user: Uuid,
    branches: &[Uuid],
) -> Result<(), UserError> {
    sqlx::query("DELETE FROM user_branches WHERE user_id = $1 AND NOT (branch_id = ANY($2))")
        .bind(user)
        .bind(branches)
        .execute(&mut *conn)
        .await
        .map_err(db("scoping the user"))?;
    sqlx::query(
        "INSERT INTO user_branches (user_id, branch_id) SELECT $1, unnest($2::uuid[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind(user)
    .bind(branches)
    .execute(&mut *conn)
    .await
    .map_err(db("scoping the user"))?;
    Ok(())
}

/// Ends every session and token of `user` (a disabled user or a changed password).
pub async fn revoke_all_credentials(
    conn: &mut sqlx::PgConnection,
    user: Uuid,
) -> Result<u64, UserError> {
    sqlx::query("DELETE FROM user_credentials WHERE user_id = $1")
        .bind(user)
        .execute(&mut *conn)
        .await
        .map(|done| done.rows_affected())
        .map_err(db("ending the user's sessions"))
}

/// Checks that the chain exists and every branch is one of its branches.
pub async fn check_scope_exists(
    conn: &mut sqlx::PgConnection,
    chain: Option<Uuid>,
    branches: &[Uuid],
) -> Result<(), UserError> {
    let tx = conn;
    if let Some(chain) = chain {
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM chains WHERE id = $1)")
            .bind(chain)
            .fetch_one(&mut *tx)
            .await
            .map_err(db("finding the chain"))?;
        if !exists {
            return Err(UserError::BadScope(format!("no chain has the id {chain}")));
        }
    }
    if !branches.is_empty() {
        let inside: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM branches WHERE id = ANY($1) AND chain_id = $2",
        )
        .bind(branches)
        .bind(chain)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("finding the branches"))?;
        let mut distinct = branches.to_vec();
        distinct.sort();
        distinct.dedup();
        if usize::try_from(inside).ok() != Some(distinct.len()) {
            return Err(UserError::BadScope(
                "every branch (--branch, branch_ids) must be a branch of the user's chain"
                    .to_owned(),
            ));
        }
    }
    Ok(())
}

/// Checks that a role's scope has the shape the role needs (no database).
pub fn check_scope(role: Role, chain: Option<Uuid>, branches: &[Uuid]) -> Result<(), UserError> {
    let problem = match role {
        Role::PlatformAdmin if chain.is_some() || !branches.is_empty() => {
            Some("a platform admin sees everything: give no chain (--chain, chain_id) or branches")
        }
        Role::ChainAdmin if chain.is_none() || !branches.is_empty() => Some(
            "a chain admin needs a chain (--chain, chain_id) and no branches (--branch, branch_ids)",
        ),
        Role::BranchManager | Role::Technician if chain.is_none() || branches.is_empty() => Some(
            "a branch manager or technician needs a chain (--chain, chain_id) and at least one of its branches (--branch, branch_ids)",
        ),
        Role::Viewer if chain.is_none() && !branches.is_empty() => {
            Some("a viewer limited to branches needs the branches' chain (--chain, chain_id)")
        }
        _ => None,
    };
    match problem {
        Some(text) => Err(UserError::BadScope(text.to_owned())),
        None => Ok(()),
    }
}

/// A user found by login whose password matched.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The user's id.
    pub user_id: Uuid,
    /// The login.
    pub login: String,
    /// The role.
    pub role: Role,
}

/// A syntactically valid Argon2id hash of a password nobody knows, verified when the login is
/// unknown so an unknown login takes as long as a wrong password.
const DECOY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3lS9MmFsC1bKq0m2ZCq2o6S0mGxK0m0Gm0j3bq7w8nY";

/// Checks a login and password. `None` when the login is unknown, inactive, or the password
/// is wrong (callers must not tell these apart to the client).
pub async fn authenticate(
    pool: &PgPool,
    login: &str,
    password: &str,
) -> Result<Option<Authenticated>, UserError> {
    let row = sqlx::query("SELECT id, password_hash, role, active FROM users WHERE login = $1")
        .bind(login)
        .fetch_optional(pool)
        .await
        .map_err(db("finding the user"))?;
    let hash: String = row
        .as_ref()
        .map(|row| row.get(1))
        .unwrap_or_else(|| DECOY_HASH.to_owned());
    let password = password.to_owned();
    let matched = tokio::task::spawn_blocking(move || verify_password(&hash, &password))
        .await
        .unwrap_or(false);
    let Some(row) = row else { return Ok(None) };
    if !matched || !row.get::<bool, _>(3) {
        return Ok(None);
    }
    Ok(Some(Authenticated {
        user_id: row.get(0),
        login: login.to_owned(),
        role: Role::parse(row.get::<&str, _>(2))?,
    }))
}

/// The two kinds of credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A dashboard session (cookie).
    Session,
    /// An API token (bearer).
    ApiToken,
}

impl CredentialKind {
    fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Session => "session",
            CredentialKind::ApiToken => "api_token",
        }
    }

    fn ttl(self) -> Duration {
        match self {
            CredentialKind::Session => SESSION_TTL,
            CredentialKind::ApiToken => API_TOKEN_TTL,
        }
    }
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Issues a credential for `user`; returns the secret (shown once) and its expiry. Expired
/// credentials are swept and the user's oldest dropped beyond `CREDENTIALS_PER_USER_MAX`.
pub async fn issue_credential(
    pool: &PgPool,
    user: Uuid,
    kind: CredentialKind,
) -> Result<(String, DateTime<Utc>), UserError> {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let token: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let ttl_secs = kind.ttl().as_secs() as f64;
    let mut tx = pool.begin().await.map_err(db("issuing a credential"))?;
    sqlx::query("DELETE FROM user_credentials WHERE expires_at < now()")
        .execute(&mut *tx)
        .await
        .map_err(db("sweeping expired credentials"))?;
    let expires_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO user_credentials (token_hash, user_id, kind, expires_at) \
         VALUES ($1, $2, $3, now() + make_interval(secs => $4)) RETURNING expires_at",
    )
    .bind(token_hash(&token))
    .bind(user)
    .bind(kind.as_str())
    .bind(ttl_secs)
    .fetch_one(&mut *tx)
    .await
    .map_err(db("issuing a credential"))?;
    sqlx::query(
        "DELETE FROM user_credentials WHERE token_hash IN ( \
           SELECT token_hash FROM user_credentials WHERE user_id = $1 \
           ORDER BY created_at DESC OFFSET $2)",
    )
    .bind(user)
    .bind(CREDENTIALS_PER_USER_MAX)
    .execute(&mut *tx)
    .await
    .map_err(db("dropping old credentials"))?;
    tx.commit().await.map_err(db("issuing a credential"))?;
    Ok((token, expires_at))
}

/// The active user holding the unexpired credential `token`, with its scope.
pub async fn principal_for_token(
    pool: &PgPool,
    token: &str,
) -> Result<Option<Principal>, UserError> {
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let row = sqlx::query(
        "UPDATE user_credentials c SET last_used_at = now() FROM users u \
         WHERE c.token_hash = $1 AND c.expires_at > now() AND u.id = c.user_id AND u.active \
         RETURNING u.id, u.login, u.role, u.chain_id",
    )
    .bind(token_hash(token))
    .fetch_optional(pool)
    .await
    .map_err(db("checking a credential"))?;
    let Some(row) = row else { return Ok(None) };
    let user_id: Uuid = row.get(0);
    let role = Role::parse(row.get::<&str, _>(2))?;
    let chain: Option<Uuid> = row.get(3);
    let branches: Vec<Uuid> =
        sqlx::query_scalar("SELECT branch_id FROM user_branches WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(pool)
            .await
            .map_err(db("loading the user's branches"))?;
    let scope = match (role, chain) {
        (Role::PlatformAdmin, _) | (Role::Viewer, None) => Scope::All,
        (Role::ChainAdmin, Some(chain)) => Scope::Chain(chain),
        (Role::Viewer, Some(chain)) if branches.is_empty() => Scope::Chain(chain),
        _ => Scope::Branches(branches),
    };
    Ok(Some(Principal {
        user_id,
        login: row.get(1),
        role,
        scope,
    }))
}

/// Ends the credential `token` (logout). Unknown tokens are ignored.
pub async fn revoke_credential(pool: &PgPool, token: &str) -> Result<(), UserError> {
    sqlx::query("DELETE FROM user_credentials WHERE token_hash = $1")
        .bind(token_hash(token))
        .execute(pool)
        .await
        .map_err(db("ending a credential"))?;
    Ok(())
}

/// Masks a phone number for roles without PII access: `+972501234567` → `+97250***4567`.
pub fn mask_phone(phone: &str) -> String {
    let chars: Vec<char> = phone.chars().collect();
    if chars.len() < 10 {
        return "***".to_owned();
    }
    let head: String = chars[..6].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&hash, "correct horse battery"));
        assert!(!verify_password(&hash, "correct horse batterY"));
        assert!(!verify_password("not a hash", "correct horse battery"));
        assert!(PasswordHash::new(DECOY_HASH).is_ok());
    }

    #[test]
    fn phones_are_masked_in_the_middle() {
        assert_eq!(mask_phone("+972501234567"), "+97250***4567");
        assert_eq!(mask_phone("0501"), "***");
    }

    #[test]
    fn roles_and_scopes_must_fit() {
        let chain = Some(Uuid::nil());
        assert!(check_scope(Role::PlatformAdmin, None, &[]).is_ok());
        assert!(check_scope(Role::PlatformAdmin, chain, &[]).is_err());
        assert!(check_scope(Role::ChainAdmin, None, &[]).is_err());
        assert!(check_scope(Role::BranchManager, chain, &[]).is_err());
        assert!(check_scope(Role::Technician, chain, &[Uuid::nil()]).is_ok());
        assert!(check_scope(Role::Viewer, None, &[]).is_ok());
        assert!(check_scope(Role::Viewer, None, &[Uuid::nil()]).is_err());
        assert!(check_login("anna.k@example").is_ok());
        assert!(check_login("anna k").is_err());
    }
}
