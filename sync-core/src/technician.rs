//! Offline verification of a technician's credential: a certificate the chain CA signed for one
//! branch, checked by a Pi that cannot reach the hub against its own (corrected) clock.
//!
//! The chain of trust is the one devices use: the Pi already holds its chain's CA certificate.
//! The signature (and the client-authentication purpose) is checked by webpki; role, chain,
//! branch and validity window are checked here, so each refusal names its reason. Revoking a
//! technician at the hub stops new credentials; the short validity bounds the ones issued.

use std::sync::Arc;

use cartwise_schema::{BranchId, ChainId};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::{CertificateDer, UnixTime};
use uuid::Uuid;
use x509_parser::prelude::FromDer;

use crate::identity::{PeerIdentity, Role, to_hex};

/// What a verified technician credential grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TechnicianCredential {
    /// The chain whose CA signed it.
    pub chain: ChainId,
    /// The one branch it is valid for.
    pub branch: BranchId,
    /// The technician (the hub user's id).
    pub technician: Uuid,
    /// Start of validity, Unix milliseconds.
    pub not_before_ms: i64,
    /// End of validity, Unix milliseconds.
    pub not_after_ms: i64,
    /// The certificate's serial, lowercase hex.
    pub serial_hex: String,
}

/// Why a technician credential was refused. Each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Past its end of validity.
    #[error(
        "the technician credential expired at {} (Unix ms {at}); sign in again with `cartwise-tech login` while online",
        rfc3339(*at)
    )]
    Expired {
        /// End of validity, Unix milliseconds.
        at: i64,
    },
    /// Before its start of validity (or this Pi's clock is behind).
    #[error(
        "the technician credential is not valid before {} (Unix ms {from}); check this Pi's clock (`cartwise-edge time set`) or wait",
        rfc3339(*from)
    )]
    NotYetValid {
        /// Start of validity, Unix milliseconds.
        from: i64,
    },
    /// Issued for another branch.
    #[error(
        "the technician credential was issued for branch {credential}, this Pi is branch {device}; use the credential for this branch (`cartwise-tech credential export --branch {device}`)"
    )]
    WrongBranch {
        /// The branch the credential names.
        credential: BranchId,
        /// The branch of this device.
        device: BranchId,
    },
    /// Not signed by this chain's CA.
    #[error(
        "the technician credential was not issued by this chain; sign in to the hub of this Pi's chain"
    )]
    WrongChain,
    /// A certificate of another role (e.g. a device's).
    #[error(
        "the certificate is not a technician credential (role or purpose); use the credential `cartwise-tech login` obtained"
    )]
    NotTechnician,
    /// The signature does not verify.
    #[error(
        "the technician credential's signature does not verify: it was altered or forged; obtain a new one with `cartwise-tech login`"
    )]
    BadSignature,
    /// Not a certificate, or not one the hub issues.
    #[error(
        "the technician credential cannot be read ({0}); obtain a new one with `cartwise-tech login`"
    )]
    Malformed(String),
}

fn rfc3339(unix_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000))
        .map(|at| {
            format!(
                "{} {:02}:{:02}:{:02} UTC",
                at.date(),
                at.hour(),
                at.minute(),
                at.second()
            )
        })
        .unwrap_or_else(|_| format!("{unix_ms} ms"))
}

/// How far a Pi's clock may run behind the hub's and still accept a credential issued just
/// now: a Pi offline since its last time sync drifts, and a technician logs in minutes before
/// the visit. Expiry gets no such allowance.
pub const CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// Verifies a technician's certificate (DER) against the chain CA (DER) this device holds, for
/// the device's branch, at `now_unix_ms` (the device's corrected wall clock).
pub fn verify_credential(
    cert_der: &[u8],
    chain_ca_der: &[u8],
    expect_branch: BranchId,
    now_unix_ms: i64,
) -> Result<TechnicianCredential, CredentialError> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der)
        .map_err(|error| CredentialError::Malformed(error.to_string()))?;
    let identity = PeerIdentity::from_cert_der(cert_der)
        .map_err(|error| CredentialError::Malformed(error.to_string()))?;
    if identity.role != Role::Technician {
        return Err(CredentialError::NotTechnician);
    }
    if let Some(ca_chain) = chain_of_ca(chain_ca_der)
        && ca_chain != identity.chain
    {
        return Err(CredentialError::WrongChain);
    }
    let validity = cert.validity();
    let not_before_ms = validity.not_before.timestamp().saturating_mul(1000);
    let not_after_ms = validity.not_after.timestamp().saturating_mul(1000);
    check_signature(cert_der, chain_ca_der, validity.not_before.timestamp())?;
    if identity.branch != expect_branch {
        return Err(CredentialError::WrongBranch {
            credential: identity.branch,
            device: expect_branch,
        });
    }
    if now_unix_ms < not_before_ms.saturating_sub(CLOCK_SKEW_MS) {
        return Err(CredentialError::NotYetValid {
            from: not_before_ms,
        });
    }
    if now_unix_ms > not_after_ms {
        return Err(CredentialError::Expired { at: not_after_ms });
    }
    Ok(TechnicianCredential {
        chain: identity.chain,
        branch: identity.branch,
        technician: *identity.device.as_uuid(),
        not_before_ms,
        not_after_ms,
        serial_hex: to_hex(cert.raw_serial()),
    })
}

/// The chain a chain CA certificate names in its common name (`CartWise chain CA <uuid>`).
pub(crate) fn chain_of_ca(chain_ca_der: &[u8]) -> Option<ChainId> {
    let (_, ca) = x509_parser::certificate::X509Certificate::from_der(chain_ca_der).ok()?;
    let common_name = ca.subject().iter_common_name().next()?.as_str().ok()?;
    ChainId::parse(common_name.strip_prefix("CartWise chain CA ")?).ok()
}

/// Checks that `cert_der` chains to `chain_ca_der` for client authentication at `now_unix`.
pub(crate) fn check_chain(
    cert_der: &[u8],
    chain_ca_der: &[u8],
    now_unix: i64,
) -> Result<(), CredentialError> {
    check_signature(cert_der, chain_ca_der, now_unix.saturating_sub(1))
}

/// Checks the CA's signature and the client-authentication purpose with webpki, at a time
/// inside the certificate's window (the window itself is checked by the caller, with reasons).
fn check_signature(
    cert_der: &[u8],
    chain_ca_der: &[u8],
    inside_unix: i64,
) -> Result<(), CredentialError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(chain_ca_der.to_vec()))
        .map_err(|_| CredentialError::WrongChain)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|error| CredentialError::Malformed(error.to_string()))?;
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(inside_unix).unwrap_or(0).saturating_add(1),
    ));
    let cert = CertificateDer::from(cert_der);
    match verifier.verify_client_cert(&cert, &[], at) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InvalidCertificate(reason)) => Err(match reason {
            CertificateError::UnknownIssuer => CredentialError::WrongChain,
            CertificateError::BadSignature => CredentialError::BadSignature,
            CertificateError::InvalidPurpose => CredentialError::NotTechnician,
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                CredentialError::Malformed("the certificate has expired".into())
            }
            CertificateError::BadEncoding => CredentialError::Malformed("bad encoding".into()),
            other => CredentialError::Malformed(format!("{other:?}")),
        }),
        Err(other) => Err(CredentialError::Malformed(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use cartwise_schema::DeviceId;
    use rcgen::{CertificateParams, Issuer, KeyPair};

    use super::*;
    use crate::identity::{chain_ca_params, device_cert_params, technician_cert_params};

    const NOW: i64 = 1_800_000_000;

    struct Ca {
        der: Vec<u8>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(chain: ChainId) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params: CertificateParams = chain_ca_params(chain, NOW - 3600).unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    fn technician(ca: &Ca, chain: ChainId, branch: BranchId, hours: u32) -> Vec<u8> {
        let identity = PeerIdentity {
            role: Role::Technician,
            chain,
            branch,
            device: DeviceId::from_uuid(Uuid::from_u128(7)),
        };
        let params = technician_cert_params(&identity, &[1, 2, 3], NOW, hours).unwrap();
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, &ca.issuer).unwrap().der().to_vec()
    }

    fn ids() -> (ChainId, BranchId, BranchId) {
        (
            ChainId::from_uuid(Uuid::from_u128(1)),
            BranchId::from_uuid(Uuid::from_u128(2)),
            BranchId::from_uuid(Uuid::from_u128(3)),
        )
    }

    #[test]
    fn valid_credential_is_accepted_with_its_window() {
        let (chain, branch, _) = ids();
        let ca = ca(chain);
        let cert = technician(&ca, chain, branch, 12);
        let verified = verify_credential(&cert, &ca.der, branch, NOW * 1000 + 60_000).unwrap();
        assert_eq!(verified.branch, branch);
        assert_eq!(verified.chain, chain);
        assert_eq!(verified.technician, Uuid::from_u128(7));
        assert_eq!(
            verified.not_after_ms - verified.not_before_ms,
            12 * 3600 * 1000
        );
        assert_eq!(verified.serial_hex, "010203");
    }

    #[test]
    fn refusals_name_their_reason() {
        let (chain, branch, other_branch) = ids();
        let ca = ca(chain);
        let cert = technician(&ca, chain, branch, 1);
        let expired = verify_credential(&cert, &ca.der, branch, (NOW + 7200) * 1000).unwrap_err();
        assert_eq!(
            expired,
            CredentialError::Expired {
                at: (NOW + 3600) * 1000
            }
        );
        assert!(expired.to_string().contains("expired at"));
        verify_credential(&cert, &ca.der, branch, (NOW - 10) * 1000)
            .expect("a clock a few seconds behind the hub's still accepts a fresh credential");
        let early =
            verify_credential(&cert, &ca.der, branch, NOW * 1000 - CLOCK_SKEW_MS - 1).unwrap_err();
        assert_eq!(early, CredentialError::NotYetValid { from: NOW * 1000 });
        let wrong = verify_credential(&cert, &ca.der, other_branch, NOW * 1000).unwrap_err();
        assert_eq!(
            wrong,
            CredentialError::WrongBranch {
                credential: branch,
                device: other_branch
            }
        );
        assert!(
            wrong
                .to_string()
                .contains(&format!("issued for branch {branch}"))
        );
        // Another chain's CA (same chain id in the CN is impossible; a different chain).
        let other_chain = ChainId::from_uuid(Uuid::from_u128(9));
        let foreign = self::ca(other_chain);
        assert_eq!(
            verify_credential(&cert, &foreign.der, branch, NOW * 1000).unwrap_err(),
            CredentialError::WrongChain
        );
        // A forged CA with the same name but another key.
        let forged = self::ca(chain);
        let refused = verify_credential(&cert, &forged.der, branch, NOW * 1000).unwrap_err();
        assert!(
            matches!(
                refused,
                CredentialError::BadSignature | CredentialError::WrongChain
            ),
            "{refused:?}"
        );
        assert!(matches!(
            verify_credential(b"junk", &ca.der, branch, NOW * 1000),
            Err(CredentialError::Malformed(_))
        ));
    }

    #[test]
    fn device_certificate_is_not_a_technician_credential() {
        let (chain, branch, _) = ids();
        let ca = ca(chain);
        let identity = PeerIdentity::device(chain, branch, DeviceId::from_uuid(Uuid::from_u128(5)));
        let key = KeyPair::generate().unwrap();
        let cert = device_cert_params(&identity, &[9], NOW)
            .unwrap()
            .signed_by(&key, &ca.issuer)
            .unwrap();
        assert_eq!(
            verify_credential(cert.der(), &ca.der, branch, NOW * 1000).unwrap_err(),
            CredentialError::NotTechnician
        );
    }

    #[test]
    fn tampered_certificate_is_refused() {
        let (chain, branch, _) = ids();
        let ca = ca(chain);
        let cert = technician(&ca, chain, branch, 12);
        // Flip a byte in the last 64 (the signature value).
        let mut tampered = cert.clone();
        let at = tampered.len() - 10;
        tampered[at] ^= 0x01;
        assert!(verify_credential(&tampered, &ca.der, branch, NOW * 1000 + 1000).is_err());
    }
}
