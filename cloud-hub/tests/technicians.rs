//! Technicians on site, the hub's side, against Postgres: credentials are issued within scope
//! and expiry bounds and refused to revoked technicians; a pushed facts bundle is applied once
//! through the merge path, a replay changes nothing, and a tampered bundle, a bundle of a branch
//! the technician may not carry, a revoked device's bundle and a change by another actor than
//! the device are refused and audited; the
//! intents bundle verifies with the chain CA and acknowledges what the hub holds; a device's
//! technician log reaches the audit log once; the API serves the same over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use cartwise_cloud_hub::api::{self, ApiConfig};
use cartwise_cloud_hub::technicians::{self, Pusher, TechError};
use cartwise_cloud_hub::users::{self, CredentialKind, NewUser, Role as UserRole};
use cartwise_cloud_hub::{pki, project, seed, world::World};
use cartwise_schema::{BranchId, ChainId, DeviceId, RentalId};
use cartwise_sync_core::bundle::{
    BundleBody, BundleDoc, BundleError, BundleKind, BundleSigner, Producer, decode_bundle,
    encode_bundle,
};
use cartwise_sync_core::facts::read_device_doc;
use cartwise_sync_core::identity::{PeerIdentity, certs_from_pem, device_csr_params};
use cartwise_sync_core::message::Head;
use cartwise_sync_core::technician::verify_credential;
use cartwise_sync_core::{DocId, device_actor};
use rcgen::{KeyPair, SigningKey};
use sqlx::PgPool;
use tower::ServiceExt;
use uuid::Uuid;

const CHAIN: &str = "0b1e3c2a-0000-4000-8000-000000000001";
const BRANCH: &str = "0b1e3c2a-0000-4000-8000-000000000101"; // ST-RA
const OTHER_BRANCH: &str = "0b1e3c2a-0000-4000-8000-000000000102"; // ST-HF
const PI_1: &str = "0b1e3c2a-0000-4000-8000-000000001001";
const PI_2: &str = "0b1e3c2a-0000-4000-8000-000000001002";
const PI_HF: &str = "0b1e3c2a-0000-4000-8000-000000001003";
const T0: i64 = 1_795_248_000_000;

struct Signer(KeyPair);

impl BundleSigner for Signer {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.0.sign(message).map_err(|error| error.to_string())
    }
}

async fn seed_world(pool: &PgPool) {
    let text = std::fs::read_to_string(cartwise_fixtures::world_path()).unwrap();
    seed::seed(pool, &World::parse(&text).unwrap())
        .await
        .unwrap();
}

async fn add_user(
    pool: &PgPool,
    login: &str,
    role: UserRole,
    branches: Vec<Uuid>,
) -> (Uuid, String) {
    let chain = (role != UserRole::PlatformAdmin).then(|| Uuid::parse_str(CHAIN).unwrap());
    let id = users::add_user(
        pool,
        &NewUser {
            login: login.to_owned(),
            password: "correct horse battery".to_owned(),
            role,
            chain,
            branches,
        },
    )
    .await
    .unwrap();
    let token = users::issue_credential(pool, id, CredentialKind::ApiToken)
        .await
        .unwrap()
        .0;
    (id, token)
}

fn csr() -> (KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let pem = device_csr_params()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    (key, pem)
}

async fn chain_ca_der(pool: &PgPool) -> Vec<u8> {
    let ca = pki::load_or_create_chain_ca(pool, ChainId::parse(CHAIN).unwrap())
        .await
        .unwrap();
    ca.cert_der.to_vec()
}

/// An enrolled device: its key and certificate (DER), on record at the hub.
async fn enrolled(pool: &PgPool, device: &str, branch: &str) -> (Signer, Vec<u8>) {
    let identity = PeerIdentity::device(
        ChainId::parse(CHAIN).unwrap(),
        BranchId::parse(branch).unwrap(),
        DeviceId::parse(device).unwrap(),
    );
    let (key, pem) = csr();
    let issued = pki::issue_device_cert(pool, &identity, &pem).await.unwrap();
    let leaf = certs_from_pem(&issued.cert_chain_pem).unwrap().remove(0);
    (Signer(key), leaf.to_vec())
}

/// A device document with one returned rental and, optionally, technician-log entries.
fn device_doc(device: &str, branch: &str, rental: RentalId, log: &[(&str, &str)]) -> AutoCommit {
    let id = DeviceId::parse(device).unwrap();
    let mut doc = AutoCommit::new().with_actor(device_actor(&id));
    doc.put(ROOT, "schema", 1).unwrap();
    doc.put(ROOT, "device", device).unwrap();
    doc.put(ROOT, "branch", branch).unwrap();
    let rentals = doc.put_object(ROOT, "rentals", ObjType::Map).unwrap();
    let r = doc
        .put_object(&rentals, rental.to_string(), ObjType::Map)
        .unwrap();
    doc.put(&r, "phone", "+972521234567").unwrap();
    doc.put(&r, "post", 1_u64).unwrap();
    doc.put(&r, "status", "returned").unwrap();
    doc.put(&r, "minutes", 120_u64).unwrap();
    doc.put(&r, "start_hlc", format!("{T0}:0")).unwrap();
    doc.put(&r, "start_at", T0).unwrap();
    doc.put(&r, "end_at", T0 + 3_600_000).unwrap();
    doc.put(&r, "end_hlc", format!("{}:0", T0 + 3_600_000))
        .unwrap();
    doc.put(&r, "time_trusted", true).unwrap();
    let techlog = doc
        .put_object(ROOT, "technician_log", ObjType::Map)
        .unwrap();
    for (entry, action) in log {
        let e = doc.put_object(&techlog, *entry, ObjType::Map).unwrap();
        doc.put(&e, "at", T0).unwrap();
        doc.put(&e, "technician", "0b1e3c2a-0000-4000-8000-00000000beef")
            .unwrap();
        doc.put(&e, "action", *action).unwrap();
        doc.put(&e, "outcome", "refused").unwrap();
        doc.put(&e, "detail", "the technician credential expired")
            .unwrap();
    }
    doc.commit();
    doc
}

fn facts_bundle(
    device: &str,
    branch: &str,
    seq: u64,
    doc: &mut AutoCommit,
    signer: &Signer,
    cert: &[u8],
) -> Vec<u8> {
    let id = DeviceId::parse(device).unwrap();
    let body = BundleBody {
        kind: BundleKind::Facts,
        chain: ChainId::parse(CHAIN).unwrap(),
        branch: BranchId::parse(branch).unwrap(),
        producer: Producer::device(id),
        seq,
        created_at_ms: T0,
        technician: None,
        docs: vec![BundleDoc {
            doc: DocId::device(id),
            heads: doc.get_heads().into_iter().map(Head::from).collect(),
            data: doc.save(),
        }],
        ledger_acks: vec![],
        producer_cert: Some(cert.to_vec()),
    };
    encode_bundle(&body, signer).unwrap()
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

fn rental(n: u8) -> RentalId {
    RentalId::from_parts(u64::try_from(T0).unwrap(), [n; 10])
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn credentials_are_scoped_bounded_and_refused_once_revoked(pool: PgPool) {
    seed_world(&pool).await;
    let branch = Uuid::parse_str(BRANCH).unwrap();
    let (tech_id, _) = add_user(&pool, "tech", UserRole::Technician, vec![branch]).await;
    add_user(&pool, "admin", UserRole::PlatformAdmin, vec![]).await;
    let (_, pem) = csr();

    let issued = technicians::issue(&pool, "tech", &pem, Some(12), None, "test")
        .await
        .unwrap();
    assert_eq!(issued.technician_id, tech_id);
    assert_eq!(issued.branches.len(), 1, "only the branch in scope");
    let cert = certs_from_pem(&issued.branches[0].cert_pem)
        .unwrap()
        .remove(0);
    let ca = chain_ca_der(&pool).await;
    let verified = verify_credential(
        &cert,
        &ca,
        BranchId::from_uuid(branch),
        issued.issued_at_ms + 1000,
    )
    .unwrap();
    assert_eq!(verified.technician, tech_id);
    assert_eq!(
        verified.not_after_ms - verified.not_before_ms,
        12 * 3_600_000
    );
    assert_eq!(issued.branches[0].devices.len(), 2, "the branch's two Pis");
    let other = BranchId::parse(OTHER_BRANCH).unwrap();
    assert!(verify_credential(&cert, &ca, other, issued.issued_at_ms + 1000).is_err());

    for hours in [0, 169] {
        assert!(matches!(
            technicians::issue(&pool, "tech", &pem, Some(hours), None, "test").await,
            Err(TechError::Hours(h)) if h == hours
        ));
    }
    let outside = [Uuid::parse_str(OTHER_BRANCH).unwrap()];
    assert!(matches!(
        technicians::issue(&pool, "tech", &pem, None, Some(&outside), "test").await,
        Err(TechError::Scope(_))
    ));
    assert!(matches!(
        technicians::issue(&pool, "admin", &pem, None, None, "test").await,
        Err(TechError::NotTechnician(_))
    ));

    technicians::revoke(&pool, "tech", "test").await.unwrap();
    let refused = technicians::issue(&pool, "tech", &pem, None, None, "test")
        .await
        .unwrap_err();
    assert!(matches!(refused, TechError::Revoked(_)), "{refused}");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM audit_log WHERE action = 'technician.credential_refused' AND detail->>'reason' = 'revoked'").await,
        1
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM audit_log WHERE action = 'technician.revoked'"
        )
        .await,
        1
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM technician_credentials").await,
        1
    );
    let listed = technicians::list(&pool).await.unwrap();
    assert!(
        listed
            .iter()
            .any(|row| row.login == "tech" && row.revoked && row.credentials == 1)
    );
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_pushed_bundle_applies_once_and_every_refusal_is_audited(pool: PgPool) {
    seed_world(&pool).await;
    let (tech_id, _) = add_user(
        &pool,
        "tech",
        UserRole::Technician,
        vec![Uuid::parse_str(BRANCH).unwrap()],
    )
    .await;
    let pusher = Pusher {
        user_id: tech_id,
        login: "tech".into(),
        branches: technicians::carry_scope(&pool, tech_id).await.unwrap(),
    };
    assert_eq!(pusher.branches, vec![Uuid::parse_str(BRANCH).unwrap()]);
    let (signer, cert) = enrolled(&pool, PI_1, BRANCH).await;
    let mut doc = device_doc(PI_1, BRANCH, rental(1), &[]);
    let bytes = facts_bundle(PI_1, BRANCH, 1, &mut doc, &signer, &cert);

    let first = technicians::push(&pool, &pusher, &bytes).await.unwrap();
    assert!(first.applied && !first.replay, "{first:?}");
    let rentals =
        "SELECT count(*) FROM rentals WHERE device_id = '0b1e3c2a-0000-4000-8000-000000001001'";
    assert_eq!(count(&pool, rentals).await, 1);
    let status: String = sqlx::query_scalar("SELECT status FROM rentals WHERE id = $1")
        .bind(rental(1).as_uuid())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "returned");

    // The same bundle again, and an older one: already applied, nothing changes.
    let version = "SELECT coalesce(sum(version), 0)::bigint FROM sync_documents";
    let before = count(&pool, version).await;
    let again = technicians::push(&pool, &pusher, &bytes).await.unwrap();
    assert!(!again.applied && again.replay, "{again:?}");
    let mut changed = device_doc(PI_1, BRANCH, rental(2), &[]);
    let older = facts_bundle(PI_1, BRANCH, 1, &mut changed, &signer, &cert);
    assert!(
        technicians::push(&pool, &pusher, &older)
            .await
            .unwrap()
            .replay
    );
    assert_eq!(count(&pool, version).await, before);
    assert_eq!(count(&pool, rentals).await, 1);

    // Tampered: one byte of the document changed.
    let mut tampered = facts_bundle(PI_1, BRANCH, 2, &mut changed, &signer, &cert);
    let at = tampered.len() / 2;
    tampered[at] ^= 0x40;
    assert!(technicians::push(&pool, &pusher, &tampered).await.is_err());
    assert_eq!(count(&pool, rentals).await, 1);

    // Another branch's Pi: the technician may not carry it.
    let (hf_signer, hf_cert) = enrolled(&pool, PI_HF, OTHER_BRANCH).await;
    let mut hf_doc = device_doc(PI_HF, OTHER_BRANCH, rental(3), &[]);
    let foreign = facts_bundle(PI_HF, OTHER_BRANCH, 1, &mut hf_doc, &hf_signer, &hf_cert);
    assert!(matches!(
        technicians::push(&pool, &pusher, &foreign).await,
        Err(TechError::Scope(_))
    ));

    // A Pi's bundle relabelled for another branch: its certificate does not vouch for it.
    let mut relabelled_doc = device_doc(PI_1, OTHER_BRANCH, rental(4), &[]);
    let relabelled = facts_bundle(PI_1, OTHER_BRANCH, 3, &mut relabelled_doc, &signer, &cert);
    let wide = Pusher {
        branches: vec![
            Uuid::parse_str(BRANCH).unwrap(),
            Uuid::parse_str(OTHER_BRANCH).unwrap(),
        ],
        ..pusher.clone()
    };
    assert!(matches!(
        technicians::push(&pool, &wide, &relabelled).await,
        Err(TechError::Bundle(BundleError::WrongScope { .. }))
    ));

    // A revoked device's bundle.
    let (pi2_signer, pi2_cert) = enrolled(&pool, PI_2, BRANCH).await;
    pki::revoke_device(&pool, DeviceId::parse(PI_2).unwrap())
        .await
        .unwrap();
    let mut pi2_doc = device_doc(PI_2, BRANCH, rental(5), &[]);
    let revoked = facts_bundle(PI_2, BRANCH, 1, &mut pi2_doc, &pi2_signer, &pi2_cert);
    assert!(matches!(
        technicians::push(&pool, &pusher, &revoked).await,
        Err(TechError::Device(_))
    ));

    // Signed by the device, but carrying a change another actor wrote (what a relay would
    // need to author facts): refused by the authority check.
    let mut authored = device_doc(PI_1, BRANCH, rental(6), &[]);
    authored.set_actor(automerge::ActorId::from(b"a technician laptop".to_vec()));
    authored.put(ROOT, "posts", "forged").unwrap();
    authored.commit();
    let forged = facts_bundle(PI_1, BRANCH, 10, &mut authored, &signer, &cert);
    assert!(matches!(
        technicians::push(&pool, &pusher, &forged).await,
        Err(TechError::Bundle(BundleError::Authority(_)))
    ));
    assert_eq!(count(&pool, rentals).await, 1);

    let refusals: Vec<String> = sqlx::query_scalar(
        "SELECT detail->>'reason' FROM audit_log WHERE action = 'technician.push_refused' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(refusals.len(), 5, "{refusals:?}");
    assert!(
        ["bad_signature", "bad_bundle"].contains(&refusals[0].as_str()),
        "{refusals:?}"
    );
    assert_eq!(refusals[1], "scope");
    assert_eq!(refusals[2], "wrong_branch");
    assert_eq!(refusals[3], "device_refused");
    assert_eq!(refusals[4], "bad_bundle");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM audit_log WHERE action = 'technician.push'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM audit_log WHERE action = 'technician.push_replayed'"
        )
        .await,
        2
    );

    // The intents bundle verifies with the chain CA and acknowledges the closed rental.
    let branch = BranchId::parse(BRANCH).unwrap();
    let intents = technicians::intents_bundle(&pool, branch, Some(tech_id))
        .await
        .unwrap();
    let decoded = decode_bundle(&intents).unwrap();
    let ca = chain_ca_der(&pool).await;
    let body = decoded.verify_hub(&ca).unwrap();
    assert_eq!((body.seq, body.branch), (1, branch));
    let acked: Vec<RentalId> = body
        .ledger_acks
        .iter()
        .filter(|ack| ack.device == DeviceId::parse(PI_1).unwrap())
        .flat_map(|ack| ack.rentals.clone())
        .collect();
    assert_eq!(acked, vec![rental(1)]);
    let next = technicians::intents_bundle(&pool, branch, None)
        .await
        .unwrap();
    assert_eq!(decode_bundle(&next).unwrap().unverified_body().seq, 2);
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn the_technician_log_reaches_the_audit_log_once(pool: PgPool) {
    seed_world(&pool).await;
    let entries = [
        ("0190a000-0000-7000-8000-000000000001", "lan_session"),
        ("0190a000-0000-7000-8000-000000000002", "bus_unlock"),
    ];
    let doc = device_doc(PI_1, BRANCH, rental(1), &entries);
    let facts = read_device_doc(&doc);
    assert_eq!(facts.technician_log.len(), 2);
    let device = DeviceId::parse(PI_1).unwrap();
    let branch = BranchId::parse(BRANCH).unwrap();
    project::project_device(&pool, device, branch, &facts)
        .await
        .unwrap();
    project::project_device(&pool, device, branch, &facts)
        .await
        .unwrap();
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT action, actor_id, detail->>'outcome' FROM audit_log \
         WHERE actor_kind = 'technician' ORDER BY action",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                "technician.bus_unlock".into(),
                "0b1e3c2a-0000-4000-8000-00000000beef".into(),
                "refused".into()
            ),
            (
                "technician.lan_session".into(),
                "0b1e3c2a-0000-4000-8000-00000000beef".into(),
                "refused".into()
            ),
        ]
    );
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Vec<u8>) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 32 << 20)
        .await
        .unwrap();
    (status, bytes.to_vec())
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn the_api_issues_serves_bundles_and_takes_pushes(pool: PgPool) {
    seed_world(&pool).await;
    let (_, token) = add_user(
        &pool,
        "tech",
        UserRole::Technician,
        vec![Uuid::parse_str(BRANCH).unwrap()],
    )
    .await;
    let (_, viewer) = add_user(
        &pool,
        "viewer",
        UserRole::Viewer,
        vec![Uuid::parse_str(BRANCH).unwrap()],
    )
    .await;
    let app = Router::new().nest("/api", api::router(pool.clone(), ApiConfig::default()));
    let (_, pem) = csr();
    let json = |token: &str, body: serde_json::Value| {
        Request::post("/api/technicians/credentials")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let (status, body) = send(
        &app,
        json(&token, serde_json::json!({ "csr_pem": pem, "hours": 2 })),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["data"]["branches"].as_array().unwrap().len(), 1);
    let (status, _) = send(&app, json(&viewer, serde_json::json!({ "csr_pem": pem }))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, bundle) = send(
        &app,
        Request::get(format!("/api/technicians/branches/{BRANCH}/bundle"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        decode_bundle(&bundle).unwrap().unverified_body().kind,
        BundleKind::Intents
    );
    let (status, _) = send(
        &app,
        Request::get(format!("/api/technicians/branches/{OTHER_BRANCH}/bundle"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another branch reads as missing"
    );

    let (signer, cert) = enrolled(&pool, PI_1, BRANCH).await;
    let mut doc = device_doc(PI_1, BRANCH, rental(1), &[]);
    let bytes = facts_bundle(PI_1, BRANCH, 7, &mut doc, &signer, &cert);
    let push = |bytes: Vec<u8>| {
        Request::post("/api/technicians/push")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(bytes))
            .unwrap()
    };
    let (status, body) = send(&app, push(bytes.clone())).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["data"]["applied"], true);
    let (_, body) = send(&app, push(bytes.clone())).await;
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["data"]["replay"], true);
    let mut tampered = bytes;
    let last = tampered.len() - 3;
    tampered[last] ^= 1;
    let (status, body) = send(&app, push(tampered)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{answer}"
    );
}
