//! The QUIC endpoint's door: connections beyond `handshakes_max` wait for a handshake slot
//! instead of being refused, and only a connection beyond the bounded queue is refused (QUIC
//! `CONNECTION_REFUSED`). Real loopback QUIC; enrollment connections (no client certificate)
//! stand in for any connection, since the door comes before the ALPN is looked at.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cartwise_cloud_hub::quic::{self, QuicConfig, QuicHandle};
use cartwise_sync_core::identity::{
    HUB_SERVER_NAME, enroll_client_config, parse_sha256_fingerprint,
};
use quinn::crypto::rustls::QuicClientConfig;
use sqlx::PgPool;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

/// A hub endpoint with these door settings and a wait long enough never to end here (these
/// tests are about order, not speed); dropping the sender stops it.
async fn hub(
    pool: &PgPool,
    handshakes_max: usize,
    handshake_queue_max: usize,
) -> (QuicHandle, oneshot::Sender<()>) {
    hub_waiting(
        pool,
        handshakes_max,
        handshake_queue_max,
        Duration::from_secs(120),
    )
    .await
}

async fn hub_waiting(
    pool: &PgPool,
    handshakes_max: usize,
    handshake_queue_max: usize,
    handshake_wait_max: Duration,
) -> (QuicHandle, oneshot::Sender<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let config = QuicConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        handshakes_max,
        handshake_queue_max,
        handshake_wait_max,
        ..QuicConfig::default()
    };
    let handle = quic::spawn(
        config,
        pool.clone(),
        quic::hold_open_handler(),
        async move {
            let _ = stopped.await;
        },
    )
    .await
    .unwrap();
    (handle, stop)
}

/// What an enrolling Pi presents: no certificate, the hub pinned by its platform CA.
fn client_config(handle: &QuicHandle) -> quinn::ClientConfig {
    let ca = parse_sha256_fingerprint(&handle.platform_ca_sha256).unwrap();
    let tls = enroll_client_config(ca).unwrap();
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()))
}

fn client_endpoint() -> quinn::Endpoint {
    quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap()
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn more_clients_than_handshake_slots_all_get_through(pool: PgPool) {
    const CLIENTS: usize = 40;
    let (handle, _stop) = hub(&pool, 4, 64).await;
    let config = client_config(&handle);
    let endpoint = client_endpoint();
    // Every client starts its handshake before any is awaited: ten times the slots at once.
    let connecting: Vec<quinn::Connecting> = (0..CLIENTS)
        .map(|_| {
            endpoint
                .connect_with(config.clone(), handle.local_addr, HUB_SERVER_NAME)
                .unwrap()
        })
        .collect();
    let mut connections = Vec::new();
    for (n, attempt) in connecting.into_iter().enumerate() {
        match attempt.await {
            Ok(connection) => connections.push(connection),
            Err(error) => panic!("client {n} of {CLIENTS} did not get through: {error}"),
        }
    }
    assert_eq!(connections.len(), CLIENTS);
    assert_eq!(handle.handshakes_refused(), 0);
    assert_eq!(handle.handshakes_waiting(), 0);
    for connection in &connections {
        connection.close(0u32.into(), b"done");
    }
}

/// A real client's handshake whose packets pass through a relay that holds them: the client's
/// first packet is forwarded to the hub, the hub's answer is kept back until [`release`],
/// so the hub's handshake slot stays taken. [`stall`] returns once the hub has answered (the
/// slot is taken: the hub answers only a connection it accepted).
struct Stalled {
    relay: UdpSocket,
    client: SocketAddr,
    hub: SocketAddr,
    held: Vec<u8>,
    connecting: quinn::Connecting,
}

async fn stall(handle: &QuicHandle, endpoint: &quinn::Endpoint) -> Stalled {
    let relay = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let connecting = endpoint
        .connect_with(
            client_config(handle),
            relay.local_addr().unwrap(),
            HUB_SERVER_NAME,
        )
        .unwrap();
    let mut buf = vec![0u8; 65_536];
    let (len, client) = relay.recv_from(&mut buf).await.unwrap();
    relay.send_to(&buf[..len], handle.local_addr).await.unwrap();
    let held = loop {
        let (len, from) = relay.recv_from(&mut buf).await.unwrap();
        if from == handle.local_addr {
            break buf[..len].to_vec();
        }
        // The client's retransmissions while the hub has not answered yet.
    };
    Stalled {
        relay,
        client,
        hub: handle.local_addr,
        held,
        connecting,
    }
}

impl Stalled {
    /// Lets the held handshake go on: the relay forwards both ways from now on.
    fn release(self) -> (tokio::task::JoinHandle<()>, quinn::Connecting) {
        let Stalled {
            relay,
            client,
            hub,
            held,
            connecting,
        } = self;
        let forward = tokio::spawn(async move {
            let _ = relay.send_to(&held, client).await;
            let mut buf = vec![0u8; 65_536];
            while let Ok((len, from)) = relay.recv_from(&mut buf).await {
                let to = if from == hub { client } else { hub };
                let _ = relay.send_to(&buf[..len], to).await;
            }
        });
        (forward, connecting)
    }
}

fn is_refusal(result: &Result<quinn::Connection, quinn::ConnectionError>) -> bool {
    matches!(result, Err(quinn::ConnectionError::ConnectionClosed(close))
        if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn beyond_the_queue_the_door_refuses(pool: PgPool) {
    // One slot, no queue: a second connection while the first handshake runs is refused.
    let (handle, _stop) = hub(&pool, 1, 0).await;
    let endpoint = client_endpoint();
    let _stalled = stall(&handle, &endpoint).await;
    let second = endpoint
        .connect_with(client_config(&handle), handle.local_addr, HUB_SERVER_NAME)
        .unwrap()
        .await;
    assert!(
        is_refusal(&second),
        "expected a refusal at the door, got {second:?}"
    );
    assert_eq!(handle.handshakes_refused(), 1);
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_connection_waits_for_the_slot_and_only_beyond_the_queue_is_refused(pool: PgPool) {
    // One slot, taken by a stalled handshake; room for one waiting connection.
    let (handle, _stop) = hub(&pool, 1, 1).await;
    let endpoint = client_endpoint();
    let stalled = stall(&handle, &endpoint).await;
    let config = client_config(&handle);
    let waiting = tokio::spawn(
        endpoint
            .connect_with(config.clone(), handle.local_addr, HUB_SERVER_NAME)
            .unwrap(),
    );
    // The hub's own gauge says when the second connection is queued (no timing involved).
    while handle.handshakes_waiting() == 0 {
        tokio::task::yield_now().await;
    }
    // The queue is full: a third connection is refused at once.
    let third = endpoint
        .connect_with(config, handle.local_addr, HUB_SERVER_NAME)
        .unwrap()
        .await;
    assert!(is_refusal(&third), "expected a refusal, got {third:?}");
    assert_eq!(handle.handshakes_refused(), 1);
    assert!(
        !waiting.is_finished(),
        "the queued connection ran without a slot"
    );
    // The first handshake completes and frees its slot; the queued one gets it.
    let (_relay, first) = stalled.release();
    let first = first
        .await
        .expect("the stalled handshake completes once released");
    let second = waiting
        .await
        .unwrap()
        .expect("the queued connection gets the freed slot");
    assert_eq!(handle.handshakes_waiting(), 0);
    assert_eq!(handle.handshakes_refused(), 1);
    first.close(0u32.into(), b"done");
    second.close(0u32.into(), b"done");
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_connection_that_waited_its_limit_without_a_slot_is_refused(pool: PgPool) {
    // The only slot stays taken for the whole test; a queued connection's wait must end.
    let (handle, _stop) = hub_waiting(&pool, 1, 8, Duration::ZERO).await;
    let endpoint = client_endpoint();
    let _stalled = stall(&handle, &endpoint).await;
    let queued = endpoint
        .connect_with(client_config(&handle), handle.local_addr, HUB_SERVER_NAME)
        .unwrap()
        .await;
    assert!(
        is_refusal(&queued),
        "expected a refusal after the wait, got {queued:?}"
    );
    assert_eq!(handle.handshakes_refused(), 1);
    assert_eq!(handle.handshakes_waiting(), 0);
}
