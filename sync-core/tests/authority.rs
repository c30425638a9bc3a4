//! The authority check on real Automerge sync messages (v1 change lists, v2 concatenated
//! changes, v2 whole documents, garbage), relayed changes, and signed heads.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

mod common;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, Automerge, ChangeHash, ROOT};
use cartwise_schema::DeviceId;
use cartwise_sync_core::authority::{changes_in, check_sync_message};
use cartwise_sync_core::message::{Head, SyncBody};
use cartwise_sync_core::signed_heads::{SignedHeadsError, signing_bytes};
use cartwise_sync_core::{
    AuthorityError, DocId, DocSyncError, HeadsSigner, HeadsVerifier, HubActors, PeerDocState,
    SignedHeads, covered, device_actor,
};

fn hub_actors() -> HubActors {
    HubActors::new([ActorId::from([0xFE; 16])])
}

fn commit_as(doc: &mut AutoCommit, actor: ActorId, key: &str) {
    doc.set_actor(actor);
    doc.put(ROOT, key, key).unwrap();
    doc.commit();
}

/// Runs the sync protocol from `source` to an empty or partial `target` and returns every
/// message `source` generated.
fn messages_from(source: &mut AutoCommit, target: &mut AutoCommit) -> Vec<sync::Message> {
    let (mut source_state, mut target_state) = (sync::State::new(), sync::State::new());
    let mut sent = Vec::new();
    for _ in 0..10 {
        let mut quiet = true;
        if let Some(message) = source.sync().generate_sync_message(&mut source_state) {
            sent.push(message.clone());
            target
                .sync()
                .receive_sync_message(&mut target_state, message)
                .unwrap();
            quiet = false;
        }
        if let Some(message) = target.sync().generate_sync_message(&mut target_state) {
            source
                .sync()
                .receive_sync_message(&mut source_state, message)
                .unwrap();
            quiet = false;
        }
        if quiet {
            break;
        }
    }
    sent
}

fn forged_doc() -> AutoCommit {
    let (a, b) = (
        device_actor(&common::device_a()),
        device_actor(&common::device_b()),
    );
    let mut doc = AutoCommit::new();
    commit_as(&mut doc, a.clone(), "one");
    commit_as(&mut doc, b, "forged");
    commit_as(&mut doc, a, "three");
    doc
}

fn refused_in(messages: &[sync::Message], doc: &DocId) -> usize {
    messages
        .iter()
        .filter(|message| {
            matches!(
                check_sync_message(doc, message, &hub_actors()),
                Err(AuthorityError::ForeignActor { .. })
            )
        })
        .count()
}

#[test]
fn a_whole_document_message_with_a_forged_change_is_refused() {
    let doc = DocId::device(common::device_a());
    let messages = messages_from(&mut forged_doc(), &mut AutoCommit::new());
    assert!(messages.iter().any(|message| !message.changes.is_empty()));
    assert_eq!(refused_in(&messages, &doc), 1);
}

#[test]
fn a_change_list_message_with_a_forged_change_is_refused() {
    let doc = DocId::device(common::device_a());
    let a = device_actor(&common::device_a());
    // The target already holds a long common history, so the rest travels as changes.
    let mut source = AutoCommit::new();
    for index in 0..30 {
        commit_as(&mut source, a.clone(), &format!("k{index}"));
    }
    let mut target = source.fork();
    messages_from(&mut source, &mut target);
    commit_as(&mut source, device_actor(&common::device_b()), "forged");
    commit_as(&mut source, a, "after");
    let messages = messages_from(&mut source, &mut target);
    let carried: usize = messages
        .iter()
        .map(|message| changes_in(message).unwrap().len())
        .sum();
    assert_eq!(carried, 2, "only the two new changes travel");
    assert_eq!(refused_in(&messages, &doc), 1);
}

#[test]
fn relayed_changes_of_the_owner_pass_and_intents_need_a_hub_actor() {
    let device_doc = DocId::device(common::device_a());
    let mut original = AutoCommit::new().with_actor(device_actor(&common::device_a()));
    original.put(ROOT, "post_1", "rented").unwrap();
    original.commit();
    // A technician's laptop holds a replica and relays it: the actor is still device A's.
    let mut laptop = AutoCommit::new();
    messages_from(&mut original, &mut laptop);
    let relayed = messages_from(&mut laptop, &mut AutoCommit::new());
    assert_eq!(refused_in(&relayed, &device_doc), 0);

    let intents = DocId::branch_intents(common::branch());
    let mut hub_written = AutoCommit::new().with_actor(ActorId::from([0xFE; 16]));
    hub_written.put(ROOT, "rental_minutes", 90_i64).unwrap();
    hub_written.commit();
    assert_eq!(
        refused_in(
            &messages_from(&mut hub_written, &mut AutoCommit::new()),
            &intents
        ),
        0
    );
    assert_eq!(
        refused_in(
            &messages_from(&mut original, &mut AutoCommit::new()),
            &intents
        ),
        1
    );
}

#[test]
fn undecodable_changes_are_refused_and_nothing_is_applied() {
    let doc = DocId::device(common::device_a());
    let mut message = messages_from(&mut forged_doc(), &mut AutoCommit::new())
        .into_iter()
        .find(|message| !message.changes.is_empty())
        .unwrap();
    let mut chunks: Vec<Vec<u8>> = message.changes.iter().map(<[u8]>::to_vec).collect();
    chunks[0].extend([0x85, 0x6f, 0x4a]);
    message.changes = chunks.into();
    assert!(matches!(
        check_sync_message(&doc, &message, &hub_actors()),
        Err(AuthorityError::Undecodable { .. })
    ));
    let mut target = AutoCommit::new();
    let mut state = PeerDocState::new(doc);
    let body = SyncBody {
        doc,
        data: message.encode(),
    };
    assert!(matches!(
        state.receive(&mut target, &body, &hub_actors()),
        Err(DocSyncError::Authority(AuthorityError::Undecodable { .. }))
    ));
    assert!(target.get_heads().is_empty());
    let garbage = SyncBody {
        doc,
        data: vec![0x42, 0xFF],
    };
    assert!(matches!(
        state.receive(&mut target, &garbage, &hub_actors()),
        Err(DocSyncError::Malformed { .. })
    ));
}

/// A stand-in signature scheme: the signer's UUID bytes then an FNV-1a hash of the message. Real
/// deployments use the certificate key; this only exercises the plumbing.
struct FakeKey(DeviceId);

impl HeadsSigner for FakeKey {
    fn signer(&self) -> DeviceId {
        self.0
    }
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let mut signature = self.0.as_uuid().as_bytes().to_vec();
        let hash = message
            .iter()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
            });
        signature.extend(hash.to_be_bytes());
        signature
    }
}

impl HeadsVerifier for FakeKey {
    fn verify(&self, signer: &DeviceId, message: &[u8], signature: &[u8]) -> bool {
        FakeKey(*signer).sign(message) == signature
    }
}

#[test]
fn signed_heads_verify_and_cover_relayed_changes() {
    let doc_id = DocId::device(common::device_a());
    let mut doc = AutoCommit::new().with_actor(device_actor(&common::device_a()));
    let mut hashes = Vec::new();
    for key in ["a", "b", "c"] {
        doc.put(ROOT, key, key).unwrap();
        hashes.push(doc.commit().unwrap());
    }
    let heads: Vec<Head> = doc.get_heads().into_iter().map(Head::from).collect();
    let signed = SignedHeads::sign(doc_id, &heads, &FakeKey(common::device_a()));
    assert_eq!(signed.verify(&FakeKey(common::device_a())), Ok(()));

    let bytes = signing_bytes(&doc_id, &heads, &common::device_a());
    assert!(bytes.starts_with(b"cartwise/signed-heads/v1\0"));
    assert_eq!(bytes.len(), 25 + 2 + doc_id.to_string().len() + 16 + 2 + 32);

    let by_other = SignedHeads::sign(doc_id, &heads, &FakeKey(common::device_b()));
    assert!(matches!(
        by_other.verify(&FakeKey(common::device_b())),
        Err(SignedHeadsError::SignerNotOwner { .. })
    ));
    let mut tampered = signed.clone();
    tampered.heads = vec![Head([0; 32])];
    assert!(matches!(
        tampered.verify(&FakeKey(common::device_a())),
        Err(SignedHeadsError::BadSignature { .. })
    ));

    let automerge: &Automerge = doc.document();
    let signed_heads = signed.change_hashes();
    assert!(covered(automerge, &hashes, &signed_heads));
    assert!(covered(automerge, &hashes[..1], &[hashes[1]]));
    assert!(
        !covered(automerge, &hashes[2..], &[hashes[1]]),
        "a later change is not covered"
    );
    assert!(!covered(automerge, &[ChangeHash([9; 32])], &signed_heads));
}
