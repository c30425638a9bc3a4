//! Telemetry end to end and the hub's admission control, over real QUIC with mutual TLS:
//! an edge's lock faults and status reach Postgres and leave the edge's outbox once the hub
//! acknowledges them; a hub at its session limit answers `Busy` with a wait, and the deferred
//! device gets in when it retries after a slot frees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use cartwise_cloud_hub::admission::AdmissionConfig;
use cartwise_cloud_hub::clock::HubClock;
use cartwise_cloud_hub::enroll;
use cartwise_cloud_hub::quic::{self, QuicConfig, QuicHandle};
use cartwise_cloud_hub::sync_server::SyncServer;
use cartwise_edge_node::cu16::{BoardAddress, Lock};
use cartwise_edge_node::identity::{self, EdgeIdentity};
use cartwise_edge_node::sim_board::Fault;
use cartwise_schema::{Clock, Phone};
use cartwise_sync_core::identity::{HUB_SERVER_NAME, parse_sha256_fingerprint};
use cartwise_sync_core::message::body::Role;
use cartwise_sync_core::session::LocalIdentity;
use cartwise_sync_core::{CloseReason, Output, Session, SessionConfig, SessionEvent, Side};
use cartwise_tests::{Station, WAIT, enroll_device, eventually, seed_world, start_hub};
use sqlx::PgPool;
use tokio::sync::oneshot;

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn lock_faults_and_status_reach_the_hub_and_leave_the_outbox(pool: PgPool) {
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let peer = enroll_device(&pool, &hub, "ST-RA", "st-ra-pi-7", dir.path())
        .await
        .peer();
    let station = Station::start(dir.path(), peer.device, peer.branch, 1, 1_795_248_000_000).await;
    let engine = station.engine();
    // Every lock of the board jams: the lend fails, each post tried is a lock fault.
    station.sim.sim().with_bus(|bus, _| {
        for lock in 1..=16 {
            bus.inject(Fault::Jam {
                board: BoardAddress::new(0).unwrap(),
                lock: Lock::new(lock).unwrap(),
            })
            .unwrap();
        }
    });
    let phone = Phone::parse("0521234567").unwrap();
    assert!(engine.lend(&phone).await.is_err());

    eventually("the faults and the status snapshot in Postgres", || {
        let pool = pool.clone();
        async move {
            let kinds: Vec<String> = sqlx::query_scalar(
                "SELECT event_type FROM telemetry WHERE device_id = $1 ORDER BY id",
            )
            .bind(*peer.device.as_uuid())
            .fetch_all(&pool)
            .await
            .unwrap();
            kinds.iter().any(|k| k == "anomaly.unlock_not_opened")
                && kinds.iter().any(|k| k == "status")
        }
    })
    .await;
    let status: serde_json::Value = sqlx::query_scalar(
        "SELECT event_data FROM telemetry WHERE device_id = $1 AND event_type = 'status'",
    )
    .bind(*peer.device.as_uuid())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(status["posts"]["total"], 16);

    // The hub acknowledged every batch: the edge's outbox empties (at its next flush).
    eventually("the outbox to empty", || {
        let engine = engine.clone();
        async move {
            let rows: i64 = engine
                .store()
                .read(
                    |conn, _| Ok(conn.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?),
                )
                .await
                .unwrap();
            rows == 0
        }
    })
    .await;
    station.stop().await;
}

/// A hub whose admission holds `sessions_max` sessions; stops when `_stop` drops.
struct BusyHub {
    handle: QuicHandle,
    _stop: oneshot::Sender<()>,
}

async fn start_busy_hub(pool: &PgPool, sessions_max: usize) -> BusyHub {
    let server = SyncServer::new(pool.clone(), Arc::new(HubClock::new()));
    server.admission().configure(AdmissionConfig {
        sessions_max,
        admitting_max: sessions_max,
        retry_after_ms: 200,
        ..AdmissionConfig::default()
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let config = QuicConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..QuicConfig::default()
    };
    let handle = quic::spawn(config, pool.clone(), server.handler(), async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    BusyHub {
        handle,
        _stop: stop,
    }
}

async fn enroll_at(pool: &PgPool, hub: &QuicHandle, name: &str, dir: &Path) -> EdgeIdentity {
    let new = enroll::add_device(pool, "ST-RA", name, enroll::CODE_TTL_DEFAULT)
        .await
        .unwrap();
    let ca = parse_sha256_fingerprint(&hub.platform_ca_sha256).unwrap();
    let endpoint = identity::client_endpoint().unwrap();
    identity::enroll_exchange(
        &endpoint,
        &hub.local_addr.to_string(),
        &new.code.grouped(),
        ca,
        dir,
    )
    .await
    .unwrap()
}

/// An open session of a device with the hub (or how it ended).
struct Attempt {
    outcome: Result<(), CloseReason>,
    _conn: quinn::Connection,
    _send: quinn::SendStream,
    _recv: quinn::RecvStream,
}

/// Connects as `identity` and runs the handshake: `Ok` once admitted, else why it closed.
async fn attempt(identity: &EdgeIdentity) -> Attempt {
    let clock = HubClock::new();
    let endpoint = identity::client_endpoint().unwrap();
    let config = identity::hub_client_config(identity).unwrap();
    let conn = identity::connect(&endpoint, &identity.hub, config, HUB_SERVER_NAME)
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let peer = identity.peer();
    let local = LocalIdentity {
        role: Role::Device,
        chain: peer.chain,
        branch: Some(peer.branch),
        device: Some(peer.device),
        schema_version: 1,
    };
    let mut session = Session::new(SessionConfig::new(Side::Initiator), local, clock.read());
    let mut buf = vec![0u8; 64 * 1024];
    let outcome = loop {
        let mut ended = None;
        while let Some(output) = session.poll_output() {
            match output {
                Output::Send(bytes) => send.write_all(&bytes).await.unwrap(),
                Output::Event(SessionEvent::Established { .. }) => ended = Some(Ok(())),
                Output::Event(SessionEvent::Closed(reason)) => ended = Some(Err(reason)),
                Output::Event(_) => {}
            }
        }
        if let Some(outcome) = ended {
            break outcome;
        }
        let read = tokio::time::timeout(WAIT, recv.read(&mut buf))
            .await
            .expect("the hub answered the Hello");
        match read.unwrap() {
            Some(n) => session.handle_bytes(clock.read(), &buf[..n]).unwrap(),
            None => panic!("the hub closed the stream without an answer"),
        }
    };
    Attempt {
        outcome,
        _conn: conn,
        _send: send,
        _recv: recv,
    }
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_full_hub_says_come_back_later_and_the_device_gets_in_when_a_slot_frees(pool: PgPool) {
    seed_world(&pool).await;
    let hub = start_busy_hub(&pool, 1).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = enroll_at(&pool, &hub.handle, "st-ra-pi-a", dir_a.path()).await;
    let b = enroll_at(&pool, &hub.handle, "st-ra-pi-b", dir_b.path()).await;

    let first = attempt(&a).await;
    assert_eq!(first.outcome, Ok(()), "the first device is admitted");

    let deferred = attempt(&b).await;
    let Err(CloseReason::Busy { retry_after_ms }) = deferred.outcome else {
        panic!("expected Busy, got {:?}", deferred.outcome);
    };
    // The configured 200 ms at least, grown with the overload, plus jitter.
    assert!(
        (200..=300_000).contains(&retry_after_ms),
        "{retry_after_ms}"
    );

    // The first device leaves; the deferred one retries and is admitted.
    drop(first);
    drop(deferred);
    eventually("the deferred device to get in", || {
        let b = b.clone();
        async move { attempt(&b).await.outcome.is_ok() }
    })
    .await;
}
