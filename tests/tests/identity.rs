//! Device identity end to end over real QUIC on loopback, against a real Postgres: enrollment
//! (happy path, used / expired code, wrong CA pin), renewal, revocation at connect and while
//! connected, and tenant isolation (another chain's valid certificate is refused by a branch
//! peer and cannot pass as this chain at the hub).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cartwise_cloud_hub::quic::{self, QuicConfig, QuicHandle, SyncHandler, close_code};
use cartwise_cloud_hub::{enroll, pki};
use cartwise_edge_node::identity::{self, EdgeIdentity, ExchangeError, RenewOutcome};
use cartwise_schema::{BranchId, ChainId};
use cartwise_sync_core::identity::{
    Granted, HUB_SERVER_NAME, PeerIdentity, device_csr_params, parse_sha256_fingerprint,
};
use cartwise_tests::trust_any_server_client;
use sqlx::PgPool;
use tokio::sync::mpsc;

/// A hub endpoint on loopback whose sync handler reports each authenticated device.
struct Hub {
    handle: QuicHandle,
    addr: String,
    ca: [u8; 32],
    connected: mpsc::Receiver<PeerIdentity>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start_hub(pool: &PgPool) -> Hub {
    let (tx, connected) = mpsc::channel(16);
    let handler: SyncHandler = Arc::new(move |connection: quinn::Connection, peer| {
        let tx = tx.clone();
        Box::pin(async move {
            let _ = tx.send(peer).await;
            connection.closed().await;
        })
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = QuicConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..QuicConfig::default()
    };
    let handle = quic::spawn(config, pool.clone(), handler, async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    Hub {
        addr: handle.local_addr.to_string(),
        ca: parse_sha256_fingerprint(&handle.platform_ca_sha256).unwrap(),
        handle,
        connected,
        _stop: stop,
    }
}

/// A chain with one branch whose code is `code`.
async fn branch(pool: &PgPool, code: &str) -> (ChainId, BranchId) {
    let chain: uuid::Uuid =
        sqlx::query_scalar("INSERT INTO chains (name, slug) VALUES ($1, $1) RETURNING id")
            .bind(format!("chain-{code}"))
            .fetch_one(pool)
            .await
            .unwrap();
    let branch: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO branches (chain_id, name, branch_code) VALUES ($1, $2, $2) RETURNING id",
    )
    .bind(chain)
    .bind(code)
    .fetch_one(pool)
    .await
    .unwrap();
    (ChainId::from_uuid(chain), BranchId::from_uuid(branch))
}

/// Creates a device in `branch_code` and enrolls it over QUIC into `dir`.
async fn enrolled_device(pool: &PgPool, hub: &Hub, branch_code: &str, dir: &Path) -> EdgeIdentity {
    let new = enroll::add_device(pool, branch_code, "pi", enroll::CODE_TTL_DEFAULT)
        .await
        .unwrap();
    let endpoint = identity::client_endpoint().unwrap();
    identity::enroll_exchange(&endpoint, &hub.addr, &new.code.grouped(), hub.ca, dir)
        .await
        .unwrap()
}

async fn connect_sync(hub: &Hub, me: &EdgeIdentity) -> Result<quinn::Connection, ExchangeError> {
    let endpoint = identity::client_endpoint().unwrap();
    let config = identity::hub_client_config(me).unwrap();
    identity::connect(&endpoint, &hub.addr, config, HUB_SERVER_NAME).await
}

/// The application close code a connection ended with, waiting at most `within`.
async fn closed_with(connection: &quinn::Connection, within: Duration) -> Option<u64> {
    match tokio::time::timeout(within, connection.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => Some(close.error_code.into_inner()),
        Ok(other) => panic!("closed without an application code: {other}"),
        Err(_) => None,
    }
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn enrollment_over_quic_grants_the_right_identity_once(pool: PgPool) {
    let (chain, branch_id) = branch(&pool, "TLV-01").await;
    let mut hub = start_hub(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let new = enroll::add_device(&pool, "TLV-01", "pi-1", enroll::CODE_TTL_DEFAULT)
        .await
        .unwrap();
    let endpoint = identity::client_endpoint().unwrap();
    let me = identity::enroll_exchange(
        &endpoint,
        &hub.addr,
        &new.code.grouped(),
        hub.ca,
        dir.path(),
    )
    .await
    .unwrap();
    assert_eq!(
        me.peer(),
        PeerIdentity::device(chain, branch_id, new.device)
    );
    // Stored 0600 and loads back to the same identity.
    let path = identity::identity_path(dir.path());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(identity::load(dir.path()).unwrap().peer(), me.peer());
    // A key file others can read is refused, saying how to fix it.
    let loose = std::os::unix::fs::PermissionsExt::from_mode(0o644);
    std::fs::set_permissions(&path, loose).unwrap();
    let error = identity::load(dir.path()).unwrap_err();
    assert!(error.to_string().contains("chmod 600"), "{error}");
    let tight = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    std::fs::set_permissions(&path, tight).unwrap();

    // The certificate opens a sync connection; the hub hands the handler the same identity.
    let connection = connect_sync(&hub, &me).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), hub.connected.recv()).await;
    assert_eq!(seen.unwrap().unwrap(), me.peer());
    connection.close(0u32.into(), b"bye");

    // The same code again: refused, saying so.
    let other = tempfile::tempdir().unwrap();
    let used = identity::enroll_exchange(
        &endpoint,
        &hub.addr,
        &new.code.grouped(),
        hub.ca,
        other.path(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&used, ExchangeError::Refused(m) if m.contains("already used")),
        "{used}"
    );
    assert!(
        identity::load(other.path()).is_err(),
        "nothing stored on refusal"
    );
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn expired_codes_and_wrong_ca_pins_are_refused(pool: PgPool) {
    branch(&pool, "HFA-02").await;
    let hub = start_hub(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = identity::client_endpoint().unwrap();
    let new = enroll::add_device(&pool, "HFA-02", "pi-1", Duration::from_secs(600))
        .await
        .unwrap();

    let mut wrong = hub.ca;
    wrong[0] ^= 0xff;
    let error =
        identity::enroll_exchange(&endpoint, &hub.addr, &new.code.grouped(), wrong, dir.path())
            .await
            .unwrap_err();
    assert!(matches!(error, ExchangeError::WrongCa { .. }), "{error}");
    assert!(error.to_string().contains("wrong --ca"), "{error}");

    sqlx::query("UPDATE enrollment_codes SET expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    let expired = identity::enroll_exchange(
        &endpoint,
        &hub.addr,
        &new.code.grouped(),
        hub.ca,
        dir.path(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&expired, ExchangeError::Refused(m) if m.contains("expired")),
        "{expired}"
    );
    let unknown = identity::enroll_exchange(
        &endpoint,
        &hub.addr,
        "0000-0000-0000-0000-0000",
        hub.ca,
        dir.path(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&unknown, ExchangeError::Refused(m) if m.contains("unknown enrollment code")),
        "{unknown}"
    );
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_revoked_device_is_dropped_within_seconds_and_refused_at_connect(pool: PgPool) {
    branch(&pool, "EIL-03").await;
    let mut hub = start_hub(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let me = enrolled_device(&pool, &hub, "EIL-03", dir.path()).await;
    let connection = connect_sync(&hub, &me).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), hub.connected.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hub.handle.live.devices(), vec![me.peer().device]);

    let revoked_at = Instant::now();
    pki::revoke_device(&pool, me.peer().device).await.unwrap();
    let code = closed_with(&connection, Duration::from_secs(5)).await;
    assert_eq!(
        code,
        Some(u64::from(close_code::REVOKED)),
        "disconnected with REVOKED"
    );
    let took = revoked_at.elapsed();
    assert!(took < Duration::from_secs(5), "disconnected after {took:?}");

    // Reconnecting: TLS still verifies (the certificate is genuine), the hub closes at once.
    let again = connect_sync(&hub, &me).await.unwrap();
    let code = closed_with(&again, Duration::from_secs(5)).await;
    assert_eq!(code, Some(u64::from(close_code::REVOKED)));
    assert!(
        hub.connected.try_recv().is_err(),
        "the handler never saw the revoked device"
    );
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn certificates_renew_with_the_same_identity(pool: PgPool) {
    branch(&pool, "JLM-04").await;
    let mut hub = start_hub(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let me = enrolled_device(&pool, &hub, "JLM-04", dir.path()).await;
    let endpoint = identity::client_endpoint().unwrap();
    let now = me.credentials.not_before_unix + 3600;
    let outcome = identity::renew_if_due(&endpoint, dir.path(), now)
        .await
        .unwrap();
    assert!(
        matches!(outcome, RenewOutcome::NotDue { .. }),
        "{outcome:?}"
    );

    let late = me.credentials.not_after_unix - 24 * 3600;
    let outcome = identity::renew_if_due(&endpoint, dir.path(), late)
        .await
        .unwrap();
    assert!(
        matches!(outcome, RenewOutcome::Renewed { .. }),
        "{outcome:?}"
    );
    let renewed = identity::load(dir.path()).unwrap();
    assert_eq!(renewed.peer(), me.peer());
    assert_ne!(renewed.credentials.cert, me.credentials.cert);
    let issued: i64 = sqlx::query_scalar("SELECT count(*) FROM device_certificates")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(issued, 2);
    // The renewed certificate opens a sync connection.
    let _connection = connect_sync(&hub, &renewed).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), hub.connected.recv()).await;
    assert_eq!(seen.unwrap().unwrap(), me.peer());
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn another_chains_device_is_refused_by_branch_peers_and_the_hub(pool: PgPool) {
    let (chain_a, branch_a) = branch(&pool, "A-01").await;
    branch(&pool, "B-01").await;
    let mut hub = start_hub(&pool).await;
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let a1 = enrolled_device(&pool, &hub, "A-01", dirs[0].path()).await;
    let a2 = enrolled_device(&pool, &hub, "A-01", dirs[1].path()).await;
    let b1 = enrolled_device(&pool, &hub, "B-01", dirs[2].path()).await;

    // Pi A1 serves its branch on the LAN.
    let server = quinn::Endpoint::server(
        identity::lan_server_config(&a1).unwrap(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .unwrap();
    let lan = server.local_addr().unwrap().to_string();
    let accept = tokio::spawn(async move {
        let mut peers = Vec::new();
        while let Some(incoming) = server.accept().await {
            if let Ok(connection) = incoming.await {
                peers.push(identity::peer_identity(&connection));
                if peers.len() == 1 {
                    return peers;
                }
            }
        }
        peers
    });
    let endpoint = identity::client_endpoint().unwrap();
    let lan_connect = |who: &EdgeIdentity| {
        let config = identity::lan_client_config(who).unwrap();
        let (endpoint, lan) = (endpoint.clone(), lan.clone());
        async move { identity::connect(&endpoint, &lan, config, identity::LAN_SERVER_NAME).await }
    };
    // B1 presents its valid certificate, of another chain, with a client that accepts any
    // server (so only A1's check can stop it): A1 refuses the handshake.
    let b1_client = trust_any_server_client(&b1);
    let connecting = endpoint
        .connect_with(b1_client, lan.parse().unwrap(), "peer")
        .unwrap();
    assert_refused(connecting).await;
    // B1's own client refuses A1 too (A1 is not of B's chain CA nor of B's branch).
    let refused = lan_connect(&b1).await.unwrap_err();
    assert!(refused.to_string().contains("UnknownIssuer"), "{refused}");
    // A2, same branch: accepted, and A1 sees who it is.
    let _a2_connection = lan_connect(&a2).await.unwrap();
    let peers = tokio::time::timeout(Duration::from_secs(5), accept)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peers, vec![Some(a2.peer())]);

    // B1's legitimate certificate works at the hub, as chain B.
    let _b1_connection = connect_sync(&hub, &b1).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), hub.connected.recv()).await;
    assert_eq!(seen.unwrap().unwrap(), b1.peer());

    // A certificate claiming chain A, signed by chain B's CA (as a compromised chain B could):
    // the hub verifies it against chain A's CA and refuses it.
    let ca_b = pki::load_or_create_chain_ca(&pool, b1.peer().chain)
        .await
        .unwrap();
    let claimed = PeerIdentity::device(chain_a, branch_a, a1.peer().device);
    let key = rcgen_key_pem_and_csr();
    let forged = pki::sign_device_csr(&ca_b, &key.1, &claimed, now_unix()).unwrap();
    let granted = Granted {
        cert_chain_pem: forged.cert_chain_pem,
        platform_ca_pem: pki::load_or_create_platform_ca(&pool)
            .await
            .unwrap()
            .cert_pem,
        chain_id: chain_a,
        branch_id: branch_a,
        device_id: a1.peer().device,
    };
    let impostor = identity::store(dirs[3].path(), &granted, &key.0, &hub.addr, None).unwrap();
    let config = identity::hub_client_config(&impostor).unwrap();
    let addr: SocketAddr = hub.addr.parse().unwrap();
    assert_refused(
        endpoint
            .connect_with(config, addr, HUB_SERVER_NAME)
            .unwrap(),
    )
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), hub.connected.recv())
            .await
            .is_err(),
        "the hub never handed the impostor to the sync handler"
    );
}

/// Asserts a handshake fails: either the connection never establishes, or it is closed by
/// the TLS layer (not by an application) right after.
async fn assert_refused(connecting: quinn::Connecting) {
    match tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .unwrap()
    {
        Err(error) => assert!(error.to_string().contains("handshake"), "{error}"),
        Ok(connection) => {
            let error = tokio::time::timeout(Duration::from_secs(5), connection.closed())
                .await
                .unwrap();
            assert!(error.to_string().contains("UnknownIssuer"), "{error}");
        }
    }
}

/// A device key (PEM) and a certificate request for it.
fn rcgen_key_pem_and_csr() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = device_csr_params()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    (key.serialize_pem(), csr)
}

fn now_unix() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_secs()).unwrap()
}
