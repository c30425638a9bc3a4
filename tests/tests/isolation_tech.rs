//! The technician rows of the isolation matrix (the sync rows are `isolation_sync.rs`, the REST
//! API's `cloud-hub/tests/api_authz.rs`), with every branch offline so technicians carry
//! everything. Pis X (ST-RA) and Y (ST-HF) are of chain A, Z (MS-BS) of chain B; each has a
//! technician whose credential is for its own branch.
//!
//! Credential rows: {X→Y, X→Z, Z→X} × {read: bus status, bus scan, facts; write: unlock,
//! intents bundle import} — a technician's credential at another branch's or chain's Pi, over
//! the Pi's LAN listener, by a laptop that skips its own check of the Pi (the write sends the
//! genuine intents bundle of the Pi's own branch, which would apply if the credential were
//! admitted). Each is refused at the session's Hello, receives nothing (no facts bundle, no bus
//! reply, no bundle result), changes nothing on the Pi (posts, rentals, outcomes, intents
//! applied, the board's latched locks) and leaves a refused `lan_session` entry naming the
//! technician and the chain and branch its credential names.
//!
//! Bundle rows: {X's facts bundle, X's intents bundle} × {Y's Pi, Z's Pi (each carried in by
//! its own technician), the hub pushed by Y's technician, by Z's}. Each is refused with a
//! reason, merges nothing (a Pi applies no intents, keeps its sequence mark and never holds
//! X's device or rental; the hub's stored documents and rentals are unchanged) and is recorded
//! (`bundle_import` refused in the Pi's technician log, `technician.push_refused` at the hub).
//!
//! The control: X's technician at X's Pi reads and writes all five, and X's facts bundle pushed
//! by X's technician lands at the hub, so the probes do see content when there is any.
//!
//! Also: a credential that expires during a session is refused on its next request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cartwise_cloud_hub::intents::{self, Actor, ActorKind, IntentRequest};
use cartwise_cloud_hub::technicians::{self, Pusher};
use cartwise_edge_node::cu16::Lock;
use cartwise_edge_node::engine::Engine;
use cartwise_edge_node::engine::techlog::UNVERIFIED_REFUSAL_PREFIX;
use cartwise_edge_node::tech::carry::Carry;
use cartwise_sync_core::facts::{TechnicianLogEntry, read_device_doc};
use cartwise_sync_core::identity::PeerIdentity;
use cartwise_sync_core::intents::IntentKind;
use cartwise_sync_core::message::TechnicianMessage;
use cartwise_sync_core::message::body::{Bundle, BundleResult, BusCommand, BusReply, BusRequest};
use cartwise_sync_core::{CloseReason, Message, SessionEvent};
use cartwise_tests::technician::{
    TechLink, branch_id, identity_for, lan_addr, listening, now_ms, technician,
};
use cartwise_tests::{Station, enroll_device, seed_world, start_hub};
use sqlx::PgPool;
use uuid::Uuid;

/// The lock the refused unlocks aim at (the control opens another).
const PROBED_LOCK: u8 = 7;
/// The lock the control's unlock opens.
const CONTROL_LOCK: u8 = 5;

/// A branch's Pi and its technician.
struct Site {
    name: &'static str,
    pi: PeerIdentity,
    station: Station,
    address: String,
    carry: Carry,
    technician: Uuid,
    login: String,
    /// The hub's genuine intents bundle for this branch.
    intents: Vec<u8>,
    _home: tempfile::TempDir,
}

impl Site {
    fn engine(&self) -> std::sync::Arc<Engine> {
        self.station.engine()
    }

    fn who(&self) -> cartwise_edge_node::identity::EdgeIdentity {
        identity_for(&self.carry, self.pi.branch)
    }
}

/// What a technician could read out of a Pi or write into it, but its technician log.
#[derive(Debug, PartialEq)]
struct Holds {
    facts: String,
    intent_runs: usize,
    intents_seq: u64,
    latched: String,
}

async fn holds(site: &Site) -> Holds {
    let engine = site.engine();
    let doc = automerge::AutoCommit::load(&engine.document().await.unwrap()).unwrap();
    let facts = read_device_doc(&doc);
    Holds {
        facts: format!(
            "{:?}",
            (
                &facts.posts,
                &facts.rentals,
                &facts.outcomes,
                &facts.returns
            )
        ),
        intent_runs: engine.intent_runs().await.unwrap().len(),
        intents_seq: engine.intents_seq_applied().await.unwrap(),
        latched: site
            .station
            .sim
            .sim()
            .with_bus(|bus, now| format!("{:?}", bus.boards(now)[0].latched)),
    }
}

async fn refused(engine: &Engine, action: &str, technician: Uuid) -> Vec<TechnicianLogEntry> {
    engine
        .technician_log(1_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| {
            e.action == action && e.outcome == "refused" && e.technician == Some(technician)
        })
        .collect()
}

/// The events that carry something of the Pi (any is a leak in a refused session).
fn leaks(events: &[SessionEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|event| {
            matches!(
                event,
                SessionEvent::Established { .. }
                    | SessionEvent::ClockSample(_)
                    | SessionEvent::Docs(_)
                    | SessionEvent::SyncReceived(_)
                    | SessionEvent::SignedHeads(_)
                    | SessionEvent::LedgerAck(_)
                    | SessionEvent::Telemetry(_)
                    | SessionEvent::Technician(_)
            )
        })
        .map(|event| format!("{event:?}").chars().take(200).collect())
        .collect()
}

fn bus_replies(events: &[SessionEvent]) -> Vec<BusReply> {
    events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Technician(TechnicianMessage::BusReply(reply)) => Some(reply.clone()),
            _ => None,
        })
        .collect()
}

fn bundle_results(events: &[SessionEvent]) -> Vec<BundleResult> {
    events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Technician(TechnicianMessage::BundleResult(r)) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn facts_bundles(events: &[SessionEvent]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Technician(TechnicianMessage::Bundle(b)) => Some(b.bytes.clone()),
            _ => None,
        })
        .collect()
}

/// One operation of a credential row.
#[derive(Debug, Clone, Copy)]
enum Op {
    Status,
    Scan,
    Facts,
    Unlock,
    ImportIntents,
}

const OPS: [Op; 5] = [
    Op::Status,
    Op::Scan,
    Op::Facts,
    Op::Unlock,
    Op::ImportIntents,
];

impl Op {
    /// The messages a laptop sends for it at the Pi of `target`, and the answers it waits for
    /// (the facts are sent by the Pi on admission, unasked).
    fn messages(self, target: &Site, lock: u8) -> (Vec<Message>, usize) {
        let bus = |command| (vec![Message::BusRequest(BusRequest::new(1, command))], 1);
        match self {
            Op::Status => bus(BusCommand::Status { board: 0 }),
            Op::Scan => bus(BusCommand::Scan),
            Op::Facts => (Vec::new(), 0),
            Op::Unlock => bus(BusCommand::Unlock {
                board: 0,
                lock,
                confirm: true,
            }),
            Op::ImportIntents => (
                vec![Message::Bundle(Bundle {
                    bytes: target.intents.clone(),
                })],
                1,
            ),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Op::Status => "read bus status",
            Op::Scan => "read bus scan",
            Op::Facts => "read facts",
            Op::Unlock => "write unlock",
            Op::ImportIntents => "write intents bundle",
        }
    }
}

/// Starts the Pi of `code` (enrolled into `dir`), a technician for its branch, an intent for
/// it (a note: the hub has not heard of its posts yet) and the hub's intents bundle carrying
/// it.
async fn site(
    pool: &PgPool,
    name: &'static str,
    code: &str,
    pi: PeerIdentity,
    dir: &std::path::Path,
) -> Site {
    let station =
        Station::start_with(dir, pi.device, pi.branch, 1, now_ms() + 60_000, listening).await;
    let address = lan_addr(&station);
    let home = tempfile::tempdir().unwrap();
    let login = format!("tech-{}", code.to_lowercase());
    let branch = branch_id(pool, code).await;
    let (carry, issued, _) = technician(pool, &login, vec![branch], home.path()).await;
    intents::create(
        pool,
        IntentRequest {
            device: pi.device,
            branch: Some(pi.branch),
            kind: IntentKind::Note {
                post: None,
                text: format!("for {name}"),
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
    let intents = technicians::intents_bundle(pool, pi.branch, Some(issued.technician_id))
        .await
        .unwrap();
    Site {
        name,
        pi,
        station,
        address,
        carry,
        technician: issued.technician_id,
        login,
        intents,
        _home: home,
    }
}

async fn stored_documents(pool: &PgPool) -> Vec<(String, Vec<u8>)> {
    sqlx::query_as("SELECT doc_id, heads FROM sync_documents ORDER BY doc_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn count(pool: &PgPool, sql: &str, bind: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(bind)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn pusher(pool: &PgPool, site: &Site) -> Pusher {
    Pusher {
        user_id: site.technician,
        login: site.login.clone(),
        branches: technicians::carry_scope(pool, site.technician)
            .await
            .unwrap(),
    }
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn technicians_and_bundles_of_other_branches_and_chains_read_and_write_nothing(pool: PgPool) {
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let places = [("X", "ST-RA"), ("Y", "ST-HF"), ("Z", "MS-BS")];
    let mut pis = Vec::new();
    for ((name, code), dir) in places.iter().zip(&dirs) {
        let device = format!("iso-tech-{}", name.to_lowercase());
        pis.push(
            enroll_device(&pool, &hub, code, &device, dir.path())
                .await
                .peer(),
        );
    }
    // Every branch is offline from here: only technicians carry data.
    drop(hub);
    let mut sites = Vec::new();
    for (((name, code), dir), pi) in places.iter().zip(&dirs).zip(pis) {
        sites.push(site(&pool, name, code, pi, dir.path()).await);
    }
    let [x, y, z] = &sites[..] else {
        unreachable!()
    };
    assert_eq!(x.pi.chain, y.pi.chain);
    assert_ne!(x.pi.branch, y.pi.branch);
    assert_ne!(x.pi.chain, z.pi.chain);
    let rental = x.station.lend_and_return("0521234567").await;

    // The control: X's technician at X's Pi reads and writes all five.
    let mut link = TechLink::open(&x.who(), &x.address).await;
    assert!(link.established, "{:?}", link.closed);
    for op in [Op::Status, Op::Scan, Op::Unlock] {
        let (messages, answers) = op.messages(x, CONTROL_LOCK);
        let replies = bus_replies(&link.request(messages, answers).await);
        assert!(
            replies.len() == 1 && replies[0].ok,
            "control {}: {replies:?}",
            op.name()
        );
    }
    let (messages, answers) = Op::ImportIntents.messages(x, CONTROL_LOCK);
    let imported = link.request(messages, answers).await;
    let results = bundle_results(&imported);
    assert!(results.len() == 1 && results[0].applied, "{results:?}");
    // The facts ride back after the intents applied.
    link.until(|events| facts_bundles(events).len() >= 2).await;
    let facts = facts_bundles(&link.events);
    assert!(
        facts.len() >= 2,
        "the Pi sends its facts on admission and after intents"
    );
    let facts_x = facts.last().unwrap().clone();
    link.close();
    let opened = !x.station.sim.sim().with_bus(|bus, now| {
        bus.boards(now)[0]
            .latched
            .contains(Lock::new(CONTROL_LOCK).unwrap())
    });
    assert!(opened, "the control's unlock opened the lock");

    let mut table = Vec::new();
    let mut cells = 0;

    // Credential rows.
    for (tech, pi, refusal) in [
        (x, y, "issued for branch"),
        (x, z, "not issued by this chain"),
        (z, x, "not issued by this chain"),
    ] {
        let before = holds(pi).await;
        for op in OPS {
            let logged = refused(&pi.engine(), "lan_session", tech.technician)
                .await
                .len();
            let mut link = TechLink::open(&tech.who(), &pi.address).await;
            let (messages, answers) = op.messages(pi, PROBED_LOCK);
            link.request(messages, answers).await;
            let row = format!("{} → {}: {}", tech.name, pi.name, op.name());
            match &link.closed {
                Some(CloseReason::RefusedByPeer { reason, .. }) => {
                    assert!(reason.contains(refusal), "{row}: {reason}");
                }
                other => panic!("{row}: expected a refusal, got {other:?}"),
            }
            let leaked = leaks(&link.events);
            assert!(leaked.is_empty(), "{row}: leaked {leaked:#?}");
            link.close();
            let entries = refused(&pi.engine(), "lan_session", tech.technician).await;
            assert_eq!(entries.len(), logged + 1, "{row}: one refusal logged");
            let detail = &entries[0].detail;
            assert!(
                detail.contains(&tech.pi.chain.to_string())
                    && detail.contains(&tech.pi.branch.to_string())
                    && detail.contains(refusal),
                "{row}: the log names the credential's chain and branch: {detail}"
            );
            if tech.pi.chain != pi.pi.chain {
                assert!(
                    detail.starts_with(UNVERIFIED_REFUSAL_PREFIX),
                    "{row}: {detail}"
                );
            }
            cells += 1;
            table.push(format!("{row}: refused, 0 leaks, logged"));
        }
        assert_eq!(
            before,
            holds(pi).await,
            "{} → {}: wrote",
            tech.name,
            pi.name
        );
    }

    // Bundle rows at the Pis: X's bundles carried in by each Pi's own technician.
    let x_device = x.pi.device.to_string();
    let x_rental = rental.to_string();
    for pi in [y, z] {
        let before = holds(pi).await;
        let mut link = TechLink::open(&pi.who(), &pi.address).await;
        assert!(link.established, "{}: {:?}", pi.name, link.closed);
        for (kind, bytes) in [("facts", &facts_x), ("intents", &x.intents)] {
            let row = format!("X's {kind} bundle at {}'s Pi", pi.name);
            let logged = refused(&pi.engine(), "bundle_import", pi.technician)
                .await
                .len();
            let events = link
                .request(
                    vec![Message::Bundle(Bundle {
                        bytes: bytes.clone(),
                    })],
                    1,
                )
                .await;
            let results = bundle_results(&events);
            assert!(
                results.len() == 1
                    && !results[0].applied
                    && results[0].message.starts_with("refused"),
                "{row}: {results:?}"
            );
            assert_eq!(
                refused(&pi.engine(), "bundle_import", pi.technician)
                    .await
                    .len(),
                logged + 1,
                "{row}: logged"
            );
            let doc = automerge::AutoCommit::load(&pi.engine().document().await.unwrap()).unwrap();
            let held = format!("{:?}", read_device_doc(&doc));
            assert!(
                !held.contains(&x_device) && !held.contains(&x_rental),
                "{row}: X's data reached the Pi"
            );
            cells += 1;
            table.push(format!("{row}: refused, nothing merged, logged"));
        }
        link.close();
        assert_eq!(before, holds(pi).await, "{}: a bundle of X wrote", pi.name);
    }

    // Bundle rows at the hub: X's bundles pushed by Y's and Z's technicians.
    let documents = stored_documents(&pool).await;
    let rentals_sql = "SELECT count(*) FROM rentals WHERE id::text = $1";
    let refusals_sql =
        "SELECT count(*) FROM audit_log WHERE action = 'technician.push_refused' AND actor_id = $1";
    for site in [y, z] {
        let pusher = pusher(&pool, site).await;
        for (kind, bytes) in [("facts", &facts_x), ("intents", &x.intents)] {
            let row = format!(
                "X's {kind} bundle pushed to the hub by {}'s technician",
                site.name
            );
            let audited = count(&pool, refusals_sql, &site.login).await;
            let error = technicians::push(&pool, &pusher, bytes).await.unwrap_err();
            assert_eq!(
                count(&pool, refusals_sql, &site.login).await,
                audited + 1,
                "{row}: audited ({error})"
            );
            assert_eq!(
                count(&pool, rentals_sql, &x_rental).await,
                0,
                "{row}: merged"
            );
            cells += 1;
            table.push(format!(
                "{row}: refused ({}), nothing merged, audited",
                error.reason()
            ));
        }
    }
    assert_eq!(
        documents,
        stored_documents(&pool).await,
        "a refused push wrote"
    );
    // The hub's control: X's own technician pushes the same facts and they land.
    let outcome = technicians::push(&pool, &pusher(&pool, x).await, &facts_x)
        .await
        .unwrap();
    assert!(outcome.applied, "{outcome:?}");
    assert_eq!(count(&pool, rentals_sql, &x_rental).await, 1);

    eprintln!(
        "isolation_tech: {cells} cells, 0 leaks\n{}",
        table.join("\n")
    );
    assert_eq!(cells, 3 * OPS.len() + 2 * 2 + 2 * 2, "the matrix's size");
    for site in sites {
        site.station.stop().await;
    }
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_credential_that_expires_during_a_session_is_refused_on_its_next_request(pool: PgPool) {
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let pi = enroll_device(&pool, &hub, "ST-RA", "iso-tech-expiry", dir.path())
        .await
        .peer();
    drop(hub);
    let x = site(&pool, "X", "ST-RA", pi, dir.path()).await;
    let engine = x.engine();
    let mut link = TechLink::open(&x.who(), &x.address).await;
    assert!(link.established, "{:?}", link.closed);
    let scan = || vec![Message::BusRequest(BusRequest::new(1, BusCommand::Scan))];
    let replies = bus_replies(&link.request(scan(), 1).await);
    assert!(replies.len() == 1 && replies[0].ok, "{replies:?}");

    // The credential is valid 12 hours; the Pi's clock moves 13 hours on, mid-session.
    x.station.clock.advance_ms(13 * 3_600_000);
    let replies = bus_replies(&link.request(scan(), 1).await);
    assert_eq!(replies.len(), 1, "{:?}", link.events);
    assert!(!replies[0].ok);
    let message = &replies[0].message;
    assert!(
        message.contains("expired at"),
        "names the expiry: {message}"
    );
    assert!(
        message.contains("cartwise-tech login"),
        "says what to do: {message}"
    );
    link.until(|_| false).await;
    assert!(link.closed.is_some(), "the Pi ends the session");
    link.close();
    let entries = refused(&engine, "bus_scan", x.technician).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].detail.contains("mid-session"), "{entries:?}");

    // A new session is refused at its Hello, for the same reason.
    let link = TechLink::open(&x.who(), &x.address).await;
    match &link.closed {
        Some(CloseReason::RefusedByPeer { reason, .. }) => {
            assert!(reason.contains("expired"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    link.close();
    x.station.stop().await;
}
