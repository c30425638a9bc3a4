//! Certificate contents (rcgen parameters) for the platform CA, chain CAs, the hub and devices,
//! PEM decoding, and reading validity and serial back from DER. Signing is the caller's.

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use super::{HUB_SERVER_NAME, IdentityError, PeerIdentity, to_hex};
use cartwise_schema::ChainId;

/// A device certificate is valid this long (90 days).
pub const DEVICE_CERT_VALIDITY_SECS: i64 = 90 * 24 * 3600;
/// A certificate is renewed once less than `1 / RENEW_WHEN_LEFT_DENOMINATOR` of its life is
/// left (30 of 90 days).
pub const RENEW_WHEN_LEFT_DENOMINATOR: i64 = 3;
/// CAs are valid 20 years; rotating a CA means re-enrolling its devices.
const CA_VALIDITY_SECS: i64 = 20 * 365 * 24 * 3600;
/// The hub's server certificate is valid 2 years; the hub renews it at start once a third is left.
const HUB_CERT_VALIDITY_SECS: i64 = 2 * 365 * 24 * 3600;
/// Certificates start this much before "now", for peers whose clocks are a little behind.
const BACKDATE_SECS: i64 = 5 * 60;

/// Why certificate material could not be decoded or encoded.
#[derive(Debug, thiserror::Error)]
pub enum CertPemError {
    /// No certificate in the PEM text.
    #[error("no CERTIFICATE block in the PEM text; the certificate file is empty or damaged")]
    NoCertificate,
    /// The PEM text does not decode.
    #[error("the PEM text does not decode ({0}); the file is damaged, re-enroll the device")]
    Pem(String),
    /// A time outside what X.509 can hold.
    #[error("the validity time {0} is out of range; check the system clock")]
    Time(i64),
    /// rcgen refused a name or parameter.
    #[error("cannot build the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// What a certificate says about its own life and serial (not verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity, Unix seconds.
    pub not_before_unix: i64,
    /// End of validity, Unix seconds.
    pub not_after_unix: i64,
    /// The serial number, lowercase hex of its DER content bytes.
    pub serial_hex: String,
}

impl CertInfo {
    /// True once less than a third of the validity is left at `now_unix` (or it has expired).
    pub fn renewal_due(&self, now_unix: i64) -> bool {
        let life = (self.not_after_unix - self.not_before_unix).max(0);
        self.not_after_unix - now_unix < life / RENEW_WHEN_LEFT_DENOMINATOR
    }
}

/// Reads validity and serial from a DER certificate.
pub fn inspect_certificate(der: &[u8]) -> Result<CertInfo, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|error| IdentityError::BadCertificate(error.to_string()))?;
    let validity = cert.validity();
    Ok(CertInfo {
        not_before_unix: validity.not_before.timestamp(),
        not_after_unix: validity.not_after.timestamp(),
        serial_hex: to_hex(cert.raw_serial()),
    })
}

/// Every certificate in a PEM text, in order.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertPemError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| CertPemError::Pem(error.to_string()))?;
    if certs.is_empty() {
        return Err(CertPemError::NoCertificate);
    }
    Ok(certs)
}

/// The private key in a PEM text (PKCS#8, SEC1 or PKCS#1).
pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, CertPemError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|error| CertPemError::Pem(error.to_string()))
}

fn instant(unix: i64) -> Result<OffsetDateTime, CertPemError> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|_| CertPemError::Time(unix))
}

fn ia5(text: &str) -> Result<Ia5String, CertPemError> {
    Ok(Ia5String::try_from(text)?)
}

fn validity(params: &mut CertificateParams, now_unix: i64, secs: i64) -> Result<(), CertPemError> {
    params.not_before = instant(now_unix - BACKDATE_SECS)?;
    params.not_after = instant(now_unix + secs)?;
    Ok(())
}

fn ca_params(common_name: &str, now_unix: i64) -> Result<CertificateParams, CertPemError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "CartWise");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    // Path length 0: a CartWise CA signs end-entity certificates only.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, now_unix, CA_VALIDITY_SECS)?;
    Ok(params)
}

/// The platform CA: signs the hub's server certificate.
pub fn platform_ca_params(now_unix: i64) -> Result<CertificateParams, CertPemError> {
    ca_params("CartWise platform CA", now_unix)
}

/// The CA of one chain: signs that chain's device certificates.
pub fn chain_ca_params(chain: ChainId, now_unix: i64) -> Result<CertificateParams, CertPemError> {
    ca_params(&format!("CartWise chain CA {chain}"), now_unix)
}

/// The hub's server certificate: DNS name [`HUB_SERVER_NAME`], server authentication only.
pub fn hub_server_params(now_unix: i64) -> Result<CertificateParams, CertPemError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, HUB_SERVER_NAME);
    params.subject_alt_names = vec![SanType::DnsName(ia5(HUB_SERVER_NAME)?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut params, now_unix, HUB_CERT_VALIDITY_SECS)?;
    Ok(params)
}

/// A device (or technician) certificate binding `identity`: SAN URI, CN = device id, client
/// and server authentication, [`DEVICE_CERT_VALIDITY_SECS`] from `now_unix`. `serial` must be
/// unique per CA (the hub uses 16 random bytes).
pub fn device_cert_params(
    identity: &PeerIdentity,
    serial: &[u8],
    now_unix: i64,
) -> Result<CertificateParams, CertPemError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, identity.device.to_string());
    params.subject_alt_names = vec![SanType::URI(ia5(&identity.san())?)];
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, now_unix, DEVICE_CERT_VALIDITY_SECS)?;
    Ok(params)
}

/// Shortest technician credential, in hours.
pub const TECHNICIAN_HOURS_MIN: u32 = 1;
/// Longest technician credential, in hours (a week).
pub const TECHNICIAN_HOURS_MAX: u32 = 168;
/// Technician credential validity when none is asked for, in hours.
pub const TECHNICIAN_HOURS_DEFAULT: u32 = 12;

/// A technician's certificate for one branch: SAN `cartwise:chain/…/branch/…/technician/<id>`,
/// CN = technician id, client authentication only, valid `hours` (clamped to
/// [`TECHNICIAN_HOURS_MIN`]..=[`TECHNICIAN_HOURS_MAX`]) from `now_unix`. `identity.role` must be
/// [`super::Role::Technician`]; `serial` must be unique per CA.
pub fn technician_cert_params(
    identity: &PeerIdentity,
    serial: &[u8],
    now_unix: i64,
    hours: u32,
) -> Result<CertificateParams, CertPemError> {
    let hours = hours.clamp(TECHNICIAN_HOURS_MIN, TECHNICIAN_HOURS_MAX);
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, identity.device.to_string());
    params.subject_alt_names = vec![SanType::URI(ia5(&identity.san())?)];
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    // No backdating: the credential's window is exactly what was issued.
    params.not_before = instant(now_unix)?;
    params.not_after = instant(now_unix + i64::from(hours) * 3600)?;
    Ok(params)
}

/// The contents of a device's certificate request. The hub ignores everything in it but the
/// public key (and checks its signature): identity comes from the enrollment code or the
/// current certificate, never from the request.
pub fn device_csr_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "cartwise device");
    params
}
