//! A simulated Pi's side of sync: learning the hub's time, persisting sync progress, folding
//! the other Pis' documents, acknowledgements that shrink the live document, and running the
//! cloud's intents once.

use cartwise_schema::{BootId, BootOffset, DeviceId, MonoMillis, RentalId, Stamp, WallMillis};
use cartwise_sync_core::DocId;
use cartwise_sync_core::facts::read_device_doc;
use cartwise_sync_core::intents::{IntentId, IntentKind, read_intents_doc};

use super::*;
use crate::docw;
use crate::world::{Ev, Node, POSTS, World};

impl World {
    /// A trusted clock sample from the hub: the boot's offset is learned, and the rentals of
    /// this boot get corrected times.
    pub fn pi_learns_time(&mut self, p: usize) {
        let Some((wall, mono, boot)) = self.pi_now(p) else {
            return;
        };
        let trusted = WallMillis::new(i64::try_from(self.now).unwrap_or(i64::MAX));
        let pi = &mut self.pis[p];
        let Some(mem) = pi.mem.as_mut() else { return };
        if mem.offsets.get(&boot).is_some() {
            return;
        }
        let offset = BootOffset::learn(boot, mono, wall, trusted);
        mem.offsets.learn(offset);
        pi.disk.offsets.push(offset);
        let ids: Vec<RentalId> = pi.disk.rentals.keys().copied().collect();
        for id in ids {
            self.mirror_rental(p, id);
        }
        self.commit_tx(p);
    }

    /// Persists the sync progress with `peer` (as the edge's `sync_peer_states`).
    pub fn pi_persist_state(&mut self, p: usize, peer: Node, doc: DocId) {
        let pi = &mut self.pis[p];
        let Some(mem) = pi.mem.as_ref() else { return };
        if let Some(state) = mem.states.get(&(peer, doc)) {
            pi.disk.sync_states.insert((peer, doc), state.encode());
        }
    }

    /// Another writer's document changed at this Pi: store it, fold it, run intents.
    pub fn pi_doc_changed(&mut self, p: usize, doc: DocId) {
        let pi = &mut self.pis[p];
        let Some(mem) = pi.mem.as_mut() else { return };
        if doc == DocId::device(pi.id) {
            // Only a forged change can get here (the authority check was bypassed).
            let bytes = mem.doc.save_incremental();
            pi.disk.doc_bytes.extend_from_slice(&bytes);
            return;
        }
        let Some(copy) = mem.held.get_mut(&doc) else {
            return;
        };
        let bytes = copy.save_incremental();
        pi.disk
            .held_bytes
            .entry(doc)
            .or_default()
            .extend_from_slice(&bytes);
        match doc {
            DocId::Device { device, .. } => {
                let facts = read_device_doc(copy);
                mem.peer_facts.insert(device, facts);
                self.fold(p, device);
            }
            DocId::BranchIntents { .. } => self.run_intents(p),
        }
    }

    /// `fold::peer_doc_changed`: closes this Pi's rentals from another Pi's `returns` exactly
    /// once, and records what cannot hold while partitioned.
    fn fold(&mut self, p: usize, device: DeviceId) {
        let me = self.pis[p].id;
        let Some(facts) = self.pis[p]
            .mem
            .as_ref()
            .and_then(|m| m.peer_facts.get(&device))
            .cloned()
        else {
            return;
        };
        let mut changed = false;
        for ret in facts.returns.iter().filter(|r| r.origin == me) {
            if !self.pis[p].disk.folded.insert((ret.rental, device)) {
                continue;
            }
            changed = true;
            let Some(row) = self.pis[p].disk.rentals.get(&ret.rental).cloned() else {
                self.anomaly(
                    p,
                    format!("unknown/{}", ret.rental),
                    "return_of_unknown_rental",
                    None,
                    Some(ret.rental),
                );
                continue;
            };
            if row.status.is_open() {
                let end = Stamp {
                    wall: WallMillis::new(ret.end_wall.unwrap_or(ret.end_at)),
                    boot: ret
                        .end_boot
                        .as_deref()
                        .and_then(|b| BootId::parse(b).ok())
                        .unwrap_or(row.start.boot),
                    mono: MonoMillis::new(u64::try_from(ret.end_mono.unwrap_or(0)).unwrap_or(0)),
                    hlc: ret.end_hlc.parse().unwrap_or(row.start.hlc),
                };
                if let Some(r) = self.pis[p].disk.rentals.get_mut(&ret.rental) {
                    r.status = ret.status;
                    r.end = Some(end);
                    r.end_at = Some(ret.end_at);
                    r.decided_trusted = ret.time_trusted;
                    if r.taken.is_none() {
                        r.taken = Some(end.hlc);
                    }
                }
                let name = self.pis[p].name.clone();
                let rental = ret.rental;
                self.log(|| format!("{name} folds the return of {rental}"));
                self.mirror_rental(p, ret.rental);
                self.mirror_post(p, row.post);
            } else {
                self.anomaly(
                    p,
                    format!("conflict/{}/{device}", ret.rental),
                    "conflicting_return",
                    None,
                    Some(ret.rental),
                );
            }
        }
        // One phone, open rentals here and there.
        let mine: Vec<(RentalId, String)> = self.pis[p]
            .disk
            .rentals
            .values()
            .filter(|r| r.status.is_open())
            .map(|r| (r.id, r.phone.clone()))
            .collect();
        for (id, phone) in mine {
            for theirs in facts
                .rentals
                .iter()
                .filter(|r| r.phone == phone && r.status.is_open())
            {
                let (a, b) = if id < theirs.id {
                    (id, theirs.id)
                } else {
                    (theirs.id, id)
                };
                self.anomaly(
                    p,
                    format!("dup/{a}/{b}"),
                    "duplicate_phone_rental",
                    None,
                    Some(id),
                );
                changed = true;
            }
        }
        if changed {
            self.commit_tx(p);
        }
    }

    /// The hub holds these closed rentals and folded returns: they leave the live document.
    pub fn pi_ack(&mut self, p: usize, rentals: &[RentalId], returns: &[RentalId]) {
        if self.pis[p].mem.is_none() {
            return;
        }
        let closed: Vec<RentalId> = rentals
            .iter()
            .copied()
            .filter(|r| {
                self.pis[p]
                    .disk
                    .rentals
                    .get(r)
                    .is_some_and(|row| rank(row.status) == 2)
            })
            .collect();
        let Some(mem) = self.pis[p].mem.as_mut() else {
            return;
        };
        let mut result = Ok(());
        for r in &closed {
            result = result.and(docw::remove_entry(
                &mut mem.doc,
                cartwise_sync_core::facts::keys::RENTALS,
                &r.to_string(),
            ));
        }
        for r in returns {
            result = result.and(docw::remove_entry(
                &mut mem.doc,
                cartwise_sync_core::facts::keys::RETURNS,
                &r.to_string(),
            ));
        }
        if let Err(error) = result {
            self.fail(
                "2-convergence",
                format!("cannot drop acknowledged entries: {}", error.0),
            );
        }
        self.commit_tx(p);
    }

    /// Executes the intents addressed to this Pi, each at most once.
    pub fn run_intents(&mut self, p: usize) {
        let intents_doc = self.branches[self.pis[p].branch].intents;
        let me = self.pis[p].id;
        let Some(doc) = self.pis[p]
            .mem
            .as_ref()
            .and_then(|m| m.held.get(&intents_doc))
        else {
            return;
        };
        let read = read_intents_doc(doc);
        let mine: Vec<_> = read.for_device(me).cloned().collect();
        for intent in mine {
            if self.pis[p].disk.intent_runs.contains_key(&intent.id) {
                continue;
            }
            let Some(stamp) = self.stamp(p) else { return };
            let (now_ms, _) = self.corrected(p, &stamp);
            if intent.expired_at(now_ms) {
                self.finish_intent(p, intent.id, "expired", None);
                continue;
            }
            match intent.kind {
                IntentKind::OutOfService { post } | IntentKind::InService { post }
                    if (1..=POSTS).contains(&post) =>
                {
                    let out = matches!(intent.kind, IntentKind::OutOfService { .. });
                    self.pis[p].disk.posts[usize::from(post - 1)].out_of_service = out;
                    self.mirror_post(p, post);
                    self.finish_intent(p, intent.id, "applied", None);
                }
                IntentKind::SetRentalMinutes { minutes } => {
                    self.pis[p].disk.minutes = minutes;
                    self.finish_intent(p, intent.id, "applied", None);
                }
                IntentKind::UnlockPost { post } if (1..=POSTS).contains(&post) => {
                    let busy = self.pis[p].holder(post).is_some()
                        || self.pis[p].disk.reservations.contains_key(&post)
                        || self.pis[p].disk.posts[usize::from(post - 1)].maintenance;
                    if busy {
                        self.finish_intent(p, intent.id, "failed", None);
                        continue;
                    }
                    self.pis[p].disk.posts[usize::from(post - 1)].maintenance = true;
                    self.pis[p]
                        .disk
                        .intent_runs
                        .insert(intent.id, Run::Executing { post });
                    self.mirror_post(p, post);
                    self.commit_tx(p);
                    let boot = self.pis[p].mem.as_ref().map_or(0, |m| m.boot_no);
                    self.after(
                        100,
                        Ev::IntentPulse {
                            pi: p,
                            boot,
                            intent: intent.id,
                            post,
                        },
                    );
                }
                IntentKind::Note { .. } => self.finish_intent(p, intent.id, "applied", None),
                _ => self.finish_intent(p, intent.id, "failed", None),
            }
        }
    }

    /// The maintenance pulse of an `unlock_post` intent (recorded `executing` before).
    pub fn intent_pulse(&mut self, p: usize, boot: u32, intent: IntentId, post: u16) {
        let alive = self.pis[p].mem.as_ref().is_some_and(|m| m.boot_no == boot);
        if !alive || self.pis[p].disk.intent_runs.get(&intent) != Some(&Run::Executing { post }) {
            return;
        }
        let i = usize::from(post - 1);
        self.pis[p].board.pulses[i] += 1;
        self.pis[p].board.posts[i].latched = false;
        self.pis[p].disk.posts[i].sensed = Some(self.pis[p].board.posts[i]);
        self.finish_intent(p, intent, "applied", Some(post));
        let later = self.rng.range(60_000, 1_800_000);
        self.after(later, Ev::Relatch { pi: p, post });
    }

    pub(crate) fn finish_intent(
        &mut self,
        p: usize,
        intent: IntentId,
        status: &'static str,
        pulsed: Option<u16>,
    ) {
        let Some(stamp) = self.stamp(p) else { return };
        let (wall, _) = self.corrected(p, &stamp);
        let unlock = match self.pis[p].disk.intent_runs.get(&intent) {
            Some(Run::Executing { post }) if status == "applied" => Some(*post),
            _ => pulsed,
        };
        self.pis[p]
            .disk
            .intent_runs
            .insert(intent, Run::Done { status, unlock });
        let name = self.pis[p].name.clone();
        self.log(|| format!("{name} intent {intent}: {status}"));
        let Some(mem) = self.pis[p].mem.as_mut() else {
            return;
        };
        if let Err(error) =
            docw::put_outcome(&mut mem.doc, &intent.to_string(), status, "", &stamp, wall)
        {
            self.fail(
                "2-convergence",
                format!("cannot record outcome: {}", error.0),
            );
        }
        if let Some(post) = unlock {
            self.mirror_post(p, post);
        }
        self.commit_tx(p);
    }

    /// The initial documents of a fresh Pi are on its disk already.
    pub fn pi_boot_docs(&mut self, p: usize) {
        for post in 1..=POSTS {
            self.mirror_post(p, post);
        }
        self.commit_tx(p);
    }
}
