//! Relayed changes with signed heads, edge → hub, over real QUIC and mutual TLS.
//!
//! - Two Pis of a branch on the LAN: Q lends while the hub is away and syncs with P; Q then
//!   goes away for good, the hub comes back, and P's uplink brings Q's rental into Postgres
//!   with nothing refused or audited.
//! - A relay's offer of another device's document is accepted only as far as the owner's
//!   verified signed heads cover it: heads signed by the relay itself, a tampered signature,
//!   or a change forged on top of honestly signed heads are refused and audited (once per
//!   session), and nothing of them is stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use automerge::AutoCommit;
use automerge::transaction::Transactable;
use cartwise_cloud_hub::clock::HubClock;
use cartwise_edge_node::identity::{self, EdgeIdentity, HeadsKey};
use cartwise_schema::{Clock, Phone};
use cartwise_sync_core::identity::PeerIdentity;
use cartwise_sync_core::message::Head;
use cartwise_sync_core::message::body::{ErrorBody, Role};
use cartwise_sync_core::session::LocalIdentity;
use cartwise_sync_core::{
    DocId, HubActors, Message, Output, PeerDocState, Session, SessionConfig, SessionEvent, Side,
    SignedHeads, device_actor, error_code,
};
use cartwise_tests::{
    Hub, Station, WAIT, enroll_device, eventually, seed_world, start_hub, start_hub_at,
};
use sqlx::PgPool;

const WALL: i64 = 1_795_248_000_000;

fn listening(config: &mut cartwise_edge_node::config::EdgeConfig) {
    config.lan.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
}

async fn audited(pool: &PgPool, action: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = $1")
        .bind(action)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The heads of `doc` this Pi lists (its own or one it holds), if it lists the document.
async fn listed_heads(
    engine: &cartwise_edge_node::engine::Engine,
    doc: DocId,
) -> Option<Vec<Head>> {
    engine
        .doc_listing()
        .await
        .unwrap()
        .into_iter()
        .find(|listed| listed.doc == doc)
        .map(|listed| listed.heads)
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_pi_relays_its_offline_peers_rental_to_the_hub_with_its_signed_heads(pool: PgPool) {
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let (dir_q, dir_p) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let q = enroll_device(&pool, &hub, "ST-RA", "st-ra-relay-q", dir_q.path())
        .await
        .peer();
    let p = enroll_device(&pool, &hub, "ST-RA", "st-ra-relay-p", dir_p.path())
        .await
        .peer();
    // The hub goes away: Q lends with only the LAN.
    let hub_addr = hub.stop().await;

    let pi_q = Station::start_with(dir_q.path(), q.device, q.branch, 1, WALL, listening).await;
    let q_addr = pi_q.edge.as_ref().unwrap().lan.unwrap().to_string();
    let pi_p = Station::start_with(dir_p.path(), p.device, p.branch, 1, WALL, move |config| {
        config.lan.peers = vec![q_addr];
        config.bus.first_post_number = 17;
    })
    .await;
    let (engine_q, engine_p) = (pi_q.engine(), pi_p.engine());
    let shopper = Phone::parse("0521234567").unwrap();
    let lent = engine_q.lend(&shopper).await.unwrap();
    pi_q.wait_taken(lent.post.post).await;

    // P holds all of Q's document.
    let q_doc = engine_q.document_id();
    eventually("P to hold Q's document as Q has it", || {
        let (engine_q, engine_p) = (engine_q.clone(), engine_p.clone());
        async move {
            let theirs = listed_heads(&engine_q, q_doc).await;
            theirs.is_some() && listed_heads(&engine_p, q_doc).await == theirs
        }
    })
    .await;
    // Q goes away for good (its uplink never comes back); the hub returns.
    pi_q.stop().await;
    let hub = start_hub_at(&pool, hub_addr).await;

    // P's uplink relays Q's document: Postgres holds Q's rental, written by Q.
    eventually("Q's rental in Postgres through P", || {
        let pool = pool.clone();
        async move {
            let device: Option<uuid::Uuid> =
                sqlx::query_scalar("SELECT device_id FROM rentals WHERE id = $1")
                    .bind(lent.rental.id.as_uuid())
                    .fetch_optional(&pool)
                    .await
                    .unwrap()
                    .flatten();
            device == Some(*q.device.as_uuid())
        }
    })
    .await;
    assert_eq!(audited(&pool, "sync.refused_out_of_authority").await, 0);
    assert_eq!(audited(&pool, "sync.refused_signed_heads").await, 0);

    pi_p.stop().await;
    drop(hub);
}

async fn connect(hub: &Hub, me: &EdgeIdentity) -> quinn::Connection {
    let endpoint = identity::client_endpoint().unwrap();
    identity::connect(
        &endpoint,
        &hub.handle.local_addr.to_string(),
        identity::hub_client_config(me).unwrap(),
        cartwise_sync_core::identity::HUB_SERVER_NAME,
    )
    .await
    .unwrap()
}

/// When a relay session is over.
enum Until {
    /// The hub answered this many `Error{AUTHORITY}`.
    Refusals(usize),
    /// Postgres holds the document with these heads.
    Stored(PgPool, Vec<u8>),
}

/// A raw relay session as `me`: once admitted, sends `signed` (if any), then syncs `doc` of
/// `doc_id` with the hub like a real peer, until `until`. With `repeat`, every refusal is
/// answered by offering the last `Sync` again. Returns the refusals the hub sent.
async fn relay(
    hub: &Hub,
    me: &EdgeIdentity,
    signed: Option<SignedHeads>,
    doc_id: DocId,
    mut doc: AutoCommit,
    until: Until,
    repeat: bool,
) -> Vec<ErrorBody> {
    let conn = connect(hub, me).await;
    let peer: PeerIdentity = me.peer();
    let clock = HubClock::new();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let local = LocalIdentity {
        role: Role::Device,
        chain: peer.chain,
        branch: Some(peer.branch),
        device: Some(peer.device),
        schema_version: 1,
    };
    let mut session = Session::new(SessionConfig::new(Side::Initiator), local, clock.read());
    let mut state = PeerDocState::new(doc_id);
    let mut signed = signed;
    let mut refusals = Vec::new();
    let mut last = None;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        while let Some(output) = session.poll_output() {
            match output {
                Output::Send(bytes) => send.write_all(&bytes).await.unwrap(),
                Output::Event(SessionEvent::Established { .. }) => {
                    if let Some(signed) = signed.take() {
                        session.send(Message::SignedHeads(signed)).unwrap();
                    }
                    if let Some(body) = state.generate(&mut doc).unwrap() {
                        last = Some(body.clone());
                        session.send(Message::Sync(body)).unwrap();
                    }
                }
                Output::Event(SessionEvent::SyncReceived(body)) if body.doc == doc_id => {
                    state.receive(&mut doc, &body, &HubActors::new([])).unwrap();
                    if let Some(reply) = state.generate(&mut doc).unwrap() {
                        last = Some(reply.clone());
                        session.send(Message::Sync(reply)).unwrap();
                    }
                }
                Output::Event(SessionEvent::PeerError(error))
                    if error.code == error_code::AUTHORITY =>
                {
                    refusals.push(error);
                    if let (true, Some(body)) = (repeat, &last) {
                        session.send(Message::Sync(body.clone())).unwrap();
                    }
                }
                Output::Event(_) => {}
            }
        }
        let done = match &until {
            Until::Refusals(count) => refusals.len() >= *count,
            Until::Stored(pool, heads) => {
                let stored: Option<Vec<u8>> =
                    sqlx::query_scalar("SELECT heads FROM sync_documents WHERE doc_id = $1")
                        .bind(doc_id.to_string())
                        .fetch_optional(pool)
                        .await
                        .unwrap();
                stored.as_ref() == Some(heads)
            }
        };
        if done || session.is_closed() {
            conn.close(0u32.into(), b"done");
            return refusals;
        }
        let wait = match until {
            // Postgres is polled between reads.
            Until::Stored(..) => {
                tokio::time::Instant::now() + std::time::Duration::from_millis(100)
            }
            Until::Refusals(_) => deadline,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay session did not finish; refusals so far: {refusals:?}"
        );
        if let Ok(read) = tokio::time::timeout_at(wait.min(deadline), recv.read(&mut buf)).await {
            match read.unwrap() {
                Some(n) => session.handle_bytes(clock.read(), &buf[..n]).unwrap(),
                None => return refusals,
            }
        }
    }
}

/// Q's document as Q writes it: its device, its branch, a note.
fn owners_document(owner: &PeerIdentity, note: &str) -> AutoCommit {
    let mut doc = AutoCommit::new().with_actor(device_actor(&owner.device));
    doc.put(automerge::ROOT, "schema", 1).unwrap();
    doc.put(automerge::ROOT, "device", owner.device.to_string())
        .unwrap();
    doc.put(automerge::ROOT, "branch", owner.branch.to_string())
        .unwrap();
    doc.put(automerge::ROOT, "note", note).unwrap();
    doc.commit();
    doc
}

fn heads(doc: &mut AutoCommit) -> Vec<Head> {
    doc.get_heads().into_iter().map(Head::from).collect()
}

fn heads_bytes(doc: &mut AutoCommit) -> Vec<u8> {
    doc.get_heads().iter().flat_map(|h| h.0).collect()
}

async fn stored(pool: &PgPool, doc: DocId) -> bool {
    let row: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM sync_documents WHERE doc_id = $1 AND heads <> ''")
            .bind(doc.to_string())
            .fetch_optional(pool)
            .await
            .unwrap();
    row.is_some()
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_relay_is_accepted_only_as_far_as_the_owners_verified_signed_heads_cover_it(
    pool: PgPool,
) {
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let (dir_q, dir_p) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let q = enroll_device(&pool, &hub, "ST-RA", "st-ra-owner-q", dir_q.path()).await;
    let p = enroll_device(&pool, &hub, "ST-RA", "st-ra-relay-p", dir_p.path()).await;
    let owner = q.peer();
    let doc_id = DocId::device(owner.device);
    let owner_key = HeadsKey::new(&q).unwrap();
    let relay_key = HeadsKey::new(&p).unwrap();

    // 1. A forged document under Q's actor, with heads signed by the relay itself.
    let mut forged = owners_document(&owner, "forged by the relay");
    let by_relay = SignedHeads {
        signer: p.peer().device,
        ..relay_key.sign_heads(doc_id, &heads(&mut forged))
    };
    let refusals = relay(
        &hub,
        &p,
        Some(by_relay),
        doc_id,
        forged,
        Until::Refusals(2),
        false,
    )
    .await;
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert!(refusals[0].reason.contains("cannot sign"), "{refusals:?}");
    // Without verified heads the document stays read-only for the session.
    assert!(refusals[1].reason.contains("may only read"), "{refusals:?}");
    assert_eq!(audited(&pool, "sync.refused_signed_heads").await, 1);
    assert_eq!(audited(&pool, "sync.refused_out_of_authority").await, 1);

    // 2. Q's honest document with Q's signature, tampered on the way.
    let mut honest = owners_document(&owner, "written by the owner");
    let mut tampered = owner_key.sign_heads(doc_id, &heads(&mut honest));
    let last = tampered.signature.len() - 1;
    tampered.signature[last] ^= 0x01;
    let refusals = relay(
        &hub,
        &p,
        Some(tampered),
        doc_id,
        honest.fork(),
        Until::Refusals(2),
        false,
    )
    .await;
    assert!(refusals[0].reason.contains("bad signature"), "{refusals:?}");
    assert_eq!(audited(&pool, "sync.refused_signed_heads").await, 2);
    assert_eq!(audited(&pool, "sync.refused_out_of_authority").await, 2);

    // 3. Q's honest signature, and a change forged on top of it under Q's actor.
    let signed = owner_key.sign_heads(doc_id, &heads(&mut honest));
    let mut extended = honest.fork().with_actor(device_actor(&owner.device));
    extended
        .put(automerge::ROOT, "note", "forged on top")
        .unwrap();
    extended.commit();
    let refusals = relay(
        &hub,
        &p,
        Some(signed.clone()),
        doc_id,
        extended,
        Until::Refusals(1),
        false,
    )
    .await;
    assert!(refusals[0].reason.contains("not covered"), "{refusals:?}");
    assert_eq!(audited(&pool, "sync.refused_signed_heads").await, 2);
    assert_eq!(audited(&pool, "sync.refused_out_of_authority").await, 3);
    assert!(
        !stored(&pool, doc_id).await,
        "nothing of a refused relay is stored"
    );

    // 4. Without signed heads the relay only reads, as before: refused, audited once however
    //    often the offer repeats on the session.
    let refusals = relay(
        &hub,
        &p,
        None,
        doc_id,
        honest.fork(),
        Until::Refusals(3),
        true,
    )
    .await;
    assert_eq!(refusals.len(), 3, "{refusals:?}");
    assert!(refusals[2].reason.contains("may only read"), "{refusals:?}");
    assert_eq!(audited(&pool, "sync.refused_out_of_authority").await, 4);

    // 5. Q's honest document under Q's verified signed heads: merged as Q's own.
    let want = heads_bytes(&mut honest);
    let refusals = relay(
        &hub,
        &p,
        Some(signed),
        doc_id,
        honest,
        Until::Stored(pool.clone(), want),
        false,
    )
    .await;
    assert!(refusals.is_empty(), "{refusals:?}");
    assert_eq!(audited(&pool, "sync.refused_signed_heads").await, 2);
    assert_eq!(audited(&pool, "sync.refused_out_of_authority").await, 4);
    let owner_row: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT device_id FROM sync_documents WHERE doc_id = $1")
            .bind(doc_id.to_string())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(owner_row, Some(*owner.device.as_uuid()));
}
