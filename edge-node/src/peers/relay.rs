//! Relay: the signed heads a Pi holds for its branch peers' documents ([`RelayHeads`], read by
//! the uplink) and one LAN session's signing of this device's own heads ([`Signing`]).

use std::collections::HashMap;
use std::sync::Mutex;

use cartwise_sync_core::message::body::Head;
use cartwise_sync_core::{CertVerifier, DocId, SignedHeads};
use tokio::sync::watch;

use crate::engine::HELD_DOCS_MAX;
use crate::identity::{self, HeadsKey};

/// The latest verified signed heads of each branch peer's document this Pi holds, each with
/// the certificate that verified it: what the uplink sends the hub before offering that
/// document. Shared by the LAN sessions (which fill it) and the uplink (which reads it).
#[derive(Debug)]
pub struct RelayHeads {
    held: Mutex<HashMap<DocId, SignedHeads>>,
    /// Bumped on every change, so the uplink learns of new heads while in session.
    version: watch::Sender<u64>,
}

impl Default for RelayHeads {
    fn default() -> Self {
        RelayHeads {
            held: Mutex::new(HashMap::new()),
            version: watch::Sender::new(0),
        }
    }
}

impl RelayHeads {
    /// Keeps `signed` as the latest of its document (it must be verified). Refused (`false`)
    /// when [`HELD_DOCS_MAX`] other documents are held already.
    pub fn keep(&self, signed: SignedHeads) -> bool {
        let Ok(mut held) = self.held.lock() else {
            return false;
        };
        if !held.contains_key(&signed.doc) && held.len() >= HELD_DOCS_MAX {
            return false;
        }
        if held.get(&signed.doc) == Some(&signed) {
            return true;
        }
        held.insert(signed.doc, signed);
        drop(held);
        self.version.send_modify(|v| *v = v.wrapping_add(1));
        true
    }

    /// The latest signed heads of `doc`, if held.
    pub fn get(&self, doc: &DocId) -> Option<SignedHeads> {
        self.held.lock().ok()?.get(doc).cloned()
    }

    /// Every held signed heads.
    pub fn all(&self) -> Vec<SignedHeads> {
        self.held
            .lock()
            .map(|held| held.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

/// One session's signing: this device's key, the heads last signed on the session, and the
/// key of the certificate the peer presented.
pub(super) struct Signing {
    pub(super) key: Option<HeadsKey>,
    pub(super) sent: Option<(DocId, Vec<Head>)>,
    pub(super) peer_key: Option<(CertVerifier, Vec<u8>)>,
}

impl Signing {
    pub(super) fn new(data_dir: &std::path::Path, peer_cert: Option<Vec<u8>>) -> Self {
        let key = identity::load(data_dir)
            .and_then(|identity| HeadsKey::new(&identity))
            .map_err(|error| tracing::warn!(%error, "this device cannot sign its heads; branch peers cannot relay its document"))
            .ok();
        let peer_key = peer_cert.and_then(|cert| match CertVerifier::new(&cert) {
            Ok(verifier) => Some((verifier, cert)),
            Err(error) => {
                tracing::warn!(%error, "a branch peer's certificate has no usable key");
                None
            }
        });
        Signing {
            key,
            sent: None,
            peer_key,
        }
    }
}
