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
//! Signing sits behind [`HeadsSigner`] (the daemons hold the device's key). Verifying sits
//! behind [`HeadsVerifier`]; [`CertVerifier`] is the one both daemons use: the public key of the
//! signer's device certificate (ECDSA P-256 SHA-256, ASN.1 DER, as the certificate's key).
//!
//! Where the certificate comes from: the signer attaches its own ([`SignedHeads::signer_cert`]),
//! so a relay can forward it to a receiver that never saw the signer. A branch Pi verifies a
//! LAN peer's signed heads with the certificate of the TLS session (already checked against
//! the chain CA and the branch) and stores that certificate with them; the hub, which records
//! certificate serials but not certificates, checks the attached certificate against the chain
//! CA ([`SignedHeads::verify_with_chain`]) and its serial against its records (enrolled, not
//! revoked) before trusting the key, as it does for a facts bundle.
//!
//! Which relayed changes the signed heads vouch for: [`covered`] (changes the receiver already
//! holds) and [`covered_incoming`] (changes arriving in the same message).

use std::collections::{HashMap, HashSet};

use automerge::{Automerge, Change, ChangeHash};
use cartwise_schema::DeviceId;
use serde::{Deserialize, Serialize};

use crate::doc_id::{DocId, DocOwner};
use crate::identity::{PeerIdentity, Role};
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
    /// The signer's device certificate (DER), so a receiver that never met the signer can
    /// check the key against the chain CA. Absent in messages of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_bytes")]
    pub signer_cert: Option<Vec<u8>>,
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
    /// The attached certificate is missing, does not chain to the chain CA, or names another
    /// device, chain or branch than expected.
    #[error(
        "the certificate for heads of {doc} signed by device {signer} is not acceptable: {reason}"
    )]
    Certificate {
        /// The document.
        doc: DocId,
        /// The claimed signer.
        signer: DeviceId,
        /// What is wrong with it.
        reason: String,
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
            signer_cert: None,
        }
    }

    /// [`Self::sign`], with the signer's certificate (DER) attached for relays.
    pub fn sign_with_cert(
        doc: DocId,
        heads: &[Head],
        signer: &dyn HeadsSigner,
        cert_der: Vec<u8>,
    ) -> Self {
        SignedHeads {
            signer_cert: Some(cert_der),
            ..Self::sign(doc, heads, signer)
        }
    }

    /// Verifies against the attached certificate, which must chain to `chain_ca_der` (client
    /// authentication, valid at `now_unix`) and name the signer as a device of `branch` in
    /// `chain`. Returns the signer's identity and the certificate's serial (lowercase hex),
    /// which the caller checks against its records (enrolled, not revoked).
    pub fn verify_with_chain(
        &self,
        chain_ca_der: &[u8],
        expected: PeerIdentity,
        now_unix: i64,
    ) -> Result<(PeerIdentity, String), SignedHeadsError> {
        let refuse = |reason: String| SignedHeadsError::Certificate {
            doc: self.doc,
            signer: self.signer,
            reason,
        };
        let cert = self
            .signer_cert
            .as_deref()
            .ok_or_else(|| refuse("no certificate attached".into()))?;
        crate::technician::check_chain(cert, chain_ca_der, now_unix)
            .map_err(|error| refuse(error.to_string()))?;
        let identity =
            PeerIdentity::from_cert_der(cert).map_err(|error| refuse(error.to_string()))?;
        let wanted = PeerIdentity::device(expected.chain, expected.branch, self.signer);
        if identity != wanted {
            return Err(refuse(format!("it names {identity}, not {wanted}")));
        }
        let serial = crate::identity::inspect_certificate(cert)
            .map_err(|error| refuse(error.to_string()))?
            .serial_hex;
        let verifier = CertVerifier::new(cert).map_err(refuse)?;
        self.verify(&verifier)?;
        Ok((identity, serial))
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

/// Verifies signatures with the public key of one device certificate: only that device's.
#[derive(Debug, Clone)]
pub struct CertVerifier {
    device: DeviceId,
    public_key: Vec<u8>,
}

impl CertVerifier {
    /// The key of the device certificate `cert_der` (the certificate itself is not checked
    /// here: the caller has verified it, e.g. in the TLS handshake).
    pub fn new(cert_der: &[u8]) -> Result<Self, String> {
        let identity = PeerIdentity::from_cert_der(cert_der).map_err(|error| error.to_string())?;
        if identity.role != Role::Device {
            return Err(format!("{identity} is not a device certificate"));
        }
        let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
            .map_err(|error| format!("certificate: {error}"))?;
        Ok(CertVerifier {
            device: identity.device,
            public_key: cert.public_key().subject_public_key.data.to_vec(),
        })
    }

    /// The device the certificate names.
    pub fn device(&self) -> DeviceId {
        self.device
    }
}

impl HeadsVerifier for CertVerifier {
    fn verify(&self, signer: &DeviceId, message: &[u8], signature: &[u8]) -> bool {
        *signer == self.device
            && ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_ASN1,
                &self.public_key,
            )
            .verify(message, signature)
            .is_ok()
    }
}

/// Whether every change in `changes` is one of `heads` or an ancestor of one, in `doc`. The walk
/// needs `doc` to hold the heads and their history: meeting a hash `doc` does not hold before
/// every change is found answers `false`. Cost: one walk of the history below `heads`,
/// stopping as soon as every change is found.
pub fn covered(doc: &Automerge, changes: &[ChangeHash], heads: &[ChangeHash]) -> bool {
    walk(changes, heads, |hash| {
        match doc.get_change_meta_by_hash(hash) {
            Some(meta) => Step::Parents(meta.deps.clone()),
            None => Step::Unknown,
        }
    })
}

/// [`covered`] for changes that arrive with the message that offers them: the walk from
/// `heads` looks each hash up in `incoming` first, then in `doc`. A change's hash covers its
/// dependencies, so what is reached from signed heads is exactly what the signer wrote, however
/// the relay labelled it. `changes` are changes `doc` does not hold (a held one is never
/// reported covered). Answers `false` on meeting a hash neither holds before every change of
/// `changes` is found. Cost: one walk of the incoming changes below `heads`.
pub fn covered_incoming(
    doc: &Automerge,
    incoming: &[Change],
    changes: &[ChangeHash],
    heads: &[ChangeHash],
) -> bool {
    let deps: HashMap<ChangeHash, &[ChangeHash]> = incoming
        .iter()
        .map(|change| (change.hash(), change.deps()))
        .collect();
    walk(changes, heads, |hash| match deps.get(hash) {
        Some(parents) => Step::Parents(parents.to_vec()),
        // A change `doc` holds has its whole history held: no change it lacks is below it.
        None if doc.get_change_meta_by_hash(hash).is_some() => Step::Held,
        None => Step::Unknown,
    })
}

/// What the walk of [`walk`] learns of one hash.
enum Step {
    /// Known, with these parents to walk on.
    Parents(Vec<ChangeHash>),
    /// Known, and nothing below it needs walking.
    Held,
    /// Neither known nor held: the heads cannot vouch for anything below.
    Unknown,
}

/// Walks from `heads` down the dependencies `step` gives, until every hash of `changes` is
/// met (`true`) or a hash is unknown first (`false`).
fn walk(
    changes: &[ChangeHash],
    heads: &[ChangeHash],
    mut step: impl FnMut(&ChangeHash) -> Step,
) -> bool {
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
        match step(&hash) {
            Step::Parents(parents) => stack.extend(parents),
            Step::Held => {}
            Step::Unknown => return false,
        }
        missing.remove(&hash);
    }
    missing.is_empty()
}
