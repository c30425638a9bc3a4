//! Two Pis of one branch on the LAN, with the hub down: a rental started on one and returned on
//! the other is closed on both; a Pi of another branch is refused at connect; a peer cannot
//! write another Pi's document through its session.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use automerge::AutoCommit;
use automerge::transaction::Transactable;
use cartwise_edge_node::cu16::Lock;
use cartwise_edge_node::engine::{LendError, RentalFilter, ReturnState};
use cartwise_edge_node::identity::{self, EdgeIdentity};
use cartwise_schema::{Clock, Phone, RentalStatus};
use cartwise_sync_core::facts::read_device_doc;
use cartwise_sync_core::message::body::{ErrorBody, Role};
use cartwise_sync_core::session::LocalIdentity;
use cartwise_sync_core::{
    DocId, HubActors, Message, Output, PeerDocState, Session, SessionConfig, SessionEvent, Side,
    device_actor, error_code,
};
use cartwise_tests::{
    Station, WAIT, enroll_device, eventually, seed_world, start_hub, trust_any_server_client,
};
use sqlx::PgPool;

const WALL: i64 = 1_795_248_000_000;

fn listening(config: &mut cartwise_edge_node::config::EdgeConfig) {
    config.lan.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
}

fn lan_addr(station: &Station) -> SocketAddr {
    station.edge.as_ref().unwrap().lan.unwrap()
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_rental_started_on_one_pi_and_returned_on_another_closes_on_both(pool: PgPool) {
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = enroll_device(&pool, &hub, "ST-RA", "st-ra-lan-a", dir_a.path())
        .await
        .peer();
    let b = enroll_device(&pool, &hub, "ST-RA", "st-ra-lan-b", dir_b.path())
        .await
        .peer();
    // The hub goes away: only the LAN is left.
    drop(hub);

    let pi_a = Station::start_with(dir_a.path(), a.device, a.branch, 1, WALL, listening).await;
    let a_addr = lan_addr(&pi_a).to_string();
    let pi_b = Station::start_with(dir_b.path(), b.device, b.branch, 1, WALL, move |config| {
        config.lan.peers = vec![a_addr];
        config.bus.first_post_number = 17;
    })
    .await;
    let (engine_a, engine_b) = (pi_a.engine(), pi_b.engine());

    // A lends a cart to the shopper.
    let shopper = Phone::parse("0521234567").unwrap();
    let lent = engine_a.lend(&shopper).await.unwrap();
    pi_a.wait_taken(lent.post.post).await;
    // B lends one to someone else, so B has an empty post to take the return.
    let other = Phone::parse("0547654321").unwrap();
    let lent_b = engine_b.lend(&other).await.unwrap();
    pi_b.wait_taken(lent_b.post.post).await;

    // B learns A's rental over the LAN: the shopper may return there, and may not rent there.
    let deadline = tokio::time::Instant::now() + WAIT;
    let slot = loop {
        match engine_b.initiate_return(&shopper).await {
            Ok(slot) => break slot,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "B never learned A's rental: {error}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(slot.rental, lent.rental.id);
    assert_eq!(slot.post, lent_b.post.post, "the only free post at B");
    match engine_b.lend(&shopper).await {
        Err(LendError::AlreadyRenting { rental, .. }) => assert_eq!(rental, lent.rental.id),
        other => panic!("a second rental branch-wide must be refused, got {other:?}"),
    }
    assert!(matches!(
        engine_b.return_state(&shopper).await.unwrap(),
        ReturnState::Waiting { post: Some(post) } if post == slot.post
    ));

    // The cart docks at B.
    let lock = Lock::new(lent_b.post.lock.get()).unwrap();
    pi_b.sim
        .sim()
        .with_bus(|bus, now| bus.dock(now, 0, lock))
        .unwrap();
    eventually("B to say returned", || {
        let (engine_b, shopper) = (engine_b.clone(), shopper.clone());
        async move {
            matches!(
                engine_b.return_state(&shopper).await,
                Ok(ReturnState::Returned { rental, status: RentalStatus::Returned, post: Some(post) })
                    if rental == lent.rental.id && post == slot.post
            )
        }
    })
    .await;
    // B's document carries the return for A.
    let doc_b = AutoCommit::load(&engine_b.document().await.unwrap()).unwrap();
    let returns = read_device_doc(&doc_b).returns;
    assert_eq!(returns.len(), 1, "{returns:?}");
    assert_eq!(returns[0].rental, lent.rental.id);
    assert_eq!(returns[0].origin, a.device);
    assert_eq!(returns[0].post, slot.post.get());

    // A folds it: its ledger and its document say returned.
    eventually("A to close the rental", || {
        let engine_a = engine_a.clone();
        async move {
            engine_a
                .rentals(RentalFilter::History {
                    limit: 10,
                    offset: 0,
                })
                .await
                .unwrap()
                .iter()
                .any(|r| r.row.id == lent.rental.id && r.row.status == RentalStatus::Returned)
        }
    })
    .await;
    let doc_a = AutoCommit::load(&engine_a.document().await.unwrap()).unwrap();
    let facts_a = read_device_doc(&doc_a);
    let rental = facts_a
        .rentals
        .iter()
        .find(|r| r.id == lent.rental.id)
        .unwrap();
    assert_eq!(rental.status, RentalStatus::Returned);
    assert_eq!(rental.end_at, Some(returns[0].end_at));
    assert!(matches!(
        engine_a.return_state(&shopper).await.unwrap(),
        ReturnState::Returned { rental, .. } if rental == lent.rental.id
    ));
    // Closed once on A: one `returned` event, however often B's document arrives.
    let closes = returned_events(&engine_a, lent.rental.id).await;
    assert_eq!(closes, 1);

    // The rental is over branch-wide: the shopper may rent again at B.
    let again = engine_b.lend(&shopper).await.unwrap();
    assert_ne!(again.rental.id, lent.rental.id);

    pi_b.stop().await;
    pi_a.stop().await;
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_cart_docked_at_an_unreserved_post_closes_the_only_rental_out_in_the_branch(
    pool: PgPool,
) {
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = enroll_device(&pool, &hub, "ST-RA", "st-ra-lan-a", dir_a.path())
        .await
        .peer();
    let b = enroll_device(&pool, &hub, "ST-RA", "st-ra-lan-b", dir_b.path())
        .await
        .peer();
    drop(hub);
    let pi_a = Station::start_with(dir_a.path(), a.device, a.branch, 1, WALL, listening).await;
    let a_addr = lan_addr(&pi_a).to_string();
    let pi_b = Station::start_with(dir_b.path(), b.device, b.branch, 1, WALL, move |config| {
        config.lan.peers = vec![a_addr];
        config.bus.first_post_number = 17;
    })
    .await;
    let (engine_a, engine_b) = (pi_a.engine(), pi_b.engine());
    let shopper = Phone::parse("0521234567").unwrap();
    let lent = engine_a.lend(&shopper).await.unwrap();
    pi_a.wait_taken(lent.post.post).await;
    eventually("B to know A's rental", || {
        let (engine_b, shopper) = (engine_b.clone(), shopper.clone());
        async move {
            matches!(
                engine_b.return_state(&shopper).await,
                Ok(ReturnState::Waiting { post: None })
            )
        }
    })
    .await;

    // Staff empty post 32 at B (its hook open, no cart); nothing is out at B itself.
    let lock = Lock::new(16).unwrap();
    pi_b.sim.sim().with_bus(|bus, now| {
        let board = bus.board_mut(now, 0).unwrap();
        board.present = board.present.with(lock, false);
        board.latched = board.latched.with(lock, false);
    });
    eventually("B to see post 32 empty", || {
        let engine_b = engine_b.clone();
        async move {
            engine_b
                .posts()
                .await
                .unwrap()
                .iter()
                .any(|p| p.post.get() == 32 && p.takes_return())
        }
    })
    .await;
    // The shopper docks there without asking: the only cart out in the branch is A's.
    pi_b.sim
        .sim()
        .with_bus(|bus, now| bus.dock(now, 0, lock))
        .unwrap();
    eventually("A to close the rental", || {
        let engine_a = engine_a.clone();
        async move {
            engine_a
                .rentals(RentalFilter::History {
                    limit: 10,
                    offset: 0,
                })
                .await
                .unwrap()
                .iter()
                .any(|r| r.row.id == lent.rental.id && r.row.status == RentalStatus::Returned)
        }
    })
    .await;
    assert!(matches!(
        engine_b.return_state(&shopper).await.unwrap(),
        ReturnState::Returned { rental, post: Some(post), .. }
            if rental == lent.rental.id && post.get() == 32
    ));
    assert_eq!(returned_events(&engine_a, lent.rental.id).await, 1);
    pi_b.stop().await;
    pi_a.stop().await;
}

async fn returned_events(
    engine: &Arc<cartwise_edge_node::engine::Engine>,
    rental: cartwise_schema::RentalId,
) -> i64 {
    let id = rental.to_string();
    engine
        .store()
        .read(move |conn, _| {
            Ok(conn.query_row(
                "SELECT count(*) FROM events WHERE kind = 'returned' AND rental_id = ?1",
                [id],
                |r| r.get::<_, i64>(0),
            )?)
        })
        .await
        .unwrap()
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_pi_of_another_branch_is_refused_at_connect(pool: PgPool) {
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let (dir_a, dir_x) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = enroll_device(&pool, &hub, "ST-RA", "st-ra-lan-a", dir_a.path())
        .await
        .peer();
    // Same chain, another branch.
    let x = enroll_device(&pool, &hub, "ST-HF", "st-hf-lan-x", dir_x.path()).await;
    assert_eq!(x.peer().chain, a.chain);
    assert_ne!(x.peer().branch, a.branch);
    drop(hub);
    let pi_a = Station::start_with(dir_a.path(), a.device, a.branch, 1, WALL, listening).await;
    let addr = lan_addr(&pi_a);

    // X's own client refuses A (another branch) ...
    let endpoint = identity::client_endpoint().unwrap();
    let refused = identity::connect(
        &endpoint,
        &addr.to_string(),
        identity::lan_client_config(&x).unwrap(),
        identity::LAN_SERVER_NAME,
    )
    .await;
    assert!(refused.is_err());
    // ... and A refuses X even when X skips its own check.
    let connecting = endpoint
        .connect_with(trust_any_server_client(&x), addr, "peer")
        .unwrap();
    let refused = match tokio::time::timeout(WAIT, connecting).await.unwrap() {
        Err(error) => Some(error.to_string()),
        // TLS 1.3: the client may finish before the server rejects its certificate; the
        // connection is then closed at once and no stream is ever accepted.
        Ok(connection) => match connection.open_bi().await {
            Ok((mut send, mut recv)) => {
                let _ = send.write_all(b"x").await;
                recv.read(&mut [0u8; 16]).await.err().map(|e| e.to_string())
            }
            Err(error) => Some(error.to_string()),
        },
    };
    assert!(refused.is_some(), "A must refuse a Pi of another branch");
    pi_a.stop().await;
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_peer_may_write_only_its_own_document(pool: PgPool) {
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = enroll_device(&pool, &hub, "ST-RA", "st-ra-lan-a", dir_a.path())
        .await
        .peer();
    let b = enroll_device(&pool, &hub, "ST-RA", "st-ra-lan-b", dir_b.path()).await;
    drop(hub);
    let pi_a = Station::start_with(dir_a.path(), a.device, a.branch, 1, WALL, listening).await;
    let engine_a = pi_a.engine();
    let before = engine_a.document().await.unwrap();

    // B, over its own mutual-TLS session with A, sends:
    let peer = b.peer();
    // 1. a change to A's document, forged with A's actor;
    let mut forged = AutoCommit::new().with_actor(device_actor(&a.device));
    forged.put(automerge::ROOT, "device", "forged").unwrap();
    // 2. a third device's document (no relay between Pis);
    let third = cartwise_schema::DeviceId::parse("0b1e3c2a-0000-4000-8000-000000001001").unwrap();
    let mut relayed = AutoCommit::new().with_actor(device_actor(&third));
    relayed
        .put(automerge::ROOT, "device", third.to_string())
        .unwrap();
    // 3. and its own document, honestly.
    let mut own = AutoCommit::new().with_actor(device_actor(&peer.device));
    own.put(automerge::ROOT, "schema", 1).unwrap();
    own.put(automerge::ROOT, "device", peer.device.to_string())
        .unwrap();
    own.put(automerge::ROOT, "branch", peer.branch.to_string())
        .unwrap();

    let endpoint = identity::client_endpoint().unwrap();
    let conn = identity::connect(
        &endpoint,
        &lan_addr(&pi_a).to_string(),
        identity::lan_client_config(&b).unwrap(),
        identity::LAN_SERVER_NAME,
    )
    .await
    .unwrap();
    let refusals = |events: &[SessionEvent]| {
        events
            .iter()
            .filter(|e| {
                matches!(e, SessionEvent::PeerError(ErrorBody { code, .. }) if *code == error_code::AUTHORITY)
            })
            .count()
    };
    let events = raw_session(
        &conn,
        &b,
        vec![
            (DocId::device(a.device), forged),
            (DocId::device(third), relayed),
            (DocId::device(peer.device), own),
        ],
        |events| refusals(events) >= 2,
    )
    .await;
    assert_eq!(refusals(&events), 2, "{events:?}");

    // A's document is unchanged; B's own document reached A.
    let mut after = AutoCommit::load(&engine_a.document().await.unwrap()).unwrap();
    let facts = read_device_doc(&after);
    assert_eq!(facts.device, Some(a.device));
    assert_eq!(
        AutoCommit::load(&before).unwrap().get_heads(),
        after.get_heads()
    );
    eventually("A to hold B's document", || {
        let engine_a = engine_a.clone();
        async move {
            engine_a
                .held_docs()
                .await
                .unwrap()
                .contains(&DocId::device(peer.device))
        }
    })
    .await;
    pi_a.stop().await;
}

/// Drives a raw initiator session as `me`: offers each of `docs` (answering sync messages like
/// a real peer) and collects the events until `done` says so.
async fn raw_session(
    conn: &quinn::Connection,
    me: &EdgeIdentity,
    mut docs: Vec<(DocId, AutoCommit)>,
    done: impl Fn(&[SessionEvent]) -> bool,
) -> Vec<SessionEvent> {
    let clock = cartwise_cloud_hub::clock::HubClock::new();
    let peer = me.peer();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let local = LocalIdentity {
        role: Role::Device,
        chain: peer.chain,
        branch: Some(peer.branch),
        device: Some(peer.device),
        schema_version: 1,
    };
    let mut session = Session::new(SessionConfig::new(Side::Initiator), local, clock.read());
    let mut states: Vec<PeerDocState> = docs.iter().map(|(id, _)| PeerDocState::new(*id)).collect();
    for ((_, doc), state) in docs.iter_mut().zip(states.iter_mut()) {
        if let Some(body) = state.generate(doc).unwrap() {
            session.send(Message::Sync(body)).unwrap();
        }
    }
    let mut events = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        while let Some(output) = session.poll_output() {
            match output {
                Output::Send(bytes) => send.write_all(&bytes).await.unwrap(),
                Output::Event(SessionEvent::SyncReceived(body)) => {
                    if let Some(i) = docs.iter().position(|(id, _)| *id == body.doc) {
                        let doc = &mut docs[i].1;
                        if states[i].receive(doc, &body, &HubActors::new([])).is_ok()
                            && let Some(reply) = states[i].generate(doc).unwrap()
                        {
                            session.send(Message::Sync(reply)).unwrap();
                        }
                    }
                    events.push(SessionEvent::SyncReceived(body));
                }
                Output::Event(event) => events.push(event),
            }
        }
        if done(&events) || session.is_closed() {
            return events;
        }
        let Ok(read) = tokio::time::timeout_at(deadline, recv.read(&mut buf)).await else {
            panic!("the peer went silent; events so far: {events:?}");
        };
        match read.unwrap() {
            Some(n) => session.handle_bytes(clock.read(), &buf[..n]).unwrap(),
            None => return events,
        }
    }
}
