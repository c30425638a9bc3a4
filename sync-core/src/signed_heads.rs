//! Signed heads: a device's signature over the heads of its own facts document, so a relay (a
//! branch peer, a technician's laptop, a USB bundle) can carry the device's changes and the
//! receiver can prove they were written by the device, not merely labelled with its actor id.
//!
//! The signed bytes are domain-separated and canonical ([`signing_bytes`]):
//!
//! ```text
//! "cartwise/signed-heads/v1" 0x00
//! u16 BE  length of the document id's string form, then its UTF-8 bytes
//! 16      the signer's device UUID bytes
//! u16 BE  number of heads, then each head's 32 bytes, sorted ascending, no duplicates
//! ```
//!
//! Signing and verifying sit behind [`HeadsSigner`] and [`HeadsVerifier`], so this crate stays
//! free of cryptography; the daemons implement them with the key of the device's certificate.

use std::collections::HashSet;

use automerge::{Automerge, ChangeHash};
use cartwise_schema::DeviceId;
use serde::{Deserialize, Serialize};

use crate::doc_id::{DocId, DocOwner};
use crate::message::Head;

/// Domain separator at the start of every signed message; the trailing NUL ends it.
pub const SIGNED_HEADS_DOMAIN: &[u8] = b"cartwise/signed-heads/v1\0";

/// A writer's signature over the heads of a document it owns. Also the body of the
/// `SignedHeads` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHeads {
    /// The document.
    pub doc: DocId,
    /// Its heads at signing, sorted ascending without duplicates.
    pub heads: Vec<Head>,
    /// The signing device: must own `doc`.
    pub signer: DeviceId,
    /// The signature over [`signing_bytes`].
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// Signs with the key of a device's certificate.
pub trait HeadsSigner {
    /// The device whose key signs.
    fn signer(&self) -> DeviceId;
    /// The signature over `message`.
    fn sign(&self, message: &[u8]) -> Vec<u8>;
}

/// Verifies signatures with the public keys of enrolled devices.
pub trait HeadsVerifier {
    /// Whether `signature` is `signer`'s signature over `message`.
    fn verify(&self, signer: &DeviceId, message: &[u8], signature: &[u8]) -> bool;
}

/// Why signed heads were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignedHeadsError {
    /// The heads are not sorted ascending without duplicates.
    #[error("signed heads for {doc} are not in canonical order")]
    NotCanonical {
        /// The document.
        doc: DocId,
    },
    /// The signer does not own the document.
    #[error("device {signer} cannot sign heads of {doc}, which is owned by {owner}")]
    SignerNotOwner {
        /// The document.
        doc: DocId,
        /// The claimed signer.
        signer: DeviceId,
        /// Who owns the document.
        owner: DocOwner,
    },
    /// The signature does not verify.
    #[error("bad signature by device {signer} over heads of {doc}")]
    BadSignature {
        /// The document.
        doc: DocId,
        /// The claimed signer.
        signer: DeviceId,
    },
}

/// The exact bytes signed for `doc`, `heads` (sorted and deduplicated here) and `signer`.
pub fn signing_bytes(doc: &DocId, heads: &[Head], signer: &DeviceId) -> Vec<u8> {
    let doc_text = doc.to_string();
    let heads = canonical(heads);
    let mut bytes = Vec::with_capacity(SIGNED_HEADS_DOMAIN.len() + 2 + doc_text.len() + 18);
    bytes.extend_from_slice(SIGNED_HEADS_DOMAIN);
    // A document id is at most DOC_ID_LEN_MAX bytes and a message at most HEADS_PER_DOC_MAX
    // heads, so both counts fit in a u16; saturate rather than wrap if that ever changes.
    let doc_len = u16::try_from(doc_text.len()).unwrap_or(u16::MAX);
    bytes.extend_from_slice(&doc_len.to_be_bytes());
    bytes.extend_from_slice(doc_text.as_bytes());
    bytes.extend_from_slice(signer.as_uuid().as_bytes());
    let count = u16::try_from(heads.len()).unwrap_or(u16::MAX);
    bytes.extend_from_slice(&count.to_be_bytes());
    for head in &heads {
        bytes.extend_from_slice(&head.0);
    }
    bytes
}

/// `heads` sorted ascending without duplicates.
fn canonical(heads: &[Head]) -> Vec<Head> {
    let mut sorted = heads.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted
}

impl SignedHeads {
    /// Signs `heads` of `doc` with `signer` (heads are put in canonical order).
    pub fn sign(doc: DocId, heads: &[Head], signer: &dyn HeadsSigner) -> Self {
        let device = signer.signer();
        let signature = signer.sign(&signing_bytes(&doc, heads, &device));
        SignedHeads {
            doc,
            heads: canonical(heads),
            signer: device,
            signature,
        }
    }

    /// Checks canonical order, that the signer owns the document, and the signature.
    pub fn verify(&self, verifier: &dyn HeadsVerifier) -> Result<(), SignedHeadsError> {
        if self.heads.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(SignedHeadsError::NotCanonical { doc: self.doc });
        }
        let owner = self.doc.owner();
        if owner != DocOwner::Device(self.signer) {
            return Err(SignedHeadsError::SignerNotOwner {
                doc: self.doc,
                signer: self.signer,
                owner,
            });
        }
        let message = signing_bytes(&self.doc, &self.heads, &self.signer);
        if !verifier.verify(&self.signer, &message, &self.signature) {
            return Err(SignedHeadsError::BadSignature {
                doc: self.doc,
                signer: self.signer,
            });
        }
        Ok(())
    }

    /// The heads as Automerge change hashes.
    pub fn change_hashes(&self) -> Vec<ChangeHash> {
        self.heads.iter().copied().map(ChangeHash::from).collect()
    }
}

/// Whether every change in `changes` is one of `heads` or an ancestor of one, in `doc`. The walk
/// needs `doc` to hold the heads and their history: meeting a hash `doc` does not hold before
/// every change is found answers `false`. Cost: one walk of the history below `heads`,
/// stopping as soon as every change is found.
pub fn covered(doc: &Automerge, changes: &[ChangeHash], heads: &[ChangeHash]) -> bool {
    let mut missing: HashSet<ChangeHash> = changes.iter().copied().collect();
    let mut seen: HashSet<ChangeHash> = HashSet::new();
    let mut stack: Vec<ChangeHash> = heads.to_vec();
    while let Some(hash) = stack.pop() {
        if missing.is_empty() {
            return true;
        }
        if !seen.insert(hash) {
            continue;
        }
        let Some(meta) = doc.get_change_meta_by_hash(&hash) else {
            return false;
        };
        missing.remove(&hash);
        stack.extend(meta.deps.iter().copied());
    }
    missing.is_empty()
}
