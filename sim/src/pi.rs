//! A simulated Pi: its boards (physical truth, survives crashes), its disk (what a
//! transaction made durable), and its memory (lost on a crash). Lending, returning, sensing,
//! reconciling, the fold of the other Pis' documents and intent execution follow the edge's
//! rules (`edge-node/src/engine/*`); one transaction here is one store job there. Crashes and
//! restarts are in `pi/recovery.rs`, the sync side (time, fold, acknowledgements, intents) in
//! `pi/sync.rs`.

use std::collections::{BTreeMap, BTreeSet};

use automerge::AutoCommit;
use cartwise_schema::{
    BootId, BootOffset, BootOffsets, BranchId, DeviceId, HLC_MAX_DRIFT_MS_DEFAULT, Hlc, HlcClock,
    MonoMillis, RentalId, RentalStatus, Stamp, WallMillis, duration_ms,
};
use cartwise_sync_core::facts::DeviceFacts;
use cartwise_sync_core::intents::IntentId;
use cartwise_sync_core::message::SyncBody;
use cartwise_sync_core::{DocId, DocSyncError, HubActors, PeerDocState, device_actor};

use crate::Break;
use crate::docw::{self, PostView, RentalView};
use crate::world::{EPOCH_MS, Ev, Node, POSTS, World, receive_into};

mod recovery;
mod sync;

/// A lock post as the hardware is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostPhys {
    pub latched: bool,
    pub present: bool,
}

/// The boards of one Pi: the physical truth and every unlock pulse ever sent.
#[derive(Debug, Clone)]
pub struct Board {
    pub posts: Vec<PostPhys>,
    pub pulses: Vec<u64>,
}

/// A rental in the Pi's ledger (never deleted).
#[derive(Debug, Clone)]
pub struct RentalRow {
    pub id: RentalId,
    pub phone: String,
    pub post: u16,
    pub status: RentalStatus,
    pub minutes: u32,
    pub start: Stamp,
    pub taken: Option<Hlc>,
    pub end: Option<Stamp>,
    /// The corrected end time a folded return carried.
    pub end_at: Option<i64>,
    pub return_post: Option<u16>,
    /// Whether returned/late was decided on a trusted duration.
    pub decided_trusted: bool,
}

/// A post's durable state.
#[derive(Debug, Clone, Copy, Default)]
pub struct PostDisk {
    pub out_of_service: bool,
    pub maintenance: bool,
    pub sensed: Option<PostPhys>,
    pub uses: u32,
}

/// An intent run (`intent_runs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    Executing {
        post: u16,
    },
    Done {
        status: &'static str,
        unlock: Option<u16>,
    },
}

/// What a dock did.
#[derive(Debug, Clone)]
pub struct DockLog {
    pub post: u16,
    pub closed: Option<RentalId>,
}

/// Everything a transaction made durable.
#[derive(Debug, Clone)]
pub struct Disk {
    pub rentals: BTreeMap<RentalId, RentalRow>,
    pub posts: Vec<PostDisk>,
    pub reservations: BTreeMap<u16, (RentalId, Option<DeviceId>)>,
    pub doc_bytes: Vec<u8>,
    pub held_bytes: BTreeMap<DocId, Vec<u8>>,
    pub sync_states: BTreeMap<(Node, DocId), Vec<u8>>,
    pub intent_runs: BTreeMap<IntentId, Run>,
    pub folded: BTreeSet<(RentalId, DeviceId)>,
    pub foreign_returned: BTreeSet<RentalId>,
    pub anomaly_keys: BTreeSet<String>,
    pub hlc_last: Hlc,
    pub offsets: Vec<BootOffset>,
    pub minutes: u32,
    pub docks: Vec<DockLog>,
    /// Every HLC this device issued, in issue order (for the checker).
    pub hlcs_issued: u64,
    pub hlc_regressions: u64,
}

/// What a running Pi holds in memory.
pub struct Mem {
    pub doc: AutoCommit,
    pub held: BTreeMap<DocId, AutoCommit>,
    pub peer_facts: BTreeMap<DeviceId, DeviceFacts>,
    pub states: BTreeMap<(Node, DocId), PeerDocState>,
    pub hlc: HlcClock,
    pub boot: BootId,
    pub boot_no: u32,
    pub boot_true_start: u64,
    pub skew: i64,
    pub offsets: BootOffsets,
    own: DocId,
}

impl Mem {
    /// The next sync message of `doc` for `peer`.
    pub fn generate(&mut self, peer: Node, doc: DocId) -> Result<Option<SyncBody>, DocSyncError> {
        let state = self
            .states
            .entry((peer, doc))
            .or_insert_with(|| PeerDocState::new(doc));
        if doc == self.own {
            state.generate(&mut self.doc)
        } else {
            state.generate(self.held.entry(doc).or_default())
        }
    }

    /// Applies a sync message from `peer`.
    pub fn receive(
        &mut self,
        peer: Node,
        body: &SyncBody,
        hub_actors: &HubActors,
        bypass: bool,
    ) -> Result<bool, String> {
        let doc = body.doc;
        let state = self
            .states
            .entry((peer, doc))
            .or_insert_with(|| PeerDocState::new(doc));
        let document = if doc == self.own {
            &mut self.doc
        } else {
            self.held.entry(doc).or_default()
        };
        receive_into(document, state, body, hub_actors, bypass)
    }

    /// A copy of this node's `doc` to write into.
    pub fn copy_of(&mut self, doc: DocId) -> AutoCommit {
        if doc == self.own {
            self.doc.fork()
        } else {
            self.held.entry(doc).or_default().fork()
        }
    }
}

/// One Pi.
pub struct Pi {
    pub id: DeviceId,
    pub branch: usize,
    pub branch_id: BranchId,
    pub name: String,
    pub board: Board,
    pub disk: Disk,
    pub mem: Option<Mem>,
    pub boots: u32,
}

fn rank(status: RentalStatus) -> u8 {
    match status {
        RentalStatus::Unlocking => 0,
        RentalStatus::Active => 1,
        _ => 2,
    }
}

impl Pi {
    /// A new Pi, booted at `now` with clock error `skew`.
    pub fn new(
        id: DeviceId,
        branch: usize,
        branch_id: BranchId,
        name: String,
        now: u64,
        skew: i64,
        boot: uuid::Uuid,
    ) -> Self {
        let node = Hlc::node_from_uuid(id.as_uuid());
        let mut doc = AutoCommit::new().with_actor(device_actor(&id));
        let _ = docw::header(&mut doc, id, branch_id);
        docw::commit(&mut doc, 0);
        let doc_bytes = doc.save_incremental();
        let posts = vec![
            PostDisk {
                sensed: Some(PostPhys {
                    latched: true,
                    present: true,
                }),
                ..PostDisk::default()
            };
            usize::from(POSTS)
        ];
        Pi {
            id,
            branch,
            branch_id,
            name,
            board: Board {
                posts: vec![
                    PostPhys {
                        latched: true,
                        present: true,
                    };
                    usize::from(POSTS)
                ],
                pulses: vec![0; usize::from(POSTS)],
            },
            disk: Disk {
                rentals: BTreeMap::new(),
                posts,
                reservations: BTreeMap::new(),
                doc_bytes,
                held_bytes: BTreeMap::new(),
                sync_states: BTreeMap::new(),
                intent_runs: BTreeMap::new(),
                folded: BTreeSet::new(),
                foreign_returned: BTreeSet::new(),
                anomaly_keys: BTreeSet::new(),
                hlc_last: Hlc::zero(node),
                offsets: Vec::new(),
                minutes: 120,
                docks: Vec::new(),
                hlcs_issued: 0,
                hlc_regressions: 0,
            },
            mem: Some(Mem {
                doc,
                held: BTreeMap::new(),
                peer_facts: BTreeMap::new(),
                states: BTreeMap::new(),
                hlc: HlcClock::new(node, HLC_MAX_DRIFT_MS_DEFAULT),
                boot: BootId::from_uuid(boot),
                boot_no: 1,
                boot_true_start: now,
                skew,
                offsets: BootOffsets::new(),
                own: DocId::device(id),
            }),
            boots: 1,
        }
    }

    /// The post's ledger view: the rental holding its cart, if any.
    pub fn holder(&self, post: u16) -> Option<RentalId> {
        self.disk
            .rentals
            .values()
            .find(|r| {
                r.post == post
                    && (r.status == RentalStatus::Unlocking
                        || (r.status == RentalStatus::Active && r.taken.is_none()))
            })
            .map(|r| r.id)
    }

    fn post_view(&self, post: u16) -> PostView {
        let disk = self.disk.posts[usize::from(post - 1)];
        let sensed = disk.sensed.unwrap_or(PostPhys {
            latched: false,
            present: false,
        });
        let holder = self.holder(post);
        let status = if disk.out_of_service {
            "out_of_service"
        } else if disk.maintenance {
            "maintenance"
        } else if holder.is_some() {
            "unlocking"
        } else if self.disk.reservations.contains_key(&post) {
            "reserved"
        } else if sensed.present && sensed.latched {
            "available"
        } else {
            "empty"
        };
        PostView {
            post,
            status,
            latched: sensed.latched,
            present: sensed.present,
            holder,
        }
    }
}

impl World {
    fn pi_now(&self, p: usize) -> Option<(WallMillis, MonoMillis, BootId)> {
        let mem = self.pis[p].mem.as_ref()?;
        let wall = i64::try_from(self.now)
            .unwrap_or(i64::MAX)
            .saturating_add(mem.skew);
        let mono = self.now - mem.boot_true_start;
        Some((WallMillis::new(wall), MonoMillis::new(mono), mem.boot))
    }

    /// A stamp for a local event (HLC strictly increasing across reboots).
    fn stamp(&mut self, p: usize) -> Option<Stamp> {
        let (wall, mono, boot) = self.pi_now(p)?;
        let pi = &mut self.pis[p];
        let mem = pi.mem.as_mut()?;
        let hlc = mem.hlc.now(wall);
        if hlc <= pi.disk.hlc_last {
            pi.disk.hlc_regressions += 1;
        }
        pi.disk.hlc_last = hlc;
        pi.disk.hlcs_issued += 1;
        Some(Stamp {
            wall,
            boot,
            mono,
            hlc,
        })
    }

    /// The corrected wall time of a stamp, and whether a learned offset backs it.
    fn corrected(&self, p: usize, stamp: &Stamp) -> (i64, bool) {
        match self.pis[p].mem.as_ref() {
            Some(mem) => {
                let c = mem.offsets.corrected_wall(stamp);
                (c.wall().get(), c.is_corrected())
            }
            None => (stamp.wall.get(), false),
        }
    }

    fn mirror_rental(&mut self, p: usize, id: RentalId) {
        let Some(row) = self.pis[p].disk.rentals.get(&id).cloned() else {
            return;
        };
        let (start_at, start_ok) = self.corrected(p, &row.start);
        let (end_at, end_ok) = match (&row.end, row.end_at) {
            (_, Some(at)) => (Some(at), row.decided_trusted),
            (Some(end), None) => {
                let (at, ok) = self.corrected(p, end);
                (Some(at), ok)
            }
            (None, None) => (None, true),
        };
        let view = RentalView {
            id: row.id,
            phone: &row.phone,
            post: row.post,
            status: row.status,
            minutes: row.minutes,
            start: &row.start,
            taken: row.taken.map(|h| h.to_string()),
            end: row.end.as_ref(),
            start_at,
            end_at,
            time_trusted: start_ok && end_ok,
            return_post: row.return_post,
        };
        let Some(mem) = self.pis[p].mem.as_mut() else {
            return;
        };
        if let Err(error) = docw::put_rental(&mut mem.doc, &view) {
            self.fail("1-durable", format!("cannot mirror rental: {}", error.0));
        }
    }

    fn mirror_post(&mut self, p: usize, post: u16) {
        let view = self.pis[p].post_view(post);
        let Some(mem) = self.pis[p].mem.as_mut() else {
            return;
        };
        if let Err(error) = docw::put_post(&mut mem.doc, &view) {
            self.fail("1-durable", format!("cannot mirror post: {}", error.0));
        }
    }

    fn anomaly(
        &mut self,
        p: usize,
        key: String,
        kind: &str,
        post: Option<u16>,
        rental: Option<RentalId>,
    ) {
        if !self.pis[p].disk.anomaly_keys.insert(key) {
            return;
        }
        let Some(stamp) = self.stamp(p) else { return };
        let name = self.pis[p].name.clone();
        self.log(|| format!("{name} anomaly {kind} post {post:?} rental {rental:?}"));
        let Some(mem) = self.pis[p].mem.as_mut() else {
            return;
        };
        if let Err(error) = docw::put_anomaly(&mut mem.doc, kind, post, rental, kind, &stamp) {
            self.fail("5-anomalies", format!("cannot record anomaly: {}", error.0));
        }
    }

    /// Ends a transaction: the document's new changes go to disk with the rows, then to the
    /// peers. Power may fail right after (between this write and the next).
    fn commit_tx(&mut self, p: usize) {
        let t = i64::try_from(self.now / 1000).unwrap_or(0);
        let pi = &mut self.pis[p];
        let Some(mem) = pi.mem.as_mut() else { return };
        docw::commit(&mut mem.doc, t);
        let bytes = mem.doc.save_incremental();
        if bytes.is_empty() {
            self.check_posts(p);
            return;
        }
        pi.disk.doc_bytes.extend_from_slice(&bytes);
        let own = DocId::device(pi.id);
        self.check_posts(p);
        self.push_doc(Node::Pi(p), own, None);
        if self.faults && self.rng.chance(self.scenario.crash_after_write) {
            self.after(0, Ev::Crash { pi: p });
        }
    }

    /// Power may also fail right after a physical step (between the pulse and the next
    /// write); true when it did.
    fn crash_now(&mut self, p: usize) -> bool {
        if self.faults && self.rng.chance(self.scenario.crash_after_write) {
            self.crash(p);
            return true;
        }
        false
    }

    /// Invariant 4 on the ledger after every transaction.
    fn check_posts(&mut self, p: usize) {
        for post in 1..=POSTS {
            let holding = self.pis[p]
                .disk
                .rentals
                .values()
                .filter(|r| {
                    r.post == post
                        && (r.status == RentalStatus::Unlocking
                            || (r.status == RentalStatus::Active && r.taken.is_none()))
                })
                .count();
            if holding > 1 {
                let name = self.pis[p].name.clone();
                self.fail(
                    "4-one-per-post",
                    format!("{name} post {post}: {holding} rentals hold its cart"),
                );
            }
        }
    }

    /// The open rental of `phone` at this Pi or (as far as it knows) another Pi of the branch.
    fn open_rental_of(&self, p: usize, phone: &str) -> bool {
        let pi = &self.pis[p];
        let local = pi
            .disk
            .rentals
            .values()
            .any(|r| r.phone == phone && r.status.is_open());
        let remote = pi.mem.as_ref().is_some_and(|mem| {
            mem.peer_facts
                .values()
                .flat_map(|f| f.rentals.iter())
                .any(|r| r.phone == phone && r.status.is_open())
        });
        local || remote
    }

    /// A shopper asks for a cart at Pi `p`.
    pub fn lend(&mut self, p: usize, shopper: usize) {
        if self.pis[p].mem.is_none()
            || self.shoppers[shopper].holding.is_some() && !self.rng.chance(0.5)
        {
            return;
        }
        let phone = self.shoppers[shopper].phone.clone();
        let name = self.pis[p].name.clone();
        if self.open_rental_of(p, &phone) {
            self.log(|| format!("{name} refuses {phone}: an open rental"));
            return;
        }
        let pi = &self.pis[p];
        let post = (1..=POSTS)
            .filter(|&post| {
                let d = pi.disk.posts[usize::from(post - 1)];
                let sensed = d.sensed.unwrap_or(PostPhys {
                    latched: false,
                    present: false,
                });
                !d.out_of_service
                    && !d.maintenance
                    && sensed.present
                    && sensed.latched
                    && pi.holder(post).is_none()
                    && !pi.disk.reservations.contains_key(&post)
            })
            .min_by_key(|&post| (pi.disk.posts[usize::from(post - 1)].uses, post));
        let Some(post) = post else {
            self.log(|| format!("{name} has no cart for {phone}"));
            return;
        };
        let ms = self.now - EPOCH_MS;
        let rental = RentalId::from_parts(self.now, self.rng.bytes10());
        let boot = self.pis[p].mem.as_ref().map_or(0, |m| m.boot_no);
        self.log(|| format!("{name} lends post {post} to {phone} ({rental}) at {ms}"));
        if self.opts.breaks.contains(&Break::DurableBeforeUnlock) {
            // The safeguard off: the lock opens before the rental is on disk.
            self.physical_unlock(p, post, Some(shopper), rental);
            if self.crash_now(p) {
                return;
            }
            self.after(
                150,
                Ev::Record {
                    pi: p,
                    boot,
                    rental,
                    post,
                    shopper,
                },
            );
            return;
        }
        self.record_rental(p, rental, post, &phone, RentalStatus::Unlocking);
        self.after(
            150,
            Ev::Pulse {
                pi: p,
                boot,
                rental,
            },
        );
    }

    fn record_rental(
        &mut self,
        p: usize,
        rental: RentalId,
        post: u16,
        phone: &str,
        status: RentalStatus,
    ) {
        let Some(start) = self.stamp(p) else { return };
        let pi = &mut self.pis[p];
        pi.disk.posts[usize::from(post - 1)].uses += 1;
        let minutes = pi.disk.minutes;
        pi.disk.rentals.insert(
            rental,
            RentalRow {
                id: rental,
                phone: phone.to_owned(),
                post,
                status,
                minutes,
                start,
                taken: None,
                end: None,
                end_at: None,
                return_post: None,
                decided_trusted: false,
            },
        );
        self.mirror_rental(p, rental);
        self.mirror_post(p, post);
        self.commit_tx(p);
    }

    /// The lock opens and the shopper, standing there, takes the cart.
    fn physical_unlock(&mut self, p: usize, post: u16, shopper: Option<usize>, rental: RentalId) {
        let i = usize::from(post - 1);
        self.pis[p].board.pulses[i] += 1;
        self.pis[p].board.posts[i].latched = false;
        self.true_start.insert(rental, self.now);
        if let Some(s) = shopper {
            self.pis[p].board.posts[i].present = false;
            self.shoppers[s].holding = Some((rental, p, self.now));
            let back = self.rng.range(5 * 60_000, 150 * 60_000);
            self.after(back, Ev::ReturnStart { shopper: s });
        }
    }

    /// The pulse after the rental is durable; the kiosk then says "take cart N".
    pub fn pulse(&mut self, p: usize, boot: u32, rental: RentalId) {
        let alive = self.pis[p].mem.as_ref().is_some_and(|m| m.boot_no == boot);
        let Some(row) = self.pis[p].disk.rentals.get(&rental).cloned() else {
            return;
        };
        if !alive || row.status != RentalStatus::Unlocking {
            return;
        }
        let shopper = self.shoppers.iter().position(|s| s.phone == row.phone);
        self.physical_unlock(p, row.post, shopper, rental);
        if self.crash_now(p) {
            return;
        }
        self.confirm_taken(p, rental);
        self.acknowledged.insert(rental, p);
    }

    fn confirm_taken(&mut self, p: usize, rental: RentalId) {
        let Some(stamp) = self.stamp(p) else { return };
        let pi = &mut self.pis[p];
        let Some(row) = pi.disk.rentals.get_mut(&rental) else {
            return;
        };
        row.status = RentalStatus::Active;
        row.taken = Some(stamp.hlc);
        let post = row.post;
        pi.disk.posts[usize::from(post - 1)].sensed = Some(pi.board.posts[usize::from(post - 1)]);
        self.mirror_rental(p, rental);
        self.mirror_post(p, post);
        self.commit_tx(p);
    }

    /// `--break durable-before-unlock`: the rental is written only after the lock opened.
    pub fn record_after_unlock(
        &mut self,
        p: usize,
        boot: u32,
        rental: RentalId,
        post: u16,
        shopper: usize,
    ) {
        let alive = self.pis[p].mem.as_ref().is_some_and(|m| m.boot_no == boot);
        if !alive {
            return;
        }
        let phone = self.shoppers[shopper].phone.clone();
        self.record_rental(p, rental, post, &phone, RentalStatus::Unlocking);
        self.confirm_taken(p, rental);
        self.acknowledged.insert(rental, p);
    }

    /// A shopper brings the cart back: at the kiosk of some Pi of the branch (a return at
    /// another Pi included) or straight into a free post.
    pub fn return_start(&mut self, shopper: usize) {
        let branch = self.shoppers[shopper].branch;
        let pis = self.branches[branch].pis.clone();
        let q = pis[self.rng.index(pis.len())];
        let phone = self.shoppers[shopper].phone.clone();
        let free: Vec<u16> = (1..=POSTS)
            .filter(|&post| !self.pis[q].board.posts[usize::from(post - 1)].present)
            .collect();
        let kiosk = self.rng.chance(0.7) && self.pis[q].mem.is_some();
        if kiosk && let Some(post) = self.initiate_return(q, &phone) {
            self.after(
                30_000,
                Ev::Dock {
                    pi: q,
                    post,
                    shopper,
                },
            );
            return;
        }
        if free.is_empty() {
            // Every post holds a cart: try again later.
            self.after(600_000, Ev::ReturnStart { shopper });
            return;
        }
        let post = free[self.rng.index(free.len())];
        self.after(
            20_000,
            Ev::Dock {
                pi: q,
                post,
                shopper,
            },
        );
    }

    /// `initiate-return`: reserves a free post for the phone's rental, here or at another Pi.
    fn initiate_return(&mut self, q: usize, phone: &str) -> Option<u16> {
        let pi = &self.pis[q];
        let own = pi
            .disk
            .rentals
            .values()
            .find(|r| r.phone == phone && r.status == RentalStatus::Active)
            .map(|r| (r.id, None));
        let foreign = || {
            let mem = pi.mem.as_ref()?;
            mem.peer_facts.iter().find_map(|(device, facts)| {
                facts
                    .rentals
                    .iter()
                    .find(|r| r.phone == phone && r.status == RentalStatus::Active)
                    .filter(|r| !pi.disk.foreign_returned.contains(&r.id))
                    .map(|r| (r.id, Some(*device)))
            })
        };
        let (rental, origin) = own.or_else(foreign)?;
        if pi.disk.reservations.values().any(|(r, _)| *r == rental) {
            return None;
        }
        let post = (1..=POSTS).find(|&post| {
            let d = pi.disk.posts[usize::from(post - 1)];
            !d.out_of_service
                && !d.maintenance
                && !pi.board.posts[usize::from(post - 1)].present
                && d.sensed.is_some_and(|s| !s.present)
                && !pi.disk.reservations.contains_key(&post)
        })?;
        self.pis[q].disk.reservations.insert(post, (rental, origin));
        self.mirror_post(q, post);
        self.commit_tx(q);
        Some(post)
    }

    /// The shopper docks the cart: the hook closes on a present cart.
    pub fn dock(&mut self, q: usize, post: u16, shopper: usize) {
        let i = usize::from(post - 1);
        if self.pis[q].board.posts[i].present {
            // Someone docked here first: pick another free post.
            self.after(60_000, Ev::ReturnStart { shopper });
            return;
        }
        self.pis[q].board.posts[i] = PostPhys {
            latched: true,
            present: true,
        };
        *self.docks.entry(q).or_default() += 1;
        self.shoppers[shopper].holding = None;
        let name = self.pis[q].name.clone();
        self.log(|| format!("cart docked at {name} post {post}"));
        if self.pis[q].mem.is_some() {
            self.sense_dock(q, post);
        }
    }

    /// The edge's dock rules (`engine/sense.rs`).
    fn sense_dock(&mut self, q: usize, post: u16) {
        let i = usize::from(post - 1);
        let phys = self.pis[q].board.posts[i];
        self.pis[q].disk.posts[i].sensed = Some(phys);
        let pi = &self.pis[q];
        let reserved = pi.disk.reservations.get(&post).copied();
        let only_reserved = (pi.disk.reservations.len() == 1)
            .then(|| pi.disk.reservations.iter().next().map(|(k, v)| (*k, *v)))
            .flatten();
        let own_out: Vec<RentalId> = pi
            .disk
            .rentals
            .values()
            .filter(|r| r.status == RentalStatus::Active && r.taken.is_some())
            .map(|r| r.id)
            .collect();
        let peer_out: Vec<(RentalId, DeviceId)> = pi
            .mem
            .as_ref()
            .map(|mem| {
                mem.peer_facts
                    .iter()
                    .flat_map(|(d, f)| {
                        f.rentals
                            .iter()
                            .filter(|r| r.status == RentalStatus::Active && r.taken)
                            .map(move |r| (r.id, *d))
                    })
                    .filter(|(r, _)| !pi.disk.foreign_returned.contains(r))
                    .filter(|(r, _)| {
                        !mem.peer_facts
                            .values()
                            .any(|f| f.returns.iter().any(|ret| ret.rental == *r))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let target = if let Some((rental, origin)) = reserved {
            self.pis[q].disk.reservations.remove(&post);
            Some((rental, origin))
        } else if let Some((at, (rental, origin))) = only_reserved {
            self.pis[q].disk.reservations.remove(&at);
            self.mirror_post(q, at);
            Some((rental, origin))
        } else if own_out.len() == 1 {
            Some((own_out[0], None))
        } else if own_out.is_empty() && peer_out.len() == 1 {
            Some((peer_out[0].0, Some(peer_out[0].1)))
        } else {
            None
        };
        let closed = match target {
            Some((rental, None)) => self.close_own(q, rental, post),
            Some((rental, Some(origin))) => self.close_foreign(q, rental, origin, post),
            None => false,
        };
        let closed_id = if closed { target.map(|t| t.0) } else { None };
        self.pis[q].disk.docks.push(DockLog {
            post,
            closed: closed_id,
        });
        if !closed {
            let n = self.pis[q].disk.docks.len();
            self.anomaly(q, format!("dock/{n}"), "unmatched_dock", Some(post), None);
        }
        self.mirror_post(q, post);
        self.commit_tx(q);
    }

    fn close_own(&mut self, q: usize, rental: RentalId, post: u16) -> bool {
        let Some(end) = self.stamp(q) else {
            return false;
        };
        let Some(row) = self.pis[q].disk.rentals.get(&rental).cloned() else {
            return false;
        };
        if row.status != RentalStatus::Active {
            return false;
        }
        let offsets = self.pis[q]
            .mem
            .as_ref()
            .map(|m| m.offsets.clone())
            .unwrap_or_default();
        let elapsed = duration_ms(&row.start, &end, &offsets);
        let late = elapsed.ms > i64::from(row.minutes) * 60_000;
        let Some(row) = self.pis[q].disk.rentals.get_mut(&rental) else {
            return false;
        };
        row.status = if late {
            RentalStatus::ReturnedLate
        } else {
            RentalStatus::Returned
        };
        row.end = Some(end);
        row.return_post = Some(post);
        row.decided_trusted = elapsed.is_trusted();
        if elapsed.is_trusted() {
            self.check_time(rental, elapsed.ms);
        }
        self.mirror_rental(q, rental);
        true
    }

    fn close_foreign(&mut self, q: usize, rental: RentalId, origin: DeviceId, post: u16) -> bool {
        let Some(end) = self.stamp(q) else {
            return false;
        };
        let fact = self.pis[q]
            .mem
            .as_ref()
            .and_then(|m| m.peer_facts.get(&origin))
            .and_then(|f| f.rentals.iter().find(|r| r.id == rental).cloned());
        let Some(fact) = fact else { return false };
        if fact.status != RentalStatus::Active
            || self.pis[q].disk.foreign_returned.contains(&rental)
        {
            return false;
        }
        let (end_at, end_ok) = self.corrected(q, &end);
        let trusted = end_ok && fact.time_trusted;
        let late = end_at.saturating_sub(fact.start_at) > i64::from(fact.minutes) * 60_000;
        let status = if late {
            RentalStatus::ReturnedLate
        } else {
            RentalStatus::Returned
        };
        self.pis[q].disk.foreign_returned.insert(rental);
        if trusted {
            self.check_time(rental, end_at.saturating_sub(fact.start_at));
        }
        let Some(mem) = self.pis[q].mem.as_mut() else {
            return false;
        };
        if let Err(error) = docw::put_return(
            &mut mem.doc,
            rental,
            origin,
            post,
            status,
            &end,
            end_at,
            trusted,
        ) {
            self.fail(
                "3-exactly-once",
                format!("cannot record return: {}", error.0),
            );
        }
        true
    }

    /// A duration measured on trusted clocks must be the true one (within the time between
    /// recording and unlocking), whatever the wall clocks said.
    fn check_time(&mut self, rental: RentalId, measured_ms: i64) {
        let Some(start) = self.true_start.get(&rental).copied() else {
            return;
        };
        let truth = i64::try_from(self.now - start).unwrap_or(i64::MAX);
        if (measured_ms - truth).abs() > 2_000 {
            self.fail(
                "time",
                format!("rental {rental}: trusted duration {measured_ms} ms, truly {truth} ms"),
            );
        }
    }
}
