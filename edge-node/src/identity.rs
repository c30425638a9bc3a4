//! The device's identity on disk and the QUIC configs it builds: `DATA_DIR/identity.toml`
//! (mode 0600) holds the chain, branch and device ids, the hub address, the device's key and
//! certificate, its chain's CA and the platform CA. One file, replaced atomically (write a
//! temporary file, fsync, rename, fsync the directory), so a renewal interrupted by a power
//! cut leaves either the old identity or the new one, never a key from one and a certificate
//! from the other.
//!
//! Configs: [`hub_client_config`] (this Pi → hub, ALPN `cartwise-sync/1`), and for the branch
//! LAN [`lan_server_config`] / [`lan_client_config`] (Pi ↔ Pi of one branch only).
//! Renewal: [`renew_if_due`] (in `identity/exchange.rs`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cartwise_schema::{BranchId, ChainId, DeviceId};
use cartwise_sync_core::identity::{
    self, ALPN_RENEW, ALPN_SYNC, DeviceCredentials, Granted, PeerIdentity, TlsSetupError,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::{Deserialize, Serialize};

mod exchange;

pub use exchange::{
    ExchangeError, RenewOutcome, client_endpoint, connect, enroll_exchange, renew_if_due,
};

/// The identity file's name inside the data directory.
pub const IDENTITY_FILE: &str = "identity.toml";

/// Keep-alive interval (same as the hub's; NAT mappings of store routers expire in 30–60 s).
pub const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(10);
/// Idle timeout (same as the hub's).
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The server name a Pi uses for a branch peer (not checked: the peer is checked by branch).
pub const LAN_SERVER_NAME: &str = "peer.cartwise";

/// Why the identity could not be loaded, stored or used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No identity file: the device has not enrolled.
    #[error(
        "no device identity at {0}; enroll first: cartwise-edge enroll --url 'cartwise-enroll://…'"
    )]
    NotEnrolled(PathBuf),
    /// The file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is readable by others.
    #[error(
        "{path} is readable by other users (mode {mode:o}); it holds the device key: run chmod 600 {path}"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The file does not parse.
    #[error("{path} is damaged ({reason}); re-enroll the device")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The certificate does not name the ids the file or the hub says.
    #[error("the certificate names {cert} but {expected} was expected; re-enroll the device")]
    Mismatch {
        /// The certificate's identity.
        cert: PeerIdentity,
        /// What was expected.
        expected: String,
    },
    /// The certificate material is unusable.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// quinn refused the TLS configuration.
    #[error("the QUIC TLS configuration is invalid: {0}")]
    Quic(String),
}

/// The identity file's contents.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    chain_id: ChainId,
    branch_id: BranchId,
    device_id: DeviceId,
    /// The hub's `HOST:PORT`, as given at enrollment.
    hub: String,
    cert_pem: String,
    key_pem: String,
    chain_ca_pem: String,
    platform_ca_pem: String,
}

/// An enrolled device's identity.
#[derive(Debug, Clone)]
pub struct EdgeIdentity {
    /// Certificates, key and identity.
    pub credentials: DeviceCredentials,
    /// The hub's `HOST:PORT` as given at enrollment.
    pub hub: String,
}

impl EdgeIdentity {
    /// Chain, branch and device.
    pub fn peer(&self) -> PeerIdentity {
        self.credentials.identity
    }
}

/// The identity file of `data_dir`.
pub fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join(IDENTITY_FILE)
}

/// Loads the identity of `data_dir`; refuses a file readable by others.
pub fn load(data_dir: &Path) -> Result<EdgeIdentity, IdentityError> {
    let path = identity_path(data_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(IdentityError::NotEnrolled(path));
        }
        Err(source) => return Err(IdentityError::Io { path, source }),
    };
    check_private(&path)?;
    let damaged = |reason: String| IdentityError::Damaged {
        path: path.clone(),
        reason,
    };
    let file: IdentityFile = toml::from_str(&text).map_err(|error| damaged(error.to_string()))?;
    let credentials = DeviceCredentials::from_pem(
        &file.cert_pem,
        &file.key_pem,
        &file.chain_ca_pem,
        &file.platform_ca_pem,
    )?;
    let expected = PeerIdentity::device(file.chain_id, file.branch_id, file.device_id);
    if credentials.identity != expected {
        return Err(IdentityError::Mismatch {
            cert: credentials.identity,
            expected: expected.to_string(),
        });
    }
    Ok(EdgeIdentity {
        credentials,
        hub: file.hub,
    })
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|source| IdentityError::Io {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), IdentityError> {
    Ok(())
}

/// Checks a certificate the hub granted for `key_pem` (and, when renewing, that it keeps the
/// identity `expected`), then replaces the identity of `data_dir` atomically.
pub fn store(
    data_dir: &Path,
    granted: &Granted,
    key_pem: &str,
    hub: &str,
    expected: Option<PeerIdentity>,
) -> Result<EdgeIdentity, IdentityError> {
    let mut certs = granted
        .cert_chain_pem
        .split_inclusive("-----END CERTIFICATE-----\n");
    let cert_pem = certs.next().unwrap_or_default().to_owned();
    let chain_ca_pem: String = certs.collect();
    let credentials =
        DeviceCredentials::from_pem(&cert_pem, key_pem, &chain_ca_pem, &granted.platform_ca_pem)?;
    let named = PeerIdentity::device(granted.chain_id, granted.branch_id, granted.device_id);
    for expected in [Some(named), expected].into_iter().flatten() {
        if credentials.identity != expected {
            return Err(IdentityError::Mismatch {
                cert: credentials.identity,
                expected: expected.to_string(),
            });
        }
    }
    // Building a client config checks that the key matches the certificate.
    identity::device_client_config(&credentials, ALPN_SYNC)?;
    let file = IdentityFile {
        chain_id: granted.chain_id,
        branch_id: granted.branch_id,
        device_id: granted.device_id,
        hub: hub.to_owned(),
        cert_pem,
        key_pem: key_pem.to_owned(),
        chain_ca_pem,
        platform_ca_pem: granted.platform_ca_pem.clone(),
    };
    let text = toml::to_string(&file).map_err(|error| IdentityError::Damaged {
        path: identity_path(data_dir),
        reason: error.to_string(),
    })?;
    write_atomically(data_dir, text.as_bytes())?;
    Ok(EdgeIdentity {
        credentials,
        hub: hub.to_owned(),
    })
}

fn write_atomically(data_dir: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| IdentityError::Io { path, source }
    };
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let path = identity_path(data_dir);
    let temp = data_dir.join(format!(".{IDENTITY_FILE}.tmp-{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temp).map_err(io(&temp))?;
    file.write_all(bytes).map_err(io(&temp))?;
    file.sync_all().map_err(io(&temp))?;
    drop(file);
    std::fs::rename(&temp, &path).map_err(io(&path))?;
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io(data_dir))?;
    Ok(())
}

/// The transport settings (the hub's: keep-alive 10 s, idle 30 s).
pub fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    Arc::new(transport)
}

fn quic_client(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, IdentityError> {
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|error| IdentityError::Quic(error.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config());
    Ok(config)
}

/// This Pi → the hub, ALPN `cartwise-sync/1`; connect with server name
/// [`identity::HUB_SERVER_NAME`] (see [`connect`]).
pub fn hub_client_config(identity: &EdgeIdentity) -> Result<quinn::ClientConfig, IdentityError> {
    quic_client(identity::device_client_config(
        &identity.credentials,
        ALPN_SYNC,
    )?)
}

/// This Pi → the hub for renewal, ALPN `cartwise-renew/1`.
pub fn renew_client_config(identity: &EdgeIdentity) -> Result<quinn::ClientConfig, IdentityError> {
    quic_client(identity::device_client_config(
        &identity.credentials,
        ALPN_RENEW,
    )?)
}

/// This Pi serving the Pis of its branch: only devices of its chain's CA and its branch pass
/// the handshake (re-check with [`PeerIdentity::same_branch`] if in doubt).
pub fn lan_server_config(identity: &EdgeIdentity) -> Result<quinn::ServerConfig, IdentityError> {
    let tls = identity::branch_peer_server_config(&identity.credentials)?;
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|error| IdentityError::Quic(error.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config());
    Ok(config)
}

/// This Pi connecting to a Pi of its branch (server name [`LAN_SERVER_NAME`]).
pub fn lan_client_config(identity: &EdgeIdentity) -> Result<quinn::ClientConfig, IdentityError> {
    quic_client(identity::branch_peer_client_config(&identity.credentials)?)
}

/// The verified end-entity certificate (DER) of a connection's peer (a LAN peer, either side).
pub fn peer_cert_der(connection: &quinn::Connection) -> Option<Vec<u8>> {
    let certs = connection
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    Some(certs.first()?.as_ref().to_vec())
}

/// The verified identity of a connection's peer (a LAN peer, on either side).
pub fn peer_identity(connection: &quinn::Connection) -> Option<PeerIdentity> {
    let certs = connection
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    PeerIdentity::from_cert_der(certs.first()?).ok()
}

/// Signs the heads of this device's own facts document with the key of its certificate, so a
/// branch peer can relay the document to the hub (`cartwise_sync_core::signed_heads`).
pub struct HeadsKey {
    key: rcgen::KeyPair,
    device: cartwise_schema::DeviceId,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for HeadsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadsKey")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl HeadsKey {
    /// The signer of an enrolled identity.
    pub fn new(identity: &EdgeIdentity) -> Result<Self, IdentityError> {
        let key = rcgen::KeyPair::try_from(&identity.credentials.key).map_err(|error| {
            IdentityError::Damaged {
                path: PathBuf::from(IDENTITY_FILE),
                reason: format!("the device key cannot sign: {error}"),
            }
        })?;
        Ok(HeadsKey {
            key,
            device: identity.credentials.identity.device,
            cert_der: identity.credentials.cert.as_ref().to_vec(),
        })
    }

    /// `heads` of `doc` (this device's own document), signed, with the certificate attached.
    pub fn sign_heads(
        &self,
        doc: cartwise_sync_core::DocId,
        heads: &[cartwise_sync_core::message::Head],
    ) -> cartwise_sync_core::SignedHeads {
        cartwise_sync_core::SignedHeads::sign_with_cert(doc, heads, self, self.cert_der.clone())
    }
}

impl cartwise_sync_core::HeadsSigner for HeadsKey {
    fn signer(&self) -> cartwise_schema::DeviceId {
        self.device
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        // ECDSA needs randomness; if the system cannot give any, the empty signature is
        // refused by every verifier and the relay waits for the next heads.
        rcgen::SigningKey::sign(&self.key, message).unwrap_or_else(|error| {
            tracing::warn!(%error, "signing this device's heads failed");
            Vec::new()
        })
    }
}
