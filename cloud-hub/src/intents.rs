//! Intents, the hub's side: what managers, admins and technicians ask one device of a branch to
//! do (unlock a post for maintenance, take a post out of service or back, change the rental
//! minutes, leave a note), and what the device answered.
//!
//! Intents go down in the branch's intents document (`branch/<uuid>/intents`, layout and
//! writer in `cartwise_sync_core::intents`), which only the hub writes, with one actor per
//! chain (`hub_actor`). Several hub processes share that actor, so every write to the document
//! is serialized by a row lock: [`create`] locks the document's row (`docs_store::lock_versions`
//! creates it if missing, then `SELECT … FOR UPDATE`), loads the document, adds the intent,
//! appends the change (bumping the row's `version`, so cached copies reload), and writes the
//! `intents` row and the `audit_log` row, all in one transaction: either everything is there or
//! nothing is. The commit announces the changed document on [`DOC_CHANGED_CHANNEL`] (Postgres
//! `NOTIFY`, delivered only if the transaction commits, to every hub process: `cartwise-hub
//! intent` runs as its own process, so an in-process hook alone would not reach the sessions).
//!
//! Validation happens before anything is written: the device exists, is not revoked and is in
//! the caller's branch; the post is one of the device's (the world's boards for it, or the posts
//! its own document reports); arguments are in the ranges the device accepts. A refused request
//! writes only an `intent.refused` audit row.
//!
//! Outcomes come up in each device's own document (`outcomes`, written only by that device)
//! and are projected by [`project_outcomes`] from the device projection: a pending intent moves
//! to `applied`, `failed` or `expired` once; replays change nothing; an outcome for an intent
//! addressed to another device, or for no known intent, is refused and audited once.
//!
//! Architecture Invariant: the `intents` table is a projection of the intents document and the
//! devices' outcomes; it never holds an intent the document does not, because both are written
//! in one transaction.

use std::collections::BTreeSet;
use std::time::Duration;

use automerge::AutoCommit;
use cartwise_schema::{BranchId, ChainId, DeviceId};
use cartwise_sync_core::DocId;
use cartwise_sync_core::facts::read_device_doc;
use cartwise_sync_core::intents::{
    self as doc, CREATED_BY_LEN_MAX, IntentId, IntentKind, NOTE_LEN_MAX, RENTAL_MINUTES_MAX,
};
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::docs_store::{self, DocWrite};

mod branch;
mod outcomes;

pub use branch::{BatchAudit, create_for_branch};
pub use outcomes::{OutcomesProjected, project_outcomes, project_outcomes_in};

/// The Postgres `NOTIFY` channel on which a changed document's id is announced; hub processes
/// serving sync `LISTEN` on it to push the document to connected devices.
pub const DOC_CHANGED_CHANNEL: &str = "cartwise_doc_changed";

/// The longest expiry an intent may be given.
pub const EXPIRES_IN_MAX: Duration = Duration::from_secs(30 * 24 * 3600);
/// The shortest expiry an intent may be given.
pub const EXPIRES_IN_MIN: Duration = Duration::from_secs(60);
/// How long a maintenance unlock stays valid unless the caller says otherwise: a lock must not
/// open hours later because its Pi was offline when it was asked.
pub const UNLOCK_EXPIRES_IN_DEFAULT: Duration = Duration::from_secs(3600);
/// The most rows one [`list`] returns.
pub const LIST_MAX: i64 = 1000;

/// An intent's state as the hub knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntentStatus {
    /// Written; the device has not answered yet.
    Pending,
    /// The device carried it out.
    Applied,
    /// The device tried and it did not succeed (see the outcome detail).
    Failed,
    /// The device received it after its expiry and did not carry it out.
    Expired,
}

impl IntentStatus {
    /// The column value.
    pub const fn as_str(self) -> &'static str {
        match self {
            IntentStatus::Pending => "pending",
            IntentStatus::Applied => "applied",
            IntentStatus::Failed => "failed",
            IntentStatus::Expired => "expired",
        }
    }

    /// Parses the column value (and the CLI's `--status`).
    pub fn parse(text: &str) -> Result<Self, IntentError> {
        match text {
            "pending" => Ok(IntentStatus::Pending),
            "applied" => Ok(IntentStatus::Applied),
            "failed" => Ok(IntentStatus::Failed),
            "expired" => Ok(IntentStatus::Expired),
            other => Err(IntentError::BadStatus(other.chars().take(32).collect())),
        }
    }
}

impl std::fmt::Display for IntentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who asks for an intent: written as `created_by` and into the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `audit_log.actor_kind`: `admin` (the `cartwise-hub` command line) or `user` (the API).
    pub kind: ActorKind,
    /// A user's name or id, 1 to [`CREATED_BY_LEN_MAX`] bytes.
    pub name: String,
}

/// The kind of [`Actor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    /// An operator on the hub's command line.
    Admin,
    /// A signed-in user of the API or dashboard.
    User,
}

impl ActorKind {
    const fn as_str(self) -> &'static str {
        match self {
            ActorKind::Admin => "admin",
            ActorKind::User => "user",
        }
    }
}

/// What a caller asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentRequest {
    /// The device that is to execute it.
    pub device: DeviceId,
    /// The branch the caller is acting in, if it is scoped to one: the device must be in it.
    pub branch: Option<BranchId>,
    /// What to do.
    pub kind: IntentKind,
    /// How long the device may still execute it; `None` takes [`default_expires_in`].
    pub expires_in: Option<Duration>,
}

/// The expiry an intent gets when the caller gives none: [`UNLOCK_EXPIRES_IN_DEFAULT`] for a
/// maintenance unlock, none for the rest.
pub fn default_expires_in(kind: &IntentKind) -> Option<Duration> {
    matches!(kind, IntentKind::UnlockPost { .. }).then_some(UNLOCK_EXPIRES_IN_DEFAULT)
}

/// One intent and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub id: IntentId,
    pub chain: ChainId,
    pub branch: BranchId,
    /// `branches.branch_code`, for people.
    pub branch_code: String,
    pub device: DeviceId,
    /// `devices.device_name`, for people.
    pub device_name: String,
    pub kind: IntentKind,
    pub status: IntentStatus,
    /// What the device said with its outcome.
    pub outcome_detail: Option<String>,
    /// When the device decided the outcome (its corrected wall time).
    pub outcome_at: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// Which intents [`list`] returns (all filters combine).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntentFilter {
    pub branch: Option<BranchId>,
    pub device: Option<DeviceId>,
    pub status: Option<IntentStatus>,
    /// At most this many, newest first; `None` or above [`LIST_MAX`] is [`LIST_MAX`].
    pub limit: Option<i64>,
}

/// Why an intent could not be created or read. The messages go to operators and API users.
#[derive(Debug, thiserror::Error)]
pub enum IntentError {
    /// No device has this id.
    #[error("no device has the id {0}; see `cartwise-hub device list`")]
    UnknownDevice(DeviceId),
    /// The device is not in the branch the caller acts in (the message does not say where it
    /// is: the caller may not be allowed to know).
    #[error("device {device} is not in branch {asked}")]
    WrongBranch {
        device: DeviceId,
        asked: BranchId,
        actual: BranchId,
    },
    /// The device is revoked: it will never sync again.
    #[error("device {0} is revoked; it will never receive an intent")]
    DeviceRevoked(DeviceId),
    /// The post is not one of the device's posts.
    #[error("post {post} is not a post of device {device} (its posts: {posts})")]
    UnknownPost {
        device: DeviceId,
        post: u16,
        /// The device's posts, e.g. `1-32`.
        posts: String,
    },
    /// An argument is out of range.
    #[error("{0}")]
    Invalid(String),
    /// The expiry is out of range or not written like `90m`, `1h`, `7d`.
    #[error("the expiry must be between 1 minute and 30 days, written like 90m, 1h or 7d")]
    BadExpiry,
    /// Not a status.
    #[error("unknown status {0:?}: expected pending, applied, failed or expired")]
    BadStatus(String),
    /// No branch has this id or code.
    #[error("no branch has the id or code {0:?}")]
    UnknownBranch(String),
    /// The branch has no unrevoked device to send a setting to.
    #[error("branch {0} has no enrolled device to send the setting to; register one first")]
    NoDevices(BranchId),
    /// No intent has this id.
    #[error("no intent has the id {0}; see `cartwise-hub intent list`")]
    UnknownIntent(IntentId),
    /// The stored intents document or an `intents` row cannot be used.
    #[error("the stored intents of branch {branch} are unusable: {reason}")]
    Corrupt { branch: BranchId, reason: String },
    /// Postgres failed; nothing was written.
    #[error("database error while {what}: {source}")]
    Db {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> IntentError {
    move |source| IntentError::Db { what, source }
}

impl IntentError {
    /// Whether this is the caller's mistake (refused and audited), not a failure of the hub.
    fn is_refusal(&self) -> bool {
        !matches!(self, IntentError::Corrupt { .. } | IntentError::Db { .. })
    }
}

/// Parses an expiry such as `90m`, `1h`, `7d` or `3600s` (1 minute to 30 days).
pub fn parse_expires_in(text: &str) -> Result<Duration, IntentError> {
    let text = text.trim();
    let split = text.len().saturating_sub(1);
    let (number, unit) = text.split_at_checked(split).ok_or(IntentError::BadExpiry)?;
    let number: u64 = number.parse().map_err(|_| IntentError::BadExpiry)?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 24 * 3600,
        _ => return Err(IntentError::BadExpiry),
    };
    let ttl = Duration::from_secs(number.saturating_mul(unit_secs));
    check_expires_in(ttl)?;
    Ok(ttl)
}

/// Parses a `set_otp_policy` argument (`refuse` or `token`).
pub fn parse_otp_policy(input: &str) -> Result<doc::OtpFallback, IntentError> {
    doc::OtpFallback::parse(input.trim()).ok_or_else(|| {
        IntentError::Invalid(format!(
            "the policy when SMS is unavailable must be refuse or token, not {:?}",
            input.chars().take(32).collect::<String>()
        ))
    })
}

/// Parses a `set_language` argument (`he` or `en`).
pub fn parse_language(input: &str) -> Result<doc::KioskLanguage, IntentError> {
    doc::KioskLanguage::parse(input.trim()).ok_or_else(|| {
        IntentError::Invalid(format!(
            "the kiosk language must be he or en, not {:?}",
            input.chars().take(32).collect::<String>()
        ))
    })
}

fn check_expires_in(ttl: Duration) -> Result<(), IntentError> {
    if (EXPIRES_IN_MIN..=EXPIRES_IN_MAX).contains(&ttl) {
        Ok(())
    } else {
        Err(IntentError::BadExpiry)
    }
}

/// Checks what can be checked without the database.
fn check_request(request: &IntentRequest, actor: &Actor) -> Result<(), IntentError> {
    match &request.kind {
        IntentKind::SetRentalMinutes { minutes } if !(1..=RENTAL_MINUTES_MAX).contains(minutes) => {
            return Err(IntentError::Invalid(format!(
                "rental minutes must be 1 to {RENTAL_MINUTES_MAX} (a week), not {minutes}"
            )));
        }
        IntentKind::Note { text, .. } if text.trim().is_empty() || text.len() > NOTE_LEN_MAX => {
            return Err(IntentError::Invalid(format!(
                "a note must be 1 to {NOTE_LEN_MAX} bytes"
            )));
        }
        _ => {}
    }
    request
        .kind
        .validate()
        .map_err(|e| IntentError::Invalid(e.to_string()))?;
    if actor.name.trim().is_empty() || actor.name.len() > CREATED_BY_LEN_MAX {
        return Err(IntentError::Invalid(format!(
            "who asks (created_by) must be 1 to {CREATED_BY_LEN_MAX} bytes"
        )));
    }
    if let Some(ttl) = request.expires_in {
        check_expires_in(ttl)?;
    }
    Ok(())
}

/// Creates an intent: validates it (the device exists, is not revoked and is in the caller's
/// branch; the post is one of the device's posts; arguments in range), then writes it into the
/// branch's intents document as the hub, the `intents` row and an `audit_log` row in one
/// transaction, and announces the document on [`DOC_CHANGED_CHANNEL`]. A refused request
/// writes nothing but an `intent.refused` audit row.
pub async fn create(
    pool: &PgPool,
    request: IntentRequest,
    actor: &Actor,
) -> Result<Intent, IntentError> {
    create_at(pool, request, actor, Utc::now()).await
}

/// [`create`] at hub wall time `now` (the fleet's trusted time).
pub async fn create_at(
    pool: &PgPool,
    request: IntentRequest,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<Intent, IntentError> {
    match try_create(pool, &request, actor, now).await {
        Ok(id) => get(pool, id).await,
        Err(error) => {
            if error.is_refusal() {
                audit_refusal(pool, &request, actor, &error).await;
            }
            Err(error)
        }
    }
}

async fn try_create(
    pool: &PgPool,
    request: &IntentRequest,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<IntentId, IntentError> {
    let ids = try_create_all(pool, std::slice::from_ref(request), actor, now, None).await?;
    ids.first()
        .copied()
        .ok_or_else(|| IntentError::Invalid("no intent to create".into()))
}

/// Checks the device of `request`: it exists, is in the branch asked for and is not revoked;
/// its post, if any, is its own. Returns its branch and chain.
async fn check_device(
    conn: &mut PgConnection,
    request: &IntentRequest,
) -> Result<(BranchId, ChainId), IntentError> {
    let device = request.device;
    let row = sqlx::query(
        "SELECT d.branch_id, b.chain_id, d.revoked_at IS NOT NULL
         FROM devices d JOIN branches b ON b.id = d.branch_id WHERE d.id = $1",
    )
    .bind(device.as_uuid())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db("finding the device"))?
    .ok_or(IntentError::UnknownDevice(device))?;
    let branch = BranchId::from_uuid(row.get(0));
    let chain = ChainId::from_uuid(row.get(1));
    if let Some(asked) = request.branch.filter(|asked| *asked != branch) {
        return Err(IntentError::WrongBranch {
            device,
            asked,
            actual: branch,
        });
    }
    if row.get::<bool, _>(2) {
        return Err(IntentError::DeviceRevoked(device));
    }
    if let Some(post) = request.kind.post() {
        check_post(conn, device, branch, post).await?;
    }
    Ok((branch, chain))
}

/// Writes `requests` (all to devices of one branch) in one transaction: the document change,
/// one `intents` row each, and the audit: one `intent.created` row per intent, or, with
/// `batch`, one row with that action listing them all. One `NOTIFY` for the document.
async fn try_create_all(
    pool: &PgPool,
    requests: &[IntentRequest],
    actor: &Actor,
    now: DateTime<Utc>,
    batch: Option<&BatchAudit>,
) -> Result<Vec<IntentId>, IntentError> {
    for request in requests {
        check_request(request, actor)?;
    }
    let mut tx = pool.begin().await.map_err(db("creating an intent"))?;
    let mut place: Option<(BranchId, ChainId)> = None;
    for request in requests {
        let found = check_device(&mut tx, request).await?;
        if let Some((branch, _)) = place.filter(|p| p.0 != found.0) {
            return Err(IntentError::WrongBranch {
                device: request.device,
                asked: branch,
                actual: found.0,
            });
        }
        place = Some(found);
    }
    let Some((branch, chain)) = place else {
        return Ok(Vec::new());
    };

    let now_ms = now.timestamp_millis();
    let created_at = DateTime::from_timestamp_millis(now_ms).unwrap_or(now);
    let mut written = Vec::with_capacity(requests.len());
    for request in requests {
        let expires_in = request
            .expires_in
            .or_else(|| default_expires_in(&request.kind));
        let expires_at = expires_in
            .and_then(|ttl| chrono::Duration::from_std(ttl).ok())
            .map(|ttl| created_at + ttl);
        let intent = doc::Intent {
            id: IntentId::from_uuid(Uuid::now_v7()),
            device: request.device,
            kind: request.kind.clone(),
            created_at: now_ms,
            created_by: actor.name.trim().to_owned(),
            expires_at: expires_at.map(|at| at.timestamp_millis()),
        };
        written.push((intent, expires_at));
    }
    let intents: Vec<doc::Intent> = written.iter().map(|(i, _)| i.clone()).collect();
    let doc_id = write_to_document(&mut tx, chain, branch, &intents).await?;

    let mut listed = Vec::with_capacity(written.len());
    for (intent, expires_at) in &written {
        let (post, payload) = columns(&intent.kind);
        sqlx::query(
            "INSERT INTO intents (id, chain_id, branch_id, device_id, kind, post, payload,
                                  created_by, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(intent.id.as_uuid())
        .bind(chain.as_uuid())
        .bind(branch.as_uuid())
        .bind(intent.device.as_uuid())
        .bind(intent.kind.as_str())
        .bind(post)
        .bind(&payload)
        .bind(&intent.created_by)
        .bind(created_at)
        .bind(*expires_at)
        .execute(&mut *tx)
        .await
        .map_err(db("recording the intent"))?;
        let mut detail = json!({
            "device": intent.device.to_string(),
            "kind": intent.kind.as_str(),
            "post": post,
            "payload": audit_payload(&intent.kind, &payload),
            "expires_at": expires_at.map(|at| at.to_rfc3339()),
            "doc": doc_id.to_string(),
        });
        if batch.is_none() {
            audit_created(
                &mut tx,
                actor,
                chain,
                branch,
                "intent.created",
                &intent.id.to_string(),
                detail,
            )
            .await?;
        } else {
            // In the request's one row, each intent is named by its id.
            detail["id"] = json!(intent.id.to_string());
            listed.push(detail);
        }
    }
    if let Some(batch) = batch {
        let detail = json!({
            "request": batch.request,
            "intents": listed,
            "doc": doc_id.to_string(),
        });
        audit_created(
            &mut tx,
            actor,
            chain,
            branch,
            batch.action,
            &batch.target,
            detail,
        )
        .await?;
    }
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(DOC_CHANGED_CHANNEL)
        .bind(doc_id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db("announcing the intents document"))?;
    tx.commit().await.map_err(db("committing the intent"))?;
    Ok(written.iter().map(|(i, _)| i.id).collect())
}

async fn audit_created(
    conn: &mut PgConnection,
    actor: &Actor,
    chain: ChainId,
    branch: BranchId,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> Result<(), IntentError> {
    sqlx::query(
        "INSERT INTO audit_log (actor_kind, actor_id, chain_id, branch_id, action, target, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(actor.kind.as_str())
    .bind(actor.name.trim())
    .bind(chain.as_uuid())
    .bind(branch.as_uuid())
    .bind(action)
    .bind(target)
    .bind(detail)
    .execute(&mut *conn)
    .await
    .map_err(db("auditing the intent"))?;
    Ok(())
}

/// Refuses a post that is not one of the device's: the posts the world gives it (carts of its
/// controllers) and the posts its own current document reports (a device added with
/// `cartwise-hub device add` has no boards in the world until it syncs).
async fn check_post(
    conn: &mut PgConnection,
    device: DeviceId,
    branch: BranchId,
    post: u16,
) -> Result<(), IntentError> {
    let seeded: Vec<i32> = sqlx::query_scalar(
        "SELECT c.cart_number FROM carts c JOIN controllers k ON k.id = c.controller_id
         WHERE k.device_id = $1 AND c.branch_id = $2",
    )
    .bind(device.as_uuid())
    .bind(branch.as_uuid())
    .fetch_all(&mut *conn)
    .await
    .map_err(db("reading the device's posts"))?;
    let mut posts: BTreeSet<i32> = seeded.into_iter().collect();
    if posts.contains(&i32::from(post)) {
        return Ok(());
    }
    posts.extend(
        reported_posts(conn, device)
            .await?
            .into_iter()
            .map(i32::from),
    );
    if posts.contains(&i32::from(post)) {
        Ok(())
    } else {
        Err(IntentError::UnknownPost {
            device,
            post,
            posts: ranges(&posts.into_iter().collect::<Vec<_>>()),
        })
    }
}

/// The posts in the device's current document (its highest epoch the hub holds), if any.
async fn reported_posts(
    conn: &mut PgConnection,
    device: DeviceId,
) -> Result<Vec<u16>, IntentError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT doc_id FROM sync_documents WHERE device_id = $1 AND version > 0",
    )
    .bind(device.as_uuid())
    .fetch_all(&mut *conn)
    .await
    .map_err(db("finding the device's document"))?;
    let Some(current) = ids
        .iter()
        .filter_map(|id| id.parse::<DocId>().ok())
        .filter(|id| matches!(id, DocId::Device { device: d, .. } if *d == device))
        .max_by_key(DocId::epoch)
    else {
        return Ok(Vec::new());
    };
    let (snapshot, chunks) = match docs_store::load_bytes(conn, &current).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(Vec::new()),
        Err(docs_store::DocsError::Db(source)) => {
            return Err(IntentError::Db {
                what: "reading the device's document",
                source,
            });
        }
        Err(docs_store::DocsError::Corrupt { .. }) => return Ok(Vec::new()),
    };
    // An unreadable document reports no posts; the seeded ones still count.
    Ok(tokio::task::spawn_blocking(move || {
        docs_store::assemble(&current, &snapshot, &chunks)
            .map(|doc| read_device_doc(&doc).posts.iter().map(|p| p.post).collect())
            .unwrap_or_default()
    })
    .await
    .unwrap_or_default())
}

/// `[1, 2, 3, 5]` as `1-3, 5`; `none` if empty.
fn ranges(posts: &[i32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = posts.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    if out.is_empty() {
        "none".to_owned()
    } else {
        out.join(", ")
    }
}

/// The `post` column and the `payload` of a kind (its other arguments, as the document names
/// them). Exhaustive, so a new kind cannot be stored without its arguments.
fn columns(kind: &IntentKind) -> (Option<i32>, serde_json::Value) {
    use doc::keys::intent as k;
    let payload = match kind {
        IntentKind::UnlockPost { .. }
        | IntentKind::OutOfService { .. }
        | IntentKind::InService { .. }
        | IntentKind::ForceReturn { .. } => json!({}),
        IntentKind::SetRentalMinutes { minutes } => json!({ k::MINUTES: minutes }),
        IntentKind::Note { text, .. } => json!({ k::TEXT: text }),
        IntentKind::AssignCart { phone, .. } => json!({ k::PHONE: phone }),
        IntentKind::SetFirmware { version } => json!({ k::VERSION: version }),
        IntentKind::SetOtpPolicy {
            when_sms_unavailable,
        } => json!({ k::WHEN_SMS_UNAVAILABLE: when_sms_unavailable.as_str() }),
        IntentKind::SetLanguage { language } => json!({ k::LANGUAGE: language.as_str() }),
    };
    (kind.post().map(i32::from), payload)
}

/// The payload as the audit log keeps it: a shopper's phone masked.
fn audit_payload(kind: &IntentKind, payload: &serde_json::Value) -> serde_json::Value {
    match kind {
        IntentKind::AssignCart { phone, .. } => {
            json!({ doc::keys::intent::PHONE: crate::users::mask_phone(phone) })
        }
        _ => payload.clone(),
    }
}

/// The branch's current intents document: the highest epoch the hub holds, epoch 0 if none.
async fn current_doc(conn: &mut PgConnection, branch: BranchId) -> Result<DocId, IntentError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT doc_id FROM sync_documents WHERE branch_id = $1 AND device_id IS NULL",
    )
    .bind(branch.as_uuid())
    .fetch_all(&mut *conn)
    .await
    .map_err(db("finding the intents document"))?;
    Ok(ids
        .iter()
        .filter_map(|id| id.parse::<DocId>().ok())
        .filter(|id| matches!(id, DocId::BranchIntents { branch: b, .. } if *b == branch))
        .max_by_key(DocId::epoch)
        .unwrap_or(DocId::branch_intents(branch)))
}

/// Adds `intents` to the branch's intents document, in one change, under its row lock;
/// returns the document.
async fn write_to_document(
    conn: &mut PgConnection,
    chain: ChainId,
    branch: BranchId,
    intents: &[doc::Intent],
) -> Result<DocId, IntentError> {
    let corrupt = |reason: String| IntentError::Corrupt { branch, reason };
    let stored = |e: docs_store::DocsError| match e {
        docs_store::DocsError::Db(source) => IntentError::Db {
            what: "writing the intents document",
            source,
        },
        other => corrupt(other.to_string()),
    };
    let doc_id = current_doc(conn, branch).await?;
    // Creates the row if missing, so concurrent creators of a branch's first intent wait here
    // for each other instead of both creating a document.
    let locked = docs_store::lock_versions(conn, &[(doc_id, branch, None, false)])
        .await
        .map_err(stored)?
        .get(&doc_id)
        .copied()
        .ok_or_else(|| corrupt(format!("{doc_id} has no row after it was locked")))?;
    let (snapshot, chunks) = docs_store::load_bytes(conn, &doc_id)
        .await
        .map_err(stored)?
        .unwrap_or_default();
    let intents = intents.to_vec();
    let (write, heads) = tokio::task::spawn_blocking(move || {
        let mut doc = if snapshot.is_empty() {
            AutoCommit::new()
        } else {
            AutoCommit::load(&snapshot).map_err(|e| e.to_string())?
        };
        for chunk in &chunks {
            doc.load_incremental(chunk).map_err(|e| e.to_string())?;
        }
        let before = doc.get_heads();
        for intent in &intents {
            doc::put_intent(&mut doc, chain, branch, intent).map_err(|e| e.to_string())?;
        }
        doc.commit();
        let chunk = doc.save_after(&before);
        let write = if locked.compaction_due(chunk.len()) {
            DocWrite::Snapshot(doc.save())
        } else {
            DocWrite::Append(chunk)
        };
        let heads: Vec<u8> = doc.get_heads().iter().flat_map(|h| h.0).collect();
        Ok::<_, String>((write, heads))
    })
    .await
    .map_err(|e| corrupt(e.to_string()))?
    .map_err(corrupt)?;
    docs_store::write(conn, &doc_id, locked, &write, &heads)
        .await
        .map_err(stored)?;
    Ok(doc_id)
}

/// Records a refused request (best effort: the refusal is returned either way).
async fn audit_refusal(pool: &PgPool, request: &IntentRequest, actor: &Actor, error: &IntentError) {
    let scope: Option<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT d.branch_id, b.chain_id FROM devices d JOIN branches b ON b.id = d.branch_id
         WHERE d.id = $1",
    )
    .bind(request.device.as_uuid())
    .fetch_optional(pool)
    .await
    .ok()
    .flatten();
    let result = sqlx::query(
        "INSERT INTO audit_log (actor_kind, actor_id, chain_id, branch_id, action, target, detail)
         VALUES ($1, $2, $3, $4, 'intent.refused', $5, $6)",
    )
    .bind(actor.kind.as_str())
    .bind(
        actor
            .name
            .chars()
            .take(CREATED_BY_LEN_MAX)
            .collect::<String>(),
    )
    .bind(scope.map(|s| s.1))
    .bind(request.branch.map(|b| *b.as_uuid()).or(scope.map(|s| s.0)))
    .bind(format!("device/{}", request.device))
    .bind(json!({
        "kind": request.kind.as_str(),
        "post": request.kind.post(),
        "reason": error.to_string(),
    }))
    .execute(pool)
    .await;
    if let Err(error) = result {
        tracing::error!(%error, "writing the audit log failed");
    }
}

const SELECT: &str =
    "SELECT i.id, i.chain_id, i.branch_id, b.branch_code, i.device_id, d.device_name,
        i.kind, i.post, i.payload, i.status, i.outcome_detail, i.outcome_at, i.created_by,
        i.created_at, i.expires_at, i.updated_at
    FROM intents i JOIN branches b ON b.id = i.branch_id JOIN devices d ON d.id = i.device_id";

fn from_row(row: &sqlx::postgres::PgRow) -> Result<Intent, IntentError> {
    let branch = BranchId::from_uuid(row.get("branch_id"));
    let corrupt = |reason: String| IntentError::Corrupt { branch, reason };
    let kind_name: String = row.get("kind");
    let post: Option<i32> = row.get("post");
    let post = post
        .map(|p| u16::try_from(p).map_err(|_| corrupt(format!("post {p} out of range"))))
        .transpose()?;
    let payload: serde_json::Value = row.get("payload");
    let need_post = || post.ok_or_else(|| corrupt(format!("a {kind_name} intent has no post")));
    let text = |key: &str| {
        payload[key]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| corrupt(format!("a {kind_name} intent has no {key}")))
    };
    let kind = match kind_name.as_str() {
        doc::keys::kind::UNLOCK_POST => IntentKind::UnlockPost { post: need_post()? },
        doc::keys::kind::OUT_OF_SERVICE => IntentKind::OutOfService { post: need_post()? },
        doc::keys::kind::IN_SERVICE => IntentKind::InService { post: need_post()? },
        doc::keys::kind::FORCE_RETURN => IntentKind::ForceReturn { post: need_post()? },
        doc::keys::kind::SET_RENTAL_MINUTES => IntentKind::SetRentalMinutes {
            minutes: payload[doc::keys::intent::MINUTES]
                .as_u64()
                .and_then(|m| u32::try_from(m).ok())
                .ok_or_else(|| corrupt("a set_rental_minutes intent has no minutes".into()))?,
        },
        doc::keys::kind::NOTE => IntentKind::Note {
            post,
            text: text(doc::keys::intent::TEXT)?,
        },
        doc::keys::kind::ASSIGN_CART => IntentKind::AssignCart {
            post,
            phone: text(doc::keys::intent::PHONE)?,
        },
        doc::keys::kind::SET_FIRMWARE => IntentKind::SetFirmware {
            version: text(doc::keys::intent::VERSION)?,
        },
        doc::keys::kind::SET_OTP_POLICY => IntentKind::SetOtpPolicy {
            when_sms_unavailable: doc::OtpFallback::parse(&text(
                doc::keys::intent::WHEN_SMS_UNAVAILABLE,
            )?)
            .ok_or_else(|| corrupt("a set_otp_policy intent has an unknown policy".into()))?,
        },
        doc::keys::kind::SET_LANGUAGE => IntentKind::SetLanguage {
            language: doc::KioskLanguage::parse(&text(doc::keys::intent::LANGUAGE)?)
                .ok_or_else(|| corrupt("a set_language intent has an unknown language".into()))?,
        },
        other => return Err(corrupt(format!("unknown intent kind {other:?}"))),
    };
    let status: String = row.get("status");
    Ok(Intent {
        id: IntentId::from_uuid(row.get("id")),
        chain: ChainId::from_uuid(row.get("chain_id")),
        branch,
        branch_code: row.get("branch_code"),
        device: DeviceId::from_uuid(row.get("device_id")),
        device_name: row.get("device_name"),
        kind,
        status: IntentStatus::parse(&status).map_err(|e| corrupt(e.to_string()))?,
        outcome_detail: row.get("outcome_detail"),
        outcome_at: row.get("outcome_at"),
        created_by: row.get("created_by"),
        created_at: row.get("created_at"),
        expires_at: row.get("expires_at"),
        updated_at: row.get("updated_at"),
    })
}

/// One intent.
pub async fn get(pool: &PgPool, id: IntentId) -> Result<Intent, IntentError> {
    let row = sqlx::query(&format!("{SELECT} WHERE i.id = $1"))
        .bind(id.as_uuid())
        .fetch_optional(pool)
        .await
        .map_err(db("reading the intent"))?
        .ok_or(IntentError::UnknownIntent(id))?;
    from_row(&row)
}

/// Intents matching `filter`, newest first.
pub async fn list(pool: &PgPool, filter: &IntentFilter) -> Result<Vec<Intent>, IntentError> {
    let limit = filter.limit.unwrap_or(LIST_MAX).clamp(0, LIST_MAX);
    let rows = sqlx::query(&format!(
        "{SELECT}
         WHERE ($1::uuid IS NULL OR i.branch_id = $1)
           AND ($2::uuid IS NULL OR i.device_id = $2)
           AND ($3::text IS NULL OR i.status = $3)
         ORDER BY i.created_at DESC, i.id DESC LIMIT $4"
    ))
    .bind(filter.branch.map(|b| *b.as_uuid()))
    .bind(filter.device.map(|d| *d.as_uuid()))
    .bind(filter.status.map(IntentStatus::as_str))
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(db("listing intents"))?;
    rows.iter().map(from_row).collect()
}

/// A branch by its id or its code (`branches.branch_code`).
pub async fn resolve_branch(pool: &PgPool, text: &str) -> Result<BranchId, IntentError> {
    let id: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM branches WHERE id::text = lower($1) OR branch_code = $1",
    )
    .bind(text.trim())
    .fetch_optional(pool)
    .await
    .map_err(db("finding the branch"))?;
    id.map(BranchId::from_uuid)
        .ok_or_else(|| IntentError::UnknownBranch(text.chars().take(64).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_lists_read_as_ranges() {
        assert_eq!(ranges(&[]), "none");
        assert_eq!(ranges(&[1, 2, 3, 5, 7, 8]), "1-3, 5, 7-8");
        assert_eq!(ranges(&[33]), "33");
    }

    #[test]
    fn expiries_parse_within_their_range() {
        assert_eq!(parse_expires_in("1h").ok(), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_expires_in(" 90m ").ok(),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(
            parse_expires_in("30d").ok(),
            Some(Duration::from_secs(30 * 24 * 3600))
        );
        for bad in [
            "",
            "h",
            "59s",
            "31d",
            "1w",
            "-1h",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(
                matches!(parse_expires_in(bad), Err(IntentError::BadExpiry)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn statuses_round_trip() {
        for status in [
            IntentStatus::Pending,
            IntentStatus::Applied,
            IntentStatus::Failed,
            IntentStatus::Expired,
        ] {
            assert_eq!(IntentStatus::parse(status.as_str()).ok(), Some(status));
        }
        assert!(IntentStatus::parse("done").is_err());
    }
}
