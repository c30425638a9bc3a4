//! Enrolling devices: an admin creates a device in a branch and gets a one-time, expiring code;
//! the Pi trades the code and a certificate request for a certificate, exactly once.
//!
//! Codes are 20 characters of Crockford's base 32 (100 random bits; look-alikes read alike),
//! shown in groups of four: `K7Q2-9XWM-…`. Only their SHA-256 is stored.

use std::time::Duration;

use cartwise_schema::{BranchId, ChainId, DeviceId};
use cartwise_sync_core::identity::PeerIdentity;
use chrono::{DateTime, Utc};
use rand::Rng;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};

use crate::pki::{self, IssuedCert, PkiError};

/// How long a code is valid unless the admin says otherwise.
pub const CODE_TTL_DEFAULT: Duration = Duration::from_secs(24 * 3600);
/// The longest validity an admin may give a code.
pub const CODE_TTL_MAX: Duration = Duration::from_secs(30 * 24 * 3600);
/// Symbols of a code: Crockford's base 32 (no I, L, O or U; see `EnrollmentCode::parse`).
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters of a code (5 bits each: 100 bits).
const CODE_LEN: usize = 20;
/// Characters per group when shown.
const CODE_GROUP_LEN: usize = 4;

/// Why enrollment or device administration failed. The messages go to admins and technicians.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// No branch has this code.
    #[error("no branch has the code {0:?}; list branches in the dashboard or the world file")]
    UnknownBranch(String),
    /// No device has this id.
    #[error("no device has the id {0}; see `cartwise-hub device list`")]
    UnknownDevice(DeviceId),
    /// The code is not one the hub issued (or was mistyped).
    #[error("unknown enrollment code: check it was typed correctly, or ask an admin for a new one")]
    UnknownCode,
    /// The code was already used.
    #[error(
        "this enrollment code was already used at {0}; ask an admin for a new one (`cartwise-hub device code DEVICE_ID`)"
    )]
    UsedCode(DateTime<Utc>),
    /// The code expired.
    #[error("this enrollment code expired at {0}; ask an admin for a new one")]
    ExpiredCode(DateTime<Utc>),
    /// The device the code was for has been revoked.
    #[error("the device of this code was revoked; create a new device")]
    DeviceRevoked,
    /// The code's text is not a code (wrong length or symbols).
    #[error("malformed enrollment code: expected 20 characters like K7Q2-9XWM-AB3C-DE4F-GH5J")]
    MalformedCode,
    /// The requested expiry is out of range.
    #[error("the code expiry must be between 1 minute and 30 days, written like 90m, 24h or 7d")]
    BadExpiry,
    /// A device name is required.
    #[error("the device name must be 1 to 255 characters")]
    BadName,
    /// Certificate work failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
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

fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> EnrollError {
    move |source| EnrollError::Db { what, source }
}

/// A one-time enrollment code in canonical form (20 symbols, no separators).
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentCode(String);

impl std::fmt::Debug for EnrollmentCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnrollmentCode(…)")
    }
}

impl EnrollmentCode {
    /// A fresh random code: 20 symbols of 5 random bits each.
    pub fn generate() -> Self {
        let mut bytes = [0u8; CODE_LEN];
        rand::rng().fill_bytes(&mut bytes);
        Self(
            bytes
                .iter()
                .map(|byte| CODE_ALPHABET[usize::from(byte & 31)] as char)
                .collect(),
        )
    }

    /// Parses what a person typed: case, spaces and hyphens do not matter, and the look-alikes
    /// O, I and L read as 0, 1 and 1 (Crockford's base 32).
    pub fn parse(text: &str) -> Result<Self, EnrollError> {
        let canonical: String = text
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                other => other,
            })
            .collect();
        if canonical.len() != CODE_LEN || !canonical.bytes().all(|b| CODE_ALPHABET.contains(&b)) {
            return Err(EnrollError::MalformedCode);
        }
        Ok(Self(canonical))
    }

    /// The code in groups of four, as shown to people: `K7Q2-9XWM-…`.
    pub fn grouped(&self) -> String {
        self.0
            .as_bytes()
            .chunks(CODE_GROUP_LEN)
            .map(|group| String::from_utf8_lossy(group).into_owned())
            .collect::<Vec<_>>()
            .join("-")
    }

    /// SHA-256 of the canonical form: what the database stores.
    fn hash(&self) -> Vec<u8> {
        Sha256::digest(self.0.as_bytes()).to_vec()
    }
}

/// A device just created (or re-issued a code) and its code.
#[derive(Debug, Clone)]
pub struct NewEnrollment {
    /// The device.
    pub device: DeviceId,
    /// Its branch.
    pub branch: BranchId,
    /// Its chain.
    pub chain: ChainId,
    /// The one-time code.
    pub code: EnrollmentCode,
    /// When the code stops working.
    pub expires_at: DateTime<Utc>,
}

/// Parses a code lifetime such as `24h`, `90m`, `7d` or `3600s`.
pub fn parse_ttl(text: &str) -> Result<Duration, EnrollError> {
    let text = text.trim();
    let split = text.len().saturating_sub(1);
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| EnrollError::BadExpiry)?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 24 * 3600,
        _ => return Err(EnrollError::BadExpiry),
    };
    let ttl = Duration::from_secs(number.saturating_mul(unit_secs));
    check_ttl(ttl)?;
    Ok(ttl)
}

fn check_ttl(ttl: Duration) -> Result<i64, EnrollError> {
    if ttl < Duration::from_secs(60) || ttl > CODE_TTL_MAX {
        return Err(EnrollError::BadExpiry);
    }
    i64::try_from(ttl.as_secs()).map_err(|_| EnrollError::BadExpiry)
}

/// Creates a device named `name` in the branch `branch_code` and a code valid for `ttl`.
pub async fn add_device(
    pool: &PgPool,
    branch_code: &str,
    name: &str,
    ttl: Duration,
) -> Result<NewEnrollment, EnrollError> {
    let ttl_secs = check_ttl(ttl)?;
    if name.trim().is_empty() || name.len() > 255 {
        return Err(EnrollError::BadName);
    }
    let mut tx = pool.begin().await.map_err(db("adding a device"))?;
    let row = sqlx::query("SELECT id, chain_id FROM branches WHERE branch_code = $1")
        .bind(branch_code)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("finding the branch"))?
        .ok_or_else(|| EnrollError::UnknownBranch(branch_code.to_owned()))?;
    let (branch, chain) = (
        BranchId::from_uuid(row.get(0)),
        ChainId::from_uuid(row.get(1)),
    );
    let device = DeviceId::from_uuid(uuid::Uuid::now_v7());
    sqlx::query("INSERT INTO devices (id, branch_id, device_name) VALUES ($1, $2, $3)")
        .bind(device.as_uuid())
        .bind(branch.as_uuid())
        .bind(name.trim())
        .execute(&mut *tx)
        .await
        .map_err(db("adding a device"))?;
    let (code, expires_at) = insert_code(&mut tx, device, branch, chain, ttl_secs).await?;
    tx.commit().await.map_err(db("adding a device"))?;
    Ok(NewEnrollment {
        device,
        branch,
        chain,
        code,
        expires_at,
    })
}

/// A new code for an existing, unrevoked device (e.g. its SD card was replaced). Earlier
/// unused codes of the device stop working.
pub async fn reissue_code(
    pool: &PgPool,
    device: DeviceId,
    ttl: Duration,
) -> Result<NewEnrollment, EnrollError> {
    let ttl_secs = check_ttl(ttl)?;
    let mut tx = pool.begin().await.map_err(db("re-issuing a code"))?;
    let row = sqlx::query(
        "SELECT d.branch_id, b.chain_id, d.revoked_at IS NOT NULL FROM devices d \
         JOIN branches b ON b.id = d.branch_id WHERE d.id = $1 FOR UPDATE OF d",
    )
    .bind(device.as_uuid())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db("finding the device"))?
    .ok_or(EnrollError::UnknownDevice(device))?;
    if row.get::<bool, _>(2) {
        return Err(EnrollError::DeviceRevoked);
    }
    let (branch, chain) = (
        BranchId::from_uuid(row.get(0)),
        ChainId::from_uuid(row.get(1)),
    );
    sqlx::query(
        "UPDATE enrollment_codes SET expires_at = least(expires_at, now()) \
         WHERE device_id = $1 AND used_at IS NULL",
    )
    .bind(device.as_uuid())
    .execute(&mut *tx)
    .await
    .map_err(db("voiding earlier codes"))?;
    let (code, expires_at) = insert_code(&mut tx, device, branch, chain, ttl_secs).await?;
    tx.commit().await.map_err(db("re-issuing a code"))?;
    Ok(NewEnrollment {
        device,
        branch,
        chain,
        code,
        expires_at,
    })
}

async fn insert_code(
    tx: &mut sqlx::PgConnection,
    device: DeviceId,
    branch: BranchId,
    chain: ChainId,
    ttl_secs: i64,
) -> Result<(EnrollmentCode, DateTime<Utc>), EnrollError> {
    let code = EnrollmentCode::generate();
    let expires_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO enrollment_codes (code_hash, device_id, chain_id, branch_id, expires_at) \
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) RETURNING expires_at",
    )
    .bind(code.hash())
    .bind(device.as_uuid())
    .bind(chain.as_uuid())
    .bind(branch.as_uuid())
    .bind(ttl_secs as f64)
    .fetch_one(&mut *tx)
    .await
    .map_err(db("storing the enrollment code"))?;
    Ok((code, expires_at))
}

/// A successful enrollment.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// Who the device is now.
    pub identity: PeerIdentity,
    /// Its certificate.
    pub issued: IssuedCert,
}

/// Trades `code_text` and a certificate request for a certificate, exactly once: the code is
/// consumed, the certificate issued and recorded in one transaction, so a request that fails
/// (a bad CSR) leaves the code usable, and two concurrent uses cannot both succeed.
pub async fn enroll(
    pool: &PgPool,
    code_text: &str,
    csr_pem: &str,
) -> Result<Enrolled, EnrollError> {
    let code = EnrollmentCode::parse(code_text).map_err(|_| EnrollError::UnknownCode)?;
    let mut tx = pool.begin().await.map_err(db("enrolling"))?;
    let row = sqlx::query(
        "UPDATE enrollment_codes SET used_at = now() \
         WHERE code_hash = $1 AND used_at IS NULL AND expires_at > now() \
         RETURNING device_id, branch_id, chain_id",
    )
    .bind(code.hash())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db("consuming the enrollment code"))?;
    let Some(row) = row else {
        drop(tx);
        return Err(classify_refused_code(pool, &code).await);
    };
    let identity = PeerIdentity::device(
        ChainId::from_uuid(row.get(2)),
        BranchId::from_uuid(row.get(1)),
        DeviceId::from_uuid(row.get(0)),
    );
    let revoked: Option<bool> =
        sqlx::query_scalar("SELECT revoked_at IS NOT NULL FROM devices WHERE id = $1")
            .bind(identity.device.as_uuid())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("checking the device"))?;
    if revoked != Some(false) {
        return Err(EnrollError::DeviceRevoked);
    }
    let ca = pki::load_or_create_chain_ca(pool, identity.chain).await?;
    let issued = pki::sign_device_csr(&ca, csr_pem, &identity, pki::unix_now())?;
    pki::record_issued(&mut *tx, identity.device, identity.chain, &issued).await?;
    tx.commit().await.map_err(db("enrolling"))?;
    Ok(Enrolled { identity, issued })
}

/// Why a code was not accepted: used, expired, or unknown.
async fn classify_refused_code(pool: &PgPool, code: &EnrollmentCode) -> EnrollError {
    let row = sqlx::query("SELECT used_at, expires_at FROM enrollment_codes WHERE code_hash = $1")
        .bind(code.hash())
        .fetch_optional(pool)
        .await;
    match row {
        Err(source) => EnrollError::Db {
            what: "checking the enrollment code",
            source,
        },
        Ok(None) => EnrollError::UnknownCode,
        Ok(Some(row)) => match row.get::<Option<DateTime<Utc>>, _>(0) {
            Some(used_at) => EnrollError::UsedCode(used_at),
            None => EnrollError::ExpiredCode(row.get(1)),
        },
    }
}

/// One line of `cartwise-hub device list`.
#[derive(Debug, Clone)]
pub struct DeviceRow {
    /// The device.
    pub device: DeviceId,
    /// Its name.
    pub name: String,
    /// Its branch's code.
    pub branch_code: String,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// End of its newest unrevoked certificate; `None` if it never enrolled.
    pub cert_not_after: Option<DateTime<Utc>>,
}

/// The devices of one branch (by code), or of all branches, by branch code and name.
pub async fn list_devices(
    pool: &PgPool,
    branch_code: Option<&str>,
) -> Result<Vec<DeviceRow>, EnrollError> {
    let rows = sqlx::query(
        "SELECT d.id, d.device_name, b.branch_code, d.revoked_at, \
                (SELECT max(c.not_after) FROM device_certificates c \
                 WHERE c.device_id = d.id AND c.revoked_at IS NULL) \
         FROM devices d JOIN branches b ON b.id = d.branch_id \
         WHERE $1::text IS NULL OR b.branch_code = $1 \
         ORDER BY b.branch_code, d.device_name, d.id",
    )
    .bind(branch_code)
    .fetch_all(pool)
    .await
    .map_err(db("listing devices"))?;
    if let (true, Some(code)) = (rows.is_empty(), branch_code) {
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM branches WHERE branch_code = $1")
                .bind(code)
                .fetch_optional(pool)
                .await
                .map_err(db("finding the branch"))?;
        if exists.is_none() {
            return Err(EnrollError::UnknownBranch(code.to_owned()));
        }
    }
    Ok(rows
        .into_iter()
        .map(|row| DeviceRow {
            device: DeviceId::from_uuid(row.get(0)),
            name: row.get(1),
            branch_code: row.get(2),
            revoked_at: row.get(3),
            cert_not_after: row.get(4),
        })
        .collect())
}

/// Why a revocation could not be written into the branch's intents document.
#[derive(Debug, thiserror::Error)]
pub enum RevocationDocError {
    /// Postgres failed; the revocation can be retried.
    #[error("database error during {what}: {source}")]
    Db {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// The stored intents document does not load or take the write.
    #[error("the intents document of branch {branch} is damaged: {reason}")]
    Corrupt { branch: BranchId, reason: String },
}

/// Records `device` as revoked at `at_ms` (Unix ms) in its branch's intents document
/// (`revoked`, [`cartwise_sync_core::intents::put_revoked`]) as the hub, under the document's
/// row lock, and announces the document on [`crate::intents::DOC_CHANGED_CHANNEL`] at commit,
/// like an intent. The branch's devices hold that document: a Pi that has it refuses the
/// revoked device's LAN sessions even while the hub is unreachable (its certificate still
/// verifies against the chain's CA). Runs inside the caller's transaction (the revocation's);
/// returns the document written, `None` for an unknown device.
pub async fn put_revoked_in_intents(
    conn: &mut sqlx::PgConnection,
    device: DeviceId,
    at_ms: i64,
) -> Result<Option<cartwise_sync_core::DocId>, RevocationDocError> {
    use crate::docs_store::{self, DocWrite};
    use cartwise_sync_core::DocId;
    let db = |what: &'static str| move |source| RevocationDocError::Db { what, source };
    let row = sqlx::query(
        "SELECT d.branch_id, b.chain_id FROM devices d JOIN branches b ON b.id = d.branch_id
         WHERE d.id = $1",
    )
    .bind(device.as_uuid())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db("finding the revoked device's branch"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let branch = BranchId::from_uuid(row.get(0));
    let chain = ChainId::from_uuid(row.get(1));
    let corrupt = |reason: String| RevocationDocError::Corrupt { branch, reason };
    let stored = |e: docs_store::DocsError| match e {
        docs_store::DocsError::Db(source) => RevocationDocError::Db {
            what: "writing the intents document",
            source,
        },
        other => corrupt(other.to_string()),
    };
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT doc_id FROM sync_documents WHERE branch_id = $1 AND device_id IS NULL",
    )
    .bind(branch.as_uuid())
    .fetch_all(&mut *conn)
    .await
    .map_err(db("finding the intents document"))?;
    let doc_id = ids
        .iter()
        .filter_map(|id| id.parse::<DocId>().ok())
        .filter(|id| matches!(id, DocId::BranchIntents { branch: b, .. } if *b == branch))
        .max_by_key(DocId::epoch)
        .unwrap_or(DocId::branch_intents(branch));
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
    let (write, heads) = tokio::task::spawn_blocking(move || {
        let mut doc = if snapshot.is_empty() {
            automerge::AutoCommit::new()
        } else {
            automerge::AutoCommit::load(&snapshot).map_err(|e| e.to_string())?
        };
        for chunk in &chunks {
            doc.load_incremental(chunk).map_err(|e| e.to_string())?;
        }
        let before = doc.get_heads();
        cartwise_sync_core::intents::put_revoked(&mut doc, chain, branch, device, at_ms)
            .map_err(|e| e.to_string())?;
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
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(crate::intents::DOC_CHANGED_CHANNEL)
        .bind(doc_id.to_string())
        .execute(&mut *conn)
        .await
        .map_err(db("announcing the intents document"))?;
    Ok(Some(doc_id))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn codes_are_grouped_and_parse_back_leniently() {
        let code = EnrollmentCode::generate();
        let shown = code.grouped();
        assert_eq!(shown.len(), 24);
        assert_eq!(shown.matches('-').count(), 4);
        assert_eq!(EnrollmentCode::parse(&shown).unwrap(), code);
        assert_eq!(EnrollmentCode::parse(&shown.to_lowercase()).unwrap(), code);
        let typed = "ABCD-EFGH-JKMN-PQRS-TVWO";
        assert_eq!(
            EnrollmentCode::parse(typed).unwrap(),
            EnrollmentCode::parse("abcdefghjkmnpqrstvw0").unwrap()
        );
        assert!(EnrollmentCode::parse("ABCD-EFGH").is_err());
        assert!(EnrollmentCode::parse("ABCD-EFGH-JKMN-PQRS-TVW!").is_err());
        assert_ne!(EnrollmentCode::generate(), code);
    }

    #[test]
    fn ttls_parse_with_units_and_bounds() {
        assert_eq!(parse_ttl("24h").unwrap(), CODE_TTL_DEFAULT);
        assert_eq!(parse_ttl("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(7 * 86400));
        for bad in ["", "h", "24", "10s", "31d", "-1h", "1y"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
