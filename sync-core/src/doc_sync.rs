//! Per-(peer, document) Automerge sync: [`PeerDocState`] wraps `automerge::sync::State`,
//! persists it (so an idle reconnect is one round trip), generates `Sync` bodies, and applies
//! received ones only after the [authority check](crate::authority) passed.
//!
//! A refused message is not applied and leaves the state untouched; the caller reports it
//! (an `Error` with [`error_code::AUTHORITY`](crate::error_code::AUTHORITY), the audit log) and
//! the session keeps syncing its other documents.
//!
//! Idle messages. Most messages of a reconnect say only "my heads are the heads we last
//! shared, nothing new" (74 bytes of Automerge, twice the same 32-byte head). `generate`
//! marks such a message by putting its heads digest in front of it (the *idle form* of a
//! `SyncBody.data`: [`IDLE_MARKER`], the 16-byte digest, then the whole message); the session
//! sends just the digest as `SyncIdle` to a peer with the `sync-idle` capability and the whole
//! message as `Sync` to any other. `receive` rebuilds the message from a digest alone when it
//! knows heads with that digest; when it does not, it applies nothing and makes the next
//! message a whole one, so two peers that disagree fall back to the plain protocol and never
//! loop on digests.

use automerge::sync::{self, SyncDoc};
use automerge::{AutoCommit, Automerge, AutomergeError, ChangeHash};
use sha2::{Digest, Sha256};

use crate::authority::{AuthorityError, HubActors, check_new_changes, check_sync_message};
use crate::doc_id::DocId;
use crate::frame::FRAME_LEN_MAX;
use crate::message::SyncBody;
use crate::message::body::{HEADS_DIGEST_LEN, HeadsDigest};

/// First byte of a `SyncBody.data` in idle form. Never the first byte of an Automerge sync
/// message (`0x42`, `0x43`).
pub const IDLE_MARKER: u8 = 0x00;

/// Domain separation of [`heads_digest`].
const HEADS_DIGEST_DOMAIN: &[u8] = b"cartwise-sync-idle/";

/// The digest of a set of heads: the first 16 bytes of SHA-256 over a domain string and the
/// sorted 32-byte hashes.
pub fn heads_digest(heads: &[ChangeHash]) -> HeadsDigest {
    let mut sorted = heads.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut hasher = Sha256::new();
    hasher.update(HEADS_DIGEST_DOMAIN);
    for head in &sorted {
        hasher.update(head.0);
    }
    let hash = hasher.finalize();
    let mut digest = [0u8; HEADS_DIGEST_LEN];
    digest.copy_from_slice(&hash[..HEADS_DIGEST_LEN]);
    HeadsDigest(digest)
}

/// The digest and the whole message (possibly empty) of a `SyncBody.data` in idle form, or
/// `None` for an ordinary Automerge message.
pub fn idle_parts(data: &[u8]) -> Option<(HeadsDigest, &[u8])> {
    let (&marker, rest) = data.split_first()?;
    if marker != IDLE_MARKER || rest.len() < HEADS_DIGEST_LEN {
        return None;
    }
    let (digest, full) = rest.split_at(HEADS_DIGEST_LEN);
    let digest = <[u8; HEADS_DIGEST_LEN]>::try_from(digest).ok()?;
    Some((HeadsDigest(digest), full))
}

/// A `SyncBody.data` in idle form: the marker, the digest, then `full` (empty when only the
/// digest is known, as for a received `SyncIdle`).
pub fn idle_form(digest: HeadsDigest, full: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(1 + HEADS_DIGEST_LEN + full.len());
    data.push(IDLE_MARKER);
    data.extend_from_slice(&digest.0);
    data.extend_from_slice(full);
    data
}

/// The flags of an idle message: only `supports-sync-reset`.
fn idle_flags() -> sync::MessageFlags {
    let mut flags = sync::MessageFlags::new();
    flags.set(sync::MessageFlags::SUPPORTS_SYNC_RESET);
    flags
}

/// The heads of `message` if it is idle: no changes, no needs, one `have` whose `last_sync`
/// equals the heads, an empty Bloom filter, and only the `supports-sync-reset` flag.
fn idle_heads(message: &sync::Message) -> Option<Vec<ChangeHash>> {
    let [have] = message.have.as_slice() else {
        return None;
    };
    let mut heads = message.heads.clone();
    let mut last_sync = have.last_sync.clone();
    heads.sort();
    last_sync.sort();
    let idle = message.changes.is_empty()
        && message.need.is_empty()
        && have.bloom.to_bytes().is_empty()
        && heads == last_sync
        && message.flags == Some(idle_flags());
    idle.then_some(message.heads.clone())
}

/// The Automerge message an idle digest of `heads` stands for.
fn idle_message(heads: Vec<ChangeHash>) -> sync::Message {
    sync::Message {
        heads: heads.clone(),
        need: Vec::new(),
        have: vec![sync::Have {
            last_sync: heads,
            bloom: sync::BloomFilter::default(),
        }],
        changes: sync::ChunkList::from(Vec::<Vec<u8>>::new()),
        flags: Some(idle_flags()),
        version: sync::MessageVersion::V2,
    }
}

/// The shared heads after applying changes that moved the document's heads from `before` to
/// `after`: the new heads, and the shared ones that are still heads (what Automerge's receive
/// computes when a message carries changes).
fn advance_heads(
    before: &[ChangeHash],
    after: &[ChangeHash],
    shared: &[ChangeHash],
) -> Vec<ChangeHash> {
    let mut advanced: Vec<ChangeHash> = after
        .iter()
        .filter(|head| !before.contains(head))
        .chain(shared.iter().filter(|head| after.contains(head)))
        .copied()
        .collect();
    advanced.sort();
    advanced.dedup();
    advanced
}

/// Largest encoded Automerge sync message sent in one `Sync` body: a frame minus room for the
/// envelope and the document id. Documents are rotated long before they approach it.
pub const SYNC_DATA_LEN_MAX: usize = FRAME_LEN_MAX - 4096;

/// Fewest changes the peer lacks for which a message may carry the whole document.
///
/// Automerge sends its whole document, compressed, instead of the changes the peer lacks when
/// they are more than a third of its history and the peer takes such messages. For a backlog
/// (a day offline) that saves bytes. For a burst of a few lends into a small live document it
/// saves little, and it costs the receiver a load of the whole document and a rebuild of every
/// change in it, to find the few it lacks: on the hub, several times the cost of decoding the
/// changes alone. Below this many, changes go as changes.
pub const WHOLE_DOC_CHANGES_MIN: usize = 64;

/// A document that takes part in sync: [`Automerge`] or [`AutoCommit`].
pub trait SyncDocument {
    /// `SyncDoc::generate_sync_message`.
    fn generate_message(&mut self, state: &mut sync::State) -> Option<sync::Message>;
    /// `SyncDoc::receive_sync_message`.
    fn receive_message(
        &mut self,
        state: &mut sync::State,
        message: sync::Message,
    ) -> Result<(), AutomergeError>;
    /// The document's current heads.
    fn current_heads(&mut self) -> Vec<ChangeHash>;
    /// How many of the document's changes are not below `heads` (from the change graph's
    /// metadata alone; no change is built).
    fn changes_after(&mut self, heads: &[ChangeHash]) -> usize;
}

impl SyncDocument for Automerge {
    fn generate_message(&mut self, state: &mut sync::State) -> Option<sync::Message> {
        self.generate_sync_message(state)
    }

    fn receive_message(
        &mut self,
        state: &mut sync::State,
        message: sync::Message,
    ) -> Result<(), AutomergeError> {
        self.receive_sync_message(state, message)
    }

    fn current_heads(&mut self) -> Vec<ChangeHash> {
        self.get_heads()
    }

    fn changes_after(&mut self, heads: &[ChangeHash]) -> usize {
        self.get_changes_meta(heads).len()
    }
}

impl SyncDocument for AutoCommit {
    fn generate_message(&mut self, state: &mut sync::State) -> Option<sync::Message> {
        self.sync().generate_sync_message(state)
    }

    fn receive_message(
        &mut self,
        state: &mut sync::State,
        message: sync::Message,
    ) -> Result<(), AutomergeError> {
        self.sync().receive_sync_message(state, message)
    }

    fn current_heads(&mut self) -> Vec<ChangeHash> {
        self.get_heads()
    }

    fn changes_after(&mut self, heads: &[ChangeHash]) -> usize {
        self.get_changes_meta(heads).len()
    }
}

/// Why a document sync step failed. None of these ends the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocSyncError {
    /// A `Sync` body for another document was passed to this state.
    #[error("sync message for {found} passed to the sync state of {expected}")]
    WrongDoc {
        /// This state's document.
        expected: DocId,
        /// The body's document.
        found: DocId,
    },
    /// The data is not an Automerge sync message.
    #[error("malformed sync message for {doc}: {reason}")]
    Malformed {
        /// The document.
        doc: DocId,
        /// What the decoder said.
        reason: String,
    },
    /// The changes carried break the document's authority; nothing was applied.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    /// Automerge refused to apply the message.
    #[error("cannot apply sync message to {doc}: {reason}")]
    Apply {
        /// The document.
        doc: DocId,
        /// What Automerge said.
        reason: String,
    },
    /// A persisted state did not decode.
    #[error("cannot decode persisted sync state of {doc}: {reason}")]
    StateDecode {
        /// The document.
        doc: DocId,
        /// What Automerge said.
        reason: String,
    },
    /// The generated message is larger than [`SYNC_DATA_LEN_MAX`]; the document must be
    /// rotated. The in-flight state was reset.
    #[error("sync message for {doc} of {len} bytes exceeds {max}; rotate the document")]
    TooLarge {
        /// The document.
        doc: DocId,
        /// The message length.
        len: usize,
        /// [`SYNC_DATA_LEN_MAX`].
        max: usize,
    },
}

/// What receiving a `Sync` body did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Changes the message carried, all checked: by `receive`, every one (some may have been
    /// known already); by `receive_decoded`, the ones the document lacked.
    pub changes_checked: usize,
    /// Whether the document's heads moved.
    pub heads_changed: bool,
    /// The changes applied, encoded one after another in the order applied: the bytes
    /// `Automerge::save_after` gives for them, without building them again from the document.
    /// Filled by `receive_decoded` only (`receive` leaves it empty).
    pub applied: Vec<u8>,
}

/// The sync progress of one document with one peer.
#[derive(Debug)]
pub struct PeerDocState {
    doc: DocId,
    state: sync::State,
    /// The peer could not rebuild our last idle digest, or we could not rebuild its: the next
    /// message goes whole.
    whole_next: bool,
}

impl PeerDocState {
    /// A fresh state: the first exchange sends a Bloom filter of the whole history.
    pub fn new(doc: DocId) -> Self {
        PeerDocState {
            doc,
            state: sync::State::new(),
            whole_next: false,
        }
    }

    /// Restores a state persisted with [`PeerDocState::encode`]; in-flight flags are cleared,
    /// so this is also how a reconnect resumes.
    pub fn decode(doc: DocId, bytes: &[u8]) -> Result<Self, DocSyncError> {
        let state = sync::State::decode(bytes).map_err(|error| DocSyncError::StateDecode {
            doc,
            reason: error.to_string(),
        })?;
        Ok(PeerDocState {
            doc,
            state,
            whole_next: false,
        })
    }

    /// The bytes to persist beside the document (the shared heads: 2 + 32·k bytes).
    pub fn encode(&self) -> Vec<u8> {
        self.state.encode()
    }

    /// The document.
    pub fn doc(&self) -> DocId {
        self.doc
    }

    /// The next `Sync` body for the peer, or `None` when there is nothing to send (in sync,
    /// or waiting for the peer's answer). An idle message comes in idle form (see the module
    /// documentation); `Session::send` picks the wire form.
    pub fn generate(
        &mut self,
        document: &mut impl SyncDocument,
    ) -> Result<Option<SyncBody>, DocSyncError> {
        let message = if document.changes_after(&self.state.shared_heads) < WHOLE_DOC_CHANGES_MIN {
            self.generate_as_changes(document)
        } else {
            document.generate_message(&mut self.state)
        };
        let Some(message) = message else {
            return Ok(None);
        };
        let idle = idle_heads(&message).filter(|_| !self.whole_next);
        self.whole_next = false;
        let data = message.encode();
        let data = match idle {
            Some(heads) => idle_form(heads_digest(&heads), &data),
            None => data,
        };
        if data.len() > SYNC_DATA_LEN_MAX {
            self.reset_in_flight();
            return Err(DocSyncError::TooLarge {
                doc: self.doc,
                len: data.len(),
                max: SYNC_DATA_LEN_MAX,
            });
        }
        Ok(Some(SyncBody {
            doc: self.doc,
            data,
        }))
    }

    /// Generates as for a peer that cannot take a whole document, whatever it advertised
    /// (see [`WHOLE_DOC_CHANGES_MIN`]); its capabilities are as before afterwards.
    fn generate_as_changes(&mut self, document: &mut impl SyncDocument) -> Option<sync::Message> {
        let advertised = self.state.their_capabilities.clone();
        if let Some(capabilities) = &mut self.state.their_capabilities {
            capabilities.retain(|capability| *capability != sync::Capability::MessageV2);
        }
        let message = document.generate_message(&mut self.state);
        self.state.their_capabilities = advertised;
        message
    }

    /// Checks and applies a received `Sync` body. A malformed or refused message (every error
    /// but [`DocSyncError::Apply`]) applies nothing and leaves the state unchanged.
    pub fn receive(
        &mut self,
        document: &mut impl SyncDocument,
        body: &SyncBody,
        hub_actors: &HubActors,
    ) -> Result<Received, DocSyncError> {
        if body.doc != self.doc {
            return Err(DocSyncError::WrongDoc {
                expected: self.doc,
                found: body.doc,
            });
        }
        let Some(message) = self.message_of(document, body)? else {
            return Ok(Received {
                changes_checked: 0,
                heads_changed: false,
                applied: Vec::new(),
            });
        };
        let changes = check_sync_message(&self.doc, &message, hub_actors)?;
        let before = document.current_heads();
        document
            .receive_message(&mut self.state, message)
            .map_err(|error| self.apply_error(error))?;
        Ok(Received {
            changes_checked: changes.len(),
            heads_changed: document.current_heads() != before,
            applied: Vec::new(),
        })
    }

    /// [`receive`](Self::receive) for an [`Automerge`] document (the hub's), decoding the
    /// message's changes once: the changes the authority check decoded are the ones applied
    /// (`Automerge::apply_changes`), where `receive` has Automerge decode the same chunks a
    /// second time; and only the changes the document lacks are taken out of the message and
    /// checked (`authority::check_new_changes`: a whole document sent as one chunk is not
    /// turned back into every one of its changes). Same contract and same resulting sync
    /// state: a malformed or refused message applies nothing and leaves the state unchanged; a
    /// read-only state applies no changes.
    ///
    /// Automerge's own receive applies the chunks, then advances the shared heads over what
    /// they added, then reads the rest of the message. Here the checked changes are applied
    /// and the shared heads advanced the same way, then Automerge reads the message without
    /// its changes; the one thing it would do differently for a message without changes
    /// (note the peer's heads as the last ones sent to it) is undone.
    pub fn receive_decoded(
        &mut self,
        document: &mut Automerge,
        body: &SyncBody,
        hub_actors: &HubActors,
    ) -> Result<Received, DocSyncError> {
        if body.doc != self.doc {
            return Err(DocSyncError::WrongDoc {
                expected: self.doc,
                found: body.doc,
            });
        }
        let Some(mut message) = self.message_of(document, body)? else {
            return Ok(Received {
                changes_checked: 0,
                heads_changed: false,
                applied: Vec::new(),
            });
        };
        let changes = check_new_changes(&self.doc, &message, hub_actors, document)?;
        let changes_checked = changes.len();
        let before = document.get_heads();
        let mut applied = Vec::new();
        if message.changes.is_empty() {
            document
                .receive_sync_message(&mut self.state, message)
                .map_err(|error| self.apply_error(error))?;
        } else {
            message.changes = sync::ChunkList::empty();
            if !self.state.read_only {
                for change in &changes {
                    applied.extend_from_slice(change.raw_bytes());
                }
                document
                    .apply_changes(changes)
                    .map_err(|error| self.apply_error(error))?;
                let after = document.get_heads();
                self.state.shared_heads = advance_heads(&before, &after, &self.state.shared_heads);
            }
            let last_sent_heads = self.state.last_sent_heads.clone();
            document
                .receive_sync_message(&mut self.state, message)
                .map_err(|error| self.apply_error(error))?;
            self.state.last_sent_heads = last_sent_heads;
        }
        Ok(Received {
            changes_checked,
            heads_changed: document.get_heads() != before,
            applied,
        })
    }

    /// The Automerge message a body stands for, or `None` for an idle digest of heads this
    /// side does not know (the state is then set to answer with a whole message).
    fn message_of(
        &mut self,
        document: &mut impl SyncDocument,
        body: &SyncBody,
    ) -> Result<Option<sync::Message>, DocSyncError> {
        Ok(match idle_parts(&body.data) {
            Some((digest, [])) => {
                let message = self.rebuild_idle(document, digest);
                if message.is_none() {
                    // Heads we do not know: answer with a whole message.
                    self.reset_in_flight();
                    self.whole_next = true;
                }
                message
            }
            Some((_, full)) => Some(self.decode_message(full)?),
            None => Some(self.decode_message(&body.data)?),
        })
    }

    fn apply_error(&self, error: AutomergeError) -> DocSyncError {
        DocSyncError::Apply {
            doc: self.doc,
            reason: error.to_string(),
        }
    }

    fn decode_message(&self, data: &[u8]) -> Result<sync::Message, DocSyncError> {
        sync::Message::decode(data).map_err(|error| DocSyncError::Malformed {
            doc: self.doc,
            reason: error.to_string(),
        })
    }

    /// The idle message of the heads with `digest`, among those this side knows: the heads
    /// shared with the peer, its own, the peer's last.
    fn rebuild_idle(
        &self,
        document: &mut impl SyncDocument,
        digest: HeadsDigest,
    ) -> Option<sync::Message> {
        let candidates = [
            Some(self.state.shared_heads.clone()),
            Some(document.current_heads()),
            self.state.their_heads.clone(),
        ];
        candidates
            .into_iter()
            .flatten()
            .find(|heads| heads_digest(heads) == digest)
            .map(idle_message)
    }

    /// The heads both sides are known to share.
    pub fn shared_heads(&self) -> &[ChangeHash] {
        &self.state.shared_heads
    }

    /// Forgets in-flight progress, keeping the shared heads (as a reconnect does).
    pub fn reset_in_flight(&mut self) {
        let shared_heads = std::mem::take(&mut self.state.shared_heads);
        self.state = sync::State::new();
        self.state.shared_heads = shared_heads;
    }
}

#[cfg(test)]
mod tests;
