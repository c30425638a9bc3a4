//! The hub's QUIC endpoint: one UDP socket serving enrollment (`cartwise-enroll/1`), renewal
//! (`cartwise-renew/1`) and sync (`cartwise-sync/1`) over TLS 1.3.
//!
//! A sync connection reaches the caller's [`SyncHandler`] only after the device's certificate
//! verified against the CA of the chain its SAN names, and Postgres says the device exists in
//! that branch and chain, is not revoked, and holds that certificate. A revocation watcher
//! closes live connections of revoked devices within [`QuicConfig::revocation_check_interval`].
//!
//! The door: at most [`QuicConfig::handshakes_max`] TLS handshakes run at once. A connection
//! arriving beyond that waits, in arrival order, up to [`QuicConfig::handshake_wait_max`] for a
//! handshake slot (quinn holds its first packets meanwhile, within the endpoint's
//! `max_incoming` and buffer limits), with at most [`QuicConfig::handshake_queue_max`] waiting;
//! a connection beyond the queue, or still waiting at the end of its wait, is refused (QUIC
//! `CONNECTION_REFUSED`, which the edge retries after a short random wait). So a fleet
//! reconnecting at once is served as fast as handshakes complete, while the work in flight and
//! the memory held for waiting connections stay bounded. Refusals are counted
//! ([`QuicHandle::handshakes_refused`]) and logged at most once per [`REFUSAL_LOG_INTERVAL`].
//! Admission after the handshake (`admission.rs`, `Busy{retry_after_ms}`) is a separate limit.
//! The UDP socket asks for [`SOCKET_BUFFER_BYTES`] buffers so such a burst is not dropped by
//! the kernel before quinn sees it.
//!
//! Close codes (application errors) are in [`close_code`]; the reason text says what to do.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cartwise_sync_core::identity::{
    ALPN_ENROLL, ALPN_RENEW, ALPN_SYNC, ChainCaRegistry, PeerIdentity, hub_server_config,
    inspect_certificate,
};
use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::CertificateDer;
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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
    /// Handshakes in progress at once; more wait for a slot (see `handshake_queue_max`).
    pub handshakes_max: usize,
    /// Connections waiting for a handshake slot at most; one arriving beyond this is refused
    /// at once (the edge retries after a short random wait).
    pub handshake_queue_max: usize,
    /// The longest a connection waits for a handshake slot before it is refused. Keep it well
    /// under the clients' connect timeout (10 s on the edge) so the handshake still fits.
    pub handshake_wait_max: Duration,
    /// How often live connections are checked for revocation (and new chain CAs loaded).
    pub revocation_check_interval: Duration,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0u16; 8], 4433)),
            handshakes_max: 256,
            handshake_queue_max: 4096,
            handshake_wait_max: Duration::from_secs(4),
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
/// Bytes quinn buffers per waiting connection beyond its first packet (the client's
/// retransmitted Initials while it waits: about 1.2 kB each, one every 1, 2, 4 s); more is
/// dropped and retransmitted by the client.
const INCOMING_BUFFER_BYTES: u64 = 16 * 1024;
/// Bytes quinn buffers for all waiting connections together.
const INCOMING_BUFFER_TOTAL_BYTES: u64 = 32 * 1024 * 1024;
/// The UDP socket buffers asked for, each way (the kernel caps them at `net.core.rmem_max` and
/// `wmem_max`). A fleet reconnecting at once arrives as a burst of Initials; the usual 208 kB
/// default overflows and drops them, and each drop costs a client a retransmission timeout.
const SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;
/// Refusals at the door are logged at most this often (with the count since the last line).
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

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
    door: Arc<Door>,
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

    /// Connections refused at the door since the start (handshake queue full, or waited
    /// [`QuicConfig::handshake_wait_max`] without a slot).
    pub fn handshakes_refused(&self) -> u64 {
        self.door.refused_total.load(Ordering::Relaxed)
    }

    /// Connections waiting for a handshake slot now.
    pub fn handshakes_waiting(&self) -> usize {
        self.door
            .queue_max
            .saturating_sub(self.door.queue.available_permits())
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
    // Connections quinn holds before the door decides: the waiting ones, plus a margin for
    // those not yet taken from `accept()`; beyond it quinn refuses by itself.
    server_config
        .max_incoming(config.handshake_queue_max + config.handshakes_max.max(1))
        .incoming_buffer_size(INCOMING_BUFFER_BYTES)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL_BYTES);
    let bind_error = |source| QuicError::Bind {
        addr: config.listen,
        source,
    };
    let socket = bind_udp(config.listen).map_err(bind_error)?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind_error)?;
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
    let door = Arc::new(Door::new(&config));
    let task = tokio::spawn(accept_loop(
        endpoint.clone(),
        hub,
        door.clone(),
        shutdown,
        watcher,
    ));
    tracing::info!(%local_addr, "hub QUIC endpoint listening");
    Ok(QuicHandle {
        local_addr,
        platform_ca_sha256: hub_identity.platform_ca.sha256_hex(),
        live,
        endpoint,
        door,
        task,
    })
}

/// Binds the endpoint's UDP socket with [`SOCKET_BUFFER_BYTES`] buffers (or what the kernel
/// allows: a smaller buffer is logged, not an error).
fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    if let Err(error) = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER_BYTES) {
        tracing::warn!(%error, "cannot enlarge the UDP receive buffer; bursts of reconnecting devices may be dropped");
    }
    if let Err(error) = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER_BYTES) {
        tracing::warn!(%error, "cannot enlarge the UDP send buffer");
    }
    tracing::info!(
        receive = state.recv_buffer_size((&socket).into()).unwrap_or(0),
        send = state.send_buffer_size((&socket).into()).unwrap_or(0),
        "UDP socket buffers (bytes as the kernel reports them, Linux: twice the usable size; \
         raise net.core.rmem_max/wmem_max for more)"
    );
    Ok(socket)
}

/// Where an arriving connection goes.
enum Entry {
    /// A handshake slot is free: start at once.
    Now(OwnedSemaphorePermit),
    /// Wait for a slot, holding this place in the queue.
    Wait(OwnedSemaphorePermit),
    /// The queue is full: refuse.
    Full,
}

/// The endpoint's door: handshake slots, a bounded queue for them, and the refusal count.
struct Door {
    /// One permit per handshake in progress.
    handshakes: Arc<Semaphore>,
    /// One permit per connection waiting for a handshake slot.
    queue: Arc<Semaphore>,
    queue_max: usize,
    wait_max: Duration,
    refused_total: AtomicU64,
    /// Refusals not logged yet, and when the last log line was written.
    refusal_log: Mutex<(u64, Option<Instant>)>,
}

impl Door {
    fn new(config: &QuicConfig) -> Self {
        Door {
            handshakes: Arc::new(Semaphore::new(config.handshakes_max.max(1))),
            queue: Arc::new(Semaphore::new(config.handshake_queue_max)),
            queue_max: config.handshake_queue_max,
            wait_max: config.handshake_wait_max,
            refused_total: AtomicU64::new(0),
            refusal_log: Mutex::new((0, None)),
        }
    }

    /// A slot now, a place in the queue, or neither. Tokio's semaphore is fair: a free slot
    /// goes to the longest-waiting connection before a newcomer can take it.
    fn enter(&self) -> Entry {
        if let Ok(slot) = self.handshakes.clone().try_acquire_owned() {
            Entry::Now(slot)
        } else if let Ok(place) = self.queue.clone().try_acquire_owned() {
            Entry::Wait(place)
        } else {
            Entry::Full
        }
    }

    /// Waits (holding `place`) for a handshake slot, at most `wait_max`; `None` if none came
    /// or the endpoint is shutting down.
    async fn wait(&self, place: OwnedSemaphorePermit) -> Option<OwnedSemaphorePermit> {
        let slot = tokio::time::timeout(self.wait_max, self.handshakes.clone().acquire_owned())
            .await
            .ok()?
            .ok();
        drop(place);
        slot
    }

    /// Refuses `incoming` (QUIC `CONNECTION_REFUSED`), counts it, and logs now and then.
    fn refuse(&self, incoming: quinn::Incoming, why: &'static str) {
        incoming.refuse();
        self.refused_total.fetch_add(1, Ordering::Relaxed);
        let Ok(mut log) = self.refusal_log.lock() else {
            return;
        };
        let (unlogged, last) = &mut *log;
        *unlogged += 1;
        if last.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_INTERVAL) {
            tracing::warn!(
                refused = *unlogged,
                total = self.refused_total.load(Ordering::Relaxed),
                why,
                "connections refused at the handshake limit; devices retry within seconds \
                 (if this persists, the hub needs more CPU or another hub process)"
            );
            *unlogged = 0;
            *last = Some(Instant::now());
        }
    }

    /// Ends every wait (the endpoint is shutting down).
    fn close(&self) {
        self.handshakes.close();
        self.queue.close();
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    hub: Arc<Hub>,
    door: Arc<Door>,
    shutdown: impl Future<Output = ()> + Send,
    watcher: JoinHandle<()>,
) {
    tokio::pin!(shutdown);
    loop {
        let incoming = tokio::select! {
            () = &mut shutdown => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        match door.enter() {
            Entry::Now(slot) => {
                tokio::spawn(handshake(hub.clone(), incoming, slot));
            }
            Entry::Wait(place) => {
                let (hub, door) = (hub.clone(), door.clone());
                tokio::spawn(async move {
                    match door.wait(place).await {
                        Some(slot) => handshake(hub, incoming, slot).await,
                        None if door.handshakes.is_closed() => incoming.refuse(),
                        None => door.refuse(incoming, "waited too long for a handshake slot"),
                    }
                });
            }
            Entry::Full => door.refuse(incoming, "the handshake queue is full"),
        }
    }
    door.close();
    watcher.abort();
    endpoint.close(close_code::SHUTDOWN.into(), b"hub shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle()).await;
}

/// Runs the TLS handshake of `incoming` holding `slot`, then serves the connection.
async fn handshake(hub: Arc<Hub>, incoming: quinn::Incoming, slot: OwnedSemaphorePermit) {
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
    drop(slot);
    serve_connection(hub, connection).await;
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
