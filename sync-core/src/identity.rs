//! Who is at the other end of a connection: the certificate identities of devices, technicians
//! and the hub, and the rustls configurations that prove them (mutual TLS over QUIC).
//!
//! # Certificates
//!
//! - A **platform CA** (one per installation, held by the hub) signs the hub's server
//!   certificate. Its DNS name is always [`HUB_SERVER_NAME`], whatever address a device dials, so
//!   a hub behind a load balancer or on a bare IP needs no certificate per address.
//! - One **chain CA** per chain (tenant) signs the certificates of that chain's devices. The
//!   identity of a device is its SAN URI, [`san_for`]:
//!   `cartwise:chain/<uuid>/branch/<uuid>/device/<uuid>` (technicians: `/technician/<uuid>`),
//!   lowercase hyphenated UUIDs, exactly one such URI per certificate. The device id is also the
//!   certificate's common name, for people reading it with `openssl x509`.
//! - Device certificates carry both client and server authentication: Pis of a branch serve
//!   each other on the LAN.
//!
//! # Who trusts what
//!
//! | config | presents | accepts |
//! |---|---|---|
//! | [`hub_server_config`] | hub cert + platform CA | a device cert that chains to **its own chain's** CA (the chain named in its SAN); none for enrollment |
//! | [`device_client_config`] | device cert | a hub cert for [`HUB_SERVER_NAME`] signed by the platform CA |
//! | [`branch_peer_server_config`] / [`branch_peer_client_config`] | device cert | a device cert of the same chain CA **and** the same branch |
//! | [`enroll_client_config`] | nothing | a hub cert whose chain ends in the platform CA with the pinned SHA-256 |
//!
//! The hub never takes an identity from what a client says: it reads the SAN of a certificate
//! that was verified against the CA of the chain that SAN names ([`ChainCaRegistry`]), so a
//! valid certificate of chain A can never pass as chain B. TLS 1.3 only; ALPN carries the
//! major version ([`ALPN_SYNC`], [`ALPN_ENROLL`], [`ALPN_RENEW`]).
//!
//! Architecture Invariant: this module does no I/O and generates no keys; key generation and
//! signing happen in the daemons (they need randomness).

use std::fmt;

use cartwise_schema::{BranchId, ChainId, DeviceId, IdError};
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

mod certs;
mod enroll_wire;
mod tls;
mod verify;

pub use certs::{
    CertInfo, CertPemError, DEVICE_CERT_VALIDITY_SECS, RENEW_WHEN_LEFT_DENOMINATOR, certs_from_pem,
    chain_ca_params, device_cert_params, device_csr_params, hub_server_params, inspect_certificate,
    key_from_pem, platform_ca_params,
};
pub use certs::{
    TECHNICIAN_HOURS_DEFAULT, TECHNICIAN_HOURS_MAX, TECHNICIAN_HOURS_MIN, technician_cert_params,
};
pub use enroll_wire::{
    ENROLL_FRAME_HEADER_LEN, ENROLL_FRAME_LEN_MAX, EnrollRequest, EnrollResponse, EnrollUrl,
    EnrollUrlError, EnrollWireError, Granted, RenewRequest, decode_enroll_payload,
    encode_enroll_frame, enroll_frame_len,
};
pub use tls::{
    DeviceCredentials, TlsSetupError, branch_peer_client_config, branch_peer_server_config,
    device_client_config, enroll_client_config, hub_server_config,
};
pub use verify::ChainCaRegistry;

/// ALPN of the sync protocol, major version 1 (mutual TLS).
pub const ALPN_SYNC: &[u8] = b"cartwise-sync/1";
/// ALPN of enrollment: a one-time code and a CSR in, a certificate out (no client certificate).
pub const ALPN_ENROLL: &[u8] = b"cartwise-enroll/1";
/// ALPN of renewal: mutual TLS with the current certificate, a CSR in, a new certificate out.
pub const ALPN_RENEW: &[u8] = b"cartwise-renew/1";

/// The DNS name in the hub's certificate, and the server name every device verifies.
pub const HUB_SERVER_NAME: &str = "hub.cartwise";

/// Scheme prefix of every CartWise identity URI.
const SAN_PREFIX: &str = "cartwise:";

/// What kind of principal a certificate names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A branch Pi: writes the facts of its own posts.
    Device,
    /// A technician's laptop, scoped to one branch; carries data by hand.
    Technician,
}

impl Role {
    /// The path segment naming the role in the SAN URI.
    const fn segment(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Technician => "technician",
        }
    }
}

/// The verified identity of a device or technician: chain, branch and its own id, read from
/// the SAN of a certificate that a CA of that chain signed. (The hub is not a `PeerIdentity`:
/// it is the holder of a platform-CA certificate for [`HUB_SERVER_NAME`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// Device or technician.
    pub role: Role,
    /// The tenant.
    pub chain: ChainId,
    /// The branch within the chain.
    pub branch: BranchId,
    /// The device (for a technician, the technician's id).
    pub device: DeviceId,
}

/// Why a certificate does not name a CartWise identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The bytes are not a DER X.509 certificate.
    #[error("the peer certificate is not valid DER X.509 ({0}); re-enroll the device")]
    BadCertificate(String),
    /// The certificate has no `cartwise:` SAN URI (e.g. a web server certificate).
    #[error(
        "the certificate names no CartWise identity (no cartwise: SAN URI); it was not issued by a CartWise hub"
    )]
    NoIdentity,
    /// More than one `cartwise:` SAN URI: ambiguous, never issued by the hub.
    #[error("the certificate names {0} CartWise identities; exactly one is allowed")]
    SeveralIdentities(usize),
    /// The URI is not `cartwise:chain/<uuid>/branch/<uuid>/<device|technician>/<uuid>`.
    #[error(
        "malformed identity URI {uri:?}: expected cartwise:chain/<uuid>/branch/<uuid>/device/<uuid>"
    )]
    BadUri {
        /// The rejected URI (truncated).
        uri: String,
    },
    /// A UUID in the URI is not a valid id.
    #[error("malformed identity URI: {0}")]
    BadId(#[from] IdError),
}

/// The SAN URI binding `role` to chain, branch and id; lowercase, the only accepted spelling.
pub fn san_for(role: Role, chain: ChainId, branch: BranchId, device: DeviceId) -> String {
    format!(
        "{SAN_PREFIX}chain/{chain}/branch/{branch}/{}/{device}",
        role.segment()
    )
}

impl PeerIdentity {
    /// A device identity.
    pub const fn device(chain: ChainId, branch: BranchId, device: DeviceId) -> Self {
        Self {
            role: Role::Device,
            chain,
            branch,
            device,
        }
    }

    /// This identity's SAN URI.
    pub fn san(&self) -> String {
        san_for(self.role, self.chain, self.branch, self.device)
    }

    /// Parses one SAN URI strictly: the canonical spelling [`san_for`] produces, nothing else.
    pub fn from_san(uri: &str) -> Result<Self, IdentityError> {
        let bad = || IdentityError::BadUri {
            uri: uri.chars().take(160).collect(),
        };
        let rest = uri.strip_prefix(SAN_PREFIX).ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let ["chain", chain, "branch", branch, role, device] = parts.as_slice() else {
            return Err(bad());
        };
        let role = match *role {
            "device" => Role::Device,
            "technician" => Role::Technician,
            _ => return Err(bad()),
        };
        let identity = Self {
            role,
            chain: ChainId::parse(chain)?,
            branch: BranchId::parse(branch)?,
            device: DeviceId::parse(device)?,
        };
        // Reject other spellings (uppercase UUIDs) so one identity has one URI.
        if identity.san() != uri {
            return Err(bad());
        }
        Ok(identity)
    }

    /// Reads the identity from a DER certificate's SAN. Does **not** verify the certificate:
    /// call it on a certificate rustls has verified, or use [`ChainCaRegistry`].
    pub fn from_cert_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|error| IdentityError::BadCertificate(error.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|error| IdentityError::BadCertificate(error.to_string()))?
            .ok_or(IdentityError::NoIdentity)?;
        let uris: Vec<&str> = san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) if uri.starts_with(SAN_PREFIX) => Some(*uri),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [] => Err(IdentityError::NoIdentity),
            [uri] => Self::from_san(uri),
            several => Err(IdentityError::SeveralIdentities(several.len())),
        }
    }

    /// True when `other` is in the same chain and branch (a LAN peer may sync with it).
    pub fn same_branch(&self, other: &Self) -> bool {
        self.chain == other.chain && self.branch == other.branch
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.san())
    }
}

/// SHA-256 of DER bytes (a certificate fingerprint), as 64 lowercase hex digits.
pub fn sha256_hex(der: &[u8]) -> String {
    to_hex(&Sha256::digest(der))
}

/// Lowercase hex of bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// Why a fingerprint given by a person does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid CA fingerprint {0:?}: expected 64 hex digits (SHA-256; colons allowed), as printed by `cartwise-hub device add`"
)]
pub struct FingerprintError(pub String);

/// Parses a SHA-256 fingerprint: 64 hex digits, either case, colons or spaces allowed.
pub fn parse_sha256_fingerprint(text: &str) -> Result<[u8; 32], FingerprintError> {
    let error = || FingerprintError(text.chars().take(100).collect());
    let digits: Vec<u8> = text
        .bytes()
        .filter(|byte| *byte != b':' && !byte.is_ascii_whitespace())
        .collect();
    if digits.len() != 64 {
        return Err(error());
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).map_err(|_| error())?;
        *slot = u8::from_str_radix(pair, 16).map_err(|_| error())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
