//! The hub's certificate authorities: the platform CA (signs the hub's server certificate) and
//! one CA per chain (signs that chain's device certificates), created on first need and kept in
//! Postgres, plus signing device certificate requests and revoking devices.
//!
//! # Where the keys live
//!
//! The hub keeps no state outside Postgres, so the CA keys and the hub's key are stored there
//! as PEM (`certificate_authorities.key_pem`, `hub_identity.key_pem`). Anyone who can read
//! those columns can mint certificates for any device of any chain: grant them to the hub's
//! role only and encrypt backups. A KMS or HSM plugs in at [`StoredCa::issuer`]: replace the
//! `KeyPair` read from `key_pem` by an `rcgen::SigningKey` that asks the KMS to sign, and
//! store the KMS key reference instead of the PEM.
//!
//! Creation is idempotent and race-safe across hub processes: each one generates a candidate,
//! `INSERT … ON CONFLICT DO NOTHING`, then reads back whichever row won.

use std::time::{SystemTime, UNIX_EPOCH};

use cartwise_schema::{ChainId, DeviceId};
use cartwise_sync_core::identity::{
    self, CertPemError, PeerIdentity, TlsSetupError, certs_from_pem, inspect_certificate,
};
use rand::Rng;
use rcgen::{CertificateSigningRequestParams, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sqlx::PgPool;

mod revoke;
mod store;

pub use revoke::{
    ConnectRefusal, RevokeOutcome, check_device_allowed, revoke_device, revoked_among,
};
pub use store::{
    load_chain_cas, load_or_create_chain_ca, load_or_create_hub_identity,
    load_or_create_platform_ca,
};

/// Largest certificate request accepted, in bytes of PEM.
pub const CSR_PEM_LEN_MAX: usize = 8 * 1024;

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Postgres failed; the operation can be retried.
    #[error("database error during {what}: {source}; is Postgres up and migrated?")]
    Db {
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A stored certificate or key does not decode (the row was damaged or edited by hand).
    #[error(
        "the stored {what} is damaged ({source}); restore certificate_authorities / hub_identity from a backup"
    )]
    Stored {
        /// Which stored item.
        what: &'static str,
        /// Why it does not decode.
        #[source]
        source: CertPemError,
    },
    /// The device's certificate request was refused.
    #[error(
        "the certificate request is invalid ({0}); the device must send a PEM PKCS#10 request signed by its new key"
    )]
    BadCsr(String),
    /// rcgen could not build or sign a certificate.
    #[error("cannot issue the certificate: {0}")]
    Sign(#[from] rcgen::Error),
    /// Certificate contents could not be built.
    #[error(transparent)]
    Params(#[from] CertPemError),
    /// The TLS configuration could not be built from the stored material.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

impl PkiError {
    pub(crate) fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self::Db { what, source }
    }
}

/// A CA as stored: its certificate and key (PEM).
#[derive(Clone)]
pub struct StoredCa {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    key_pem: String,
    /// The CA certificate, DER.
    pub cert_der: CertificateDer<'static>,
}

impl std::fmt::Debug for StoredCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCa")
            .field("sha256", &self.sha256_hex())
            .finish_non_exhaustive()
    }
}

impl StoredCa {
    fn from_pem(what: &'static str, cert_pem: String, key_pem: String) -> Result<Self, PkiError> {
        let cert_der = first_cert(what, &cert_pem)?;
        Ok(Self {
            cert_pem,
            key_pem,
            cert_der,
        })
    }

    /// SHA-256 of the CA certificate (what devices pin at enrollment), lowercase hex.
    pub fn sha256_hex(&self) -> String {
        identity::sha256_hex(&self.cert_der)
    }

    /// The signer of this CA. The KMS seam: see the module documentation.
    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        Ok(Issuer::from_ca_cert_der(&self.cert_der, key)?)
    }
}

/// The hub's server identity: certificate chain (hub certificate, platform CA) and key.
pub struct HubIdentity {
    /// Hub certificate then platform CA, as the hub presents them.
    pub chain: Vec<CertificateDer<'static>>,
    /// The hub's private key.
    pub key: PrivateKeyDer<'static>,
    /// The platform CA.
    pub platform_ca: StoredCa,
}

impl std::fmt::Debug for HubIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubIdentity")
            .field("platform_ca", &self.platform_ca)
            .finish_non_exhaustive()
    }
}

/// A certificate just issued to a device.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// Device certificate then chain CA, PEM.
    pub cert_chain_pem: String,
    /// Serial, lowercase hex.
    pub serial_hex: String,
    /// End of validity, Unix seconds.
    pub not_after_unix: i64,
}

fn first_cert(what: &'static str, pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    certs_from_pem(pem)
        .map_err(|source| PkiError::Stored { what, source })?
        .into_iter()
        .next()
        .ok_or(PkiError::Stored {
            what,
            source: CertPemError::NoCertificate,
        })
}

/// Seconds since the Unix epoch by the hub's clock (the trusted clock of the system).
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// 16 random bytes, positive as a DER integer and never starting with a zero byte.
fn random_serial() -> [u8; 16] {
    let mut serial = [0u8; 16];
    rand::rng().fill_bytes(&mut serial);
    serial[0] = (serial[0] & 0x7f) | 0x01;
    serial
}

/// Signs the public key of `csr_pem` into a certificate for `identity` with the chain CA `ca`.
/// Only the key (and the request's own signature, proving possession) is taken from the
/// request: the identity is the caller's, from a consumed enrollment code or a verified
/// certificate.
pub fn sign_device_csr(
    ca: &StoredCa,
    csr_pem: &str,
    identity: &PeerIdentity,
    now_unix: i64,
) -> Result<IssuedCert, PkiError> {
    if csr_pem.len() > CSR_PEM_LEN_MAX {
        return Err(PkiError::BadCsr(format!(
            "{} bytes, more than {CSR_PEM_LEN_MAX}",
            csr_pem.len()
        )));
    }
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|error| PkiError::BadCsr(error.to_string()))?;
    let params = identity::device_cert_params(identity, &random_serial(), now_unix)?;
    let cert = params.signed_by(&csr.public_key, &ca.issuer()?)?;
    let info = inspect_certificate(cert.der())
        .map_err(|error| PkiError::BadCsr(format!("issued an unreadable certificate: {error}")))?;
    Ok(IssuedCert {
        cert_chain_pem: format!("{}{}", cert.pem(), ca.cert_pem),
        serial_hex: info.serial_hex,
        not_after_unix: info.not_after_unix,
    })
}

/// Issues a certificate to `identity` for the key in `csr_pem` and records it
/// (`device_certificates`), creating the chain's CA on first need.
pub async fn issue_device_cert(
    pool: &PgPool,
    identity: &PeerIdentity,
    csr_pem: &str,
) -> Result<IssuedCert, PkiError> {
    let ca = load_or_create_chain_ca(pool, identity.chain).await?;
    let issued = sign_device_csr(&ca, csr_pem, identity, unix_now())?;
    record_issued(pool, identity.device, identity.chain, &issued).await?;
    Ok(issued)
}

/// Records an issued certificate, so the hub can refuse serials it never issued or revoked.
pub async fn record_issued(
    executor: impl sqlx::PgExecutor<'_>,
    device: DeviceId,
    chain: ChainId,
    issued: &IssuedCert,
) -> Result<(), PkiError> {
    sqlx::query(
        "INSERT INTO device_certificates (serial, device_id, chain_id, not_after) \
         VALUES ($1, $2, $3, to_timestamp($4))",
    )
    .bind(&issued.serial_hex)
    .bind(device.as_uuid())
    .bind(chain.as_uuid())
    .bind(issued.not_after_unix as f64)
    .execute(executor)
    .await
    .map_err(PkiError::db("recording an issued certificate"))?;
    Ok(())
}
