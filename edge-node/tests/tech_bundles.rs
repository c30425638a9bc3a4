//! Bundles on the Pi without any network: the hub's signed intents bundle is applied once
//! (the executor runs its intent), a replay changes nothing, and a tampered bundle, one for
//! another branch, one signed by another CA and one carrying changes the hub did not write
//! are refused and recorded in the technician log; the Pi's facts bundle verifies against its
//! certificate and the chain CA, with a new sequence each time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod station;

use std::sync::Arc;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use cartwise_edge_node::engine::Engine;
use cartwise_edge_node::engine::bundles::BundleApplyError;
use cartwise_schema::{BranchId, ChainId, DeviceId};
use cartwise_sync_core::DocId;
use cartwise_sync_core::bundle::{
    BundleBody, BundleDoc, BundleError, BundleKind, BundleSigner, Producer, decode_bundle,
    encode_bundle,
};
use cartwise_sync_core::identity::{PeerIdentity, chain_ca_params, device_cert_params};
use cartwise_sync_core::intents::{Intent, IntentId, IntentKind, put_intent};
use cartwise_sync_core::message::Head;
use rcgen::{KeyPair, SigningKey};
use station::{Station, T0};

const CHAIN: &str = "0b1e3c2a-0000-4000-8000-000000000001";

struct Key(KeyPair);

impl BundleSigner for Key {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.0.sign(message).map_err(|e| e.to_string())
    }
}

/// A chain CA: its certificate (DER) and key.
fn chain_ca(chain: ChainId) -> (Vec<u8>, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let cert = chain_ca_params(chain, T0 / 1000 - 60)
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.der().to_vec(), key)
}

fn intents_doc(chain: ChainId, branch: BranchId, device: DeviceId) -> AutoCommit {
    let mut doc = AutoCommit::new();
    let intent = Intent {
        id: IntentId::parse("01a1ffeb-fcae-72a9-aa32-a6e6c7910001").unwrap(),
        device,
        kind: IntentKind::OutOfService { post: 3 },
        created_at: T0,
        created_by: "manager".into(),
        expires_at: None,
    };
    put_intent(&mut doc, chain, branch, &intent).unwrap();
    doc
}

fn intents_bundle(
    chain: ChainId,
    branch: BranchId,
    seq: u64,
    doc: &mut AutoCommit,
    key: &KeyPair,
) -> Vec<u8> {
    let mut heads: Vec<Head> = doc.get_heads().into_iter().map(Head::from).collect();
    heads.sort();
    encode_bundle(
        &BundleBody {
            kind: BundleKind::Intents,
            chain,
            branch,
            producer: Producer::hub(),
            seq,
            created_at_ms: T0,
            technician: None,
            docs: vec![BundleDoc {
                doc: DocId::branch_intents(branch),
                heads,
                data: doc.save(),
            }],
            ledger_acks: Vec::new(),
            producer_cert: None,
        },
        &Key(KeyPair::from_pem(&key.serialize_pem()).unwrap()),
    )
    .unwrap()
}

fn engine(station: &Station) -> Arc<Engine> {
    Arc::clone(&station.edge.as_ref().unwrap().0.engine)
}

async fn refused_imports(engine: &Engine) -> Vec<String> {
    engine
        .technician_log(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "bundle_import" && e.outcome == "refused")
        .map(|e| e.detail)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intents_bundle_applies_once_and_forged_or_foreign_ones_are_refused() {
    let station = Station::start().await;
    let engine = engine(&station);
    let config = station.config();
    let (device, branch) = (config.device.id, config.device.branch_id);
    let chain = ChainId::parse(CHAIN).unwrap();
    engine.set_chain(chain);
    let (ca, ca_key) = chain_ca(chain);
    let technician = Some(uuid::Uuid::from_u128(7));

    // Tampered: one byte of the body changed.
    let mut doc = intents_doc(chain, branch, device);
    let good = intents_bundle(chain, branch, 1, &mut doc, &ca_key);
    let mut tampered = good.clone();
    tampered[40] ^= 0x01;
    assert!(
        engine
            .import_intents_bundle(&tampered, &ca, technician)
            .await
            .is_err()
    );
    // Another branch's bundle.
    let other = BranchId::parse("0b1e3c2a-0000-4000-8000-000000000102").unwrap();
    let mut other_doc = intents_doc(chain, other, device);
    let foreign = intents_bundle(chain, other, 1, &mut other_doc, &ca_key);
    match engine
        .import_intents_bundle(&foreign, &ca, technician)
        .await
    {
        Err(BundleApplyError::Bundle(BundleError::WrongScope { .. })) => {}
        other => panic!("expected a scope refusal, got {other:?}"),
    }
    // Signed by another CA (a technician's own key, say).
    let (_, forger) = chain_ca(chain);
    let forged = intents_bundle(chain, branch, 2, &mut doc, &forger);
    match engine.import_intents_bundle(&forged, &ca, technician).await {
        Err(BundleApplyError::Bundle(BundleError::BadSignature)) => {}
        other => panic!("expected a signature refusal, got {other:?}"),
    }
    // Signed by the CA but carrying a change the hub's actor did not write.
    let mut mixed = doc.fork();
    mixed.set_actor(automerge::ActorId::from(
        device.as_uuid().as_bytes().as_slice(),
    ));
    mixed.put(ROOT, "injected", "by someone else").unwrap();
    let unauthorised = intents_bundle(chain, branch, 3, &mut mixed, &ca_key);
    match engine
        .import_intents_bundle(&unauthorised, &ca, technician)
        .await
    {
        Err(BundleApplyError::Bundle(BundleError::Authority(_))) => {}
        other => panic!("expected an authority refusal, got {other:?}"),
    }
    assert_eq!(refused_imports(&engine).await.len(), 4);
    assert!(
        engine.intent_runs().await.unwrap().is_empty(),
        "nothing applied"
    );

    // The genuine bundle applies, and the executor runs its intent once.
    let imported = engine
        .import_intents_bundle(&good, &ca, technician)
        .await
        .unwrap();
    assert!(imported.applied && imported.docs == 1, "{imported:?}");
    let runs = engine.intent_runs().await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].state, "applied");
    // A replay changes nothing.
    let again = engine
        .import_intents_bundle(&good, &ca, technician)
        .await
        .unwrap();
    assert!(
        !again.applied && again.message.contains("already applied"),
        "{again:?}"
    );
    assert_eq!(engine.intent_runs().await.unwrap().len(), 1);
    let log = engine.technician_log(100).await.unwrap();
    assert!(
        log.iter()
            .any(|e| e.action == "intents_applied" && e.technician == technician)
    );

    // The facts bundle: signed with the device key, verifiable with its certificate.
    let device_key = KeyPair::generate().unwrap();
    let cert = device_cert_params(
        &PeerIdentity::device(chain, branch, device),
        &[9, 9, 9],
        T0 / 1000 - 60,
    )
    .unwrap()
    .signed_by(
        &device_key,
        &rcgen::Issuer::from_params(&chain_ca_params(chain, T0 / 1000 - 60).unwrap(), &ca_key),
    )
    .unwrap();
    let signer = Key(device_key);
    let first = engine
        .export_facts_bundle(chain, cert.der().to_vec(), &signer, technician)
        .await
        .unwrap();
    let second = engine
        .export_facts_bundle(chain, cert.der().to_vec(), &signer, technician)
        .await
        .unwrap();
    let first = decode_bundle(&first).unwrap();
    let (body, producer, _) = first.verify_device_chain(&ca, T0 / 1000).unwrap();
    assert_eq!(producer.device, device);
    assert_eq!(body.seq, 1);
    assert!(
        body.docs
            .iter()
            .all(|d| d.doc.owner() == DocId::device(device).owner())
    );
    assert_eq!(decode_bundle(&second).unwrap().unverified_body().seq, 2);
}
