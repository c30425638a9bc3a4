//! Bundle format tests: roundtrip, every tampered byte refused, scope, consistency, authority.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use proptest::prelude::*;
use rcgen::{CertificateParams, Issuer, KeyPair, SigningKey};

use super::*;
use crate::authority::{device_actor, hub_actor};
use crate::identity::{chain_ca_params, device_cert_params};

const NOW: i64 = 1_800_000_000;

struct Signer<'a>(&'a KeyPair);

impl BundleSigner for Signer<'_> {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.0.sign(message).map_err(|error| error.to_string())
    }
}

struct World {
    chain: ChainId,
    branch: BranchId,
    device: DeviceId,
    ca_der: Vec<u8>,
    ca_key: KeyPair,
    device_der: Vec<u8>,
    device_key: KeyPair,
}

fn world() -> World {
    let chain = ChainId::from_uuid(Uuid::from_u128(1));
    let branch = BranchId::from_uuid(Uuid::from_u128(2));
    let device = DeviceId::from_uuid(Uuid::from_u128(3));
    let ca_key = KeyPair::generate().unwrap();
    let params: CertificateParams = chain_ca_params(chain, NOW).unwrap();
    let ca_der = params.self_signed(&ca_key).unwrap().der().to_vec();
    let issuer = Issuer::from_ca_cert_der(
        &ca_der.clone().into(),
        KeyPair::from_pem(&ca_key.serialize_pem()).unwrap(),
    )
    .unwrap();
    let device_key = KeyPair::generate().unwrap();
    let device_der = device_cert_params(&PeerIdentity::device(chain, branch, device), &[4], NOW)
        .unwrap()
        .signed_by(&device_key, &issuer)
        .unwrap()
        .der()
        .to_vec();
    World {
        chain,
        branch,
        device,
        ca_der,
        ca_key,
        device_der,
        device_key,
    }
}

fn device_doc(device: DeviceId) -> BundleDoc {
    let mut doc = AutoCommit::new().with_actor(device_actor(&device));
    doc.put(ROOT, "device", device.to_string()).unwrap();
    let heads = doc.get_heads().into_iter().map(Head::from).collect();
    BundleDoc {
        doc: DocId::device(device),
        heads,
        data: doc.save(),
    }
}

fn facts(world: &World, seq: u64) -> BundleBody {
    BundleBody {
        kind: BundleKind::Facts,
        chain: world.chain,
        branch: world.branch,
        producer: Producer::device(world.device),
        seq,
        created_at_ms: NOW * 1000,
        technician: Some(Uuid::from_u128(7)),
        docs: vec![device_doc(world.device)],
        ledger_acks: vec![],
        producer_cert: Some(world.device_der.clone()),
    }
}

fn intents(world: &World) -> BundleBody {
    let mut doc = AutoCommit::new().with_actor(hub_actor(world.chain));
    doc.put(ROOT, "branch", world.branch.to_string()).unwrap();
    BundleBody {
        kind: BundleKind::Intents,
        chain: world.chain,
        branch: world.branch,
        producer: Producer::hub(),
        seq: 1,
        created_at_ms: NOW * 1000,
        technician: None,
        docs: vec![BundleDoc {
            doc: DocId::branch_intents(world.branch),
            heads: doc.get_heads().into_iter().map(Head::from).collect(),
            data: doc.save(),
        }],
        ledger_acks: vec![BundleLedgerAck {
            device: world.device,
            rentals: vec![RentalId::from_parts(1_700_000_000_000, [1; 10])],
        }],
        producer_cert: None,
    }
}

#[test]
fn facts_bundle_roundtrips_and_verifies_with_the_device_certificate() {
    let world = world();
    let body = facts(&world, 5);
    let bytes = encode_bundle(&body, &Signer(&world.device_key)).unwrap();
    assert_eq!(&bytes[..8], BUNDLE_MAGIC);
    let bundle = decode_bundle(&bytes).unwrap();
    assert_eq!(bundle.unverified_body(), &body);
    let verified = bundle.verify_device(&world.device_der).unwrap();
    assert_eq!(verified.seq, 5);
    let hub_actors = HubActors::for_chain(world.chain);
    for doc in &verified.docs {
        doc.load_checked(&hub_actors).unwrap();
    }
    // The chain CA did not sign it.
    assert_eq!(
        bundle.verify_hub(&world.ca_der),
        Err(BundleError::Inconsistent(
            "a facts bundle cannot be verified as the hub's".into()
        ))
    );
}

#[test]
fn facts_bundle_verifies_through_its_certificate_and_the_chain_ca() {
    let world = world();
    let bytes = encode_bundle(&facts(&world, 2), &Signer(&world.device_key)).unwrap();
    let bundle = decode_bundle(&bytes).unwrap();
    let (body, identity, serial) = bundle.verify_device_chain(&world.ca_der, NOW + 60).unwrap();
    assert_eq!(
        (body.seq, identity.device, serial.as_str()),
        (2, world.device, "04")
    );
    // Another chain CA does not vouch for the certificate.
    let other = self::world();
    assert!(matches!(
        bundle.verify_device_chain(&other.ca_der, NOW + 60),
        Err(BundleError::Inconsistent(_))
    ));
    // Expired by now.
    assert!(
        bundle
            .verify_device_chain(&world.ca_der, NOW + 100 * 86_400)
            .is_err()
    );
}

#[test]
fn intents_bundle_verifies_with_the_chain_ca_only() {
    let world = world();
    let bytes = encode_bundle(&intents(&world), &Signer(&world.ca_key)).unwrap();
    let bundle = decode_bundle(&bytes).unwrap();
    let body = bundle.verify_hub(&world.ca_der).unwrap();
    body.docs[0]
        .load_checked(&HubActors::for_chain(world.chain))
        .unwrap();
    // Signed by a device key instead: refused.
    let forged = encode_bundle(&intents(&world), &Signer(&world.device_key)).unwrap();
    assert_eq!(
        decode_bundle(&forged).unwrap().verify_hub(&world.ca_der),
        Err(BundleError::BadSignature)
    );
}

#[test]
fn another_branch_is_refused_with_both_branches_named() {
    let world = world();
    let body = facts(&world, 1);
    let other = BranchId::from_uuid(Uuid::from_u128(99));
    let error = body.check_scope(world.chain, other).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(&world.branch.to_string()) && text.contains(&other.to_string()),
        "{text}"
    );
    // A device certificate of this branch cannot verify a bundle naming another branch.
    let mut moved = facts(&world, 1);
    moved.branch = other;
    let bytes = encode_bundle(&moved, &Signer(&world.device_key)).unwrap();
    assert!(matches!(
        decode_bundle(&bytes)
            .unwrap()
            .verify_device(&world.device_der),
        Err(BundleError::WrongScope { .. })
    ));
}

#[test]
fn replay_is_recognised_by_seq() {
    let world = world();
    let body = facts(&world, 3);
    assert!(!body.already_applied(None));
    assert!(!body.already_applied(Some(2)));
    assert!(body.already_applied(Some(3)));
    assert!(body.already_applied(Some(9)));
}

#[test]
fn a_device_cannot_carry_another_devices_document_or_foreign_changes() {
    let world = world();
    let mut body = facts(&world, 1);
    let other = DeviceId::from_uuid(Uuid::from_u128(44));
    body.docs = vec![device_doc(other)];
    let bytes = encode_bundle(&body, &Signer(&world.device_key)).unwrap();
    assert!(matches!(
        decode_bundle(&bytes)
            .unwrap()
            .verify_device(&world.device_der),
        Err(BundleError::Inconsistent(_))
    ));
    // Its own document id, but changes written by another actor (a relay authoring facts).
    let mut forged = device_doc(other);
    forged.doc = DocId::device(world.device);
    assert!(matches!(
        forged.load_checked(&HubActors::for_chain(world.chain)),
        Err(BundleError::Authority(_))
    ));
}

#[test]
fn structural_damage_is_reported() {
    let world = world();
    let bytes = encode_bundle(&facts(&world, 1), &Signer(&world.device_key)).unwrap();
    assert_eq!(
        decode_bundle(b"PK\x03\x04zip"),
        Err(BundleError::NotABundle)
    );
    let mut version = bytes.clone();
    version[8] = 2;
    assert_eq!(decode_bundle(&version), Err(BundleError::Version(2)));
    assert!(matches!(
        decode_bundle(&bytes[..bytes.len() - 1]),
        Err(BundleError::Damaged(_))
    ));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        decode_bundle(&longer),
        Err(BundleError::Damaged(_))
    ));
    let huge = vec![0u8; BUNDLE_LEN_MAX + 1];
    assert!(matches!(
        decode_bundle(&huge),
        Err(BundleError::TooLarge { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Changing any one byte of a signed bundle never yields a bundle that verifies.
    #[test]
    fn any_tampered_byte_is_refused(index in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let world = world();
        let bytes = encode_bundle(&facts(&world, 1), &Signer(&world.device_key)).unwrap();
        let mut tampered = bytes.clone();
        let at = index.index(tampered.len());
        tampered[at] ^= flip;
        let verified = decode_bundle(&tampered)
            .and_then(|bundle| bundle.verify_device(&world.device_der).cloned());
        prop_assert!(verified.is_err(), "byte {} changed and the bundle still verified", at);
    }

    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_bundle(&bytes);
        let mut framed = BUNDLE_MAGIC.to_vec();
        framed.push(1);
        framed.extend_from_slice(&bytes);
        let _ = decode_bundle(&framed);
    }
}
