//! A technician on site, over the branch LAN, with the hub unreachable from the branch: the Pi
//! lends and returns; `cartwise-tech sync` takes its signed facts; the technician goes online
//! and pushes them; Postgres holds every rental once; an intent created in the cloud rides back
//! on the next sync and the Pi executes it. Refusals (an expired credential, a credential for
//! another branch, a forged intents bundle, documents written through the session) each give a
//! clear message and a technician-log entry; a remote unlock needs confirmation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use cartwise_cloud_hub::intents::{self, Actor, ActorKind, IntentRequest, IntentStatus};
use cartwise_cloud_hub::technicians::{self, Pusher};
use cartwise_edge_node::cu16::Lock;
use cartwise_edge_node::engine::{Engine, RentalFilter};
use cartwise_edge_node::tech::lan_cli::{self, RemoteBusAction};
use cartwise_schema::{BranchId, Phone, RentalStatus};
use cartwise_sync_core::bundle::{BundleBody, BundleKind, Producer, encode_bundle};
use cartwise_sync_core::facts::{TechnicianLogEntry, read_device_doc};
use cartwise_sync_core::intents::IntentKind;
use cartwise_sync_core::message::TechnicianMessage;
use cartwise_sync_core::message::body::Bundle;
use cartwise_sync_core::{CloseReason, Message, SessionEvent, error_code};
use cartwise_tests::technician::{
    KeySigner, branch_id, identity_for, lan_addr, listening, now_ms, raw_session, technician,
};
use cartwise_tests::{Station, enroll_device, eventually, seed_world, start_hub};
use sqlx::PgPool;
use uuid::Uuid;

async fn log_of(engine: &Engine) -> Vec<TechnicianLogEntry> {
    engine.technician_log(100).await.unwrap()
}

/// The technician log in the Pi's live document (what reaches the hub).
async fn live_log(engine: &Engine) -> Vec<TechnicianLogEntry> {
    let doc = automerge::AutoCommit::load(&engine.document().await.unwrap()).unwrap();
    read_device_doc(&doc).technician_log
}

async fn rental_rows(pool: &PgPool, id: Uuid) -> (i64, Option<String>) {
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM rentals WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
    let status: Option<String> =
        sqlx::query_scalar("SELECT status::text FROM rentals WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .unwrap();
    (count, status)
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn the_technician_carries_facts_to_the_hub_and_intents_back(pool: PgPool) {
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let pi = enroll_device(&pool, &hub, "ST-RA", "st-ra-tech", dir.path())
        .await
        .peer();
    // The branch loses the hub for good: only the technician carries data.
    drop(hub);
    let station = Station::start_with(
        dir.path(),
        pi.device,
        pi.branch,
        1,
        now_ms() + 60_000,
        listening,
    )
    .await;
    let engine = station.engine();
    let address = lan_addr(&station);

    // Lends and returns happen with the hub unreachable; one cart stays out.
    let returned = station.lend_and_return("0521234567").await;
    let out = engine
        .lend(&Phone::parse("0547654321").unwrap())
        .await
        .unwrap();
    station.wait_taken(out.post.post).await;

    let home = tempfile::tempdir().unwrap();
    let branch = branch_id(&pool, "ST-RA").await;
    let (carry, issued, _) = technician(&pool, "tech-ra", vec![branch], home.path()).await;

    // The technician syncs the Pi over the LAN.
    lan_cli::sync(&carry, &address).await.unwrap();
    let pending = carry.pending().unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].device, pi.device);
    let log = log_of(&engine).await;
    assert!(
        log.iter().any(|e| e.action == "lan_session"
            && e.outcome == "allowed"
            && e.technician == Some(issued.technician_id)),
        "{log:?}"
    );
    assert!(log.iter().any(|e| e.action == "bundle_export"), "{log:?}");

    // Online again, the technician pushes: Postgres has every rental, once.
    let pusher = Pusher {
        user_id: issued.technician_id,
        login: "tech-ra".into(),
        branches: vec![branch],
    };
    let bytes = std::fs::read(&pending[0].path).unwrap();
    let outcome = technicians::push(&pool, &pusher, &bytes).await.unwrap();
    assert!(outcome.applied, "{outcome:?}");
    assert_eq!(
        rental_rows(&pool, *returned.as_uuid()).await,
        (1, Some("returned".into()))
    );
    let (count, status) = rental_rows(&pool, *out.rental.id.as_uuid()).await;
    assert_eq!(count, 1);
    assert_ne!(status.as_deref(), Some("returned"));
    // A replayed push changes nothing.
    let again = technicians::push(&pool, &pusher, &bytes).await.unwrap();
    assert!(!again.applied && again.replay, "{again:?}");
    assert_eq!(rental_rows(&pool, *returned.as_uuid()).await.0, 1);
    // The Pi's technician log reached the audit log.
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'technician.lan_session'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(audited >= 1, "the LAN session is audited at the hub");

    // An intent created in the cloud rides back on the next visit and the Pi applies it.
    let free = engine
        .posts()
        .await
        .unwrap()
        .into_iter()
        .find(|post| post.post != out.post.post && post.holder.is_none())
        .unwrap();
    let intent = intents::create(
        &pool,
        IntentRequest {
            device: pi.device,
            branch: Some(pi.branch),
            kind: IntentKind::OutOfService {
                post: free.post.get(),
            },
            expires_in: None,
        },
        &Actor {
            kind: ActorKind::Admin,
            name: "manager".into(),
        },
    )
    .await
    .unwrap();
    let bundle = technicians::intents_bundle(&pool, pi.branch, Some(issued.technician_id))
        .await
        .unwrap();
    carry.store_intents_bundle(pi.branch, &bundle).unwrap();
    lan_cli::sync(&carry, &address).await.unwrap();
    eventually("the Pi to run the intent", || {
        let engine = engine.clone();
        let id = intent.id.to_string();
        async move {
            engine
                .intent_runs()
                .await
                .unwrap()
                .iter()
                .any(|run| run.intent == id && run.state == "applied")
        }
    })
    .await;
    let log = live_log(&engine).await;
    assert!(
        log.iter()
            .any(|e| e.action == "intents_applied" && e.outcome == "allowed"),
        "{log:?}"
    );
    // Its outcome came back on the same visit: once pushed, the hub holds it applied.
    for carried in carry.pending().unwrap() {
        let bytes = std::fs::read(&carried.path).unwrap();
        technicians::push(&pool, &pusher, &bytes).await.unwrap();
    }
    assert_eq!(
        intents::get(&pool, intent.id).await.unwrap().status,
        IntentStatus::Applied
    );
    // The same intents bundle again is a replay: nothing changes, no error.
    let runs = engine.intent_runs().await.unwrap().len();
    lan_cli::sync(&carry, &address).await.unwrap();
    assert_eq!(engine.intent_runs().await.unwrap().len(), runs);
    assert!(
        log_of(&engine)
            .await
            .iter()
            .any(|e| e.action == "bundle_import" && e.detail.contains("already applied")),
    );
    // The closed rental the hub holds left the Pi's live document (ledger acknowledgement).
    let doc = automerge::AutoCommit::load(&engine.document().await.unwrap()).unwrap();
    let facts = read_device_doc(&doc);
    assert!(facts.rentals.iter().all(|r| r.id != returned), "acked");
    assert!(facts.rentals.iter().any(|r| r.id == out.rental.id));
    let history = engine
        .rentals(RentalFilter::History {
            limit: 10,
            offset: 0,
        })
        .await
        .unwrap();
    assert!(
        history
            .iter()
            .any(|r| r.row.id == returned && r.row.status == RentalStatus::Returned)
    );
    station.stop().await;
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn expired_and_other_branch_credentials_are_refused_with_a_reason_and_logged(pool: PgPool) {
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let pi = enroll_device(&pool, &hub, "ST-RA", "st-ra-tech", dir.path())
        .await
        .peer();
    drop(hub);
    // This Pi's (corrected) clock is two days ahead of the hub that issued the credential.
    let ahead = now_ms() + 2 * 24 * 3_600_000;
    let station = Station::start_with(dir.path(), pi.device, pi.branch, 1, ahead, listening).await;
    let engine = station.engine();
    let address = lan_addr(&station);

    let home = tempfile::tempdir().unwrap();
    let ra = branch_id(&pool, "ST-RA").await;
    let (carry, issued, _) = technician(&pool, "tech-ra", vec![ra], home.path()).await;
    let error = lan_cli::sync(&carry, &address).await.unwrap_err();
    let text = format!("{error:#}");
    assert!(text.contains("expired"), "{text}");
    assert!(
        text.contains("cartwise-tech login"),
        "says what to do: {text}"
    );
    assert!(carry.pending().unwrap().is_empty());
    let log = log_of(&engine).await;
    let refused: Vec<_> = log
        .iter()
        .filter(|e| e.action == "lan_session" && e.outcome == "refused")
        .collect();
    assert_eq!(refused.len(), 1, "{log:?}");
    assert_eq!(refused[0].technician, Some(issued.technician_id));
    assert!(refused[0].detail.contains("expired"), "{log:?}");
    station.stop().await;

    // Back to the true time: a credential for another branch is refused by this Pi.
    let station = Station::start_with(
        dir.path(),
        pi.device,
        pi.branch,
        1,
        now_ms() + 60_000,
        listening,
    )
    .await;
    let engine = station.engine();
    let address = lan_addr(&station);
    let hf = branch_id(&pool, "ST-HF").await;
    let other_home = tempfile::tempdir().unwrap();
    let (other, other_issued, _) = technician(&pool, "tech-hf", vec![hf], other_home.path()).await;
    // The laptop's own check refuses a Pi of another branch before presenting anything.
    let error = lan_cli::sync(&other, &address).await.unwrap_err();
    assert!(
        format!("{error:#}").contains("cannot open a session"),
        "{error:#}"
    );
    // A laptop that skips its check reaches the Pi, which refuses it and says why.
    let who = identity_for(&other, BranchId::from_uuid(hf));
    let (closed, _) = raw_session(&who, &address, Vec::new(), 0).await;
    match closed {
        Some(CloseReason::RefusedByPeer { reason, .. }) => {
            assert!(reason.contains("issued for branch"), "{reason}");
            assert!(reason.contains(&pi.branch.to_string()), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let log = log_of(&engine).await;
    assert!(
        log.iter().any(|e| e.action == "lan_session"
            && e.outcome == "refused"
            && e.technician == Some(other_issued.technician_id)
            && e.detail.contains("issued for branch")),
        "{log:?}"
    );
    // The refusals are in the live document too, so they reach the hub's audit log.
    let live = live_log(&engine).await;
    assert!(
        live.iter().filter(|e| e.outcome == "refused").count() >= 2,
        "{live:?}"
    );
    station.stop().await;
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_technician_cannot_author_facts_or_intents_and_an_unlock_needs_confirmation(
    pool: PgPool,
) {
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let pi = enroll_device(&pool, &hub, "ST-RA", "st-ra-tech", dir.path())
        .await
        .peer();
    drop(hub);
    let station = Station::start_with(
        dir.path(),
        pi.device,
        pi.branch,
        1,
        now_ms() + 60_000,
        listening,
    )
    .await;
    let engine = station.engine();
    let address = lan_addr(&station);
    let home = tempfile::tempdir().unwrap();
    let ra = branch_id(&pool, "ST-RA").await;
    let (carry, _, key) = technician(&pool, "tech-ra", vec![ra], home.path()).await;
    let before = engine.document().await.unwrap();

    // A change to the Pi's own document, written by the laptop, sent as a sync message.
    let mut forged = automerge::AutoCommit::load(&before).unwrap();
    forged.set_actor(automerge::ActorId::from(
        pi.device.as_uuid().as_bytes().as_slice(),
    ));
    use automerge::transaction::Transactable;
    forged
        .put(automerge::ROOT, "posts", "forged by a technician")
        .unwrap();
    let mut state = cartwise_sync_core::PeerDocState::new(engine.document_id());
    let sync = state.generate(&mut forged).unwrap().unwrap();
    // And an intents bundle signed with the technician's own key.
    let intents_bundle = encode_bundle(
        &BundleBody {
            kind: BundleKind::Intents,
            chain: pi.chain,
            branch: pi.branch,
            producer: Producer::hub(),
            seq: 99,
            created_at_ms: now_ms(),
            technician: None,
            docs: Vec::new(),
            ledger_acks: Vec::new(),
            producer_cert: None,
        },
        &KeySigner(key),
    )
    .unwrap();
    let who = identity_for(&carry, pi.branch);
    let (_, events) = raw_session(
        &who,
        &address,
        vec![
            Message::Sync(sync),
            Message::Bundle(Bundle {
                bytes: intents_bundle,
            }),
        ],
        2,
    )
    .await;
    assert!(
        events.iter().any(|e| matches!(e,
            SessionEvent::PeerError(error) if error.code == error_code::AUTHORITY)),
        "{events:?}"
    );
    let result = events
        .iter()
        .find_map(|e| match e {
            SessionEvent::Technician(TechnicianMessage::BundleResult(r)) => Some(r.clone()),
            _ => None,
        })
        .expect("the bundle is answered");
    assert!(!result.applied);
    assert!(result.message.contains("signature"), "{result:?}");
    let after = automerge::AutoCommit::load(&engine.document().await.unwrap()).unwrap();
    let facts = read_device_doc(&after);
    assert!(!facts.posts.is_empty(), "the forged change was not applied");
    let log = log_of(&engine).await;
    assert!(
        log.iter()
            .any(|e| e.action == "bundle_import" && e.outcome == "refused"),
        "{log:?}"
    );
    assert!(
        log.iter().any(|e| e.action == "lan_session"
            && e.outcome == "refused"
            && e.detail.contains("may not sync")),
        "{log:?}"
    );

    // The remote bus: an unlock without confirmation is refused and logged; with it, it runs.
    let reply = lan_cli::remote_bus(&carry, &address, RemoteBusAction::Scan)
        .await
        .unwrap();
    assert!(
        lan_cli::render_bus_reply(&reply)
            .unwrap()
            .contains("1 board(s)")
    );
    let error = lan_cli::remote_bus(
        &carry,
        &address,
        RemoteBusAction::Unlock {
            board: 0,
            lock: 5,
            yes: false,
        },
    )
    .await
    .unwrap_err();
    assert!(format!("{error:#}").contains("not confirmed"), "{error:#}");
    let latched = || {
        station
            .sim
            .sim()
            .with_bus(|bus, now| bus.boards(now)[0].latched.contains(Lock::new(5).unwrap()))
    };
    assert!(latched(), "nothing opened without confirmation");
    let reply = lan_cli::remote_bus(
        &carry,
        &address,
        RemoteBusAction::Unlock {
            board: 0,
            lock: 5,
            yes: true,
        },
    )
    .await
    .unwrap();
    assert!(
        lan_cli::render_bus_reply(&reply)
            .unwrap()
            .contains("opened"),
        "{reply:?}"
    );
    let log = log_of(&engine).await;
    let unlocks: Vec<&str> = log
        .iter()
        .filter(|e| e.action == "bus_unlock")
        .map(|e| e.outcome.as_str())
        .collect();
    assert_eq!(unlocks, vec!["allowed", "refused"], "newest first: {log:?}");
    station.stop().await;
}

fn reach(home: &Path, address: &str) -> cartwise_edge_node::bundle_cli::Reach {
    cartwise_edge_node::bundle_cli::Reach {
        credential: home.to_path_buf(),
        config: None,
        lan: Some(address.parse().unwrap()),
    }
}

async fn bundle(command: cartwise_edge_node::bundle_cli::BundleCommand) -> Result<(), String> {
    cartwise_edge_node::bundle_cli::run(cartwise_edge_node::bundle_cli::BundleArgs { command })
        .await
        .map_err(|error| format!("{error:#}"))
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn the_same_by_bundle_files_with_tampered_and_foreign_bundles_refused(pool: PgPool) {
    use cartwise_edge_node::bundle_cli::BundleCommand;

    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let pi = enroll_device(&pool, &hub, "ST-RA", "st-ra-usb", dir.path())
        .await
        .peer();
    drop(hub);
    let station = Station::start_with(
        dir.path(),
        pi.device,
        pi.branch,
        1,
        now_ms() + 60_000,
        listening,
    )
    .await;
    let engine = station.engine();
    let address = lan_addr(&station);
    let returned = station.lend_and_return("0521234567").await;
    let home = tempfile::tempdir().unwrap();
    let ra = branch_id(&pool, "ST-RA").await;
    let (_carry, issued, _) = technician(&pool, "tech-ra", vec![ra], home.path()).await;
    let stick = tempfile::tempdir().unwrap();

    // Export on the Pi to a file; the hub takes the file.
    let facts = stick.path().join("facts.cwb");
    bundle(BundleCommand::Export {
        out: facts.clone(),
        reach: reach(home.path(), &address),
    })
    .await
    .unwrap();
    let bytes = std::fs::read(&facts).unwrap();
    let pusher = Pusher {
        user_id: issued.technician_id,
        login: "tech-ra".into(),
        branches: vec![ra],
    };
    // A tampered facts bundle is refused by the hub.
    let mut tampered = bytes.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    assert!(technicians::push(&pool, &pusher, &tampered).await.is_err());
    assert_eq!(rental_rows(&pool, *returned.as_uuid()).await.0, 0);
    let outcome = technicians::push(&pool, &pusher, &bytes).await.unwrap();
    assert!(outcome.applied, "{outcome:?}");
    assert_eq!(
        rental_rows(&pool, *returned.as_uuid()).await,
        (1, Some("returned".into()))
    );

    // The hub's intents bundle, by file.
    let free = engine
        .posts()
        .await
        .unwrap()
        .into_iter()
        .find(|post| post.holder.is_none())
        .unwrap();
    let intent = intents::create(
        &pool,
        IntentRequest {
            device: pi.device,
            branch: Some(pi.branch),
            kind: IntentKind::OutOfService {
                post: free.post.get(),
            },
            expires_in: None,
        },
        &Actor {
            kind: ActorKind::Admin,
            name: "manager".into(),
        },
    )
    .await
    .unwrap();
    let intents_bytes = technicians::intents_bundle(&pool, pi.branch, Some(issued.technician_id))
        .await
        .unwrap();
    let file = stick.path().join("intents.cwb");

    // Tampered: refused, nothing applied, logged.
    let mut bad = intents_bytes.clone();
    let last = bad.len() - 3;
    bad[last] ^= 0x55;
    std::fs::write(&file, &bad).unwrap();
    let error = bundle(BundleCommand::Import {
        file: file.clone(),
        reach: reach(home.path(), &address),
    })
    .await
    .unwrap_err();
    assert!(format!("{error:#}").contains("refused"), "{error:#}");
    // For another branch: refused with the reason.
    let hf = BranchId::from_uuid(branch_id(&pool, "ST-HF").await);
    let foreign = technicians::intents_bundle(&pool, hf, None).await.unwrap();
    std::fs::write(&file, &foreign).unwrap();
    let error = bundle(BundleCommand::Import {
        file: file.clone(),
        reach: reach(home.path(), &address),
    })
    .await
    .unwrap_err();
    assert!(
        format!("{error:#}").contains("carry it to its own branch"),
        "{error:#}"
    );
    let refused = log_of(&engine)
        .await
        .into_iter()
        .filter(|e| e.action == "bundle_import" && e.outcome == "refused")
        .count();
    assert_eq!(refused, 2);
    assert!(engine.intent_runs().await.unwrap().is_empty());

    // The real one applies; the executor runs the intent once.
    std::fs::write(&file, &intents_bytes).unwrap();
    bundle(BundleCommand::Import {
        file: file.clone(),
        reach: reach(home.path(), &address),
    })
    .await
    .unwrap();
    eventually("the Pi to run the intent", || {
        let engine = engine.clone();
        let id = intent.id.to_string();
        async move {
            engine
                .intent_runs()
                .await
                .unwrap()
                .iter()
                .any(|run| run.intent == id && run.state == "applied")
        }
    })
    .await;
    // Replayed: nothing changes.
    bundle(BundleCommand::Import {
        file,
        reach: reach(home.path(), &address),
    })
    .await
    .unwrap();
    assert_eq!(engine.intent_runs().await.unwrap().len(), 1);
    station.stop().await;
}
