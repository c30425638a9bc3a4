//! Carry store tests: login files, facts bundles stored once and only within scope, pushed.

use cartwise_sync_core::bundle::{BundleBody, BundleSigner, Producer, encode_bundle};
use rcgen::{KeyPair, SigningKey};

use super::*;

struct Signer(KeyPair);

impl BundleSigner for Signer {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.0.sign(message).map_err(|error| error.to_string())
    }
}

fn credential(branch: BranchId) -> Credential {
    Credential {
        hub_url: "http://127.0.0.1:1".into(),
        login: "tech".into(),
        technician_id: Uuid::from_u128(7),
        chain_id: ChainId::from_uuid(Uuid::from_u128(1)),
        issued_at_ms: 1,
        not_after_ms: 2,
        branches: vec![CredentialBranch {
            branch_id: branch,
            code: "B1".into(),
            name: "Branch".into(),
            cert_pem: "PEM".into(),
            devices: vec![],
        }],
        chain_ca_pem: String::new(),
        platform_ca_pem: String::new(),
    }
}

fn facts(branch: BranchId, device: DeviceId, seq: u64) -> Vec<u8> {
    let body = BundleBody {
        kind: BundleKind::Facts,
        chain: ChainId::from_uuid(Uuid::from_u128(1)),
        branch,
        producer: Producer::device(device),
        seq,
        created_at_ms: 1000,
        technician: None,
        docs: vec![],
        ledger_acks: vec![],
        producer_cert: None,
    };
    encode_bundle(&body, &Signer(KeyPair::generate().unwrap())).unwrap()
}

#[test]
fn facts_bundles_are_stored_once_within_scope_and_move_to_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let carry = Carry::open(dir.path().join("home")).unwrap();
    assert!(matches!(
        carry.credential(),
        Err(CarryError::NoCredential(_))
    ));
    let branch = BranchId::from_uuid(Uuid::from_u128(2));
    carry
        .save_login(&credential(branch), "KEY", "tok\n")
        .unwrap();
    assert_eq!(carry.credential().unwrap(), credential(branch));
    assert_eq!(carry.token().unwrap(), "tok");
    let mode = fs::metadata(dir.path().join("home/key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let device = DeviceId::from_uuid(Uuid::from_u128(3));
    let stored = carry.store_facts_bundle(&facts(branch, device, 4)).unwrap();
    assert!(!stored.duplicate);
    assert_eq!((stored.device, stored.seq), (device, 4));
    let again = carry.store_facts_bundle(&facts(branch, device, 4)).unwrap();
    assert!(again.duplicate);
    let pending = carry.pending().unwrap();
    assert_eq!(pending.len(), 1);

    let other = BranchId::from_uuid(Uuid::from_u128(9));
    let refused = carry
        .store_facts_bundle(&facts(other, device, 5))
        .unwrap_err();
    assert!(refused.to_string().contains("does not cover"), "{refused}");
    assert!(matches!(
        carry.store_facts_bundle(b"not a bundle"),
        Err(CarryError::Bundle(BundleError::NotABundle))
    ));

    carry.mark_pushed(&pending[0]).unwrap();
    assert!(carry.pending().unwrap().is_empty());
    assert_eq!(carry.pushed().unwrap().len(), 1);
    // Pushed already: carrying it again is a no-op.
    assert!(
        carry
            .store_facts_bundle(&facts(branch, device, 4))
            .unwrap()
            .duplicate
    );
    assert!(carry.pending().unwrap().is_empty());
    assert_eq!(carry.intents_bundle(branch).unwrap(), None);
}
