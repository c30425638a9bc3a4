//! Sync messages between nodes: generating them, delivering them (with the access rules of
//! each link and the authority check), taking the changes in, and forged changes a receiver
//! must refuse.

use automerge::AutoCommit;
use cartwise_schema::RentalId;
use cartwise_sync_core::doc_sync::idle_parts;
use cartwise_sync_core::message::SyncBody;
use cartwise_sync_core::{DocId, HubActors, PeerDocState};

use super::{Node, World};
use crate::Break;

/// A message on a link.
#[derive(Debug, Clone)]
pub enum Msg {
    /// An Automerge sync message for one document.
    Sync(SyncBody),
    /// The hub holds these closed rentals, and these returns are folded by their origin.
    Ack {
        rentals: Vec<RentalId>,
        returns: Vec<RentalId>,
    },
}

impl World {
    /// Pushes `doc` from `node` on every link that shares it.
    pub fn push_doc(&mut self, node: Node, doc: DocId, except: Option<usize>) {
        for (link, from_a) in self.links_sharing(node, doc) {
            if Some(link) != except {
                self.pump(link, from_a, doc);
            }
        }
    }

    pub(super) fn copy_mut(&mut self, node: Node, doc: DocId) -> Option<&mut AutoCommit> {
        match node {
            Node::Pi(p) => {
                let own = DocId::device(self.pis[p].id);
                let mem = self.pis[p].mem.as_mut()?;
                Some(if doc == own {
                    &mut mem.doc
                } else {
                    mem.held.entry(doc).or_default()
                })
            }
            Node::Hub => Some(self.hub.docs.entry(doc).or_default()),
            Node::Tech(t) => Some(self.techs[t].docs.entry(doc).or_default()),
        }
    }

    pub(super) fn state_mut(
        &mut self,
        node: Node,
        peer: Node,
        doc: DocId,
    ) -> Option<&mut PeerDocState> {
        match node {
            Node::Pi(p) => self.pis[p].mem.as_mut()?.states.get_mut(&(peer, doc)),
            Node::Hub => self.hub.states.get_mut(&(peer, doc)),
            Node::Tech(t) => self.techs[t].states.get_mut(&(peer, doc)),
        }
    }

    /// Generates the next sync message of `doc` from one end of `link` and sends it.
    pub fn pump(&mut self, link: usize, from_a: bool, doc: DocId) {
        let l = &self.links[link];
        if !l.up {
            return;
        }
        let (from, to) = if from_a { (l.a, l.b) } else { (l.b, l.a) };
        let generated = match from {
            Node::Pi(p) => match self.pis[p].mem.as_mut() {
                Some(mem) => mem.generate(to, doc),
                None => return,
            },
            Node::Hub => {
                let (document, state) = self.hub.copy_and_state(to, doc);
                state.generate(document)
            }
            Node::Tech(t) => {
                let tech = &mut self.techs[t];
                let document = tech.docs.entry(doc).or_default();
                let state = tech
                    .states
                    .entry((to, doc))
                    .or_insert_with(|| PeerDocState::new(doc));
                state.generate(document)
            }
        };
        match generated {
            Ok(Some(body)) => self.send(link, from_a, Msg::Sync(body)),
            Ok(None) => {}
            Err(error) => self.fail(
                "2-convergence",
                format!("{from:?} cannot generate: {error}"),
            ),
        }
    }

    pub(super) fn deliver(&mut self, link: usize, conn: u64, to_a: bool, msg: Msg) {
        let l = &self.links[link];
        if !l.up || l.conn != conn {
            return;
        }
        let (to, from) = if to_a { (l.a, l.b) } else { (l.b, l.a) };
        self.detail(|| match &msg {
            Msg::Sync(body) => format!(
                "{from:?} -> {to:?} sync {} ({} bytes)",
                body.doc,
                body.data.len()
            ),
            Msg::Ack { rentals, returns } => {
                format!(
                    "{from:?} -> {to:?} ack {} rentals {} returns",
                    rentals.len(),
                    returns.len()
                )
            }
        });
        match msg {
            Msg::Sync(body) => self.receive_sync(link, from, to, body),
            Msg::Ack { rentals, returns } => {
                if let Node::Pi(p) = to {
                    self.pi_ack(p, &rentals, &returns);
                }
            }
        }
    }

    /// Whether `from` may send changes of `doc` to `to` (the access rules of the hub's sync
    /// server, the LAN peers and the technician's relay; the actor check is separate).
    fn may_write(&self, from: Node, to: Node, doc: DocId) -> bool {
        let own = |p: usize| DocId::device(self.pis[p].id) == doc;
        match (from, to) {
            (Node::Pi(p), Node::Hub) => own(p),
            (Node::Tech(_), Node::Hub) => matches!(doc, DocId::Device { .. }),
            (Node::Hub, _) => true,
            (Node::Pi(q), Node::Pi(_)) => own(q),
            (Node::Pi(p), Node::Tech(_)) => own(p),
            (Node::Tech(_), Node::Pi(_)) => false,
            (Node::Tech(_), Node::Tech(_)) => false,
        }
    }

    fn receive_sync(&mut self, link: usize, from: Node, to: Node, body: SyncBody) {
        let doc = body.doc;
        let link_conn = self.links[link].conn;
        if !self.shared_docs(link).contains(&doc) {
            self.log(|| format!("{to:?} refuses {doc} from {from:?}: not shared here"));
            return;
        }
        let writer = self.may_write(from, to, doc);
        let body = if writer {
            body
        } else {
            // Read-only access (the hub's `receive_read_only`): changes the receiver already
            // holds are dropped, heads it does not know are narrowed away; a new change is
            // refused.
            let known = self.copy_mut(to, doc);
            match known.map(|copy| narrow_read_only(copy, body)) {
                Some(Ok(narrowed)) => narrowed,
                Some(Err(reason)) => {
                    self.log(|| format!("{to:?} refuses changes of {doc} from {from:?}: {reason}"));
                    return;
                }
                None => return,
            }
        };
        let bypass = self.opts.breaks.contains(&Break::Authority);
        let result = match to {
            Node::Pi(p) => match self.pis[p].mem.as_mut() {
                Some(mem) => mem.receive(from, &body, &self.hub_actors, bypass),
                None => return,
            },
            Node::Hub => {
                let (document, state) = self.hub.copy_and_state(from, doc);
                receive_into(document, state, &body, &self.hub_actors, bypass)
            }
            Node::Tech(t) => {
                let tech = &mut self.techs[t];
                let document = tech.docs.entry(doc).or_default();
                let state = tech
                    .states
                    .entry((from, doc))
                    .or_insert_with(|| PeerDocState::new(doc));
                receive_into(document, state, &body, &self.hub_actors, bypass)
            }
        };
        match result {
            Ok(changed) => {
                if changed {
                    self.log(|| format!("{to:?} takes changes of {doc} from {from:?}"));
                    self.doc_changed(to, doc, link);
                }
                if let Node::Pi(p) = to {
                    self.pi_persist_state(p, from, doc);
                }
                // A read-only peer ahead of this node keeps announcing heads this node cannot
                // take; answering each announcement again would ping-pong forever (the peer
                // resends nothing it already sent). Answer only what is new.
                if !writer {
                    let heads = self
                        .state_mut(to, from, doc)
                        .map(|s| s.shared_heads().to_vec())
                        .unwrap_or_default();
                    let key = (to, from, doc);
                    if self.read_only_seen.get(&key) == Some(&(heads.clone(), link_conn)) {
                        return;
                    }
                    self.read_only_seen.insert(key, (heads, link_conn));
                }
                let to_a = self.links[link].a == to;
                self.pump(link, to_a, doc);
            }
            Err(reason) => {
                self.refused += 1;
                self.log(|| format!("{to:?} refuses {doc} from {from:?}: {reason}"));
            }
        }
    }

    /// A node's copy of `doc` changed through sync.
    fn doc_changed(&mut self, node: Node, doc: DocId, link: usize) {
        match node {
            Node::Pi(p) => self.pi_doc_changed(p, doc),
            Node::Hub => self.hub_doc_changed(doc),
            Node::Tech(_) => {}
        }
        self.push_doc(node, doc, Some(link));
    }

    /// A forged change: one end writes into a document it does not own with its own actor
    /// and sends it; the receiver must refuse it.
    pub(super) fn forge(&mut self, link: usize, from_a: bool) {
        let l = &self.links[link];
        if !l.up {
            return;
        }
        let (from, to) = if from_a { (l.a, l.b) } else { (l.b, l.a) };
        // A writer the link lets through (so only the authority check stands in the way)
        // writing with an actor that does not own the document.
        let docs = self.shared_docs(link);
        let Some(&doc) = docs.iter().find(|d| self.may_write(from, to, **d)) else {
            return;
        };
        let actor = match (from, to) {
            (Node::Pi(_), Node::Pi(q)) => cartwise_sync_core::device_actor(&self.pis[q].id),
            (Node::Pi(_), _) => automerge::ActorId::from(self.rng.uuid().as_bytes()),
            (Node::Tech(t), _) => automerge::ActorId::from(self.techs[t].id.as_bytes()),
            (Node::Hub, _) => return,
        };
        let base = match from {
            Node::Pi(p) => self.pis[p].mem.as_mut().map(|m| m.copy_of(doc)),
            Node::Tech(t) => Some(self.techs[t].docs.entry(doc).or_default().fork()),
            Node::Hub => None,
        };
        let Some(mut forged) = base else { return };
        forged.set_actor(actor);
        if crate::docw::put_anomaly(
            &mut forged,
            "forged",
            Some(1),
            None,
            "written by a node that does not own this document",
            &self.stamp_zero(),
        )
        .is_err()
        {
            return;
        }
        crate::docw::commit(&mut forged, 0);
        // A first exchange with a copy of the receiver's document, so the message that goes
        // out carries the forged change.
        let Some(mut theirs) = self.copy_mut(to, doc).map(|c| c.fork()) else {
            return;
        };
        let mut mine = PeerDocState::new(doc);
        let mut their_state = PeerDocState::new(doc);
        let mut body = None;
        for _ in 0..4 {
            let Ok(Some(out)) = mine.generate(&mut forged) else {
                break;
            };
            if carries_changes(&out.data) {
                body = Some(out);
                break;
            }
            let _ = receive_into(&mut theirs, &mut their_state, &out, &self.hub_actors, true);
            if let Ok(Some(back)) = their_state.generate(&mut theirs) {
                let _ = receive_into(&mut forged, &mut mine, &back, &self.hub_actors, true);
            }
        }
        if let Some(body) = body {
            self.injected += 1;
            self.log(|| format!("{from:?} forges a change of {doc} to {to:?}"));
            self.send(link, from_a, Msg::Sync(body));
        }
    }

    fn stamp_zero(&self) -> cartwise_schema::Stamp {
        cartwise_schema::Stamp {
            wall: cartwise_schema::WallMillis::new(0),
            boot: cartwise_schema::BootId::from_uuid(uuid::Uuid::nil()),
            mono: cartwise_schema::MonoMillis::new(0),
            hlc: cartwise_schema::Hlc::zero(0),
        }
    }
}

/// Whether a `Sync` body carries changes.
fn carries_changes(data: &[u8]) -> bool {
    let full = match idle_parts(data) {
        Some((_, full)) => full,
        None => data,
    };
    !full.is_empty() && automerge::sync::Message::decode(full).is_ok_and(|m| !m.changes.is_empty())
}

/// A read-only peer's `Sync` body with what it may not write taken out (the rules of the
/// hub's `receive_read_only`), or why it is refused.
fn narrow_read_only(document: &mut AutoCommit, body: SyncBody) -> Result<SyncBody, String> {
    let raw = match idle_parts(&body.data) {
        Some((_, [])) => return Ok(body),
        Some((_, full)) => full,
        None => &body.data[..],
    };
    let mut message = automerge::sync::Message::decode(raw).map_err(|e| e.to_string())?;
    if !message.changes.is_empty() {
        let changes = cartwise_sync_core::authority::changes_in(&message)?;
        if let Some(new) = changes
            .iter()
            .find(|c| document.get_change_meta_by_hash(&c.hash()).is_none())
        {
            return Err(format!("change {} may only be read here", new.hash()));
        }
        message.changes = automerge::sync::ChunkList::empty();
    }
    message
        .heads
        .retain(|head| document.get_change_meta_by_hash(head).is_some());
    Ok(SyncBody {
        doc: body.doc,
        data: message.encode(),
    })
}

/// Applies a `Sync` body with the real authority check (or, under `--break authority`,
/// without it); `Ok(true)` when the document's heads moved.
pub fn receive_into(
    document: &mut AutoCommit,
    state: &mut PeerDocState,
    body: &SyncBody,
    hub_actors: &HubActors,
    bypass: bool,
) -> Result<bool, String> {
    if bypass {
        use automerge::sync::SyncDoc;
        let full = match idle_parts(&body.data) {
            Some((_, full)) => full,
            None => &body.data,
        };
        if full.is_empty() {
            return Ok(false);
        }
        let message = automerge::sync::Message::decode(full).map_err(|e| e.to_string())?;
        let before = document.get_heads();
        let mut fresh = automerge::sync::State::new();
        document
            .sync()
            .receive_sync_message(&mut fresh, message)
            .map_err(|e| e.to_string())?;
        let changed = document.get_heads() != before;
        // Keep the real state's progress too, so sync still converges.
        let _ = state.receive(document, body, hub_actors);
        return Ok(changed);
    }
    state
        .receive(document, body, hub_actors)
        .map(|r| r.heads_changed)
        .map_err(|e| e.to_string())
}
