//! CartWise cross-crate and fault tests live in `tests/tests/`; this library holds the setup
//! they share: the seeded world, a hub QUIC endpoint with the real sync server, enrolling a Pi,
//! and a station (simulated boards + an edge daemon) on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod technician;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cartwise_cloud_hub::clock::HubClock;
use cartwise_cloud_hub::quic::{self, QuicConfig, QuicHandle};
use cartwise_cloud_hub::sync_server::SyncServer;
use cartwise_cloud_hub::{enroll, seed, world::World};
use cartwise_edge_node::config::EdgeConfig;
use cartwise_edge_node::daemon::{self, RunningEdge};
use cartwise_edge_node::identity::{self, EdgeIdentity};
use cartwise_edge_node::sim_board::{self, Listen, SimHandle, SimOptions};
use cartwise_fixtures::clock::ManualClock;
use cartwise_schema::{BranchId, DeviceId};
use cartwise_sync_core::identity::parse_sha256_fingerprint;
use sqlx::PgPool;
use tokio::sync::oneshot;

/// Upper bound on any wait in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Polls `check` until it holds; fails the test after `WAIT`.
pub async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Seeds the sample world.
pub async fn seed_world(pool: &PgPool) {
    let text = std::fs::read_to_string(cartwise_fixtures::world_path()).unwrap();
    seed::seed(pool, &World::parse(&text).unwrap())
        .await
        .unwrap();
}

/// A hub QUIC endpoint on loopback serving the real sync server; stops when dropped.
pub struct Hub {
    pub handle: QuicHandle,
    _stop: oneshot::Sender<()>,
}

/// Starts the hub's QUIC endpoint with the real sync server.
pub async fn start_hub(pool: &PgPool) -> Hub {
    start_hub_at(pool, loopback()).await
}

/// Starts the hub's QUIC endpoint with the real sync server on `listen` (e.g. the address a
/// stopped hub had, which enrolled edges dial).
pub async fn start_hub_at(pool: &PgPool, listen: SocketAddr) -> Hub {
    let server = SyncServer::new(pool.clone(), Arc::new(HubClock::new()));
    let (stop, stopped) = oneshot::channel::<()>();
    let config = QuicConfig {
        listen,
        ..QuicConfig::default()
    };
    let handle = quic::spawn(config, pool.clone(), server.handler(), async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    Hub {
        handle,
        _stop: stop,
    }
}

impl Hub {
    /// Stops the hub's endpoint and waits until it has shut down; returns its address.
    pub async fn stop(self) -> SocketAddr {
        let addr = self.handle.local_addr;
        let _ = self._stop.send(());
        self.handle.stopped().await;
        addr
    }
}

/// Creates a device in `branch_code` and enrolls it over QUIC into `dir`.
pub async fn enroll_device(
    pool: &PgPool,
    hub: &Hub,
    branch_code: &str,
    name: &str,
    dir: &Path,
) -> EdgeIdentity {
    let new = enroll::add_device(pool, branch_code, name, enroll::CODE_TTL_DEFAULT)
        .await
        .unwrap();
    let ca = parse_sha256_fingerprint(&hub.handle.platform_ca_sha256).unwrap();
    let endpoint = identity::client_endpoint().unwrap();
    identity::enroll_exchange(
        &endpoint,
        &hub.handle.local_addr.to_string(),
        &new.code.grouped(),
        ca,
        dir,
    )
    .await
    .unwrap()
}

/// Simulated boards and an edge daemon on them, with a manual clock.
pub struct Station {
    pub sim: SimHandle,
    pub edge: Option<RunningEdge>,
    pub clock: Arc<ManualClock>,
    edge_stop: Option<oneshot::Sender<()>>,
    _sim_stop: oneshot::Sender<()>,
}

impl Station {
    /// Starts `boards` simulated boards (carts taken 50 ms after each unlock) and the edge of
    /// `device` in `branch` with its data in `dir`; waits for its first board reads.
    pub async fn start(
        dir: &Path,
        device: DeviceId,
        branch: BranchId,
        boards: u8,
        wall_ms: i64,
    ) -> Station {
        Self::start_with(dir, device, branch, boards, wall_ms, |_| {}).await
    }

    /// [`Station::start`] with the edge's config adjusted by `adjust` (LAN peers, post numbers).
    pub async fn start_with(
        dir: &Path,
        device: DeviceId,
        branch: BranchId,
        boards: u8,
        wall_ms: i64,
        adjust: impl FnOnce(&mut EdgeConfig),
    ) -> Station {
        let (sim_stop, sim_stopped) = oneshot::channel::<()>();
        let options = SimOptions {
            boards,
            listen: Listen::Tcp(loopback()),
            auto_take: Some(Duration::from_millis(50)),
            ..SimOptions::default()
        };
        let sim = sim_board::spawn(options, async move {
            let _ = sim_stopped.await;
        })
        .await
        .unwrap();
        let mut config = EdgeConfig {
            data_dir: dir.to_path_buf(),
            ..EdgeConfig::default()
        };
        config.device.id = device;
        config.device.branch_id = branch;
        config.http.listen = loopback();
        config.bus.uri = sim.bus_uri().to_string();
        config.bus.boards = (0..boards).collect();
        config.bus.poll_interval_ms = 100;
        adjust(&mut config);
        let clock = Arc::new(ManualClock::new(wall_ms));
        let (edge_stop, edge_stopped) = oneshot::channel::<()>();
        let edge = daemon::spawn(config, clock.clone(), async move {
            let _ = edge_stopped.await;
        })
        .await
        .unwrap();
        let engine = edge.engine.clone();
        eventually("the lock bus", || async { engine.bus_connected() }).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        Station {
            sim,
            edge: Some(edge),
            clock,
            edge_stop: Some(edge_stop),
            _sim_stop: sim_stop,
        }
    }

    /// The edge's engine.
    pub fn engine(&self) -> Arc<cartwise_edge_node::engine::Engine> {
        self.edge.as_ref().map(|e| e.engine.clone()).unwrap()
    }

    /// Waits until the cart at `post` has left it.
    pub async fn wait_taken(&self, post: cartwise_schema::PostNo) {
        let engine = self.engine();
        eventually("the cart to leave", || {
            let engine = engine.clone();
            async move {
                engine
                    .posts()
                    .await
                    .unwrap()
                    .iter()
                    .any(|p| p.post == post && p.present == Some(false))
            }
        })
        .await;
    }

    /// Lends a cart to `phone` at this edge, waits for it to leave, docks it back at the post
    /// the kiosk names, and waits for the return: one whole rental, acknowledged both ways.
    pub async fn lend_and_return(&self, phone: &str) -> cartwise_schema::RentalId {
        use cartwise_edge_node::cu16::Lock;
        use cartwise_edge_node::engine::ReturnState;
        let engine = self.engine();
        let shopper = cartwise_schema::Phone::parse(phone).unwrap();
        let lent = engine.lend(&shopper).await.unwrap();
        self.wait_taken(lent.post.post).await;
        let slot = engine.initiate_return(&shopper).await.unwrap();
        let (_, _, lock) = *engine
            .config()
            .layout
            .posts()
            .iter()
            .find(|(post, _, _)| *post == slot.post)
            .unwrap();
        let lock = Lock::new(lock.get()).unwrap();
        self.sim
            .sim()
            .with_bus(|bus, now| bus.dock(now, 0, lock))
            .unwrap();
        eventually("the return", || {
            let (engine, shopper) = (engine.clone(), shopper.clone());
            async move {
                matches!(
                    engine.return_state(&shopper).await,
                    Ok(ReturnState::Returned { .. })
                )
            }
        })
        .await;
        lent.rental.id
    }

    /// Stops the edge cleanly.
    pub async fn stop(mut self) {
        if let (Some(stop), Some(edge)) = (self.edge_stop.take(), self.edge.take()) {
            let _ = stop.send(());
            edge.wait().await;
        }
    }
}

/// A sync client presenting `who`'s certificate that accepts any server certificate: a test
/// double for a peer that skips its own checks.
pub fn trust_any_server_client(who: &EdgeIdentity) -> quinn::ClientConfig {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AnyServer(Arc<rustls::crypto::CryptoProvider>);
    impl ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algs = &self.0.signature_verification_algorithms;
            rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algs = &self.0.signature_verification_algorithms;
            rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(
            vec![who.credentials.cert.clone()],
            who.credentials.key.clone_key(),
        )
        .unwrap();
    tls.alpn_protocols = vec![cartwise_sync_core::identity::ALPN_SYNC.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// A binary of the workspace, next to the running test's own directory (`target/<profile>/`).
/// Cargo builds it when the whole workspace's tests are built; a narrower run needs it built
/// first, which the panic message says how to do.
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is not built; build it first: cargo build --locked --bin {name}",
        bin.display()
    );
    bin
}

/// [`enroll_device`] dialing the hub at `dial` (e.g. a fault proxy in front of it): the
/// enrolled identity then names `dial` as its hub, so every later session goes that way.
pub async fn enroll_device_via(
    pool: &PgPool,
    hub: &Hub,
    dial: SocketAddr,
    branch_code: &str,
    name: &str,
    dir: &Path,
) -> EdgeIdentity {
    let new = enroll::add_device(pool, branch_code, name, enroll::CODE_TTL_DEFAULT)
        .await
        .unwrap();
    let ca = parse_sha256_fingerprint(&hub.handle.platform_ca_sha256).unwrap();
    let endpoint = identity::client_endpoint().unwrap();
    identity::enroll_exchange(&endpoint, &dial.to_string(), &new.code.grouped(), ca, dir)
        .await
        .unwrap()
}
