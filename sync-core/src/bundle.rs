//! Signed bundles: what a technician carries by hand (LAN relay or a USB stick) between a Pi and
//! the hub. A `facts` bundle is a Pi's own device documents, signed with its device key; an
//! `intents` bundle is a branch's intents documents and the hub's ledger acknowledgements,
//! signed with the chain CA's key. The carrier can neither read-and-forge nor replay them: the
//! signature covers the whole body, the body names its chain, branch and producer, and its
//! `seq` lets the receiver apply each bundle once.
//!
//! ```text
//! "CWBUNDLE"          8 bytes magic
//! u8                  format version (1)
//! u32 BE              body length, then the body (MessagePack, named fields)
//! u16 BE              signature length, then the signature
//! ```
//!
//! The signature is ECDSA P-256 SHA-256 (ASN.1 DER) over [`BUNDLE_SIGNING_DOMAIN`] followed by
//! the body bytes. The whole file is at most [`BUNDLE_LEN_MAX`], checked on encode and decode.
//! Signing (it needs randomness) is the daemons' ([`BundleSigner`]); verification is here.
//! Bundles are not encrypted in format version 1: whoever holds the file can read it.

use automerge::Automerge;
use cartwise_schema::{BranchId, ChainId, DeviceId, RentalId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use x509_parser::prelude::FromDer;

use crate::authority::{HubActors, check_changes};
use crate::doc_id::{DocId, DocOwner};
use crate::identity::{PeerIdentity, Role};
use crate::message::Head;
use crate::message::body::{HEADS_PER_DOC_MAX, LEDGER_ACK_RENTALS_MAX, SIGNATURE_LEN_MAX};

/// The first bytes of every bundle file.
pub const BUNDLE_MAGIC: &[u8; 8] = b"CWBUNDLE";
/// The format version this code writes and reads.
pub const BUNDLE_FORMAT_VERSION: u8 = 1;
/// Largest bundle file, in bytes (16 MiB).
pub const BUNDLE_LEN_MAX: usize = 16 * 1024 * 1024;
/// Prefix of the signed bytes (domain separation; the NUL ends it).
pub const BUNDLE_SIGNING_DOMAIN: &[u8] = b"cartwise/bundle/v1\0";
/// Most documents in one bundle.
pub const BUNDLE_DOCS_MAX: usize = 64;
/// Most devices acknowledged in one intents bundle.
pub const BUNDLE_LEDGER_ACKS_MAX: usize = 64;
/// Magic, version, body length.
const HEADER_LEN: usize = 8 + 1 + 4;

/// Which direction a bundle travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BundleKind {
    /// A Pi's facts, to the hub.
    Facts,
    /// The hub's intents (and ledger acknowledgements), to a Pi.
    Intents,
}

impl BundleKind {
    /// The wire spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Facts => "facts",
            Self::Intents => "intents",
        }
    }
}

/// Who produced (and signed) a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProducerRole {
    /// A Pi, with its device key.
    Device,
    /// The hub, with the chain CA's key.
    Hub,
}

/// The producer of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Producer {
    /// Device or hub.
    pub role: ProducerRole,
    /// The device (none for the hub).
    pub id: Option<DeviceId>,
}

impl Producer {
    /// A device producer.
    pub const fn device(device: DeviceId) -> Self {
        Self {
            role: ProducerRole::Device,
            id: Some(device),
        }
    }

    /// The hub.
    pub const fn hub() -> Self {
        Self {
            role: ProducerRole::Hub,
            id: None,
        }
    }

    /// A stable key for replay bookkeeping: `device/<uuid>` or `hub`.
    pub fn key(&self) -> String {
        match (self.role, self.id) {
            (ProducerRole::Device, Some(id)) => format!("device/{id}"),
            (ProducerRole::Device, None) => "device/?".to_owned(),
            (ProducerRole::Hub, _) => "hub".to_owned(),
        }
    }
}

/// One document in a bundle: its heads and its whole Automerge `save()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleDoc {
    /// The document.
    pub doc: DocId,
    /// Its heads in `data`, sorted ascending.
    pub heads: Vec<Head>,
    /// `Automerge::save()` of the document.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Closed rentals the hub holds durably for one device (as a session's `LedgerAck`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleLedgerAck {
    /// The device whose rentals these are.
    pub device: DeviceId,
    /// The rentals.
    pub rentals: Vec<RentalId>,
}

/// What a bundle says (and its producer signs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleBody {
    /// Facts or intents.
    pub kind: BundleKind,
    /// The chain.
    pub chain: ChainId,
    /// The branch.
    pub branch: BranchId,
    /// Who signed it.
    pub producer: Producer,
    /// Increases with every bundle of this producer and kind; a receiver applies each once.
    pub seq: u64,
    /// When it was produced (producer's wall clock), Unix ms.
    pub created_at_ms: i64,
    /// The technician it was produced for, if any.
    pub technician: Option<Uuid>,
    /// The documents.
    pub docs: Vec<BundleDoc>,
    /// Intents bundles: closed rentals the hub holds, per device of the branch.
    #[serde(default)]
    pub ledger_acks: Vec<BundleLedgerAck>,
    /// Facts bundles: the producing device's certificate (DER). The hub records only serials,
    /// not certificates, so it verifies this one against the chain CA and its serial against
    /// its records (revoked, unknown) before trusting the signature.
    #[serde(default, with = "serde_bytes")]
    pub producer_cert: Option<Vec<u8>>,
}

/// Signs bundle bytes with the producer's key (ECDSA P-256 SHA-256, ASN.1 DER).
pub trait BundleSigner {
    /// The signature over `message`, or why the key could not sign.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String>;
}

/// Why a bundle was refused. Each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Larger than [`BUNDLE_LEN_MAX`].
    #[error("the bundle is {len} bytes, more than the {max} allowed; export fewer documents")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a bundle file.
    #[error("this file is not a CartWise bundle (no CWBUNDLE header); check the file name")]
    NotABundle,
    /// A format version this code does not read.
    #[error("bundle format version {0} is not supported (this build reads 1); update the software")]
    Version(u8),
    /// Cut short or with bytes after its end.
    #[error("the bundle is damaged ({0}); copy it again from its source")]
    Damaged(String),
    /// The body does not decode or breaks a limit.
    #[error("the bundle's contents are invalid ({0}); export it again")]
    Body(String),
    /// The signature does not verify: the bytes were changed, or another key signed them.
    #[error(
        "the bundle's signature does not verify: it was altered or not signed by its producer; do not use it, export it again"
    )]
    BadSignature,
    /// The signer could not sign.
    #[error("cannot sign the bundle: {0}")]
    Sign(String),
    /// A bundle of another chain or branch.
    #[error(
        "the bundle is for chain {bundle_chain} branch {bundle_branch}, not chain {chain} branch {branch}; carry it to its own branch"
    )]
    WrongScope {
        /// The bundle's chain.
        bundle_chain: ChainId,
        /// The bundle's branch.
        bundle_branch: BranchId,
        /// The expected chain.
        chain: ChainId,
        /// The expected branch.
        branch: BranchId,
    },
    /// Kind, producer, documents or certificate do not fit together.
    #[error("the bundle is inconsistent: {0}")]
    Inconsistent(String),
    /// A document's changes were written by someone who may not write it.
    #[error("the bundle carries changes its producer may not make ({0}); it is refused")]
    Authority(String),
}

/// A decoded bundle whose signature has not been checked yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedBundle {
    body: BundleBody,
    body_bytes: Vec<u8>,
    signature: Vec<u8>,
}

/// The bytes a producer signs: the domain, then the body.
pub fn signing_bytes(body_bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BUNDLE_SIGNING_DOMAIN.len() + body_bytes.len());
    out.extend_from_slice(BUNDLE_SIGNING_DOMAIN);
    out.extend_from_slice(body_bytes);
    out
}

/// Encodes and signs a bundle.
pub fn encode_bundle(body: &BundleBody, signer: &dyn BundleSigner) -> Result<Vec<u8>, BundleError> {
    body.check_limits()?;
    let body_bytes =
        rmp_serde::to_vec_named(body).map_err(|error| BundleError::Body(error.to_string()))?;
    let signature = signer
        .sign(&signing_bytes(&body_bytes))
        .map_err(BundleError::Sign)?;
    let len = HEADER_LEN + body_bytes.len() + 2 + signature.len();
    if len > BUNDLE_LEN_MAX {
        return Err(BundleError::TooLarge {
            len,
            max: BUNDLE_LEN_MAX,
        });
    }
    let body_len = u32::try_from(body_bytes.len()).map_err(|_| BundleError::TooLarge {
        len,
        max: BUNDLE_LEN_MAX,
    })?;
    let signature_len = u16::try_from(signature.len())
        .ok()
        .filter(|len| usize::from(*len) <= SIGNATURE_LEN_MAX)
        .ok_or_else(|| BundleError::Sign(format!("signature of {} bytes", signature.len())))?;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(BUNDLE_MAGIC);
    out.push(BUNDLE_FORMAT_VERSION);
    out.extend_from_slice(&body_len.to_be_bytes());
    out.extend_from_slice(&body_bytes);
    out.extend_from_slice(&signature_len.to_be_bytes());
    out.extend_from_slice(&signature);
    Ok(out)
}

/// Parses a bundle file (structure and limits only; verify before trusting it).
pub fn decode_bundle(bytes: &[u8]) -> Result<SignedBundle, BundleError> {
    if bytes.len() > BUNDLE_LEN_MAX {
        return Err(BundleError::TooLarge {
            len: bytes.len(),
            max: BUNDLE_LEN_MAX,
        });
    }
    let magic = bytes.get(..8).ok_or(BundleError::NotABundle)?;
    if magic != BUNDLE_MAGIC {
        return Err(BundleError::NotABundle);
    }
    let version = *bytes
        .get(8)
        .ok_or_else(|| BundleError::Damaged("no version".into()))?;
    if version != BUNDLE_FORMAT_VERSION {
        return Err(BundleError::Version(version));
    }
    let truncated = || BundleError::Damaged("truncated".into());
    let body_len = bytes
        .get(9..HEADER_LEN)
        .and_then(|len| <[u8; 4]>::try_from(len).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(truncated)?;
    let body_end = HEADER_LEN
        .checked_add(usize::try_from(body_len).map_err(|_| truncated())?)
        .ok_or_else(truncated)?;
    let body_bytes = bytes.get(HEADER_LEN..body_end).ok_or_else(truncated)?;
    let signature_len = bytes
        .get(body_end..body_end + 2)
        .and_then(|len| <[u8; 2]>::try_from(len).ok())
        .map(u16::from_be_bytes)
        .ok_or_else(truncated)?;
    let signature_len = usize::from(signature_len);
    if signature_len > SIGNATURE_LEN_MAX {
        return Err(BundleError::Damaged(format!(
            "signature of {signature_len} bytes"
        )));
    }
    let signature_start = body_end + 2;
    let signature = bytes
        .get(signature_start..signature_start + signature_len)
        .ok_or_else(truncated)?;
    if bytes.len() != signature_start + signature_len {
        return Err(BundleError::Damaged("bytes after the signature".into()));
    }
    let body: BundleBody = crate::message::from_strict(body_bytes)
        .map_err(|error| BundleError::Body(error.to_string()))?;
    body.check_limits()?;
    Ok(SignedBundle {
        body,
        body_bytes: body_bytes.to_vec(),
        signature: signature.to_vec(),
    })
}

impl BundleBody {
    fn check_limits(&self) -> Result<(), BundleError> {
        let over = |what: &str, len: usize, max: usize| {
            BundleError::Body(format!("{len} {what}, at most {max}"))
        };
        if self.docs.len() > BUNDLE_DOCS_MAX {
            return Err(over("documents", self.docs.len(), BUNDLE_DOCS_MAX));
        }
        if let Some(doc) = self
            .docs
            .iter()
            .find(|doc| doc.heads.len() > HEADS_PER_DOC_MAX)
        {
            return Err(over("heads", doc.heads.len(), HEADS_PER_DOC_MAX));
        }
        if self.ledger_acks.len() > BUNDLE_LEDGER_ACKS_MAX {
            return Err(over(
                "ledger acks",
                self.ledger_acks.len(),
                BUNDLE_LEDGER_ACKS_MAX,
            ));
        }
        if let Some(ack) = self
            .ledger_acks
            .iter()
            .find(|ack| ack.rentals.len() > LEDGER_ACK_RENTALS_MAX)
        {
            return Err(over(
                "acknowledged rentals",
                ack.rentals.len(),
                LEDGER_ACK_RENTALS_MAX,
            ));
        }
        Ok(())
    }

    /// Refuses a bundle of another chain or branch.
    pub fn check_scope(&self, chain: ChainId, branch: BranchId) -> Result<(), BundleError> {
        if self.chain != chain || self.branch != branch {
            return Err(BundleError::WrongScope {
                bundle_chain: self.chain,
                bundle_branch: self.branch,
                chain,
                branch,
            });
        }
        Ok(())
    }

    /// True when a receiver that applied up to `highest_applied` of this producer and kind has
    /// applied this bundle already (report "already applied", change nothing).
    pub fn already_applied(&self, highest_applied: Option<u64>) -> bool {
        highest_applied.is_some_and(|highest| self.seq <= highest)
    }

    /// Kind, producer and document owners agree (facts: a device's own documents; intents: the
    /// hub's intents documents of this branch).
    fn check_consistent(&self) -> Result<(), BundleError> {
        let bad = |text: String| Err(BundleError::Inconsistent(text));
        match (self.kind, self.producer.role, self.producer.id) {
            (BundleKind::Facts, ProducerRole::Device, Some(device)) => {
                if !self.ledger_acks.is_empty() {
                    return bad("a facts bundle carries ledger acknowledgements".into());
                }
                for doc in &self.docs {
                    if doc.doc.owner() != DocOwner::Device(device) {
                        return bad(format!("device {device} cannot carry {}", doc.doc));
                    }
                }
                Ok(())
            }
            (BundleKind::Intents, ProducerRole::Hub, None) => {
                for doc in &self.docs {
                    if doc.doc.owner() != DocOwner::Hub(self.branch) {
                        return bad(format!(
                            "the intents bundle of branch {} carries {}",
                            self.branch, doc.doc
                        ));
                    }
                }
                Ok(())
            }
            (kind, role, _) => bad(format!("a {} bundle produced by {role:?}", kind.as_str())),
        }
    }
}

impl BundleDoc {
    /// Loads the document and checks every change was written by an actor allowed to write it
    /// (the device's own actor, or one of `hub_actors` for intents) and that its heads are the
    /// ones the bundle states.
    pub fn load_checked(&self, hub_actors: &HubActors) -> Result<Automerge, BundleError> {
        let doc = Automerge::load(&self.data)
            .map_err(|error| BundleError::Body(format!("{}: {error}", self.doc)))?;
        let changes: Vec<automerge::Change> = doc.get_changes(&[]);
        check_changes(&self.doc, &changes, hub_actors)
            .map_err(|error| BundleError::Authority(error.to_string()))?;
        let mut heads: Vec<Head> = doc.get_heads().into_iter().map(Head::from).collect();
        heads.sort();
        let mut stated = self.heads.clone();
        stated.sort();
        if heads != stated {
            return Err(BundleError::Inconsistent(format!(
                "the heads of {} do not match its data",
                self.doc
            )));
        }
        Ok(doc)
    }
}

impl SignedBundle {
    /// The body, **not verified**: for display and scope checks by a carrier that holds no key
    /// to verify with. Never apply it without [`Self::verify_device`] or [`Self::verify_hub`].
    pub fn unverified_body(&self) -> &BundleBody {
        &self.body
    }

    /// Verifies a facts bundle against the producing device's certificate (which the caller
    /// trusts: the hub's record of it, unrevoked).
    pub fn verify_device(&self, device_cert_der: &[u8]) -> Result<&BundleBody, BundleError> {
        self.body.check_consistent()?;
        let identity = PeerIdentity::from_cert_der(device_cert_der)
            .map_err(|error| BundleError::Inconsistent(error.to_string()))?;
        if identity.role != Role::Device
            || self.body.kind != BundleKind::Facts
            || self.body.producer.id != Some(identity.device)
        {
            return Err(BundleError::Inconsistent(format!(
                "the certificate of {identity} did not produce this bundle"
            )));
        }
        self.body.check_scope(identity.chain, identity.branch)?;
        self.verify_with_cert(device_cert_der)?;
        Ok(&self.body)
    }

    /// Verifies an intents bundle against the chain CA certificate the receiver holds.
    pub fn verify_hub(&self, chain_ca_der: &[u8]) -> Result<&BundleBody, BundleError> {
        self.body.check_consistent()?;
        if self.body.kind != BundleKind::Intents {
            return Err(BundleError::Inconsistent(
                "a facts bundle cannot be verified as the hub's".into(),
            ));
        }
        if let Some(chain) = crate::technician::chain_of_ca(chain_ca_der)
            && chain != self.body.chain
        {
            return Err(BundleError::WrongScope {
                bundle_chain: self.body.chain,
                bundle_branch: self.body.branch,
                chain,
                branch: self.body.branch,
            });
        }
        self.verify_with_cert(chain_ca_der)?;
        Ok(&self.body)
    }

    /// Verifies a facts bundle whose producer certificate travels in the body: the certificate
    /// must chain to `chain_ca_der` (client authentication, valid at `now_unix`), then the
    /// bundle is checked as [`Self::verify_device`]. Returns the body, the producer's identity
    /// and its certificate serial (lowercase hex), which the caller checks against its records.
    pub fn verify_device_chain(
        &self,
        chain_ca_der: &[u8],
        now_unix: i64,
    ) -> Result<(&BundleBody, PeerIdentity, String), BundleError> {
        let cert = self.body.producer_cert.as_deref().ok_or_else(|| {
            BundleError::Inconsistent("the facts bundle carries no device certificate".into())
        })?;
        crate::technician::check_chain(cert, chain_ca_der, now_unix).map_err(|error| {
            BundleError::Inconsistent(format!("the producer's certificate: {error}"))
        })?;
        let identity = PeerIdentity::from_cert_der(cert)
            .map_err(|error| BundleError::Inconsistent(error.to_string()))?;
        let serial = crate::identity::inspect_certificate(cert)
            .map_err(|error| BundleError::Inconsistent(error.to_string()))?
            .serial_hex;
        let body = self.verify_device(cert)?;
        Ok((body, identity, serial))
    }

    fn verify_with_cert(&self, cert_der: &[u8]) -> Result<(), BundleError> {
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der)
            .map_err(|error| BundleError::Inconsistent(format!("certificate: {error}")))?;
        let public_key = &cert.public_key().subject_public_key.data;
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            public_key.as_ref(),
        )
        .verify(&signing_bytes(&self.body_bytes), &self.signature)
        .map_err(|_| BundleError::BadSignature)
    }
}

#[cfg(test)]
mod tests;
