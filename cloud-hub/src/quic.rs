//! The hub's QUIC endpoint: one UDP socket serving enrollment (`cartwise-enroll/1`), renewal
//! (`cartwise-renew/1`) and sync (`cartwise-sync/1`) over TLS 1.3.
//!
//! A sync connection reaches the caller's [`SyncHandler`] only after the device's certificate
//! verified against the CA of the chain its SAN names, and Postgres says the device exists in
//! that branch and chain, is not revoked, and holds that certificate. A revocation watcher
//! closes live connections of revoked devices within [`QuicConfig::revocation_check_interval`].
//!
//! Close codes (application errors) are in [`close_code`]; the reason text says what to do.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cartwise_sync_core::identity::{
    ALPN_ENROLL, ALPN_RENEW, ALPN_SYNC, ChainCaRegistry, PeerIdentity, hub_server_config,
    inspect_certificate,
};
use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::CertificateDer;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::pki::{self, ConnectRefusal, PkiError};

mod exchange;
mod revocation;

pub use revocation::LiveConnections;

/// What the hub runs for each authenticated sync connection; it returns when the connection is
/// done. The lead's sync server is one of these.
pub type SyncHandler = Arc<
    dyn Fn(quinn::Connection, PeerIdentity) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// QUIC application close codes used by the hub's endpoint (`0x100`–`0x1ff`).
pub mod close_code {
    /// The device id in the certificate has no device row.
    pub const UNKNOWN_DEVICE: u32 = 0x101;
    /// The device is revoked (at connect, or while connected).
    pub const REVOKED: u32 = 0x102;
    /// The device's branch or chain no longer matches its certificate.
    pub const WRONG_SCOPE: u32 = 0x103;
    /// The certificate was not recorded as issued, or was revoked.
    pub const BAD_CERTIFICATE: u32 = 0x104;
    /// Sync and renewal require a client certificate.
    pub const NO_CERTIFICATE: u32 = 0x105;
    /// The hub failed (database down); retry later.
    pub const INTERNAL: u32 = 0x106;
    /// The peer broke the protocol: the enrollment or renewal exchange (bad frame, timeout),
    /// or a sync session (the reason names the error).
    pub const PROTOCOL: u32 = 0x107;
    /// The hub is shutting down.
    pub const SHUTDOWN: u32 = 0x108;
    /// An enrollment or renewal exchange finished.
    pub const DONE: u32 = 0;
}

/// The endpoint's settings. `Default` listens on `[::]:4433` (dual-stack).
#[derive(Debug, Clone)]
pub struct QuicConfig {
    /// UDP address; port 0 picks one (tests).
    pub listen: SocketAddr,
    /// Handshakes in progress at once; more are refused (clients back off and retry).
    pub handshakes_max: usize,
    /// How often live connections are checked for revocation (and new chain CAs loaded).
    pub revocation_check_interval: Duration,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0u16; 8], 4433)),
            handshakes_max: 256,
            revocation_check_interval: Duration::from_secs(2),
        }
    }
}

/// Keep-alive interval, both ends (NAT mappings of store routers expire in 30–60 s).
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Idle timeout, both ends (negotiated as the smaller of the two).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// Certificates could not be loaded or created.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The UDP socket could not be bound.
    #[error("cannot listen on UDP {addr}: {source}; is the port in use?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// quinn refused the TLS configuration.
    #[error("the QUIC TLS configuration is invalid: {0}")]
    Crypto(String),
}

/// A running endpoint.
pub struct QuicHandle {
    /// The bound UDP address.
    pub local_addr: SocketAddr,
    /// SHA-256 of the platform CA (what enrollment URLs carry), lowercase hex.
    pub platform_ca_sha256: String,
    /// The live, authenticated sync connections.
    pub live: Arc<LiveConnections>,
    endpoint: quinn::Endpoint,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for QuicHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicHandle")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl QuicHandle {
    /// The quinn endpoint (e.g. for its statistics).
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// Waits until the endpoint has shut down (after the shutdown future resolved).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// A placeholder [`SyncHandler`]: logs the device and holds the connection until it closes.
/// `cartwise-hub serve --quic` uses it until the sync server replaces it.
pub fn hold_open_handler() -> SyncHandler {
    Arc::new(|connection: quinn::Connection, identity: PeerIdentity| {
        Box::pin(async move {
            tracing::info!(device = %identity.device, remote = %connection.remote_address(), "sync connection open");
            let reason = connection.closed().await;
            tracing::info!(device = %identity.device, %reason, "sync connection closed");
        })
    })
}

/// The transport settings both ends use.
pub fn transport_config() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    transport
}

/// Shared state of the accept loop and its connection tasks.
struct Hub {
    pool: PgPool,
    handler: SyncHandler,
    registry: Arc<ChainCaRegistry>,
    live: Arc<LiveConnections>,
    platform_ca_pem: String,
}

/// Starts the endpoint: loads (or creates) the hub's certificate and the chain CAs, binds
/// `config.listen`, and serves until `shutdown` resolves.
pub async fn spawn(
    config: QuicConfig,
    pool: PgPool,
    handler: SyncHandler,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<QuicHandle, QuicError> {
    let hub_identity = pki::load_or_create_hub_identity(&pool).await?;
    let registry = Arc::new(ChainCaRegistry::new());
    for (chain, ca) in pki::load_chain_cas(&pool).await? {
        registry.insert(chain, ca).map_err(PkiError::from)?;
    }
    let tls = hub_server_config(hub_identity.chain, hub_identity.key, registry.clone())
        .map_err(PkiError::from)?;
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|error| QuicError::Crypto(error.to_string()))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server_config.transport_config(Arc::new(transport_config()));
    let endpoint = quinn::Endpoint::server(server_config, config.listen).map_err(|source| {
        QuicError::Bind {
            addr: config.listen,
            source,
        }
    })?;
    let local_addr = endpoint.local_addr().map_err(|source| QuicError::Bind {
        addr: config.listen,
        source,
    })?;
    let live = Arc::new(LiveConnections::default());
    let hub = Arc::new(Hub {
        pool,
        handler,
        registry,
        live: live.clone(),
        platform_ca_pem: hub_identity.platform_ca.cert_pem.clone(),
    });
    let watcher = tokio::spawn(revocation::watch(
        hub.pool.clone(),
        hub.live.clone(),
        hub.registry.clone(),
        config.revocation_check_interval,
    ));
    let task = tokio::spawn(accept_loop(
        endpoint.clone(),
        hub,
        config.handshakes_max,
        shutdown,
        watcher,
    ));
    tracing::info!(%local_addr, "hub QUIC endpoint listening");
    Ok(QuicHandle {
        local_addr,
        platform_ca_sha256: hub_identity.platform_ca.sha256_hex(),
        live,
        endpoint,
        task,
    })
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    hub: Arc<Hub>,
    handshakes_max: usize,
    shutdown: impl Future<Output = ()> + Send,
    watcher: JoinHandle<()>,
) {
    let handshakes = Arc::new(Semaphore::new(handshakes_max.max(1)));
    tokio::pin!(shutdown);
    loop {
        let incoming = tokio::select! {
            () = &mut shutdown => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(remote = %incoming.remote_address(), "too many handshakes; refusing");
            incoming.refuse();
            continue;
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let connection = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                Ok(Ok(connection)) => connection,
                Ok(Err(error)) => {
                    tracing::info!(%remote, %error, "handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(%remote, "handshake timed out");
                    return;
                }
            };
            drop(permit);
            serve_connection(hub, connection).await;
        });
    }
    watcher.abort();
    endpoint.close(close_code::SHUTDOWN.into(), b"hub shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle()).await;
}

/// The negotiated ALPN of a connection.
fn alpn_of(connection: &quinn::Connection) -> Option<Vec<u8>> {
    connection
        .handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

async fn serve_connection(hub: Arc<Hub>, connection: quinn::Connection) {
    let alpn = alpn_of(&connection);
    match alpn.as_deref() {
        Some(ALPN_ENROLL) => {
            exchange::enroll(&hub.pool, &hub.registry, &hub.platform_ca_pem, connection).await
        }
        Some(ALPN_RENEW) => {
            if let Some(identity) = authenticate(&hub, &connection).await {
                exchange::renew(&hub.pool, &hub.platform_ca_pem, connection, identity).await;
            }
        }
        Some(ALPN_SYNC) => {
            if let Some((identity, serial)) = authenticate_with_serial(&hub, &connection).await {
                let _guard = hub.live.register(&connection, identity.device, serial);
                tracing::info!(device = %identity.device, branch = %identity.branch, "device connected");
                (hub.handler)(connection, identity).await;
            }
        }
        _ => connection.close(close_code::PROTOCOL.into(), b"unknown ALPN"),
    }
}

async fn authenticate(hub: &Hub, connection: &quinn::Connection) -> Option<PeerIdentity> {
    authenticate_with_serial(hub, connection)
        .await
        .map(|(identity, _)| identity)
}

/// The verified identity of a connection's client certificate, once Postgres allows it;
/// otherwise the connection is closed with a code and reason, and `None` returned.
async fn authenticate_with_serial(
    hub: &Hub,
    connection: &quinn::Connection,
) -> Option<(PeerIdentity, String)> {
    let certs = connection
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok());
    let Some(end_entity) = certs.as_ref().and_then(|certs| certs.first()) else {
        connection.close(
            close_code::NO_CERTIFICATE.into(),
            b"a client certificate is required; enroll the device first",
        );
        return None;
    };
    // The handshake verified the certificate against its own chain's CA; read it back.
    let (Ok(identity), Ok(info)) = (
        PeerIdentity::from_cert_der(end_entity),
        inspect_certificate(end_entity),
    ) else {
        connection.close(
            close_code::BAD_CERTIFICATE.into(),
            b"unreadable certificate",
        );
        return None;
    };
    match pki::check_device_allowed(&hub.pool, &identity, &info.serial_hex).await {
        Ok(Ok(())) => Some((identity, info.serial_hex)),
        Ok(Err(refusal)) => {
            tracing::info!(device = %identity.device, %refusal, "device refused");
            connection.close(refusal_code(refusal).into(), refusal.to_string().as_bytes());
            None
        }
        Err(error) => {
            tracing::warn!(%error, "cannot check a connecting device");
            connection.close(
                close_code::INTERNAL.into(),
                b"hub database unavailable; retry later",
            );
            None
        }
    }
}

fn refusal_code(refusal: ConnectRefusal) -> u32 {
    match refusal {
        ConnectRefusal::UnknownDevice => close_code::UNKNOWN_DEVICE,
        ConnectRefusal::Revoked => close_code::REVOKED,
        ConnectRefusal::WrongScope => close_code::WRONG_SCOPE,
        ConnectRefusal::UnknownCertificate | ConnectRefusal::CertificateRevoked => {
            close_code::BAD_CERTIFICATE
        }
    }
}
