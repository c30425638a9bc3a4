//! rustls configurations for each side of each CartWise connection (TLS 1.3 only, ring).
//! The daemons wrap them in quinn's `QuicServerConfig` / `QuicClientConfig`.

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use super::certs::{CertPemError, certs_from_pem, inspect_certificate, key_from_pem};
use super::verify::{
    BranchClientVerifier, ChainCaRegistry, ClockFloorServerVerifier, HubClientVerifier,
    ServerCheck, chain_verifier,
};
use super::{ALPN_ENROLL, ALPN_RENEW, ALPN_SYNC, IdentityError, PeerIdentity};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// Certificate or key material does not decode.
    #[error(transparent)]
    Pem(#[from] CertPemError),
    /// The certificate names no valid identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// rustls refused the material (e.g. the key does not match the certificate).
    #[error("TLS setup failed: {0}; the identity files may be damaged, re-enroll the device")]
    Tls(#[source] rustls::Error),
    /// A certificate verifier could not be built (e.g. an unusable CA certificate).
    #[error("cannot build the certificate verifier: {0}")]
    Verifier(String),
}

/// The ring crypto provider every CartWise config uses.
pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a device holds after enrollment: its identity, certificate and key, its chain's CA (to
/// verify branch peers) and the platform CA (to verify the hub).
pub struct DeviceCredentials {
    /// The identity in `cert`.
    pub identity: PeerIdentity,
    /// The device certificate (end entity only).
    pub cert: CertificateDer<'static>,
    /// The device's private key.
    pub key: PrivateKeyDer<'static>,
    /// The CA of the device's chain.
    pub chain_ca: CertificateDer<'static>,
    /// The platform CA, which signs the hub's certificate.
    pub platform_ca: CertificateDer<'static>,
    /// Start of the certificate's validity (Unix seconds): a lower bound on the true time.
    pub not_before_unix: i64,
    /// End of the certificate's validity (Unix seconds).
    pub not_after_unix: i64,
}

impl std::fmt::Debug for DeviceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCredentials")
            .field("identity", &self.identity)
            .field("not_after_unix", &self.not_after_unix)
            .finish_non_exhaustive()
    }
}

impl Clone for DeviceCredentials {
    fn clone(&self) -> Self {
        Self {
            identity: self.identity,
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            chain_ca: self.chain_ca.clone(),
            platform_ca: self.platform_ca.clone(),
            not_before_unix: self.not_before_unix,
            not_after_unix: self.not_after_unix,
        }
    }
}

impl DeviceCredentials {
    /// Decodes PEM material; `cert_pem`'s first certificate is the device's.
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        chain_ca_pem: &str,
        platform_ca_pem: &str,
    ) -> Result<Self, TlsSetupError> {
        let cert = first_cert(cert_pem)?;
        let identity = PeerIdentity::from_cert_der(&cert)?;
        let info = inspect_certificate(&cert)?;
        Ok(Self {
            identity,
            cert,
            key: key_from_pem(key_pem)?,
            chain_ca: first_cert(chain_ca_pem)?,
            platform_ca: first_cert(platform_ca_pem)?,
            not_before_unix: info.not_before_unix,
            not_after_unix: info.not_after_unix,
        })
    }

    /// The lowest "now" to verify peers with (see `ClockFloorServerVerifier`).
    fn clock_floor(&self) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(
            u64::try_from(self.not_before_unix).unwrap_or(0),
        ))
    }
}

fn first_cert(pem: &str) -> Result<CertificateDer<'static>, TlsSetupError> {
    certs_from_pem(pem)?
        .into_iter()
        .next()
        .ok_or(TlsSetupError::Pem(CertPemError::NoCertificate))
}

fn roots_of(ca: &CertificateDer<'static>) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(TlsSetupError::Tls)?;
    Ok(roots)
}

/// The hub's server config: presents `hub_chain` (hub cert, then the platform CA), offers
/// [`ALPN_SYNC`], [`ALPN_ENROLL`] and [`ALPN_RENEW`], and verifies any client certificate
/// against the CA of the chain it names (`registry`). A client certificate is optional at the
/// TLS level because enrollment has none; the hub must refuse a sync or renewal connection
/// without a verified certificate after the handshake.
pub fn hub_server_config(
    hub_chain: Vec<CertificateDer<'static>>,
    hub_key: PrivateKeyDer<'static>,
    registry: Arc<ChainCaRegistry>,
) -> Result<ServerConfig, TlsSetupError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsSetupError::Tls)?
        .with_client_cert_verifier(Arc::new(HubClientVerifier { registry }))
        .with_single_cert(hub_chain, hub_key)
        .map_err(TlsSetupError::Tls)?;
    config.alpn_protocols = vec![
        ALPN_SYNC.to_vec(),
        ALPN_ENROLL.to_vec(),
        ALPN_RENEW.to_vec(),
    ];
    Ok(config)
}

fn client_builder(
    verifier: ClockFloorServerVerifier,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, TlsSetupError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsSetupError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier)))
}

/// A device's client config for the hub: presents the device certificate, accepts a hub
/// certificate for `HUB_SERVER_NAME` signed by the platform CA. `alpn` is [`ALPN_SYNC`] or
/// [`ALPN_RENEW`].
pub fn device_client_config(
    credentials: &DeviceCredentials,
    alpn: &[u8],
) -> Result<ClientConfig, TlsSetupError> {
    let verifier = ClockFloorServerVerifier {
        roots: roots_of(&credentials.platform_ca)?,
        check: ServerCheck::Named,
        floor: credentials.clock_floor(),
        provider: provider(),
    };
    let mut config = client_builder(verifier)?
        .with_client_auth_cert(vec![credentials.cert.clone()], credentials.key.clone_key())
        .map_err(TlsSetupError::Tls)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// A Pi serving the Pis of its branch: requires a client certificate of its own chain's CA and
/// its own branch (checked in the handshake; the caller may re-check with
/// [`PeerIdentity::same_branch`]). ALPN [`ALPN_SYNC`].
pub fn branch_peer_server_config(
    credentials: &DeviceCredentials,
) -> Result<ServerConfig, TlsSetupError> {
    let provider = provider();
    let verifier = BranchClientVerifier {
        inner: chain_verifier(credentials.chain_ca.clone(), &provider)?,
        own: credentials.identity,
        floor: credentials.clock_floor(),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsSetupError::Tls)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![credentials.cert.clone()], credentials.key.clone_key())
        .map_err(TlsSetupError::Tls)?;
    config.alpn_protocols = vec![ALPN_SYNC.to_vec()];
    Ok(config)
}

/// A Pi connecting to a Pi of its branch: accepts only a certificate of its own chain's CA and
/// its own branch (any server name; a Pi is reached by address). ALPN [`ALPN_SYNC`].
pub fn branch_peer_client_config(
    credentials: &DeviceCredentials,
) -> Result<ClientConfig, TlsSetupError> {
    let verifier = ClockFloorServerVerifier {
        roots: roots_of(&credentials.chain_ca)?,
        check: ServerCheck::SameBranch(credentials.identity),
        floor: credentials.clock_floor(),
        provider: provider(),
    };
    let mut config = client_builder(verifier)?
        .with_client_auth_cert(vec![credentials.cert.clone()], credentials.key.clone_key())
        .map_err(TlsSetupError::Tls)?;
    config.alpn_protocols = vec![ALPN_SYNC.to_vec()];
    Ok(config)
}

/// A Pi enrolling: presents no certificate; accepts the hub only if the chain it presents ends
/// in a CA whose SHA-256 is `platform_ca_sha256` and that CA signs a certificate for
/// `HUB_SERVER_NAME`. ALPN [`ALPN_ENROLL`].
pub fn enroll_client_config(platform_ca_sha256: [u8; 32]) -> Result<ClientConfig, TlsSetupError> {
    let verifier = ClockFloorServerVerifier {
        roots: RootCertStore::empty(),
        check: ServerCheck::Pinned(platform_ca_sha256),
        floor: UnixTime::since_unix_epoch(Duration::ZERO),
        provider: provider(),
    };
    let mut config = client_builder(verifier)?.with_no_client_auth();
    config.alpn_protocols = vec![ALPN_ENROLL.to_vec()];
    Ok(config)
}
