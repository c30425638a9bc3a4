//! Per-(peer, document) Automerge sync: [`PeerDocState`] wraps `automerge::sync::State`,
//! persists it (so an idle reconnect is one round trip), generates `Sync` bodies, and applies
//! received ones only after the [authority check](crate::authority) passed.
//!
//! A refused message is not applied and leaves the state untouched; the caller reports it
//! (an `Error` with [`error_code::AUTHORITY`](crate::error_code::AUTHORITY), the audit log) and
//! the session keeps syncing its other documents.

use automerge::sync::{self, SyncDoc};
use automerge::{AutoCommit, Automerge, AutomergeError, ChangeHash};

use crate::authority::{AuthorityError, HubActors, check_sync_message};
use crate::doc_id::DocId;
use crate::frame::FRAME_LEN_MAX;
use crate::message::SyncBody;

/// Largest encoded Automerge sync message sent in one `Sync` body: a frame minus room for the
/// envelope and the document id. Documents are rotated long before they approach it.
pub const SYNC_DATA_LEN_MAX: usize = FRAME_LEN_MAX - 4096;

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
    /// Changes the message carried, all checked (some may have been known already).
    pub changes_checked: usize,
    /// Whether the document's heads moved.
    pub heads_changed: bool,
}

/// The sync progress of one document with one peer.
#[derive(Debug)]
pub struct PeerDocState {
    doc: DocId,
    state: sync::State,
}

impl PeerDocState {
    /// A fresh state: the first exchange sends a Bloom filter of the whole history.
    pub fn new(doc: DocId) -> Self {
        PeerDocState {
            doc,
            state: sync::State::new(),
        }
    }

    /// Restores a state persisted with [`PeerDocState::encode`]; in-flight flags are cleared,
    /// so this is also how a reconnect resumes.
    pub fn decode(doc: DocId, bytes: &[u8]) -> Result<Self, DocSyncError> {
        let state = sync::State::decode(bytes).map_err(|error| DocSyncError::StateDecode {
            doc,
            reason: error.to_string(),
        })?;
        Ok(PeerDocState { doc, state })
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
    /// or waiting for the peer's answer).
    pub fn generate(
        &mut self,
        document: &mut impl SyncDocument,
    ) -> Result<Option<SyncBody>, DocSyncError> {
        let Some(message) = document.generate_message(&mut self.state) else {
            return Ok(None);
        };
        let data = message.encode();
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
        let message =
            sync::Message::decode(&body.data).map_err(|error| DocSyncError::Malformed {
                doc: self.doc,
                reason: error.to_string(),
            })?;
        let changes = check_sync_message(&self.doc, &message, hub_actors)?;
        let before = document.current_heads();
        document
            .receive_message(&mut self.state, message)
            .map_err(|error| DocSyncError::Apply {
                doc: self.doc,
                reason: error.to_string(),
            })?;
        Ok(Received {
            changes_checked: changes.len(),
            heads_changed: document.current_heads() != before,
        })
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
