//! The simulated hub: every document of the chain, the intents it writes with the real
//! `put_intent`, and the projection it would write to Postgres, kept by the rules of
//! `cloud-hub/src/project.rs` (a rental row never goes back; first close wins; a `returns`
//! entry of another device closes the origin's row) and the acknowledgements of its merge
//! path (closed rentals Postgres holds; returns whose rental the origin has closed).

use std::collections::BTreeMap;

use automerge::AutoCommit;
use cartwise_schema::{DeviceId, RentalId, RentalStatus};
use cartwise_sync_core::facts::read_device_doc;
use cartwise_sync_core::intents::{Intent, IntentId, IntentKind, put_intent};
use cartwise_sync_core::{DocId, PeerDocState};

use crate::Break;
use crate::docw;
use crate::world::{EPOCH_MS, Msg, Node, POSTS, World};

/// One projected rental row (`rentals` in Postgres).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: RentalId,
    pub origin: DeviceId,
    pub post: u16,
    pub phone: String,
    pub status: RentalStatus,
}

/// What the hub would have written to Postgres.
#[derive(Debug, Clone, Default)]
pub struct Projection {
    pub rows: Vec<Row>,
    /// `rental_returns`: the device whose dock closed the rental, and its status.
    pub returns: BTreeMap<RentalId, (DeviceId, RentalStatus)>,
    /// (device, key) → (kind, rental).
    pub anomalies: BTreeMap<(DeviceId, String), (String, Option<String>)>,
    /// intent → (device, status).
    pub outcomes: BTreeMap<IntentId, (DeviceId, String)>,
    /// Rentals their origin has closed in its own document: true when it closed them
    /// otherwise than by folding another device's return (its own dock, or a status that is
    /// not a return), so a return recorded elsewhere conflicts with it.
    pub origin_closed: BTreeMap<RentalId, bool>,
}

/// The hub.
#[derive(Default)]
pub struct Hub {
    pub docs: BTreeMap<DocId, AutoCommit>,
    pub states: BTreeMap<(Node, DocId), PeerDocState>,
    pub projection: Projection,
    /// Every intent written, with its device.
    pub intents: Vec<Intent>,
}

impl Hub {
    /// The hub's copy of `doc` and its sync state with `peer` (both made on first use).
    pub fn copy_and_state(
        &mut self,
        peer: Node,
        doc: DocId,
    ) -> (&mut AutoCommit, &mut PeerDocState) {
        let document = self.docs.entry(doc).or_default();
        let state = self
            .states
            .entry((peer, doc))
            .or_insert_with(|| PeerDocState::new(doc));
        (document, state)
    }
}

fn rank(status: RentalStatus) -> u8 {
    match status {
        RentalStatus::Unlocking => 0,
        RentalStatus::Active => 1,
        _ => 2,
    }
}

impl World {
    /// A device document changed at the hub: project it and acknowledge what Postgres holds.
    pub fn hub_doc_changed(&mut self, doc: DocId) {
        let DocId::Device { device, .. } = doc else {
            return;
        };
        let Some(copy) = self.hub.docs.get(&doc) else {
            return;
        };
        let facts = read_device_doc(copy);
        let dedup = !self.opts.breaks.contains(&Break::ExactlyOnce);
        let pr = &mut self.hub.projection;
        for fact in &facts.rentals {
            let found = pr
                .rows
                .iter()
                .position(|row| row.id == fact.id && (dedup || row.status == fact.status));
            match found {
                Some(i) => {
                    let row = &mut pr.rows[i];
                    if rank(row.status) < 2 && rank(fact.status) > rank(row.status) {
                        row.status = fact.status;
                    }
                }
                None => {
                    let mut status = fact.status;
                    if let Some((_, closed)) = pr.returns.get(&fact.id)
                        && rank(status) < 2
                    {
                        status = *closed;
                    }
                    pr.rows.push(Row {
                        id: fact.id,
                        origin: device,
                        post: fact.post,
                        phone: fact.phone.clone(),
                        status,
                    });
                }
            }
            if rank(fact.status) == 2 {
                let otherwise = fact.return_post.is_some()
                    || !matches!(
                        fact.status,
                        RentalStatus::Returned | RentalStatus::ReturnedLate
                    );
                pr.origin_closed.insert(fact.id, otherwise);
            }
        }
        for ret in &facts.returns {
            pr.returns.entry(ret.rental).or_insert((device, ret.status));
            for row in pr.rows.iter_mut().filter(|r| r.id == ret.rental) {
                if rank(row.status) < 2 {
                    row.status = ret.status;
                }
            }
        }
        for a in &facts.anomalies {
            pr.anomalies
                .insert((device, a.key.clone()), (a.kind.clone(), a.rental.clone()));
        }
        for o in &facts.outcomes {
            pr.outcomes
                .entry(o.intent)
                .or_insert((device, o.status.as_str().to_owned()));
        }
        let rentals: Vec<RentalId> = facts
            .rentals
            .iter()
            .filter(|f| {
                rank(f.status) == 2
                    && pr
                        .rows
                        .iter()
                        .any(|row| row.id == f.id && rank(row.status) == 2)
            })
            .map(|f| f.id)
            .collect();
        // A return is acknowledged once its origin has closed the rental. If the origin closed
        // it otherwise, the origin will never record the conflict (the returning device forgets
        // its return on the acknowledgement), so the hub records it, as `project_returns` and
        // `mark_folded` do in Postgres.
        let mut returns = Vec::new();
        for ret in &facts.returns {
            let Some(&otherwise) = pr.origin_closed.get(&ret.rental) else {
                continue;
            };
            if otherwise {
                pr.anomalies.insert(
                    (device, format!("return/{}", ret.rental)),
                    (
                        "conflicting_return".to_owned(),
                        Some(ret.rental.to_string()),
                    ),
                );
            }
            returns.push(ret.rental);
        }
        if rentals.is_empty() && returns.is_empty() {
            return;
        }
        let owner = self.pis.iter().position(|pi| pi.id == device);
        if let Some(p) = owner
            && let Some(link) = self.link_between(Node::Pi(p), Node::Hub)
        {
            let from_a = self.links[link].a == Node::Hub;
            self.send(link, from_a, Msg::Ack { rentals, returns });
        }
    }

    /// A manager asks for something through the cloud: the hub writes an intent.
    pub fn hub_intent(&mut self, branch: usize) {
        if !self.faults {
            return;
        }
        let pis = self.branches[branch].pis.clone();
        let p = pis[self.rng.index(pis.len())];
        let post = u16::try_from(self.rng.range(1, u64::from(POSTS) + 1)).unwrap_or(1);
        let kind = match self.rng.below(5) {
            0 => IntentKind::OutOfService { post },
            1 => IntentKind::InService { post },
            2 => IntentKind::UnlockPost { post },
            3 => IntentKind::SetRentalMinutes {
                minutes: [60, 120, 180][self.rng.index(3)],
            },
            _ => IntentKind::Note {
                post: Some(post),
                text: "check the wheel".into(),
            },
        };
        let created_at = i64::try_from(self.now).unwrap_or(i64::MAX);
        let intent = Intent {
            id: IntentId::from_uuid(self.rng.uuid()),
            device: self.pis[p].id,
            kind,
            created_at,
            created_by: "manager".into(),
            expires_at: self.rng.chance(0.3).then(|| {
                created_at + i64::try_from(self.rng.range(60_000, 7_200_000)).unwrap_or(0)
            }),
        };
        let doc = self.branches[branch].intents;
        let (chain, branch_id) = (self.chain, self.branches[branch].id);
        let copy = self.hub.docs.entry(doc).or_default();
        if let Err(error) = put_intent(copy, chain, branch_id, &intent) {
            self.fail(
                "6-isolation",
                format!("the hub cannot write an intent: {error}"),
            );
            return;
        }
        docw::commit(
            copy,
            i64::try_from((self.now - EPOCH_MS) / 1000).unwrap_or(0),
        );
        let name = self.pis[p].name.clone();
        let kind = intent.kind.as_str();
        self.log(|| format!("hub writes intent {kind} for {name}"));
        self.hub.intents.push(intent);
        self.push_doc(Node::Hub, doc, None);
    }
}
