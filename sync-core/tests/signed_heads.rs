//! Signed heads with real device certificates: the certificate verifier, the check against
//! the chain CA, and which relayed changes signed heads cover.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ChangeHash, ROOT};
use cartwise_schema::{BranchId, ChainId, DeviceId};
use cartwise_sync_core::identity::{PeerIdentity, chain_ca_params, device_cert_params};
use cartwise_sync_core::message::Head;
use cartwise_sync_core::signed_heads::SignedHeadsError;
use cartwise_sync_core::{
    CertVerifier, DocId, HeadsSigner, HeadsVerifier, SignedHeads, covered_incoming, device_actor,
};
use rcgen::{Issuer, KeyPair, SigningKey};
use uuid::Uuid;

const NOW: i64 = 1_800_000_000;

struct Key(DeviceId, KeyPair);

impl HeadsSigner for Key {
    fn signer(&self) -> DeviceId {
        self.0
    }
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.1.sign(message).unwrap()
    }
}

struct Ca {
    der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

fn chain_ca(chain: ChainId) -> Ca {
    let key = KeyPair::generate().unwrap();
    let der = chain_ca_params(chain, NOW)
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .der()
        .to_vec();
    let issuer = Issuer::from_ca_cert_der(&der.clone().into(), key).unwrap();
    Ca { der, issuer }
}

/// A device of `branch` with a certificate from `ca`: its key and certificate (DER).
fn device(ca: &Ca, chain: ChainId, branch: BranchId, n: u128) -> (Key, Vec<u8>) {
    let device = DeviceId::from_uuid(Uuid::from_u128(0x1000 + n));
    let key = KeyPair::generate().unwrap();
    let cert = device_cert_params(
        &PeerIdentity::device(chain, branch, device),
        &[n as u8 + 1],
        NOW,
    )
    .unwrap()
    .signed_by(&key, &ca.issuer)
    .unwrap()
    .der()
    .to_vec();
    (Key(device, key), cert)
}

fn ids() -> (ChainId, BranchId) {
    (
        ChainId::from_uuid(Uuid::from_u128(1)),
        BranchId::from_uuid(Uuid::from_u128(2)),
    )
}

/// A document written by `device` with `n` changes; its change hashes in order.
fn written(device: DeviceId, n: usize) -> (AutoCommit, Vec<ChangeHash>) {
    let mut doc = AutoCommit::new().with_actor(device_actor(&device));
    let mut hashes = Vec::new();
    for k in 0..n {
        doc.put(ROOT, format!("k{k}"), k as i64).unwrap();
        hashes.push(doc.commit().unwrap());
    }
    (doc, hashes)
}

fn heads_of(doc: &mut AutoCommit) -> Vec<Head> {
    doc.get_heads().into_iter().map(Head::from).collect()
}

#[test]
fn heads_signed_with_the_certificate_key_verify_through_the_chain_ca() {
    let (chain, branch) = ids();
    let ca = chain_ca(chain);
    let (key, cert) = device(&ca, chain, branch, 1);
    let doc_id = DocId::device(key.0);
    let (mut doc, _) = written(key.0, 2);
    let signed = SignedHeads::sign_with_cert(doc_id, &heads_of(&mut doc), &key, cert.clone());

    let verifier = CertVerifier::new(&cert).unwrap();
    assert_eq!(verifier.device(), key.0);
    assert_eq!(signed.verify(&verifier), Ok(()));
    let relay = PeerIdentity::device(chain, branch, DeviceId::from_uuid(Uuid::from_u128(9)));
    let (identity, serial) = signed.verify_with_chain(&ca.der, relay, NOW + 60).unwrap();
    assert_eq!(identity, PeerIdentity::device(chain, branch, key.0));
    assert_eq!(serial, "02");

    // The encoding without a certificate is unchanged (older peers read it as before).
    let bare = SignedHeads {
        signer_cert: None,
        ..signed.clone()
    };
    let bytes = cartwise_sync_core::Message::SignedHeads(bare)
        .encode()
        .unwrap();
    let with = cartwise_sync_core::Message::SignedHeads(signed)
        .encode()
        .unwrap();
    assert!(with.len() > bytes.len() + cert.len());
}

#[test]
fn a_wrong_signer_a_tampered_signature_or_a_foreign_certificate_is_refused() {
    let (chain, branch) = ids();
    let ca = chain_ca(chain);
    let (owner, owner_cert) = device(&ca, chain, branch, 1);
    let (other, other_cert) = device(&ca, chain, branch, 2);
    let relay = PeerIdentity::device(chain, branch, other.0);
    let doc_id = DocId::device(owner.0);
    let (mut doc, _) = written(owner.0, 1);
    let heads = heads_of(&mut doc);

    // Signed by another device of the branch: it does not own the document.
    let by_other = SignedHeads::sign_with_cert(doc_id, &heads, &other, other_cert.clone());
    assert!(matches!(
        by_other.verify_with_chain(&ca.der, relay, NOW + 60),
        Err(SignedHeadsError::Certificate { .. } | SignedHeadsError::SignerNotOwner { .. })
    ));
    // Another device's key claiming to be the owner, with the owner's certificate attached.
    let forged = SignedHeads::sign_with_cert(
        doc_id,
        &heads,
        &Key(owner.0, KeyPair::generate().unwrap()),
        owner_cert.clone(),
    );
    assert!(matches!(
        forged.verify_with_chain(&ca.der, relay, NOW + 60),
        Err(SignedHeadsError::BadSignature { .. })
    ));
    // The owner's key and another certificate: the key does not match the certificate.
    let wrong_cert = SignedHeads::sign_with_cert(doc_id, &heads, &owner, other_cert.clone());
    assert!(matches!(
        wrong_cert.verify_with_chain(&ca.der, relay, NOW + 60),
        Err(SignedHeadsError::Certificate { .. })
    ));
    assert!(!CertVerifier::new(&other_cert).unwrap().verify(
        &owner.0,
        b"anything",
        &owner.1.sign(b"anything").unwrap()
    ));
    // A tampered signature.
    let mut tampered = SignedHeads::sign_with_cert(doc_id, &heads, &owner, owner_cert.clone());
    let last = tampered.signature.len() - 1;
    tampered.signature[last] ^= 0x01;
    assert!(matches!(
        tampered.verify_with_chain(&ca.der, relay, NOW + 60),
        Err(SignedHeadsError::BadSignature { .. })
    ));
    // No certificate attached.
    let bare = SignedHeads::sign(doc_id, &heads, &owner);
    assert!(matches!(
        bare.verify_with_chain(&ca.der, relay, NOW + 60),
        Err(SignedHeadsError::Certificate { .. })
    ));
    // A certificate of another chain's CA, or of another branch.
    let foreign_ca = chain_ca(ChainId::from_uuid(Uuid::from_u128(7)));
    let (foreign, foreign_cert) = device(&foreign_ca, chain, branch, 1);
    let foreign_signed = SignedHeads::sign_with_cert(doc_id, &heads, &foreign, foreign_cert);
    assert!(matches!(
        foreign_signed.verify_with_chain(&ca.der, relay, NOW + 60),
        Err(SignedHeadsError::Certificate { .. })
    ));
    let elsewhere = PeerIdentity::device(chain, BranchId::from_uuid(Uuid::from_u128(3)), other.0);
    let honest = SignedHeads::sign_with_cert(doc_id, &heads, &owner, owner_cert);
    assert!(matches!(
        honest.verify_with_chain(&ca.der, elsewhere, NOW + 60),
        Err(SignedHeadsError::Certificate { .. })
    ));
}

#[test]
fn signed_heads_cover_incoming_changes_only_up_to_what_was_signed() {
    let (chain, branch) = ids();
    let ca = chain_ca(chain);
    let (owner, _) = device(&ca, chain, branch, 1);
    let (mut doc, hashes) = written(owner.0, 4);
    // The receiver holds the first change; the other three arrive.
    let receiver = {
        let mut first = AutoCommit::new();
        first
            .apply_changes([doc.get_change_by_hash(&hashes[0]).unwrap().clone()])
            .unwrap();
        first.document().clone()
    };
    let incoming: Vec<automerge::Change> = hashes[1..]
        .iter()
        .map(|h| doc.get_change_by_hash(h).unwrap().clone())
        .collect();
    let new = &hashes[1..];
    assert!(covered_incoming(&receiver, &incoming, new, &[hashes[3]]));
    assert!(
        !covered_incoming(&receiver, &incoming, new, &[hashes[2]]),
        "a change after the signed heads is not covered"
    );
    // A change forged on top of the signed heads, under the owner's actor, is not covered.
    let mut forged = doc.fork().with_actor(device_actor(&owner.0));
    forged.put(ROOT, "forged", true).unwrap();
    let forged_hash = forged.commit().unwrap();
    let mut with_forged = incoming.clone();
    with_forged.push(forged.get_change_by_hash(&forged_hash).unwrap().clone());
    let mut new_forged = new.to_vec();
    new_forged.push(forged_hash);
    assert!(!covered_incoming(
        &receiver,
        &with_forged,
        &new_forged,
        &[hashes[3]]
    ));
    // Heads nobody holds cover nothing.
    assert!(!covered_incoming(
        &receiver,
        &incoming,
        new,
        &[ChangeHash([7; 32])]
    ));
}
