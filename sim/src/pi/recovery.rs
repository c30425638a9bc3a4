//! A simulated Pi's crashes and restarts: power loss, the boot that follows (with a wrong
//! clock if the seed says so), reading the boards again and reconciling the store with them.

use std::collections::BTreeMap;

use automerge::AutoCommit;
use cartwise_schema::{
    BootId, BootOffsets, HLC_MAX_DRIFT_MS_DEFAULT, Hlc, HlcClock, RentalId, RentalStatus,
};
use cartwise_sync_core::facts::read_device_doc;
use cartwise_sync_core::intents::IntentId;
use cartwise_sync_core::{DocId, PeerDocState, device_actor};

use super::*;
use crate::world::{Ev, Node, POSTS, World};

impl World {
    /// A staff member closes a post's lock again after a maintenance unlock.
    pub fn relatch(&mut self, p: usize, post: u16) {
        let i = usize::from(post - 1);
        self.pis[p].board.posts[i].latched = true;
        if self.pis[p].mem.is_some() {
            self.pis[p].disk.posts[i].sensed = Some(self.pis[p].board.posts[i]);
            self.pis[p].disk.posts[i].maintenance = false;
            self.mirror_post(p, post);
            self.commit_tx(p);
        }
    }

    /// Power fails: memory is gone, the disk and the boards stay.
    pub fn crash(&mut self, p: usize) {
        if !self.faults || self.pis[p].mem.is_none() {
            return;
        }
        self.injected += 1;
        self.pis[p].mem = None;
        let name = self.pis[p].name.clone();
        self.log(|| format!("{name} loses power"));
        for link in 0..self.links.len() {
            if self.links[link].a == Node::Pi(p) || self.links[link].b == Node::Pi(p) {
                self.links[link].conn += 1;
            }
        }
        let down = self.rng.range(5_000, 3_600_000);
        self.after(down, Ev::Restart { pi: p });
    }

    /// The Pi boots from its disk: loads its documents and sync states, reconciles what an
    /// interruption left half done with the boards, and senses what changed while it was off.
    pub fn restart(&mut self, p: usize) {
        if self.pis[p].mem.is_some() {
            return;
        }
        let skew = self.boot_skew();
        let boot = BootId::from_uuid(self.rng.uuid());
        let pi = &mut self.pis[p];
        pi.boots += 1;
        let mut doc = AutoCommit::new().with_actor(device_actor(&pi.id));
        if let Err(error) = doc.load_incremental(&pi.disk.doc_bytes) {
            let name = pi.name.clone();
            self.fail(
                "1-durable",
                format!("{name} cannot load its document: {error}"),
            );
            return;
        }
        let mut held = BTreeMap::new();
        for (id, bytes) in &pi.disk.held_bytes {
            let mut copy = AutoCommit::new();
            if copy.load_incremental(bytes).is_ok() {
                held.insert(*id, copy);
            }
        }
        let states = pi
            .disk
            .sync_states
            .iter()
            .filter_map(|((peer, doc), bytes)| {
                Some(((*peer, *doc), PeerDocState::decode(*doc, bytes).ok()?))
            })
            .collect();
        let mut offsets = BootOffsets::new();
        for offset in &pi.disk.offsets {
            offsets.learn(*offset);
        }
        let node = Hlc::node_from_uuid(pi.id.as_uuid());
        pi.mem = Some(Mem {
            doc,
            held,
            peer_facts: BTreeMap::new(),
            states,
            hlc: HlcClock::resume(node, pi.disk.hlc_last, HLC_MAX_DRIFT_MS_DEFAULT),
            boot,
            boot_no: pi.boots,
            boot_true_start: self.now,
            skew,
            offsets,
            own: DocId::device(pi.id),
        });
        let name = pi.name.clone();
        self.log(|| format!("{name} boots (clock off by {skew} ms)"));
        self.refresh_peer_facts(p);
        self.reconcile(p);
        self.sense_all(p);
        self.run_intents(p);
        for link in 0..self.links.len() {
            if self.links[link].a == Node::Pi(p) || self.links[link].b == Node::Pi(p) {
                self.reconnect(link);
            }
        }
    }

    fn refresh_peer_facts(&mut self, p: usize) {
        let Some(mem) = self.pis[p].mem.as_mut() else {
            return;
        };
        let mut facts = BTreeMap::new();
        for (doc, copy) in &mem.held {
            if let DocId::Device { device, .. } = doc {
                facts.insert(*device, read_device_doc(copy));
            }
        }
        mem.peer_facts = facts;
    }

    /// `reconcile`: an `unlocking` rental is settled from the board (hook open or cart gone:
    /// active; latched on a present cart: cancelled); an `executing` unlock intent likewise,
    /// never pulsed again.
    fn reconcile(&mut self, p: usize) {
        let unlocking: Vec<RentalId> = self.pis[p]
            .disk
            .rentals
            .values()
            .filter(|r| r.status == RentalStatus::Unlocking)
            .map(|r| r.id)
            .collect();
        for rental in unlocking {
            let Some(row) = self.pis[p].disk.rentals.get(&rental).cloned() else {
                continue;
            };
            let phys = self.pis[p].board.posts[usize::from(row.post - 1)];
            if !phys.latched || !phys.present {
                let name = self.pis[p].name.clone();
                self.log(|| format!("{name} reconciles {rental}: active"));
                self.confirm_taken(p, rental);
                if phys.present {
                    // The hook opened but the cart is still here.
                    if let Some(r) = self.pis[p].disk.rentals.get_mut(&rental) {
                        r.taken = None;
                    }
                }
            } else {
                let Some(end) = self.stamp(p) else { return };
                if let Some(r) = self.pis[p].disk.rentals.get_mut(&rental) {
                    r.status = RentalStatus::Cancelled;
                    r.end = Some(end);
                }
                let name = self.pis[p].name.clone();
                self.log(|| format!("{name} reconciles {rental}: cancelled"));
                self.mirror_rental(p, rental);
                self.mirror_post(p, row.post);
                self.commit_tx(p);
            }
        }
        let executing: Vec<(IntentId, u16)> = self.pis[p]
            .disk
            .intent_runs
            .iter()
            .filter_map(|(id, run)| match run {
                Run::Executing { post } => Some((*id, *post)),
                Run::Done { .. } => None,
            })
            .collect();
        for (intent, post) in executing {
            let phys = self.pis[p].board.posts[usize::from(post - 1)];
            let applied = !phys.latched || !phys.present;
            self.finish_intent(p, intent, if applied { "applied" } else { "failed" }, None);
        }
    }

    /// Senses every post after a boot: carts that left or docked while the Pi was off.
    fn sense_all(&mut self, p: usize) {
        for post in 1..=POSTS {
            let i = usize::from(post - 1);
            let phys = self.pis[p].board.posts[i];
            let Some(before) = self.pis[p].disk.posts[i].sensed else {
                continue;
            };
            if before == phys {
                continue;
            }
            if !before.present && phys.present {
                self.sense_dock(p, post);
                continue;
            }
            let holder = self.pis[p].holder(post);
            let maintenance = self.pis[p].disk.posts[i].maintenance;
            self.pis[p].disk.posts[i].sensed = Some(phys);
            if before.present && !phys.present {
                match holder {
                    Some(rental) => {
                        if let Some(stamp) = self.stamp(p)
                            && let Some(r) = self.pis[p].disk.rentals.get_mut(&rental)
                        {
                            r.taken = Some(stamp.hlc);
                        }
                        self.mirror_rental(p, rental);
                    }
                    None => {
                        let n = self.pis[p].boots;
                        self.anomaly(
                            p,
                            format!("unlock/{n}/{post}"),
                            "unrecorded_unlock",
                            Some(post),
                            None,
                        );
                    }
                }
            } else if !phys.latched && holder.is_none() && !maintenance {
                let n = self.pis[p].boots;
                self.anomaly(
                    p,
                    format!("unlock/{n}/{post}"),
                    "unrecorded_unlock",
                    Some(post),
                    None,
                );
            }
            if phys.latched && maintenance {
                self.pis[p].disk.posts[i].maintenance = false;
            }
            self.mirror_post(p, post);
            self.commit_tx(p);
        }
    }
}
