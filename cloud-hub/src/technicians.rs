//! Technicians on site, the hub's side: issuing technician credentials (one certificate per
//! branch, signed by the chain CA, for a key generated on the laptop), revoking technicians,
//! producing the hub-signed intents bundle a laptop carries to a Pi, and taking the Pis' facts
//! bundles a laptop pushes, which are merged through the normal merge path (`Merger::submit`)
//! exactly as if the Pi had synced itself.
//!
//! A pushed bundle is verified before anything is applied: its producer certificate chains to
//! the chain CA and is on record and unrevoked (as at connect), its signature verifies, it is
//! for a branch the pushing technician may carry, and every change in it is by the device's own
//! actor. A bundle at or below the producer's applied sequence (`bundle_high_water`) changes
//! nothing. Every refusal is audited with its reason.
//!
//! Revoking a technician stops new credentials; certificates already issued stay valid until
//! they expire (at most [`TECHNICIAN_HOURS_MAX`] hours), because an offline Pi cannot learn
//! of the revocation.

use std::sync::Arc;

use automerge::Automerge;
use cartwise_schema::{BranchId, ChainId, DeviceId, RentalId};
use cartwise_sync_core::bundle::{
    BundleBody, BundleDoc, BundleError, BundleKind, BundleLedgerAck, BundleSigner, Producer,
    decode_bundle, encode_bundle,
};
use cartwise_sync_core::facts::read_device_doc;
use cartwise_sync_core::identity::{
    PeerIdentity, Role, TECHNICIAN_HOURS_DEFAULT, TECHNICIAN_HOURS_MAX, TECHNICIAN_HOURS_MIN,
    certs_from_pem, inspect_certificate, technician_cert_params,
};
use cartwise_sync_core::message::Head;
use cartwise_sync_core::{DocId, DocSyncError, HubActors, PeerDocState};
use rand::Rng;
use rcgen::{CertificateSigningRequestParams, Issuer, KeyPair, SigningKey};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::merge::events::BranchEvents;
use crate::merge::{Access, Job, Merger, Work};
use crate::pki::{self, ConnectRefusal, PkiError};

pub mod cli;

/// Most sync round trips to merge one pushed document.
const MERGE_ROUNDS_MAX: usize = 64;
/// Most closed rentals acknowledged per device in one intents bundle.
const ACKS_PER_DEVICE_MAX: usize = cartwise_sync_core::message::body::LEDGER_ACK_RENTALS_MAX;

/// Why a technician operation failed. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum TechError {
    /// No such user.
    #[error("no user {0}; create it with `cartwise-hub user add --role technician`")]
    UnknownUser(String),
    /// The user is not a technician.
    #[error("user {0} is not a technician; only technicians get technician credentials")]
    NotTechnician(String),
    /// The user is disabled.
    #[error("user {0} is disabled; an admin must enable it first")]
    Disabled(String),
    /// The technician was revoked.
    #[error(
        "technician {0} is revoked and gets no new credentials; an admin must create a new technician user"
    )]
    Revoked(String),
    /// Asked for a branch outside the technician's scope, or none in scope.
    #[error("{0}")]
    Scope(String),
    /// Validity outside the allowed range.
    #[error("hours must be between {TECHNICIAN_HOURS_MIN} and {TECHNICIAN_HOURS_MAX}, not {0}")]
    Hours(u32),
    /// The certificate request is invalid.
    #[error(
        "the certificate request is invalid ({0}); send a PEM PKCS#10 request signed by the laptop's key"
    )]
    Csr(String),
    /// A bundle was refused.
    #[error("{0}")]
    Bundle(#[from] BundleError),
    /// The producing device may not deliver data (unknown, revoked, certificate revoked).
    #[error("{0}")]
    Device(String),
    /// A document did not merge.
    #[error("the bundle's document {doc} was not merged: {reason}")]
    Merge {
        /// The document.
        doc: DocId,
        /// Why.
        reason: String,
    },
    /// Certificates or keys.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// Postgres failed; retry.
    #[error("database error: {0}; is Postgres up and migrated?")]
    Db(#[from] sqlx::Error),
}

impl TechError {
    /// A short machine reason for the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownUser(_) => "unknown_user",
            Self::NotTechnician(_) => "not_technician",
            Self::Disabled(_) => "disabled",
            Self::Revoked(_) => "revoked",
            Self::Scope(_) => "scope",
            Self::Hours(_) => "hours",
            Self::Csr(_) => "csr",
            Self::Bundle(BundleError::BadSignature) => "bad_signature",
            Self::Bundle(BundleError::WrongScope { .. }) => "wrong_branch",
            Self::Bundle(_) => "bad_bundle",
            Self::Device(_) => "device_refused",
            Self::Merge { .. } => "merge_refused",
            Self::Pki(_) | Self::Db(_) => "internal",
        }
    }
}

/// One device of a branch, for the laptop's list.
#[derive(Debug, Clone, Serialize)]
pub struct TechDevice {
    /// The device.
    pub device_id: Uuid,
    /// Its name.
    pub name: String,
    /// The address it last connected from.
    pub last_ip: Option<String>,
}

/// One branch of an issued credential.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedBranch {
    /// The branch.
    pub branch_id: Uuid,
    /// Its code.
    pub code: String,
    /// Its name.
    pub name: String,
    /// The technician certificate for it (PEM).
    pub cert_pem: String,
    /// Its serial (hex).
    pub serial_hex: String,
    /// The branch's devices.
    pub devices: Vec<TechDevice>,
}

/// What `issue` answers (and the laptop stores as `credential.json`, with the hub URL).
#[derive(Debug, Clone, Serialize)]
pub struct IssuedCredential {
    /// The technician's user id.
    pub technician_id: Uuid,
    /// The login.
    pub login: String,
    /// The chain.
    pub chain_id: Uuid,
    /// Issued at, Unix ms.
    pub issued_at_ms: i64,
    /// Expires at, Unix ms.
    pub not_after_ms: i64,
    /// One certificate per branch.
    pub branches: Vec<IssuedBranch>,
    /// The chain CA (PEM).
    pub chain_ca_pem: String,
    /// The platform CA (PEM).
    pub platform_ca_pem: String,
}

/// A technician user as the hub holds it.
#[derive(Debug, Clone)]
pub struct Technician {
    /// User id.
    pub user_id: Uuid,
    /// Login.
    pub login: String,
    /// Chain.
    pub chain: Uuid,
    /// Active.
    pub active: bool,
    /// Revoked as a technician.
    pub revoked: bool,
    /// Branches in scope.
    pub branches: Vec<Uuid>,
}

/// Looks a technician up by login or id.
pub async fn technician(pool: &PgPool, who: &str) -> Result<Technician, TechError> {
    let id = Uuid::parse_str(who).ok();
    let row = sqlx::query(
        "SELECT id, login, role, chain_id, active, technician_revoked_at IS NOT NULL \
         FROM users WHERE login = $1 OR id = $2",
    )
    .bind(who)
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| TechError::UnknownUser(who.to_owned()))?;
    let login: String = row.get(1);
    let role: String = row.get(2);
    if role != "technician" {
        return Err(TechError::NotTechnician(login));
    }
    let user_id: Uuid = row.get(0);
    let chain: Option<Uuid> = row.get(3);
    let chain =
        chain.ok_or_else(|| TechError::Scope(format!("technician {login} has no chain")))?;
    let mut branches: Vec<Uuid> = sqlx::query_scalar(
        "SELECT ub.branch_id FROM user_branches ub JOIN branches b ON b.id = ub.branch_id \
         WHERE ub.user_id = $1 AND b.chain_id = $2 ORDER BY b.branch_code",
    )
    .bind(user_id)
    .bind(chain)
    .fetch_all(pool)
    .await?;
    if branches.is_empty() {
        // A technician scoped to no branch list has the whole chain (at issue time).
        branches =
            sqlx::query_scalar("SELECT id FROM branches WHERE chain_id = $1 ORDER BY branch_code")
                .bind(chain)
                .fetch_all(pool)
                .await?;
    }
    Ok(Technician {
        user_id,
        login,
        chain,
        active: row.get(4),
        revoked: row.get(5),
        branches,
    })
}

/// A chain CA's certificate (PEM, DER) and signing key, created on first need.
struct ChainKey {
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
}

async fn chain_key(pool: &PgPool, chain: ChainId) -> Result<ChainKey, TechError> {
    let ca = pki::load_or_create_chain_ca(pool, chain).await?;
    let key_pem: String =
        sqlx::query_scalar("SELECT key_pem FROM certificate_authorities WHERE chain_id = $1")
            .bind(chain.as_uuid())
            .fetch_one(pool)
            .await?;
    let key = KeyPair::from_pem(&key_pem).map_err(PkiError::Sign)?;
    Ok(ChainKey {
        cert_pem: ca.cert_pem.clone(),
        cert_der: ca.cert_der.to_vec(),
        key,
    })
}

struct CaSigner<'a>(&'a KeyPair);

impl BundleSigner for CaSigner<'_> {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.0.sign(message).map_err(|error| error.to_string())
    }
}

fn random_serial() -> [u8; 16] {
    let mut serial = [0u8; 16];
    rand::rng().fill_bytes(&mut serial);
    serial[0] = (serial[0] & 0x7f) | 0x01;
    serial
}

/// Issues a credential to technician `who` for `csr_pem`'s key: one certificate per branch
/// asked for (`None`: every branch in scope), valid `hours`. Recorded and audited by `actor`.
pub async fn issue(
    pool: &PgPool,
    who: &str,
    csr_pem: &str,
    hours: Option<u32>,
    branches: Option<&[Uuid]>,
    actor: &str,
) -> Result<IssuedCredential, TechError> {
    let result = issue_inner(pool, who, csr_pem, hours, branches).await;
    match &result {
        Ok(issued) => {
            let serials: Vec<&str> = issued
                .branches
                .iter()
                .map(|b| b.serial_hex.as_str())
                .collect();
            audit(
                pool,
                "user",
                actor,
                Some(issued.chain_id),
                None,
                "technician.credential_issued",
                Some(&issued.technician_id.to_string()),
                json!({ "outcome": "allowed", "serials": serials, "not_after_ms": issued.not_after_ms }),
            )
            .await;
        }
        Err(error) => {
            audit(
                pool,
                "user",
                actor,
                None,
                None,
                "technician.credential_refused",
                Some(who),
                json!({ "outcome": "refused", "reason": error.reason(), "message": error.to_string() }),
            )
            .await;
        }
    }
    result
}

async fn issue_inner(
    pool: &PgPool,
    who: &str,
    csr_pem: &str,
    hours: Option<u32>,
    branches: Option<&[Uuid]>,
) -> Result<IssuedCredential, TechError> {
    let hours = hours.unwrap_or(TECHNICIAN_HOURS_DEFAULT);
    if !(TECHNICIAN_HOURS_MIN..=TECHNICIAN_HOURS_MAX).contains(&hours) {
        return Err(TechError::Hours(hours));
    }
    let tech = technician(pool, who).await?;
    if !tech.active {
        return Err(TechError::Disabled(tech.login));
    }
    if tech.revoked {
        return Err(TechError::Revoked(tech.login));
    }
    let wanted: Vec<Uuid> = match branches {
        Some(asked) if !asked.is_empty() => {
            if let Some(outside) = asked.iter().find(|b| !tech.branches.contains(b)) {
                return Err(TechError::Scope(format!(
                    "branch {outside} is not in technician {}'s scope; ask an admin to add it",
                    tech.login
                )));
            }
            asked.to_vec()
        }
        _ => tech.branches.clone(),
    };
    if wanted.is_empty() {
        return Err(TechError::Scope(format!(
            "technician {} has no branch in scope; ask an admin to assign branches",
            tech.login
        )));
    }
    if csr_pem.len() > pki::CSR_PEM_LEN_MAX {
        return Err(TechError::Csr(format!("{} bytes", csr_pem.len())));
    }
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|error| TechError::Csr(error.to_string()))?;
    let chain = ChainId::from_uuid(tech.chain);
    let ca = chain_key(pool, chain).await?;
    let issuer =
        Issuer::from_ca_cert_der(&ca.cert_der.clone().into(), ca.key).map_err(PkiError::Sign)?;
    let platform = pki::load_or_create_platform_ca(pool).await?;
    let now = pki::unix_now();
    let mut out = Vec::with_capacity(wanted.len());
    let mut tx = pool.begin().await?;
    let mut not_after_ms = 0;
    for branch in wanted {
        let row =
            sqlx::query("SELECT branch_code, name FROM branches WHERE id = $1 AND chain_id = $2")
                .bind(branch)
                .bind(tech.chain)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| TechError::Scope(format!("branch {branch} is not in the chain")))?;
        let identity = PeerIdentity {
            role: Role::Technician,
            chain,
            branch: BranchId::from_uuid(branch),
            device: DeviceId::from_uuid(tech.user_id),
        };
        let params = technician_cert_params(&identity, &random_serial(), now, hours)
            .map_err(PkiError::Params)?;
        let cert = params
            .signed_by(&csr.public_key, &issuer)
            .map_err(PkiError::Sign)?;
        let info = inspect_certificate(cert.der()).map_err(|error| {
            TechError::Csr(format!("issued an unreadable certificate: {error}"))
        })?;
        not_after_ms = info.not_after_unix * 1000;
        sqlx::query(
            "INSERT INTO technician_credentials (serial, user_id, chain_id, branch_id, not_after) \
             VALUES ($1, $2, $3, $4, to_timestamp($5))",
        )
        .bind(&info.serial_hex)
        .bind(tech.user_id)
        .bind(tech.chain)
        .bind(branch)
        .bind(info.not_after_unix as f64)
        .execute(&mut *tx)
        .await?;
        let devices = sqlx::query(
            "SELECT id, device_name, ip_address FROM devices \
             WHERE branch_id = $1 AND revoked_at IS NULL ORDER BY device_name",
        )
        .bind(branch)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|row| TechDevice {
            device_id: row.get(0),
            name: row.get(1),
            last_ip: row.get(2),
        })
        .collect();
        out.push(IssuedBranch {
            branch_id: branch,
            code: row.get(0),
            name: row.get(1),
            cert_pem: cert.pem(),
            serial_hex: info.serial_hex,
            devices,
        });
    }
    tx.commit().await?;
    Ok(IssuedCredential {
        technician_id: tech.user_id,
        login: tech.login,
        chain_id: tech.chain,
        issued_at_ms: now * 1000,
        not_after_ms,
        branches: out,
        chain_ca_pem: ca.cert_pem,
        platform_ca_pem: platform.cert_pem,
    })
}

/// Revokes technician `who`: no new credentials (issued ones expire). Audited.
pub async fn revoke(pool: &PgPool, who: &str, actor: &str) -> Result<Technician, TechError> {
    let tech = technician(pool, who).await?;
    sqlx::query(
        "UPDATE users SET technician_revoked_at = coalesce(technician_revoked_at, now()) WHERE id = $1",
    )
    .bind(tech.user_id)
    .execute(pool)
    .await?;
    audit(
        pool,
        "user",
        actor,
        Some(tech.chain),
        None,
        "technician.revoked",
        Some(&tech.user_id.to_string()),
        json!({ "login": tech.login }),
    )
    .await;
    Ok(Technician {
        revoked: true,
        ..tech
    })
}

/// One technician and its newest credential's expiry.
#[derive(Debug, Clone, Serialize)]
pub struct TechnicianRow {
    /// User id.
    pub user_id: Uuid,
    /// Login.
    pub login: String,
    /// Chain.
    pub chain_id: Option<Uuid>,
    /// Active user.
    pub active: bool,
    /// Revoked as technician.
    pub revoked: bool,
    /// Certificates issued.
    pub credentials: i64,
    /// The latest expiry of any issued certificate, Unix ms.
    pub latest_not_after_ms: Option<i64>,
}

/// Every technician user.
pub async fn list(pool: &PgPool) -> Result<Vec<TechnicianRow>, TechError> {
    let rows = sqlx::query(
        "SELECT u.id, u.login, u.chain_id, u.active, u.technician_revoked_at IS NOT NULL, \
                count(c.serial), (extract(epoch FROM max(c.not_after)) * 1000)::bigint \
         FROM users u LEFT JOIN technician_credentials c ON c.user_id = u.id \
         WHERE u.role = 'technician' GROUP BY u.id ORDER BY u.login",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| TechnicianRow {
            user_id: row.get(0),
            login: row.get(1),
            chain_id: row.get(2),
            active: row.get(3),
            revoked: row.get(4),
            credentials: row.get(5),
            latest_not_after_ms: row.get(6),
        })
        .collect())
}

/// Produces the hub-signed intents bundle of `branch`: its intents documents and the closed
/// rentals the hub holds per device (so an offline branch's live documents shrink), with the
/// branch's next sequence number.
pub async fn intents_bundle(
    pool: &PgPool,
    branch: BranchId,
    technician: Option<Uuid>,
) -> Result<Vec<u8>, TechError> {
    let chain: Uuid = sqlx::query_scalar("SELECT chain_id FROM branches WHERE id = $1")
        .bind(branch.as_uuid())
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| TechError::Scope(format!("no branch {branch}")))?;
    let chain = ChainId::from_uuid(chain);
    let listed = crate::docs_store::branch_docs(pool, branch)
        .await
        .map_err(|error| TechError::Merge {
            doc: DocId::branch_intents(branch),
            reason: error.to_string(),
        })?;
    let mut docs = Vec::new();
    let mut acks = Vec::new();
    for (doc, _) in listed {
        let document =
            crate::docs_store::load(pool, &doc)
                .await
                .map_err(|error| TechError::Merge {
                    doc,
                    reason: error.to_string(),
                })?;
        match doc {
            DocId::BranchIntents { .. } => docs.push(bundle_doc(doc, &document)),
            DocId::Device { device, .. } => {
                if let Some(ack) = held_closed(pool, device, &document).await? {
                    acks.push(ack);
                }
            }
        }
    }
    acks.truncate(cartwise_sync_core::bundle::BUNDLE_LEDGER_ACKS_MAX);
    docs.truncate(cartwise_sync_core::bundle::BUNDLE_DOCS_MAX);
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO intents_bundle_seq (branch_id, seq) VALUES ($1, 1) \
         ON CONFLICT (branch_id) DO UPDATE SET seq = intents_bundle_seq.seq + 1, updated_at = now() \
         RETURNING seq",
    )
    .bind(branch.as_uuid())
    .fetch_one(pool)
    .await?;
    let body = BundleBody {
        kind: BundleKind::Intents,
        chain,
        branch,
        producer: Producer::hub(),
        seq: u64::try_from(seq).unwrap_or(0),
        created_at_ms: pki::unix_now() * 1000,
        technician,
        docs,
        ledger_acks: acks,
        producer_cert: None,
    };
    let key = chain_key(pool, chain).await?;
    Ok(encode_bundle(&body, &CaSigner(&key.key))?)
}

fn bundle_doc(doc: DocId, document: &Automerge) -> BundleDoc {
    let mut heads: Vec<Head> = document.get_heads().into_iter().map(Head::from).collect();
    heads.sort();
    BundleDoc {
        doc,
        heads,
        data: document.save(),
    }
}

/// The closed rentals of a device document that Postgres holds.
async fn held_closed(
    pool: &PgPool,
    device: DeviceId,
    document: &Automerge,
) -> Result<Option<BundleLedgerAck>, TechError> {
    let facts = read_device_doc(document);
    let closed: Vec<Uuid> = facts
        .rentals
        .iter()
        .filter(|rental| !rental.status.is_open())
        .map(|rental| *rental.id.as_uuid())
        .collect();
    if closed.is_empty() {
        return Ok(None);
    }
    let held: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM rentals WHERE id = ANY($1) ORDER BY id")
            .bind(&closed)
            .fetch_all(pool)
            .await?;
    let rentals: Vec<RentalId> = held
        .into_iter()
        .filter_map(|id| RentalId::from_uuid(id).ok())
        .take(ACKS_PER_DEVICE_MAX)
        .collect();
    Ok((!rentals.is_empty()).then_some(BundleLedgerAck { device, rentals }))
}

/// Who pushes a bundle.
#[derive(Debug, Clone)]
pub struct Pusher {
    /// The user's id.
    pub user_id: Uuid,
    /// The login (audit actor).
    pub login: String,
    /// Branches the user may carry.
    pub branches: Vec<Uuid>,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushOutcome {
    /// Whether the bundle's documents were merged now.
    pub applied: bool,
    /// True when the bundle (or a later one of its producer) was applied before.
    pub replay: bool,
    /// The producing device.
    pub device: Uuid,
    /// The bundle's sequence.
    pub seq: u64,
    /// Documents merged.
    pub docs: usize,
    /// What happened, for people.
    pub message: String,
}

/// Verifies and merges a facts bundle pushed by `pusher`. Refusals are audited.
pub async fn push(pool: &PgPool, pusher: &Pusher, bytes: &[u8]) -> Result<PushOutcome, TechError> {
    let scope = decode_bundle(bytes).ok().map(|bundle| {
        (
            bundle.unverified_body().chain,
            bundle.unverified_body().branch,
        )
    });
    let result = push_inner(pool, pusher, bytes).await;
    let (chain, branch) = match scope {
        Some((chain, branch)) => (Some(*chain.as_uuid()), Some(*branch.as_uuid())),
        None => (None, None),
    };
    match &result {
        Ok(outcome) => {
            let action = if outcome.replay {
                "technician.push_replayed"
            } else {
                "technician.push"
            };
            audit(
                pool,
                "user",
                &pusher.login,
                chain,
                branch,
                action,
                Some(&outcome.device.to_string()),
                json!({ "outcome": "allowed", "seq": outcome.seq, "docs": outcome.docs, "applied": outcome.applied }),
            )
            .await;
        }
        Err(error) => {
            audit(
                pool,
                "user",
                &pusher.login,
                chain,
                branch,
                "technician.push_refused",
                None,
                json!({ "outcome": "refused", "reason": error.reason(), "message": error.to_string() }),
            )
            .await;
        }
    }
    result
}

async fn push_inner(
    pool: &PgPool,
    pusher: &Pusher,
    bytes: &[u8],
) -> Result<PushOutcome, TechError> {
    let bundle = decode_bundle(bytes)?;
    let claimed = bundle.unverified_body();
    if claimed.kind != BundleKind::Facts {
        return Err(
            BundleError::Inconsistent("only facts bundles are pushed to the hub".into()).into(),
        );
    }
    if !pusher.branches.contains(claimed.branch.as_uuid()) {
        return Err(TechError::Scope(format!(
            "the bundle is for branch {}, which {} may not carry; push it with a credential for that branch",
            claimed.branch, pusher.login
        )));
    }
    let ca = pki::load_or_create_chain_ca(pool, claimed.chain).await?;
    let (body, identity, serial) = bundle.verify_device_chain(&ca.cert_der, pki::unix_now())?;
    match pki::check_device_allowed(pool, &identity, &serial).await? {
        Ok(()) => {}
        Err(refusal) => return Err(TechError::Device(device_refusal(&identity, refusal))),
    }
    let actors = HubActors::for_chain(identity.chain);
    let mut documents = Vec::with_capacity(body.docs.len());
    for doc in &body.docs {
        documents.push((doc.doc, doc.load_checked(&actors)?));
    }
    let producer = body.producer.key();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO bundle_high_water (producer, kind, seq) VALUES ($1, 'facts', -1) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&producer)
    .execute(&mut *tx)
    .await?;
    let highest: i64 = sqlx::query_scalar(
        "SELECT seq FROM bundle_high_water WHERE producer = $1 AND kind = 'facts' FOR UPDATE",
    )
    .bind(&producer)
    .fetch_one(&mut *tx)
    .await?;
    let seq = i64::try_from(body.seq).unwrap_or(i64::MAX);
    let outcome = |applied: bool, replay: bool, message: String| PushOutcome {
        applied,
        replay,
        device: *identity.device.as_uuid(),
        seq: body.seq,
        docs: body.docs.len(),
        message,
    };
    if highest >= 0 && body.already_applied(u64::try_from(highest).ok()) {
        tx.rollback().await?;
        return Ok(outcome(
            false,
            true,
            format!(
                "already applied (the hub has applied up to {highest} from this device); nothing changed"
            ),
        ));
    }
    let merger = Merger::spawn(pool.clone(), Arc::new(BranchEvents::default()));
    for (doc, document) in documents {
        merge_doc(&merger, identity, doc, document).await?;
    }
    sqlx::query(
        "UPDATE bundle_high_water SET seq = $2, updated_at = now() \
         WHERE producer = $1 AND kind = 'facts'",
    )
    .bind(&producer)
    .bind(seq)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(outcome(
        true,
        false,
        format!("applied {} documents", body.docs.len()),
    ))
}

fn device_refusal(identity: &PeerIdentity, refusal: ConnectRefusal) -> String {
    format!(
        "device {} may not deliver data ({refusal:?}); its bundle is refused",
        identity.device
    )
}

/// Syncs one pushed document into the hub through the merge path, as the device would.
async fn merge_doc(
    merger: &Merger,
    peer: PeerIdentity,
    doc: DocId,
    mut document: Automerge,
) -> Result<(), TechError> {
    let actors = HubActors::for_chain(peer.chain);
    let failed = |reason: String| TechError::Merge { doc, reason };
    let sync_failed = |error: DocSyncError| TechError::Merge {
        doc,
        reason: error.to_string(),
    };
    let mut mine = PeerDocState::new(doc);
    let mut hub = PeerDocState::new(doc);
    for _ in 0..MERGE_ROUNDS_MAX {
        let Some(body) = mine.generate(&mut document).map_err(sync_failed)? else {
            return Ok(());
        };
        let done = merger
            .submit(Job {
                peer,
                doc,
                access: Access::Write,
                state: hub,
                work: Work::Receive(body),
            })
            .await;
        hub = done.state;
        let merged = done.outcome.map_err(|error| failed(error.to_string()))?;
        if let Some(reply) = merged.reply {
            mine.receive(&mut document, &reply, &actors)
                .map_err(sync_failed)?;
        }
    }
    Err(failed(format!(
        "not settled after {MERGE_ROUNDS_MAX} round trips"
    )))
}

/// The branches `user_id` may carry: a technician's scope (none once revoked), an admin's
/// scope; nothing for other roles.
pub async fn carry_scope(pool: &PgPool, user_id: Uuid) -> Result<Vec<Uuid>, TechError> {
    Ok(sqlx::query_scalar(
        "SELECT b.id FROM users u JOIN branches b ON \
            (u.role = 'platform_admin') OR \
            (u.chain_id = b.chain_id AND (u.role = 'chain_admin' \
              OR NOT EXISTS (SELECT 1 FROM user_branches x WHERE x.user_id = u.id) \
              OR EXISTS (SELECT 1 FROM user_branches x WHERE x.user_id = u.id AND x.branch_id = b.id))) \
         WHERE u.id = $1 AND u.active AND u.technician_revoked_at IS NULL \
           AND u.role IN ('technician', 'chain_admin', 'platform_admin')",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await?)
}

/// The chain CA certificate (PEM) of `chain`, for callers that only need to verify.
pub async fn chain_ca_pem(pool: &PgPool, chain: ChainId) -> Result<String, TechError> {
    let ca = pki::load_or_create_chain_ca(pool, chain).await?;
    // Decodes, so a damaged row is reported here rather than on a Pi.
    certs_from_pem(&ca.cert_pem).map_err(PkiError::Params)?;
    Ok(ca.cert_pem)
}

#[allow(clippy::too_many_arguments)]
async fn audit(
    pool: &PgPool,
    actor_kind: &str,
    actor_id: &str,
    chain: Option<Uuid>,
    branch: Option<Uuid>,
    action: &str,
    target: Option<&str>,
    detail: Value,
) {
    let result = sqlx::query(
        "INSERT INTO audit_log (actor_kind, actor_id, chain_id, branch_id, action, target, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(actor_kind)
    .bind(actor_id)
    .bind(chain)
    .bind(branch)
    .bind(action)
    .bind(target)
    .bind(detail)
    .execute(pool)
    .await;
    if let Err(error) = result {
        tracing::error!(%error, action, "writing the audit log failed");
    }
}
