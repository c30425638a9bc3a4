//! A technician on site with bundle files (a USB stick) instead of the LAN, with the hub
//! unreachable from the branch: the Pi lends and returns; `cartwise-edge bundle export` writes
//! its signed facts; `cartwise-tech bundle import` carries them; `cartwise-tech push` hands them
//! to the hub over its HTTP API; Postgres has every rental once. An intent created in the
//! cloud rides back by `cartwise-tech login` + `bundle export` → `cartwise-edge bundle import`
//! and the Pi applies it. Refused: a tampered bundle (on the Pi and at the hub), a bundle of
//! another branch (on the laptop); a replayed bundle changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use cartwise_cloud_hub::http::{self, AppState};
use cartwise_cloud_hub::intents::{self, Actor, ActorKind, IntentRequest};
use cartwise_cloud_hub::users::{self, NewUser, Role as UserRole};
use cartwise_edge_node::bundle_cli::{self, BundleArgs, BundleCommand, Reach};
use cartwise_edge_node::tech::carry::Carry;
use cartwise_edge_node::tech::hub_cli::{self, BundleAction, CredentialAction, Home, HubCommand};
use cartwise_schema::BranchId;
use cartwise_sync_core::bundle::decode_bundle;
use cartwise_sync_core::intents::IntentKind;
use cartwise_tests::{Station, enroll_device, eventually, seed_world, start_hub};
use sqlx::PgPool;
use uuid::Uuid;

const CHAIN: &str = "0b1e3c2a-0000-4000-8000-000000000001";
const OTHER_BRANCH: &str = "0b1e3c2a-0000-4000-8000-000000000102"; // ST-HF

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn home(dir: &Path) -> Home {
    Home {
        dir: Some(dir.to_path_buf()),
    }
}

fn reach(credential: &Path, lan: SocketAddr) -> Reach {
    Reach {
        credential: credential.to_path_buf(),
        config: None,
        lan: Some(lan),
    }
}

async fn export_facts(credential: &Path, lan: SocketAddr, out: &Path) {
    bundle_cli::run(BundleArgs {
        command: BundleCommand::Export {
            out: out.to_path_buf(),
            reach: reach(credential, lan),
        },
    })
    .await
    .unwrap();
}

async fn import_intents(credential: &Path, lan: SocketAddr, file: &Path) -> Result<(), String> {
    bundle_cli::run(BundleArgs {
        command: BundleCommand::Import {
            file: file.to_path_buf(),
            reach: reach(credential, lan),
        },
    })
    .await
    .map_err(|error| format!("{error:#}"))
}

async fn rental_rows(pool: &PgPool, id: Uuid) -> (i64, Option<String>) {
    sqlx::query_as("SELECT count(*), max(status::text) FROM rentals WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The hub's HTTP API on loopback (the technician's "online"); stops when the sender drops.
async fn hub_http(pool: &PgPool) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let state = AppState { pool: pool.clone() };
    tokio::spawn(http::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    (url, stop)
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn bundles_on_a_usb_stick_carry_facts_up_and_intents_down(pool: PgPool) {
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let pi = enroll_device(&pool, &hub, "ST-RA", "st-ra-usb", dir.path())
        .await
        .peer();
    // The branch never reaches the hub again: only bundles carry its data.
    drop(hub);
    let station = Station::start_with(
        dir.path(),
        pi.device,
        pi.branch,
        1,
        now_ms() + 60_000,
        |c| {
            c.lan.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        },
    )
    .await;
    let engine = station.engine();
    let lan = station.edge.as_ref().unwrap().lan.unwrap();

    // A lend and a return while the hub is unreachable.
    let rental = station.lend_and_return("0521234567").await;

    // The technician signs in while online (real HTTP), for this branch.
    users::add_user(
        &pool,
        &NewUser {
            login: "tech-usb".into(),
            password: "a long technician password".into(),
            role: UserRole::Technician,
            chain: Some(Uuid::parse_str(CHAIN).unwrap()),
            branches: vec![*pi.branch.as_uuid()],
        },
    )
    .await
    .unwrap();
    let (url, _online) = hub_http(&pool).await;
    let laptop = tempfile::tempdir().unwrap();
    let carry = Carry::open(laptop.path()).unwrap();
    hub_cli::login(
        &carry,
        &url,
        "tech-usb",
        "a long technician password",
        Some(4),
        &[],
    )
    .await
    .unwrap();
    let credential = carry.credential().unwrap();
    assert_eq!(credential.branches.len(), 1);
    assert!(carry.intents_bundle(pi.branch).unwrap().is_some());

    // At the Pi's console: a credential directory for this branch, the facts on the stick.
    let stick = tempfile::tempdir().unwrap();
    let cred_dir = stick.path().join("credential");
    hub_cli::run(HubCommand::Credential {
        action: CredentialAction::Export {
            branch: pi.branch,
            out: cred_dir.clone(),
            home: home(laptop.path()),
        },
    })
    .await
    .unwrap();
    assert!(
        !std::fs::read_to_string(cred_dir.join("token"))
            .unwrap()
            .contains("tok")
    );
    let facts = stick.path().join("facts.cwb");
    export_facts(&cred_dir, lan, &facts).await;

    // Back on the laptop: import and push (online).
    let import = |file: PathBuf| {
        hub_cli::run(HubCommand::Bundle {
            action: BundleAction::Import {
                file,
                home: home(laptop.path()),
            },
        })
    };
    import(facts.clone()).await.unwrap();
    assert_eq!(carry.pending().unwrap().len(), 1);
    import(facts.clone()).await.unwrap();
    assert_eq!(carry.pending().unwrap().len(), 1, "carried once");
    hub_cli::run(HubCommand::Push {
        home: home(laptop.path()),
    })
    .await
    .unwrap();
    assert!(carry.pending().unwrap().is_empty());
    hub_cli::run(HubCommand::Status {
        home: home(laptop.path()),
    })
    .await
    .unwrap();
    assert_eq!(
        rental_rows(&pool, *rental.as_uuid()).await,
        (1, Some("returned".into()))
    );

    // Replayed: the same facts pushed again change nothing.
    let bytes = std::fs::read(&facts).unwrap();
    let version = "SELECT coalesce(sum(version), 0)::bigint FROM sync_documents";
    let before: i64 = sqlx::query_scalar(version).fetch_one(&pool).await.unwrap();
    std::fs::remove_dir_all(laptop.path().join("pushed")).unwrap();
    std::fs::create_dir(laptop.path().join("pushed")).unwrap();
    import(facts.clone()).await.unwrap();
    hub_cli::run(HubCommand::Push {
        home: home(laptop.path()),
    })
    .await
    .unwrap();
    let after: i64 = sqlx::query_scalar(version).fetch_one(&pool).await.unwrap();
    assert_eq!(before, after);
    assert_eq!(rental_rows(&pool, *rental.as_uuid()).await.0, 1);

    // Tampered facts: the hub refuses and audits; the push exits with an error.
    let mut tampered = bytes.clone();
    let at = tampered.len() - 5;
    tampered[at] ^= 0x10;
    let body = decode_bundle(&bytes).unwrap().unverified_body().clone();
    let name = laptop.path().join("outgoing").join(format!(
        "{}-{}.cwb",
        body.producer.id.unwrap(),
        body.seq + 100
    ));
    std::fs::write(&name, &tampered).unwrap();
    let refused = hub_cli::run(HubCommand::Push {
        home: home(laptop.path()),
    })
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("refused"), "{refused:#}");
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'technician.push_refused' AND actor_id = 'tech-usb'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);

    // Facts of another branch: the laptop does not carry them.
    let mut foreign = decode_bundle(&bytes).unwrap().unverified_body().clone();
    foreign.branch = BranchId::parse(OTHER_BRANCH).unwrap();
    let foreign_file = stick.path().join("foreign.cwb");
    let key = rcgen::KeyPair::generate().unwrap();
    struct Signer(rcgen::KeyPair);
    impl cartwise_sync_core::bundle::BundleSigner for Signer {
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
            rcgen::SigningKey::sign(&self.0, message).map_err(|e| e.to_string())
        }
    }
    std::fs::write(
        &foreign_file,
        cartwise_sync_core::bundle::encode_bundle(&foreign, &Signer(key)).unwrap(),
    )
    .unwrap();
    let error = import(foreign_file).await.unwrap_err();
    assert!(error.to_string().contains("does not cover"), "{error:#}");

    // An intent created in the cloud rides back on the next visit.
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
    hub_cli::login(
        &carry,
        &url,
        "tech-usb",
        "a long technician password",
        Some(4),
        &[],
    )
    .await
    .unwrap();
    let intents_file = stick.path().join("intents.cwb");
    hub_cli::run(HubCommand::Bundle {
        action: BundleAction::Export {
            branch: pi.branch,
            out: intents_file.clone(),
            home: home(laptop.path()),
        },
    })
    .await
    .unwrap();

    // Tampered intents: the Pi refuses them.
    let good = std::fs::read(&intents_file).unwrap();
    let mut bad = good.clone();
    let at = bad.len() - 7;
    bad[at] ^= 0x01;
    let bad_file = stick.path().join("bad-intents.cwb");
    std::fs::write(&bad_file, &bad).unwrap();
    let refused = import_intents(&cred_dir, lan, &bad_file).await.unwrap_err();
    assert!(refused.contains("refused"), "{refused}");
    assert!(
        engine
            .intent_runs()
            .await
            .unwrap()
            .iter()
            .all(|run| run.intent != intent.id.to_string())
    );

    import_intents(&cred_dir, lan, &intents_file).await.unwrap();
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
    // The same intents bundle again is a replay: nothing changes.
    let runs = engine.intent_runs().await.unwrap().len();
    import_intents(&cred_dir, lan, &intents_file).await.unwrap();
    assert_eq!(engine.intent_runs().await.unwrap().len(), runs);
    station.stop().await;
}
