//! What the `bundle_decode` and `tech_credential` fuzz targets run, shared with the stable
//! replay test `sync-core/tests/tech_fuzz_replay.rs`: bundle files and technician credentials
//! from a USB stick or a laptop must never panic a Pi or the hub.

use cartwise_schema::BranchId;
use cartwise_sync_core::HubActors;
use cartwise_sync_core::bundle::decode_bundle;
use cartwise_sync_core::technician::verify_credential;

/// A bundle file: parse, scope, authority-check every document, verify against itself as a
/// certificate (garbage either way).
pub fn drive_bundle(data: &[u8]) {
    let Ok(bundle) = decode_bundle(data) else {
        return;
    };
    let body = bundle.unverified_body();
    let _ = body.check_scope(body.chain, body.branch);
    let _ = body.already_applied(Some(body.seq));
    let actors = HubActors::for_chain(body.chain);
    for doc in &body.docs {
        let _ = doc.load_checked(&actors);
    }
    let _ = bundle.verify_device(data);
    let _ = bundle.verify_hub(data);
}

/// A credential: the first two bytes split the rest into certificate and CA.
pub fn drive_credential(data: &[u8]) {
    let Some((split, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let at = usize::from(u16::from_be_bytes(*split)).min(rest.len());
    let (cert, ca) = rest.split_at(at);
    let Ok(branch) = BranchId::parse("00000000-0000-0000-0000-000000000002") else {
        return;
    };
    for now in [0, 1_800_000_000_000, i64::MAX, i64::MIN] {
        let _ = verify_credential(cert, ca, branch, now);
    }
}
