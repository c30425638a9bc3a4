//! The branch's intents executed on the edge: a whole station in-process (simulated boards,
//! the daemon, a manual clock) receives an intents document as the hub would send it and
//! carries out what is addressed to it, once, answering in its own document's `outcomes`.
//! Also: what the engine refuses (a foreign actor's intents, another branch's documents, a
//! document from a peer not entitled to send it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod station;

use std::sync::Arc;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ROOT};
use cartwise_edge_node::daemon;
use cartwise_edge_node::engine::{DocRefusal, Engine, HELD_DOCS_MAX, RentalFilter, SyncPeer};
use cartwise_edge_node::ledger::Service;
use cartwise_edge_node::shopper::SmsSenderConfig;
use cartwise_edge_node::shopper::sms::InforuConfig;
use cartwise_edge_node::store::StoreError;
use cartwise_schema::{BranchId, ChainId, DeviceId, HookState, PostNo, RentalStatus};
use cartwise_sync_core::facts::{OutcomeStatus, read_device_doc};
use cartwise_sync_core::intents::{
    Intent, IntentId, IntentKind, KioskLanguage, OtpFallback, put_intent,
};
use cartwise_sync_core::{DocId, HubActors, PeerDocState, device_actor, hub_actor};
use serde_json::json;
use station::{MINUTE, Station, T0};

const CHAIN: &str = "0b1e3c2a-0000-4000-8000-000000000001";
const HUB: &str = "hub";

fn chain() -> ChainId {
    ChainId::parse(CHAIN).unwrap()
}

fn other_chain() -> ChainId {
    ChainId::parse("0b1e3c2a-0000-4000-8000-000000000002").unwrap()
}

fn engine(station: &Station) -> Arc<Engine> {
    Arc::clone(&station.edge.as_ref().unwrap().0.engine)
}

fn intent(n: u16, device: DeviceId, kind: IntentKind) -> Intent {
    Intent {
        id: IntentId::parse(&format!("01a1ffeb-fcae-72a9-aa32-a6e6c791{n:04x}")).unwrap(),
        device,
        kind,
        created_at: T0,
        created_by: "manager".into(),
        expires_at: None,
    }
}

/// The hub's side of one document's sync with the edge.
struct Hub {
    doc: AutoCommit,
    sync: PeerDocState,
}

impl Hub {
    fn intents(branch: BranchId) -> Hub {
        Hub {
            doc: AutoCommit::new(),
            sync: PeerDocState::new(DocId::branch_intents(branch)),
        }
    }

    /// Runs the sync protocol until neither side has anything to send; returns the first
    /// error the edge answered with.
    async fn deliver(&mut self, engine: &Engine, from: SyncPeer) -> Result<(), StoreError> {
        for _ in 0..16 {
            let Some(body) = self.sync.generate(&mut self.doc).unwrap() else {
                return Ok(());
            };
            if let Some(reply) = engine.sync_receive_doc(HUB.into(), from, body).await? {
                // The edge may answer with changes it holds (the genuine hub's, when this
                // side is a forger): this side takes whatever it is sent.
                let any_hub = HubActors::new([hub_actor(chain()), hub_actor(other_chain())]);
                self.sync.receive(&mut self.doc, &reply, &any_hub).unwrap();
            }
        }
        panic!("the sync did not settle");
    }
}

/// Outcomes of the edge's own document, by intent.
async fn outcomes(engine: &Engine) -> Vec<(IntentId, OutcomeStatus, String)> {
    let doc = AutoCommit::load(&engine.document().await.unwrap()).unwrap();
    read_device_doc(&doc)
        .outcomes
        .into_iter()
        .map(|o| (o.intent, o.status, o.detail))
        .collect()
}

async fn post_service(engine: &Engine, post: u16) -> Service {
    let number = PostNo::new(post).unwrap();
    engine
        .posts()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.post == number)
        .unwrap()
        .service
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintenance_unlock_from_the_hub_opens_the_post_exactly_once() {
    let mut station = Station::start().await;
    let engine = engine(&station);
    let config = engine.config().clone();
    engine.set_chain(chain());
    assert_eq!(station.sim_post_state(3).await, (true, true));

    let unlock = intent(1, config.device, IntentKind::UnlockPost { post: 3 });
    // Another device's intent is not this device's to execute.
    let elsewhere = intent(
        2,
        DeviceId::parse("0b1e3c2a-0000-4000-8000-000000009999").unwrap(),
        IntentKind::UnlockPost { post: 4 },
    );
    let mut hub = Hub::intents(config.branch);
    put_intent(&mut hub.doc, chain(), config.branch, &unlock).unwrap();
    put_intent(&mut hub.doc, chain(), config.branch, &elsewhere).unwrap();
    hub.deliver(&engine, SyncPeer::Hub).await.unwrap();

    // The unlock ran inside the delivery: the lock opened and the simulated shopper's
    // auto-take removes the cart.
    let (latched, _) = station.sim_post_state(3).await;
    assert!(!latched, "post 3 did not open");
    assert_eq!(station.sim_post_state(4).await, (true, true));
    assert_eq!(
        outcomes(&engine).await,
        vec![(unlock.id, OutcomeStatus::Applied, "the lock opened".into())]
    );
    assert_eq!(post_service(&engine, 3).await, Service::Maintenance);
    assert!(
        engine
            .held_docs()
            .await
            .unwrap()
            .contains(&DocId::branch_intents(config.branch))
    );

    // The technician latches a cart back: not an unrecorded unlock, not a return.
    station.dock(3).await;
    let deadline = tokio::time::Instant::now() + station::WAIT_MAX;
    loop {
        let posts = engine.posts().await.unwrap();
        let post = posts.iter().find(|p| p.post.get() == 3).unwrap();
        if post.hook == HookState::Latched && post.present == Some(true) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dock was not sensed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Delivered again (a fresh hub session state: everything resent) and run again: nothing
    // more happens.
    let mut again = Hub {
        doc: hub.doc.fork(),
        sync: PeerDocState::new(DocId::branch_intents(config.branch)),
    };
    again.deliver(&engine, SyncPeer::Hub).await.unwrap();
    engine.execute_intents().await.unwrap();
    assert_eq!(station.sim_post_state(3).await, (true, true));

    // A restart does not run it again either.
    station.stop_edge().await;
    station.start_edge().await;
    let engine = self::engine(&station);
    engine.set_chain(chain());
    assert_eq!(engine.execute_intents().await.unwrap(), 0);
    assert_eq!(station.sim_post_state(3).await, (true, true));
    let runs = engine.intent_runs().await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].state, "applied");
    let (_, anomalies) = station.get("/api/v1/anomalies").await;
    assert!(
        !anomalies.to_string().contains("unrecorded_unlock"),
        "{anomalies}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_and_rental_time_intents_change_how_carts_are_lent() {
    let station = Station::start().await;
    let engine = engine(&station);
    let config = engine.config().clone();
    engine.set_chain(chain());
    let mut hub = Hub::intents(config.branch);
    // Post 1 is the one a fresh station lends first (least used, lowest number).
    let out = intent(1, config.device, IntentKind::OutOfService { post: 1 });
    let minutes = intent(
        2,
        config.device,
        IntentKind::SetRentalMinutes { minutes: 45 },
    );
    let note = intent(
        3,
        config.device,
        IntentKind::Note {
            post: Some(2),
            text: "wobbly wheel".into(),
        },
    );
    let expired = Intent {
        expires_at: Some(T0 - 1),
        ..intent(4, config.device, IntentKind::UnlockPost { post: 5 })
    };
    for it in [&out, &minutes, &note, &expired] {
        put_intent(&mut hub.doc, chain(), config.branch, it).unwrap();
    }
    hub.deliver(&engine, SyncPeer::Hub).await.unwrap();

    assert_eq!(post_service(&engine, 1).await, Service::OutOfService);
    let mut answered = outcomes(&engine).await;
    answered.sort();
    let statuses: Vec<(IntentId, OutcomeStatus)> = answered
        .iter()
        .map(|(id, status, _)| (*id, *status))
        .collect();
    assert_eq!(
        statuses,
        vec![
            (out.id, OutcomeStatus::Applied),
            (minutes.id, OutcomeStatus::Applied),
            (note.id, OutcomeStatus::Applied),
            (expired.id, OutcomeStatus::Expired),
        ]
    );
    // The expired unlock was not carried out.
    assert_eq!(station.sim_post_state(5).await, (true, true));
    assert_eq!(engine.rental_minutes().await.unwrap(), 45);
    assert_eq!(
        engine.post_notes(PostNo::new(2).unwrap()).await.unwrap(),
        vec!["wobbly wheel".to_owned()]
    );
    let (status, admin) = station.get("/api/v1/intents").await;
    assert_eq!(status, 200, "{admin}");
    assert_eq!(admin["runs"].as_array().unwrap().len(), 4, "{admin}");
    assert_eq!(admin["notes"][0]["text"], "wobbly wheel");
    assert_eq!(admin["notes"][0]["post"], 2);

    let lent = station.rent("0521234567", "+972521234567").await;
    let active = engine.rentals(RentalFilter::Active).await.unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(
        active[0].row.post.get(),
        2,
        "lent from the out-of-service post: {lent}"
    );
    assert_eq!(active[0].row.rental_minutes, 45);
    assert_eq!(
        active[0].expected_return.get() - active[0].start.get(),
        45 * MINUTE as i64
    );

    // Back in service: the post is lendable again.
    let back = intent(5, config.device, IntentKind::InService { post: 1 });
    put_intent(&mut hub.doc, chain(), config.branch, &back).unwrap();
    hub.deliver(&engine, SyncPeer::Hub).await.unwrap();
    assert_eq!(post_service(&engine, 1).await, Service::InService);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_from_writers_or_peers_not_entitled_are_refused() {
    let station = Station::start().await;
    let engine = engine(&station);
    let config = engine.config().clone();
    let unlock = intent(1, config.device, IntentKind::UnlockPost { post: 3 });

    // Before the chain is known, intents cannot be checked.
    let mut hub = Hub::intents(config.branch);
    put_intent(&mut hub.doc, chain(), config.branch, &unlock).unwrap();
    let refused = hub.deliver(&engine, SyncPeer::Hub).await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Refused(DocRefusal::ChainUnknown { .. }))
        ),
        "{refused:?}"
    );
    engine.set_chain(chain());
    hub.sync = PeerDocState::new(DocId::branch_intents(config.branch));
    hub.deliver(&engine, SyncPeer::Hub).await.unwrap();

    // Intents written by another chain's hub actor (or anyone else) are refused.
    let other_chain = other_chain();
    let mut forged = Hub::intents(config.branch);
    put_intent(&mut forged.doc, other_chain, config.branch, &unlock).unwrap();
    let refused = forged.deliver(&engine, SyncPeer::Hub).await;
    assert!(
        matches!(refused, Err(StoreError::Refused(DocRefusal::Authority(_)))),
        "{refused:?}"
    );

    // The real hub's intents, but relayed by a branch Pi: refused.
    let mut relayed = Hub::intents(config.branch);
    put_intent(&mut relayed.doc, chain(), config.branch, &unlock).unwrap();
    let pi = DeviceId::parse("0b1e3c2a-0000-4000-8000-000000001002").unwrap();
    let refused = relayed.deliver(&engine, SyncPeer::Device(pi)).await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Refused(DocRefusal::NotFromHub { .. }))
        ),
        "{refused:?}"
    );

    // Another branch's intents document: refused.
    let other_branch = BranchId::parse("0b1e3c2a-0000-4000-8000-000000000102").unwrap();
    let mut elsewhere = Hub::intents(other_branch);
    put_intent(&mut elsewhere.doc, chain(), other_branch, &unlock).unwrap();
    let refused = elsewhere.deliver(&engine, SyncPeer::Hub).await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Refused(DocRefusal::OtherBranch { .. }))
        ),
        "{refused:?}"
    );

    // A device document naming another branch, relayed by the hub: refused, nothing held.
    let stranger = DeviceId::parse("0b1e3c2a-0000-4000-8000-000000001003").unwrap();
    let mut device_doc = Hub {
        doc: AutoCommit::new().with_actor(device_actor(&stranger)),
        sync: PeerDocState::new(DocId::device(stranger)),
    };
    device_doc.doc.put(ROOT, "schema", 1).unwrap();
    device_doc
        .doc
        .put(ROOT, "branch", other_branch.to_string())
        .unwrap();
    let refused = device_doc.deliver(&engine, SyncPeer::Hub).await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Refused(DocRefusal::OtherBranch { .. }))
        ),
        "{refused:?}"
    );

    // A device document of this branch from a third Pi (not its owner): refused; from the hub
    // it is held.
    let mut peer_doc = Hub {
        doc: AutoCommit::new().with_actor(device_actor(&stranger)),
        sync: PeerDocState::new(DocId::device(stranger)),
    };
    peer_doc.doc.put(ROOT, "schema", 1).unwrap();
    peer_doc
        .doc
        .put(ROOT, "branch", config.branch.to_string())
        .unwrap();
    let refused = peer_doc.deliver(&engine, SyncPeer::Device(pi)).await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Refused(DocRefusal::NotFromOwner { .. }))
        ),
        "{refused:?}"
    );
    peer_doc.sync = PeerDocState::new(DocId::device(stranger));
    peer_doc.deliver(&engine, SyncPeer::Hub).await.unwrap();
    // A change under another actor to that device's document: refused.
    peer_doc.doc.set_actor(ActorId::from([9_u8; 16]));
    peer_doc.doc.put(ROOT, "schema", 2).unwrap();
    let refused = peer_doc.deliver(&engine, SyncPeer::Hub).await;
    assert!(
        matches!(refused, Err(StoreError::Refused(DocRefusal::Authority(_)))),
        "{refused:?}"
    );

    let held = engine.held_docs().await.unwrap();
    assert_eq!(
        held,
        vec![
            engine.document_id(),
            DocId::branch_intents(config.branch),
            DocId::device(stranger),
        ]
    );
    // Only the genuine intents document was executed, once.
    assert_eq!(engine.intent_runs().await.unwrap().len(), 1);
    assert!(!station.sim_post_state(3).await.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlocks_interrupted_after_being_recorded_are_settled_from_the_board_never_pulsed_again() {
    let mut station = Station::start().await;
    let engine = engine(&station);
    let config = engine.config().clone();
    // Post 1 is lent: its lock opened and the shopper took the cart.
    station.rent("0521234567", "+972521234567").await;
    let deadline = tokio::time::Instant::now() + station::WAIT_MAX;
    while station.sim_post_state(1).await != (false, false) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "post 1 never emptied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    station.stop_edge().await;

    // A crash right after two maintenance unlocks were recorded `executing`: one whose pulse
    // went out (post 1, open and empty) and one whose did not (post 6, latched on its cart).
    let opened = intent(1, config.device, IntentKind::UnlockPost { post: 1 });
    let never = intent(2, config.device, IntentKind::UnlockPost { post: 6 });
    {
        let db = rusqlite::Connection::open(config_db(&station)).unwrap();
        for (it, post) in [(&opened, 1), (&never, 6)] {
            db.execute(
                "INSERT INTO intent_runs (intent, kind, post, state, started_wall, started_boot,
                                          started_mono)
                 VALUES (?1, 'unlock_post', ?2, 'executing', ?3, ?4, 0)",
                rusqlite::params![
                    it.id.to_string(),
                    post,
                    T0,
                    "0b1e3c2a-0000-4000-8000-00000000b001"
                ],
            )
            .unwrap();
            db.execute(
                "UPDATE posts SET service = 'maintenance' WHERE post = ?1",
                [post],
            )
            .unwrap();
        }
    }
    station.start_edge().await;
    let engine = self::engine(&station);
    engine.set_chain(chain());
    engine.execute_intents().await.unwrap();

    let mut answered = outcomes(&engine).await;
    answered.sort();
    assert_eq!(
        answered,
        vec![
            (
                opened.id,
                OutcomeStatus::Applied,
                "confirmed from the board after an interruption".into()
            ),
            (
                never.id,
                OutcomeStatus::Failed,
                "interrupted before the lock opened; it is latched".into()
            ),
        ]
    );
    // The intents arrive (again) from the hub: neither is started a second time.
    let mut hub = Hub::intents(config.branch);
    put_intent(&mut hub.doc, chain(), config.branch, &opened).unwrap();
    put_intent(&mut hub.doc, chain(), config.branch, &never).unwrap();
    hub.deliver(&engine, SyncPeer::Hub).await.unwrap();
    engine.execute_intents().await.unwrap();
    assert_eq!(station.sim_post_state(6).await, (true, true));
    let runs = engine.intent_runs().await.unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|run| run.state != "executing"), "{runs:?}");
}

const SHOPPER: &str = "+972521234567";

fn all_rentals() -> RentalFilter {
    RentalFilter::History {
        limit: 100,
        offset: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_lend_creates_one_rental_and_unlocks_once_and_follows_the_kiosk_rules() {
    let mut station = Station::start().await;
    let engine = engine(&station);
    let config = engine.config().clone();
    engine.set_chain(chain());
    let assign = intent(
        1,
        config.device,
        IntentKind::AssignCart {
            post: Some(4),
            phone: SHOPPER.into(),
        },
    );
    let mut hub = Hub::intents(config.branch);
    put_intent(&mut hub.doc, chain(), config.branch, &assign).unwrap();
    hub.deliver(&engine, SyncPeer::Hub).await.unwrap();

    // Lent from the named post (not the kiosk's first pick, post 1), through the lend path.
    let rentals = engine.rentals(all_rentals()).await.unwrap();
    assert_eq!(rentals.len(), 1, "{rentals:?}");
    let rental = &rentals[0].row;
    assert_eq!(rental.post.get(), 4);
    assert_eq!(rental.phone.as_e164(), SHOPPER);
    assert!(rental.status.is_open(), "{:?}", rental.status);
    assert!(!station.sim_post_state(4).await.0, "post 4 did not open");
    assert_eq!(station.sim_post_state(1).await, (true, true));
    assert_eq!(
        outcomes(&engine).await,
        vec![(
            assign.id,
            OutcomeStatus::Applied,
            format!("rental {} at post 4", rental.id)
        )]
    );

    // The same phone again (a second counter lend): refused like at the kiosk.
    let second = intent(
        2,
        config.device,
        IntentKind::AssignCart {
            post: None,
            phone: SHOPPER.into(),
        },
    );
    put_intent(&mut hub.doc, chain(), config.branch, &second).unwrap();
    hub.deliver(&engine, SyncPeer::Hub).await.unwrap();
    let answered = outcomes(&engine).await;
    let refused = answered.iter().find(|(id, ..)| *id == second.id).unwrap();
    assert_eq!(refused.1, OutcomeStatus::Failed);
    assert!(
        refused.2.contains("already has an open rental"),
        "{refused:?}"
    );

    // Delivered twice more (a fresh sync state) and after a restart: nothing more is lent.
    let mut again = Hub {
        doc: hub.doc.fork(),
        sync: PeerDocState::new(DocId::branch_intents(config.branch)),
    };
    again.deliver(&engine, SyncPeer::Hub).await.unwrap();
    engine.execute_intents().await.unwrap();
    station.stop_edge().await;
    station.start_edge().await;
    let engine = self::engine(&station);
    engine.set_chain(chain());
    assert_eq!(engine.execute_intents().await.unwrap(), 0);
    let rentals = engine.rentals(all_rentals()).await.unwrap();
    assert_eq!(rentals.len(), 1, "{rentals:?}");
    let runs = engine.intent_runs().await.unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs.iter().all(|run| run.state != "executing"), "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_lends_interrupted_after_being_recorded_follow_their_rental() {
    let mut station = Station::start().await;
    let engine = engine(&station);
    let config = engine.config().clone();
    // A rental recorded and unlocked before the interruption (lent here through the kiosk).
    station.rent("0521234567", SHOPPER).await;
    let lent = engine.rentals(RentalFilter::Active).await.unwrap();
    let lent = lent[0].row.clone();
    station.stop_edge().await;

    // A crash after two counter lends were recorded `executing`: one whose rental was
    // recorded (linked), one interrupted before any rental was.
    let linked = intent(
        1,
        config.device,
        IntentKind::AssignCart {
            post: None,
            phone: SHOPPER.into(),
        },
    );
    let unlinked = intent(
        2,
        config.device,
        IntentKind::AssignCart {
            post: None,
            phone: "+972527654321".into(),
        },
    );
    {
        let db = rusqlite::Connection::open(config_db(&station)).unwrap();
        // The linked rental was still `unlocking` when the process died (a boot ago): the
        // reconciler settles it from the board (post open and empty: active).
        db.execute(
            "UPDATE rentals SET status = 'unlocking', start_boot = ?2 WHERE id = ?1",
            rusqlite::params![lent.id.to_string(), "0b1e3c2a-0000-4000-8000-00000000b001"],
        )
        .unwrap();
        for (it, detail) in [(&linked, lent.id.to_string()), (&unlinked, String::new())] {
            db.execute(
                "INSERT INTO intent_runs (intent, kind, state, detail, started_wall,
                                          started_boot, started_mono)
                 VALUES (?1, 'assign_cart', 'executing', ?2, ?3, ?4, 0)",
                rusqlite::params![
                    it.id.to_string(),
                    detail,
                    T0,
                    "0b1e3c2a-0000-4000-8000-00000000b001"
                ],
            )
            .unwrap();
        }
    }
    station.start_edge().await;
    let engine = self::engine(&station);
    engine.set_chain(chain());
    // The run follows its rental: answered only once the reconciler settled it.
    let deadline = tokio::time::Instant::now() + station::WAIT_MAX;
    loop {
        engine.reconcile().await.unwrap();
        engine.execute_intents().await.unwrap();
        let runs = engine.intent_runs().await.unwrap();
        let pending = runs.iter().any(|run| run.state == "executing");
        let rental = engine.rentals(all_rentals()).await.unwrap();
        if !pending {
            assert_eq!(rental[0].row.status, RentalStatus::Active);
            break;
        }
        assert_eq!(rental[0].row.status, RentalStatus::Unlocking, "{runs:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the runs were never settled: {runs:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut answered = outcomes(&engine).await;
    answered.sort();
    assert_eq!(
        answered,
        vec![
            (
                linked.id,
                OutcomeStatus::Applied,
                format!("rental {} at post {}", lent.id, lent.post)
            ),
            (
                unlinked.id,
                OutcomeStatus::Failed,
                "interrupted before a rental was recorded; nothing was unlocked".into()
            ),
        ]
    );
    // Delivered afterwards: neither is lent again.
    let mut hub = Hub::intents(config.branch);
    put_intent(&mut hub.doc, chain(), config.branch, &linked).unwrap();
    put_intent(&mut hub.doc, chain(), config.branch, &unlinked).unwrap();
    hub.deliver(&engine, SyncPeer::Hub).await.unwrap();
    assert_eq!(engine.rentals(all_rentals()).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_return_closes_the_rental_of_the_post_once() {
    let station = Station::start().await;
    let engine = engine(&station);
    let config = engine.config().clone();
    engine.set_chain(chain());
    station.rent("0521234567", SHOPPER).await;
    let open = engine.rentals(RentalFilter::Active).await.unwrap();
    assert_eq!(open.len(), 1);
    let rental = open[0].row.clone();
    let post = rental.post.get();

    let force = intent(1, config.device, IntentKind::ForceReturn { post });
    let nothing = intent(2, config.device, IntentKind::ForceReturn { post: 9 });
    let mut hub = Hub::intents(config.branch);
    put_intent(&mut hub.doc, chain(), config.branch, &force).unwrap();
    put_intent(&mut hub.doc, chain(), config.branch, &nothing).unwrap();
    hub.deliver(&engine, SyncPeer::Hub).await.unwrap();

    assert!(
        engine
            .rentals(RentalFilter::Active)
            .await
            .unwrap()
            .is_empty()
    );
    let closed = engine.rentals(all_rentals()).await.unwrap();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].row.status, RentalStatus::ClosedByStaff);
    assert_eq!(closed[0].row.note.as_deref(), Some("forced by manager"));
    assert!(closed[0].row.end.is_some());
    let mut answered = outcomes(&engine).await;
    answered.sort();
    assert_eq!(
        answered,
        vec![
            (
                force.id,
                OutcomeStatus::Applied,
                format!("rental {} closed by staff (forced by manager)", rental.id)
            ),
            (
                nothing.id,
                OutcomeStatus::Failed,
                "no open rental holds or uses post 9".into()
            ),
        ]
    );
    // The shopper may rent again; a redelivery closes nothing more.
    station.rent("0521234567", SHOPPER).await;
    let mut again = Hub {
        doc: hub.doc.fork(),
        sync: PeerDocState::new(DocId::branch_intents(config.branch)),
    };
    again.deliver(&engine, SyncPeer::Hub).await.unwrap();
    engine.execute_intents().await.unwrap();
    assert_eq!(engine.rentals(RentalFilter::Active).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desired_firmware_is_recorded_reported_and_shown_in_health() {
    let station = Station::start().await;
    let engine = engine(&station);
    let config = engine.config().clone();
    engine.set_chain(chain());
    let current = env!("CARGO_PKG_VERSION");
    let (_, health) = station.get("/health").await;
    assert_eq!(health["firmware"]["current"], current, "{health}");
    assert!(health["firmware"]["desired"].is_null(), "{health}");

    let newer = intent(
        1,
        config.device,
        IntentKind::SetFirmware {
            version: "99.0.0".into(),
        },
    );
    let mut hub = Hub::intents(config.branch);
    put_intent(&mut hub.doc, chain(), config.branch, &newer).unwrap();
    hub.deliver(&engine, SyncPeer::Hub).await.unwrap();
    let answered = outcomes(&engine).await;
    assert_eq!(answered.len(), 1);
    assert_eq!(answered[0].1, OutcomeStatus::Applied);
    assert!(
        answered[0].2.starts_with(&format!(
            "update pending: running {current}, desired 99.0.0"
        )),
        "{answered:?}"
    );
    let (_, health) = station.get("/health").await;
    assert_eq!(health["firmware"]["current"], current, "{health}");
    assert_eq!(health["firmware"]["desired"], "99.0.0", "{health}");

    let same = intent(
        2,
        config.device,
        IntentKind::SetFirmware {
            version: current.into(),
        },
    );
    put_intent(&mut hub.doc, chain(), config.branch, &same).unwrap();
    hub.deliver(&engine, SyncPeer::Hub).await.unwrap();
    let answered = outcomes(&engine).await;
    let done = answered.iter().find(|(id, ..)| *id == same.id).unwrap();
    assert_eq!(done.2, format!("running {current}, as desired"));
    assert_eq!(
        engine.firmware().await.unwrap().desired.as_deref(),
        Some(current)
    );
}

fn config_db(station: &Station) -> std::path::PathBuf {
    station.config().data_dir.join("edge.db")
}

/// A device document of this branch as its device writes it.
fn device_doc(device: DeviceId, epoch: u32, branch: BranchId) -> Hub {
    let doc_id = DocId::Device { device, epoch };
    let mut doc = AutoCommit::new().with_actor(device_actor(&device));
    doc.put(ROOT, "schema", 1).unwrap();
    doc.put(ROOT, "device", device.to_string()).unwrap();
    doc.put(ROOT, "branch", branch.to_string()).unwrap();
    Hub {
        doc,
        sync: PeerDocState::new(doc_id),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_documents_are_bounded_and_keep_two_epochs_per_writer() {
    let station = Station::start().await;
    let engine = engine(&station);
    let branch = engine.config().branch;
    let peer = DeviceId::parse("0b1e3c2a-0000-4000-8000-000000001002").unwrap();

    // Epochs 0, 1, 2 of one device: only the two newest are kept; an older one is refused.
    for epoch in 0..3 {
        device_doc(peer, epoch, branch)
            .deliver(&engine, SyncPeer::Device(peer))
            .await
            .unwrap();
    }
    let held = engine.held_docs().await.unwrap();
    let epochs: Vec<u32> = held
        .iter()
        .filter(|doc| **doc != engine.document_id())
        .map(DocId::epoch)
        .collect();
    assert_eq!(epochs, vec![1, 2]);
    let refused = device_doc(peer, 0, branch)
        .deliver(&engine, SyncPeer::Hub)
        .await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Refused(DocRefusal::Superseded { .. }))
        ),
        "{refused:?}"
    );

    // Many devices: held up to HELD_DOCS_MAX, then refused.
    let mut accepted = 2;
    for n in 0..HELD_DOCS_MAX as u128 {
        let device = DeviceId::from_uuid(uuid_of(0x0b1e_3c2a_0000_4000_8000_0000_0000_2000 + n));
        match device_doc(device, 0, branch)
            .deliver(&engine, SyncPeer::Hub)
            .await
        {
            Ok(()) => accepted += 1,
            Err(StoreError::Refused(DocRefusal::Full { max, .. })) => {
                assert_eq!(max, HELD_DOCS_MAX);
                break;
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(accepted, HELD_DOCS_MAX);
    assert_eq!(engine.held_docs().await.unwrap().len(), HELD_DOCS_MAX + 1);
}

fn uuid_of(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}

/// Restarts the station's daemon with an SMS provider that cannot be reached (a closed port):
/// every send fails as unavailable.
async fn restart_with_sms_down(station: &mut Station) {
    station.stop_edge().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap();
    drop(listener);
    let mut config = station.config();
    config.sms = Some(SmsSenderConfig::Inforu(InforuConfig {
        endpoint_url: format!("http://{closed}/SendMessageXml.ashx"),
        username: "branch".into(),
        api_token: "secret".into(),
        sender_name: "CartWise".into(),
        timeout_ms: 2_000,
    }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = daemon::spawn(config, station.clock.clone(), async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    station.http = running.http;
    station.edge = Some((running, stop));
    station
        .wait_for(|h| h["rs485_connected"] == true, "/health")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otp_policy_intent_lets_a_known_shopper_rent_while_sms_is_down() {
    let mut station = Station::start().await;
    // A shopper who signed in while SMS worked holds a token.
    let token = station.sign_in("0521234567", "+972521234567").await;
    let bearer = format!("Bearer {token}");
    restart_with_sms_down(&mut station).await;
    let engine = engine(&station);
    let config = engine.config().clone();
    engine.set_chain(chain());

    // Another shopper's code cannot be sent: SMS is now known to be down.
    let (status, body) = station
        .post("/auth/request-otp", json!({ "phone": "0529876543" }))
        .await;
    assert_ne!(status, 200, "{body}");
    let headers = [("authorization", bearer.as_str())];
    let assign = || station.post_with("/carts/assign", json!({ "phone": "0521234567" }), &headers);
    // The configuration refuses even tokens while SMS is down.
    let (status, body) = assign().await;
    assert_ne!(status, 200, "{body}");
    assert!(engine.otp_policy_override().await.unwrap().is_none());

    let policy = intent(
        1,
        config.device,
        IntentKind::SetOtpPolicy {
            when_sms_unavailable: OtpFallback::Token,
        },
    );
    let mut hub = Hub::intents(config.branch);
    put_intent(&mut hub.doc, chain(), config.branch, &policy).unwrap();
    hub.deliver(&engine, SyncPeer::Hub).await.unwrap();
    let answered = outcomes(&engine).await;
    assert_eq!(answered.len(), 1, "{answered:?}");
    assert_eq!(
        (answered[0].0, answered[0].1),
        (policy.id, OutcomeStatus::Applied)
    );
    assert_eq!(
        engine.otp_policy_override().await.unwrap(),
        Some(OtpFallback::Token)
    );

    // The token path now serves.
    let (status, body) = assign().await;
    assert_eq!(status, 200, "{body}");
    let active = engine.rentals(RentalFilter::Active).await.unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].row.phone.as_e164(), "+972521234567");
}

fn is_hebrew(text: &str) -> bool {
    text.chars().any(|c| ('\u{5d0}'..='\u{5ea}').contains(&c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_language_intent_sets_the_kiosk_default_language() {
    let station = Station::start().await;
    let engine = engine(&station);
    let config = engine.config().clone();
    engine.set_chain(chain());
    let bad_phone = || station.post("/auth/request-otp", json!({ "phone": "12" }));
    let (status, body) = bad_phone().await;
    assert_eq!(status, 400, "{body}");
    let hebrew = body["detail"].as_str().unwrap().to_owned();
    assert!(is_hebrew(&hebrew), "{body}");

    let language = intent(
        1,
        config.device,
        IntentKind::SetLanguage {
            language: KioskLanguage::En,
        },
    );
    let mut hub = Hub::intents(config.branch);
    put_intent(&mut hub.doc, chain(), config.branch, &language).unwrap();
    hub.deliver(&engine, SyncPeer::Hub).await.unwrap();
    assert_eq!(
        engine.language_override().await.unwrap(),
        Some(KioskLanguage::En)
    );

    // Without Accept-Language the answer is now English ...
    let (status, body) = bad_phone().await;
    assert_eq!(status, 400, "{body}");
    let english = body["detail"].as_str().unwrap();
    assert!(!is_hebrew(english) && !english.is_empty(), "{body}");
    // ... and a request that asks for Hebrew still gets it.
    let (status, body) = station
        .post_with(
            "/auth/request-otp",
            json!({ "phone": "12" }),
            &[("accept-language", "he-IL")],
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["detail"].as_str().unwrap(), hebrew);

    // Back to Hebrew by a later intent.
    let back = intent(
        2,
        config.device,
        IntentKind::SetLanguage {
            language: KioskLanguage::He,
        },
    );
    put_intent(&mut hub.doc, chain(), config.branch, &back).unwrap();
    hub.deliver(&engine, SyncPeer::Hub).await.unwrap();
    let (_, body) = bad_phone().await;
    assert_eq!(body["detail"].as_str().unwrap(), hebrew);
}
