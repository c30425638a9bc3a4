//! The certificate verifiers behind the configs in `tls.rs`: per-chain client verification on
//! the hub, same-branch verification between Pis, CA pinning for enrollment, and a clock floor
//! for Pis whose wall clock is behind after an offline reboot.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use cartwise_schema::ChainId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use super::{IdentityError, PeerIdentity, TlsSetupError};

/// A rustls "bad certificate" error carrying why.
fn rejected(error: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

/// Why a peer of another branch was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "peer {peer} is not a device of this branch ({own_branch}); only Pis of one branch sync on the LAN"
)]
struct OtherBranch {
    peer: PeerIdentity,
    own_branch: String,
}

/// Why the hub's CA did not match the pinned fingerprint.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the server's CA does not have the pinned SHA-256 fingerprint; wrong --ca, or not a CartWise hub"
)]
struct PinMismatch;

/// Which chain CA verifies which chain: the hub's client-certificate trust, growing as chains
/// are created (by this hub process or another one sharing the database).
///
/// A client certificate is accepted only if it chains to the CA **of the chain its SAN names**;
/// a certificate that names chain B but was signed by chain A's CA is refused.
pub struct ChainCaRegistry {
    provider: Arc<CryptoProvider>,
    chains: RwLock<HashMap<ChainId, Arc<dyn ClientCertVerifier>>>,
}

impl std::fmt::Debug for ChainCaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainCaRegistry")
            .field("chains", &self.len())
            .finish()
    }
}

impl Default for ChainCaRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainCaRegistry {
    /// An empty registry (no chain accepted yet).
    pub fn new() -> Self {
        Self {
            provider: super::tls::provider(),
            chains: RwLock::new(HashMap::new()),
        }
    }

    /// Trusts `ca` for the devices of `chain` (replacing an earlier CA of that chain).
    pub fn insert(&self, chain: ChainId, ca: CertificateDer<'static>) -> Result<(), TlsSetupError> {
        let verifier = chain_verifier(ca, &self.provider)?;
        self.chains
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(chain, verifier);
        Ok(())
    }

    /// True when a CA is known for `chain`.
    pub fn contains(&self, chain: ChainId) -> bool {
        self.chains
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&chain)
    }

    /// How many chains are trusted.
    pub fn len(&self) -> usize {
        self.chains
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when no chain is trusted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Verifies a client certificate against the CA of the chain its SAN names and returns the
    /// identity. Also usable after a handshake, as a second check.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<PeerIdentity, rustls::Error> {
        let identity = PeerIdentity::from_cert_der(end_entity).map_err(rejected)?;
        let verifier = self
            .chains
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&identity.chain)
            .cloned()
            .ok_or(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ))?;
        verifier.verify_client_cert(end_entity, intermediates, now)?;
        Ok(identity)
    }
}

/// A mandatory client verifier trusting one chain CA.
pub(super) fn chain_verifier(
    ca: CertificateDer<'static>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca).map_err(TlsSetupError::Tls)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|error| TlsSetupError::Verifier(error.to_string()))?;
    Ok(verifier)
}

/// The hub's client verifier: asks for a certificate, does not require one (enrollment has
/// none; the hub refuses sync and renewal connections without one after the handshake).
#[derive(Debug)]
pub(super) struct HubClientVerifier {
    pub(super) registry: Arc<ChainCaRegistry>,
}

impl ClientCertVerifier for HubClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.registry.verify(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.registry.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.registry.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.registry
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A Pi serving its branch: the client must chain to this chain's CA and be of this branch.
/// Verification time is at least `floor` (see [`ClockFloorServerVerifier`]).
///
/// A technician's credential of this chain is admitted at the handshake whatever its branch
/// and validity window: its signature is checked here (at a time inside its own window), and
/// the application must then check it with `crate::technician::verify_credential` against
/// the Pi's corrected clock, so an expired credential or one for another branch is refused with
/// a message that says why, and the refusal is recorded. A technician certificate naming another
/// chain is admitted unverified (this Pi holds no other chain's CA; the handshake still proves
/// the laptop holds its key) for the same reason: the application refuses it (`WrongChain`)
/// and records the chain and branch it names, so a visit with the wrong chain's credential is
/// in the technician log, not only in a failed handshake. Nothing is served before that check.
#[derive(Debug)]
pub(super) struct BranchClientVerifier {
    pub(super) inner: Arc<dyn ClientCertVerifier>,
    pub(super) own: PeerIdentity,
    pub(super) floor: UnixTime,
}

impl ClientCertVerifier for BranchClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let peer = PeerIdentity::from_cert_der(end_entity).map_err(rejected)?;
        if peer.role == super::Role::Technician && peer.chain == self.own.chain {
            let inside = technician_check_time(end_entity)?;
            return self
                .inner
                .verify_client_cert(end_entity, intermediates, inside);
        }
        if peer.role == super::Role::Technician {
            return Ok(ClientCertVerified::assertion());
        }
        let verified =
            self.inner
                .verify_client_cert(end_entity, intermediates, now.max(self.floor))?;
        check_same_branch(&self.own, end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A time inside the certificate's own validity window (one second after it starts): the
/// signature and purpose are checked at the handshake, the window by the application against
/// the Pi's corrected clock.
fn technician_check_time(cert: &CertificateDer<'_>) -> Result<UnixTime, rustls::Error> {
    use x509_parser::prelude::FromDer;
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let start = u64::try_from(parsed.validity().not_before.timestamp()).unwrap_or(0);
    Ok(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        start.saturating_add(1),
    )))
}

fn check_same_branch(own: &PeerIdentity, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
    let peer = PeerIdentity::from_cert_der(cert).map_err(rejected)?;
    if !own.same_branch(&peer) {
        return Err(rejected(OtherBranch {
            peer,
            own_branch: own.branch.to_string(),
        }));
    }
    Ok(())
}

/// How a server certificate is checked.
#[derive(Debug)]
pub(super) enum ServerCheck {
    /// Signed by `roots`, valid for the requested server name (the hub).
    Named,
    /// Signed by `roots` (this chain's CA) and of the same branch as `own` (a LAN peer; the
    /// name is not checked: a Pi is reached by address).
    SameBranch(PeerIdentity),
    /// The last presented certificate has this SHA-256 and signs the end entity, which is valid
    /// for the requested server name (enrollment: nothing trusted yet but a fingerprint).
    Pinned([u8; 32]),
}

/// A server verifier that checks with at least `floor` as "now". A Pi without a real-time
/// clock can boot offline far in the past; the start of its own certificate (set by the hub's
/// trusted clock) is a lower bound on the true time, so it is a safe floor.
#[derive(Debug)]
pub(super) struct ClockFloorServerVerifier {
    pub(super) roots: RootCertStore,
    pub(super) check: ServerCheck,
    pub(super) floor: UnixTime,
    pub(super) provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ClockFloorServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let now = now.max(self.floor);
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let algs = self.provider.signature_verification_algorithms.all;
        match &self.check {
            ServerCheck::Named => {
                rustls::client::verify_server_cert_signed_by_trust_anchor(
                    &parsed,
                    &self.roots,
                    intermediates,
                    now,
                    algs,
                )?;
                rustls::client::verify_server_name(&parsed, server_name)?;
            }
            ServerCheck::SameBranch(own) => {
                rustls::client::verify_server_cert_signed_by_trust_anchor(
                    &parsed,
                    &self.roots,
                    intermediates,
                    now,
                    algs,
                )?;
                check_same_branch(own, end_entity)?;
            }
            ServerCheck::Pinned(pin) => {
                let ca = intermediates
                    .iter()
                    .find(|cert| Sha256::digest(cert.as_ref()).as_slice() == pin.as_slice())
                    .ok_or_else(|| rejected(PinMismatch))?;
                let mut roots = RootCertStore::empty();
                roots.add(ca.clone().into_owned())?;
                rustls::client::verify_server_cert_signed_by_trust_anchor(
                    &parsed,
                    &roots,
                    intermediates,
                    now,
                    algs,
                )?;
                rustls::client::verify_server_name(&parsed, server_name)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl From<IdentityError> for rustls::Error {
    fn from(error: IdentityError) -> Self {
        rejected(error)
    }
}
