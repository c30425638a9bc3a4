//! The authority check: every change a sync message carries is decoded and its actor compared
//! with the document's owner *before* anything is applied.
//!
//! - A device's facts document (`device/<uuid>…`) accepts only changes whose actor is the
//!   device's actor id: the 16 bytes of its UUID ([`device_actor`]).
//! - A branch's intents document accepts only changes by the hub's actors ([`HubActors`]).
//!
//! How the changes are found: `automerge::sync::Message::decode` exposes the public
//! `changes: ChunkList`; each item holds one or more storage chunks (a v1 message: one change
//! per item; a v2 message: several changes concatenated, or a whole `save()`d document). This
//! module splits each item on the chunk headers (magic, checksum, type, LEB128 length) and
//! parses every chunk with Automerge's own public parsers: `Change::try_from` for change and
//! compressed-change chunks, `Automerge::load` then `get_changes` for a document chunk,
//! `Bundle::try_from` for a bundle chunk. A chunk that does not parse (or trailing bytes)
//! refuses the whole message, where Automerge itself would apply the chunks before the bad
//! one: the check is stricter than the loader, never looser.
//!
//! What the check does not prove: an actor id is a label the writer chooses. A peer that can
//! reach this node (a same-branch Pi, a technician) can forge a change carrying another
//! device's actor id, and this check accepts it. The transport closes the gap for a direct
//! connection (a device's session may only send changes to its own document — the caller
//! checks the session's mTLS identity against [`DocId::owner`]); for relayed changes
//! [`crate::signed_heads`] closes it: a relayed change is accepted only if it is covered by
//! heads the owning device signed.

use std::collections::BTreeSet;

use automerge::{ActorId, Automerge, Change, ReadDoc, sync};
use cartwise_schema::{ChainId, DeviceId};
use sha2::{Digest, Sha256};

use crate::doc_id::{DocId, DocOwner};

/// The first four bytes of every Automerge storage chunk.
const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// Magic, checksum and type bytes before a chunk's LEB128 length.
const CHUNK_FIXED_HEADER_LEN: usize = 9;
/// Chunk types of the storage format.
const CHUNK_DOCUMENT: u8 = 0;
const CHUNK_CHANGE: u8 = 1;
const CHUNK_COMPRESSED: u8 = 2;
const CHUNK_BUNDLE: u8 = 3;

/// The Automerge actor id of a device: its UUID's 16 bytes. A device writes its facts
/// document with exactly this actor.
pub fn device_actor(device: &DeviceId) -> ActorId {
    ActorId::from(device.as_uuid().as_bytes())
}

/// The prefix hashed with a chain's id to derive the hub's actor for that chain.
const HUB_ACTOR_CONTEXT: &str = "cartwise-hub-actor/";

/// The Automerge actor id the hub writes a chain's intents documents with: the first 16 bytes
/// of SHA-256(`"cartwise-hub-actor/"` + the chain's hyphenated UUID). Every hub process uses
/// this one actor; the hub serializes its writes to a document (one row lock per document),
/// so two processes never write concurrent changes with the same actor and sequence number.
/// One actor per chain (not per branch) keeps the set a device checks against to one entry.
pub fn hub_actor(chain: ChainId) -> ActorId {
    let digest = Sha256::new()
        .chain_update(HUB_ACTOR_CONTEXT.as_bytes())
        .chain_update(chain.to_string().as_bytes())
        .finalize();
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    ActorId::from(bytes)
}

/// The actors allowed to write intents documents: the hub's processes' actor ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubActors(BTreeSet<ActorId>);

impl HubActors {
    /// The given actors.
    pub fn new(actors: impl IntoIterator<Item = ActorId>) -> Self {
        HubActors(actors.into_iter().collect())
    }

    /// The hub's actor for `chain` ([`hub_actor`]): what the hub writes intents with and what
    /// a device of that chain accepts intents from.
    pub fn for_chain(chain: ChainId) -> Self {
        HubActors::new([hub_actor(chain)])
    }

    /// Whether `actor` is one of them.
    pub fn contains(&self, actor: &ActorId) -> bool {
        self.0.contains(actor)
    }
}

/// Why changes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// A change's actor is not allowed to write the document.
    #[error("change {change} by actor {actor} refused for {doc}: only {owner} may write it")]
    ForeignActor {
        /// The document.
        doc: DocId,
        /// The offending actor, hex.
        actor: String,
        /// The offending change's hash, hex.
        change: String,
        /// Who may write the document.
        owner: DocOwner,
    },
    /// The message's changes could not be decoded, so they cannot be checked: refused.
    #[error("changes for {doc} refused: they cannot be decoded ({reason})")]
    Undecodable {
        /// The document.
        doc: DocId,
        /// What failed.
        reason: String,
    },
}

/// Whether `actor` may write `doc`.
pub fn actor_allowed(doc: &DocId, actor: &ActorId, hub_actors: &HubActors) -> bool {
    match doc.owner() {
        DocOwner::Device(device) => *actor == device_actor(&device),
        DocOwner::Hub(_) => hub_actors.contains(actor),
    }
}

/// Checks that every change in `changes` was written by an actor allowed to write `doc`.
pub fn check_changes(
    doc: &DocId,
    changes: &[Change],
    hub_actors: &HubActors,
) -> Result<(), AuthorityError> {
    match changes
        .iter()
        .find(|change| !actor_allowed(doc, change.actor_id(), hub_actors))
    {
        None => Ok(()),
        Some(change) => Err(AuthorityError::ForeignActor {
            doc: *doc,
            actor: change.actor_id().to_hex_string(),
            change: change.hash().to_string(),
            owner: doc.owner(),
        }),
    }
}

/// Decodes every change `message` carries, and checks them; returns them for further checks
/// (e.g. [`crate::signed_heads::covered`]).
pub fn check_sync_message(
    doc: &DocId,
    message: &sync::Message,
    hub_actors: &HubActors,
) -> Result<Vec<Change>, AuthorityError> {
    let changes =
        changes_in(message).map_err(|reason| AuthorityError::Undecodable { doc: *doc, reason })?;
    check_changes(doc, &changes, hub_actors)?;
    Ok(changes)
}

/// [`check_sync_message`] for a receiver holding `document`: decodes and checks only the
/// changes of `message` that `document` lacks, the ones applying the message would add (a
/// change it holds was checked when it arrived), and returns them.
///
/// Why: a peer sending more than a third of its document sends all of it as one document
/// chunk (Automerge's sync), and turning every change of that chunk back into a change costs
/// a pass over the whole document; here only the new ones are taken out of it
/// (`Automerge::get_changes_added`).
pub fn check_new_changes(
    doc: &DocId,
    message: &sync::Message,
    hub_actors: &HubActors,
    document: &Automerge,
) -> Result<Vec<Change>, AuthorityError> {
    let changes = new_changes_in(message, document)
        .map_err(|reason| AuthorityError::Undecodable { doc: *doc, reason })?;
    check_changes(doc, &changes, hub_actors)?;
    Ok(changes)
}

/// The changes of the message's chunk list that `document` lacks, or why a chunk could not be
/// decoded (every chunk is decoded, whether or not its changes are new).
pub fn new_changes_in(
    message: &sync::Message,
    document: &Automerge,
) -> Result<Vec<Change>, String> {
    let mut changes = Vec::new();
    for_each_chunk(message, |chunk_type, chunk| {
        if chunk_type == CHUNK_DOCUMENT {
            let sent = Automerge::load(chunk).map_err(|error| error.to_string())?;
            changes.extend(document.get_changes_added(&sent));
        } else {
            let mut decoded = Vec::new();
            decode_chunk(chunk_type, chunk, &mut decoded)?;
            changes.extend(
                decoded
                    .into_iter()
                    .filter(|change| document.get_change_by_hash(&change.hash()).is_none()),
            );
        }
        Ok(())
    })?;
    Ok(changes)
}

/// Every change in the message's chunk list, or why one could not be decoded.
pub fn changes_in(message: &sync::Message) -> Result<Vec<Change>, String> {
    let mut changes = Vec::new();
    for_each_chunk(message, |chunk_type, chunk| {
        decode_chunk(chunk_type, chunk, &mut changes)
    })?;
    Ok(changes)
}

/// Calls `each` with the type and bytes of every storage chunk in the message's chunk list, in
/// order; stops at the first error, its own or a malformed chunk header.
fn for_each_chunk(
    message: &sync::Message,
    mut each: impl FnMut(u8, &[u8]) -> Result<(), String>,
) -> Result<(), String> {
    for item in message.changes.iter() {
        let mut rest = item;
        while !rest.is_empty() {
            let (chunk_type, chunk_len) = chunk_header(rest)?;
            let (chunk, after) = rest.split_at(chunk_len);
            each(chunk_type, chunk)?;
            rest = after;
        }
    }
    Ok(())
}

/// The type and total length (header included) of the chunk at the start of `bytes`.
fn chunk_header(bytes: &[u8]) -> Result<(u8, usize), String> {
    let fixed = bytes
        .get(..CHUNK_FIXED_HEADER_LEN)
        .ok_or("truncated chunk header")?;
    if fixed[..4] != CHUNK_MAGIC {
        return Err("chunk without the Automerge magic bytes".to_owned());
    }
    let chunk_type = fixed[8];
    let (data_len, leb_len) = uleb128(&bytes[CHUNK_FIXED_HEADER_LEN..])?;
    let total = usize::try_from(data_len)
        .ok()
        .and_then(|len| len.checked_add(CHUNK_FIXED_HEADER_LEN + leb_len))
        .filter(|total| *total <= bytes.len())
        .ok_or("chunk longer than its message")?;
    Ok((chunk_type, total))
}

/// An unsigned LEB128 value and its length in bytes (at most 10 bytes, no overflow).
fn uleb128(bytes: &[u8]) -> Result<(u64, usize), String> {
    let mut value: u64 = 0;
    for (index, byte) in bytes.iter().take(10).enumerate() {
        let low = u64::from(byte & 0x7f);
        let shift = 7 * index as u32;
        if shift == 63 && low > 1 {
            return Err("chunk length overflows".to_owned());
        }
        value |= low << shift;
        if byte & 0x80 == 0 {
            return Ok((value, index + 1));
        }
    }
    Err("truncated or overlong chunk length".to_owned())
}

/// Decodes one whole chunk with Automerge's parsers and appends its changes.
fn decode_chunk(chunk_type: u8, chunk: &[u8], changes: &mut Vec<Change>) -> Result<(), String> {
    match chunk_type {
        CHUNK_CHANGE | CHUNK_COMPRESSED => {
            changes.push(Change::try_from(chunk).map_err(|error| error.to_string())?);
        }
        CHUNK_DOCUMENT => {
            let document = Automerge::load(chunk).map_err(|error| error.to_string())?;
            changes.extend(document.get_changes(&[]));
        }
        CHUNK_BUNDLE => {
            let bundle = automerge::Bundle::try_from(chunk).map_err(|error| error.to_string())?;
            changes.extend(bundle.to_changes().map_err(|error| error.to_string())?);
        }
        other => return Err(format!("unknown chunk type {other}")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_actor_is_the_hashed_chain_id() {
        let chain = ChainId::parse("0b1e3c2a-0000-4000-8000-000000000001").unwrap();
        let expected: [u8; 32] =
            Sha256::digest("cartwise-hub-actor/0b1e3c2a-0000-4000-8000-000000000001".as_bytes())
                .into();
        assert_eq!(hub_actor(chain).to_bytes(), &expected[..16]);
        let other = ChainId::parse("0b1e3c2a-0000-4000-8000-000000000002").unwrap();
        assert_ne!(hub_actor(chain), hub_actor(other));
        assert!(HubActors::for_chain(chain).contains(&hub_actor(chain)));
        assert!(!HubActors::for_chain(chain).contains(&hub_actor(other)));
    }
}
