//! Bundles on the Pi: the signed facts bundle this device hands a technician (its own device
//! documents, every epoch it still holds) and the hub's signed intents bundle a technician
//! brings (the branch's intents and the hub's ledger acknowledgements). The LAN technician
//! session (`tech_session.rs`) and `cartwise-edge bundle export|import` (`bundle_cli.rs`) both
//! call these, so a USB stick and the LAN are checked the same way.
//!
//! An intents bundle is applied only after its signature verifies against this chain's CA, its
//! chain and branch are this device's, and its sequence is above the highest one applied here
//! (a replay changes nothing). Each document then goes through the same path as the hub's
//! sessions: every change must be written by the chain's hub actor
//! (`BundleDoc::load_checked`), and it is merged by an Automerge sync exchange into the held
//! intents document (`Engine::sync_receive_doc` from the hub), after which the executor runs
//! the intents once. Acknowledged rentals leave the live document exactly as a `LedgerAck`
//! does. Every import and export is recorded in the technician log.

use cartwise_schema::ChainId;
use cartwise_sync_core::bundle::{
    BundleBody, BundleDoc, BundleError, BundleKind, BundleSigner, Producer, decode_bundle,
    encode_bundle,
};
use cartwise_sync_core::message::Head;
use cartwise_sync_core::{DocId, HubActors, PeerDocState};

use super::techlog::TechAction;
use super::{Engine, SyncPeer};
use crate::store::StoreError;

/// The sync-state name under which a bundle's documents are merged (dropped after each).
const BUNDLE_PEER: &str = "bundle";
/// Rounds of the in-memory sync exchange merging one document (two suffice in practice).
const MERGE_ROUNDS_MAX: usize = 16;

/// Why a bundle was not applied or not produced.
#[derive(Debug, thiserror::Error)]
pub enum BundleApplyError {
    /// The bundle itself was refused (damaged, forged, another branch, another chain).
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// This device cannot tell its chain yet.
    #[error("this Pi is not enrolled yet (its chain is unknown); enroll it before using bundles")]
    NotEnrolled,
    /// The local store failed or refused a document.
    #[error("the bundle could not be applied: {0}")]
    Store(#[from] StoreError),
}

/// What importing an intents bundle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The bundle's sequence number.
    pub seq: u64,
    /// Whether anything was applied (`false`: it was applied before).
    pub applied: bool,
    /// Documents merged.
    pub docs: usize,
    /// Entries the ledger acknowledgements dropped from the live document.
    pub acked: usize,
    /// A sentence for the technician.
    pub message: String,
}

impl Engine {
    /// Builds this device's signed facts bundle for `technician` (the next facts sequence),
    /// carrying its device certificate (`cert_der`) so the hub can check it was not revoked.
    pub async fn export_facts_bundle(
        &self,
        chain: ChainId,
        cert_der: Vec<u8>,
        signer: &(dyn BundleSigner + Sync),
        technician: Option<uuid::Uuid>,
    ) -> Result<Vec<u8>, BundleApplyError> {
        let device = self.config.device;
        let docs = self
            .store
            .transact(move |tx, state| {
                let mut docs = Vec::new();
                for retired in crate::live::retired_epochs(tx, device)? {
                    let mut document = crate::live::load_retired(tx, retired.doc)?;
                    docs.push(bundle_doc(
                        retired.doc,
                        document.get_heads(),
                        document.save(),
                    ));
                }
                let heads = state.live.heads();
                let doc = state.live.doc_id();
                docs.push(bundle_doc(doc, heads, state.live.save()));
                Ok(docs)
            })
            .await?;
        let seq = self.next_facts_seq().await?;
        let body = BundleBody {
            kind: BundleKind::Facts,
            chain,
            branch: self.config.branch,
            producer: Producer::device(device),
            seq,
            created_at_ms: self.corrected_now_ms().await?,
            technician,
            docs,
            ledger_acks: Vec::new(),
            producer_cert: Some(cert_der),
        };
        let count = body.docs.len();
        let bytes = encode_bundle(&body, signer)?;
        self.log_technician(
            technician,
            TechAction::BundleExport,
            true,
            format!(
                "facts bundle {seq}: {count} documents, {} bytes",
                bytes.len()
            ),
        )
        .await?;
        Ok(bytes)
    }

    /// Verifies and applies a hub intents bundle (see the module documentation). A refusal is
    /// recorded in the technician log with its reason and returned.
    pub async fn import_intents_bundle(
        &self,
        bytes: &[u8],
        chain_ca_der: &[u8],
        technician: Option<uuid::Uuid>,
    ) -> Result<Imported, BundleApplyError> {
        match self.import_checked(bytes, chain_ca_der).await {
            Ok(imported) => {
                self.log_technician(
                    technician,
                    TechAction::BundleImport,
                    true,
                    imported.message.clone(),
                )
                .await?;
                if imported.applied {
                    self.log_technician(
                        technician,
                        TechAction::IntentsApplied,
                        true,
                        format!(
                            "intents bundle {}: {} documents merged, {} acknowledged entries dropped",
                            imported.seq, imported.docs, imported.acked
                        ),
                    )
                    .await?;
                }
                Ok(imported)
            }
            Err(error) => {
                self.log_technician(
                    technician,
                    TechAction::BundleImport,
                    false,
                    error.to_string(),
                )
                .await?;
                Err(error)
            }
        }
    }

    async fn import_checked(
        &self,
        bytes: &[u8],
        chain_ca_der: &[u8],
    ) -> Result<Imported, BundleApplyError> {
        let chain = self.chain_id().ok_or(BundleApplyError::NotEnrolled)?;
        let signed = decode_bundle(bytes)?;
        let body = signed.verify_hub(chain_ca_der)?;
        body.check_scope(chain, self.config.branch)?;
        let seq = body.seq;
        let highest = self.intents_seq_applied().await?;
        if body.already_applied((highest > 0).then_some(highest)) {
            return Ok(Imported {
                seq,
                applied: false,
                docs: 0,
                acked: 0,
                message: format!(
                    "intents bundle {seq} was already applied (this Pi has applied up to {highest}); nothing changed"
                ),
            });
        }
        let actors = HubActors::for_chain(chain);
        let mut loaded = Vec::with_capacity(body.docs.len());
        for doc in &body.docs {
            loaded.push((doc.doc, doc.load_checked(&actors)?));
        }
        for (doc, mut document) in loaded {
            self.merge_from_hub(doc, &mut document, &actors).await?;
        }
        let mut acked = 0;
        for ack in &body.ledger_acks {
            if ack.device == self.config.device {
                acked += self.ledger_acked(ack.rentals.clone()).await?;
            }
        }
        self.note_intents_seq(seq).await?;
        let docs = body.docs.len();
        Ok(Imported {
            seq,
            applied: true,
            docs,
            acked,
            message: format!(
                "intents bundle {seq} applied: {docs} documents merged, {acked} acknowledged entries dropped"
            ),
        })
    }

    /// Merges a verified hub document into the held one by an in-memory sync exchange through
    /// `sync_receive_doc`, which checks every change's actor again and runs the executor.
    async fn merge_from_hub(
        &self,
        doc: DocId,
        source: &mut automerge::Automerge,
        actors: &HubActors,
    ) -> Result<(), BundleApplyError> {
        let mut theirs = PeerDocState::new(doc);
        let outcome = async {
            for _ in 0..MERGE_ROUNDS_MAX {
                let ours = self.sync_generate_doc(BUNDLE_PEER.to_owned(), doc).await?;
                if let Some(body) = &ours {
                    theirs
                        .receive(source, body, actors)
                        .map_err(|e| StoreError::Rejected(format!("bundle merge: {e}")))?;
                }
                let reply = theirs
                    .generate(source)
                    .map_err(|e| StoreError::Rejected(format!("bundle merge: {e}")))?;
                match reply {
                    Some(body) => {
                        self.sync_receive_doc(BUNDLE_PEER.to_owned(), SyncPeer::Hub, body)
                            .await?;
                    }
                    None if ours.is_none() => return Ok(()),
                    None => {}
                }
            }
            Ok::<(), StoreError>(())
        }
        .await;
        self.store
            .transact(|tx, _| {
                tx.execute(
                    "DELETE FROM sync_peer_states WHERE peer = ?1",
                    [BUNDLE_PEER],
                )?;
                Ok(())
            })
            .await?;
        outcome.map_err(BundleApplyError::from)
    }

    /// The device's best corrected wall time now, Unix ms.
    pub async fn corrected_now_ms(&self) -> Result<i64, StoreError> {
        let reading = self.clock.read();
        self.store
            .read(move |_, state| Ok(state.timeline.corrected_reading(&reading).get()))
            .await
    }

    /// The chain this device belongs to, once enrolled.
    pub fn chain_id(&self) -> Option<ChainId> {
        self.chain.read().ok().and_then(|slot| *slot)
    }
}

fn bundle_doc(doc: DocId, heads: Vec<automerge::ChangeHash>, data: Vec<u8>) -> BundleDoc {
    let mut heads: Vec<Head> = heads.into_iter().map(Head::from).collect();
    heads.sort();
    BundleDoc { doc, heads, data }
}
