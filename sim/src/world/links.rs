//! The network model: links between nodes, the documents each link syncs, connections that
//! drop and come back, partitions, and a message put on the wire with its link's loss,
//! duplication, delay and reordering.

use cartwise_sync_core::DocId;

use super::{Ev, Msg, Node, World};

/// What kind of connection a link models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// A Pi's session with the hub.
    Uplink,
    /// Two Pis of a branch on the LAN.
    Lan,
    /// The technician's laptop at a Pi.
    TechPi,
    /// The technician's laptop back online with the hub.
    TechHub,
}

/// A connection between two nodes; `conn` counts reconnections (a message of an older
/// connection is never delivered).
#[derive(Debug, Clone)]
pub struct Link {
    pub a: Node,
    pub b: Node,
    pub kind: LinkKind,
    pub up: bool,
    /// The current connection is alive (a loss breaks it until the next reconnect).
    pub connected: bool,
    /// A reconnect is already scheduled.
    pub reconnecting: bool,
    pub conn: u64,
    pub loss: f64,
    pub dup: f64,
    pub base_ms: u64,
    pub jitter_ms: u64,
}

impl World {
    /// The link joining `a` and `b`, either way round.
    pub fn link_between(&self, a: Node, b: Node) -> Option<usize> {
        self.links
            .iter()
            .position(|l| (l.a == a && l.b == b) || (l.a == b && l.b == a))
    }

    /// A partition: the link goes down (only while faults last).
    pub(super) fn link_down(&mut self, link: usize) {
        if self.faults && self.links[link].up {
            self.injected += 1;
            self.links[link].up = false;
            self.links[link].conn += 1;
            let l = &self.links[link];
            let (a, b) = (l.a, l.b);
            self.log(|| format!("link {a:?}-{b:?} down"));
        }
    }

    /// The partition heals: the link comes up and reconnects.
    pub(super) fn link_up(&mut self, link: usize) {
        if !self.links[link].up {
            self.links[link].up = true;
            let l = &self.links[link];
            let (a, b) = (l.a, l.b);
            self.log(|| format!("link {a:?}-{b:?} up"));
            self.reconnect(link);
        }
    }

    /// The documents two ends of a link sync.
    pub fn shared_docs(&self, link: usize) -> Vec<DocId> {
        let l = &self.links[link];
        match l.kind {
            LinkKind::Uplink => {
                let Node::Pi(p) = l.a else { return Vec::new() };
                let branch = &self.branches[self.pis[p].branch];
                let mut docs: Vec<DocId> = branch
                    .pis
                    .iter()
                    .map(|&q| DocId::device(self.pis[q].id))
                    .collect();
                docs.push(branch.intents);
                docs
            }
            LinkKind::Lan => match (l.a, l.b) {
                (Node::Pi(p), Node::Pi(q)) => {
                    vec![DocId::device(self.pis[p].id), DocId::device(self.pis[q].id)]
                }
                _ => Vec::new(),
            },
            LinkKind::TechPi => match l.b {
                Node::Pi(p) => vec![DocId::device(self.pis[p].id)],
                _ => Vec::new(),
            },
            LinkKind::TechHub => {
                let Node::Tech(t) = l.a else {
                    return Vec::new();
                };
                self.branches[self.techs[t].branch]
                    .pis
                    .iter()
                    .map(|&q| DocId::device(self.pis[q].id))
                    .collect()
            }
        }
    }

    /// The links of `node` that are up and share `doc`.
    pub fn links_sharing(&self, node: Node, doc: DocId) -> Vec<(usize, bool)> {
        (0..self.links.len())
            .filter_map(|i| {
                let l = &self.links[i];
                if !l.up {
                    return None;
                }
                let from_a = if l.a == node {
                    true
                } else if l.b == node {
                    false
                } else {
                    return None;
                };
                self.shared_docs(i).contains(&doc).then_some((i, from_a))
            })
            .collect()
    }

    /// A connection restarts: in-flight sync progress is forgotten (shared heads are kept),
    /// and both ends offer every shared document.
    pub fn reconnect(&mut self, link: usize) {
        if !self.links[link].up {
            return;
        }
        self.links[link].conn += 1;
        self.links[link].connected = true;
        let (a, b) = (self.links[link].a, self.links[link].b);
        let docs = self.shared_docs(link);
        for &doc in &docs {
            for (node, peer) in [(a, b), (b, a)] {
                if let Some(state) = self.state_mut(node, peer, doc) {
                    state.reset_in_flight();
                }
            }
        }
        if let (Node::Pi(p), Node::Hub) = (a, b) {
            self.pi_learns_time(p);
        }
        for &doc in &docs {
            self.pump(link, true, doc);
            self.pump(link, false, doc);
        }
    }

    /// Puts a message on the wire, with this link's faults.
    pub fn send(&mut self, link: usize, from_a: bool, msg: Msg) {
        let l = &self.links[link];
        if !l.up || !l.connected {
            return;
        }
        let (conn, loss, dup, base, jitter) = (l.conn, l.loss, l.dup, l.base_ms, l.jitter_ms);
        if self.faults && self.rng.chance(loss) {
            // A lost packet the transport cannot recover in time: the connection drops and
            // comes back after a backoff.
            self.injected += 1;
            self.links[link].conn += 1;
            self.links[link].connected = false;
            if !self.links[link].reconnecting {
                self.links[link].reconnecting = true;
                let backoff = self.rng.range(5_000, 300_000);
                self.after(backoff, Ev::Reconnect { link });
            }
            return;
        }
        let delay = base + self.rng.below(jitter + 1);
        let copy = (self.faults && self.rng.chance(dup)).then(|| msg.clone());
        self.after(
            delay,
            Ev::Deliver {
                link,
                conn,
                to_a: !from_a,
                msg,
            },
        );
        if let Some(msg) = copy {
            self.injected += 1;
            let delay = base + self.rng.below(jitter * 4 + 1);
            self.after(
                delay,
                Ev::Deliver {
                    link,
                    conn,
                    to_a: !from_a,
                    msg,
                },
            );
        }
    }
}
