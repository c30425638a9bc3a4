//! The simulated world: nodes, the event queue on a virtual clock, the seed's scenario and
//! plan, and the trace. The network (links, connections, faults on the wire) is in
//! `world/links.rs`; sync messages (generated, delivered, checked, taken in, forged) in
//! `world/deliver.rs`.

use std::collections::{BTreeMap, BTreeSet};

use automerge::AutoCommit;
use cartwise_schema::{BranchId, ChainId, DeviceId, RentalId};
use cartwise_sync_core::intents::IntentId;
use cartwise_sync_core::{DocId, HubActors, PeerDocState, hub_actor};

use crate::hub::Hub;
use crate::pi::Pi;
use crate::rng::Rng;
use crate::{Failure, Options};

mod deliver;
mod links;

pub use deliver::{Msg, receive_into};
pub use links::{Link, LinkKind};

/// Virtual time of the simulation's start: 2026-01-01T00:00:00Z, Unix ms.
pub const EPOCH_MS: u64 = 1_767_225_600_000;
/// Posts per Pi.
pub const POSTS: u16 = 3;
/// Pis per branch.
pub const PIS_PER_BRANCH: usize = 3;
/// How long the fault phase lasts (virtual ms).
pub const FAULT_PHASE_MS: u64 = 3 * 3600 * 1000;
/// Events processed at most in one run; a run past it failed to quiesce.
pub const EVENTS_MAX: u64 = 200_000;

/// A node of the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    Pi(usize),
    Hub,
    Tech(usize),
}

/// Something that happens at an instant.
#[derive(Debug, Clone)]
pub enum Ev {
    Lend {
        pi: usize,
        shopper: usize,
    },
    Pulse {
        pi: usize,
        boot: u32,
        rental: RentalId,
    },
    Record {
        pi: usize,
        boot: u32,
        rental: RentalId,
        post: u16,
        shopper: usize,
    },
    ReturnStart {
        shopper: usize,
    },
    Dock {
        pi: usize,
        post: u16,
        shopper: usize,
    },
    IntentPulse {
        pi: usize,
        boot: u32,
        intent: IntentId,
        post: u16,
    },
    Relatch {
        pi: usize,
        post: u16,
    },
    Crash {
        pi: usize,
    },
    Restart {
        pi: usize,
    },
    HubIntent {
        branch: usize,
    },
    Deliver {
        link: usize,
        conn: u64,
        to_a: bool,
        msg: Msg,
    },
    Reconnect {
        link: usize,
    },
    LinkDown {
        link: usize,
    },
    LinkUp {
        link: usize,
    },
    Forge {
        link: usize,
        from_a: bool,
    },
    FaultsEnd,
}

/// A branch: its id, Pis and intents document.
#[derive(Debug, Clone)]
pub struct Branch {
    pub id: BranchId,
    pub pis: Vec<usize>,
    pub intents: DocId,
}

/// A shopper: a phone, and the cart they hold (as they believe).
#[derive(Debug, Clone)]
pub struct Shopper {
    pub phone: String,
    pub branch: usize,
    /// The rental the kiosk acknowledged and its true start (virtual ms).
    pub holding: Option<(RentalId, usize, u64)>,
}

/// The technician's laptop: copies of its branch's device documents.
pub struct Tech {
    pub id: uuid::Uuid,
    pub branch: usize,
    pub docs: BTreeMap<DocId, AutoCommit>,
    pub states: BTreeMap<(Node, DocId), PeerDocState>,
}

/// How hard this seed shakes the system.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub branches: usize,
    pub shoppers: usize,
    pub loss: f64,
    pub dup: f64,
    pub jitter_ms: u64,
    pub crashes: usize,
    pub crash_after_write: f64,
    pub wrong_clock: f64,
    pub partitions: usize,
    pub intents: usize,
    pub forgeries: usize,
    pub tech_visits: usize,
}

impl Scenario {
    fn draw(rng: &mut Rng) -> Self {
        let calm = rng.chance(0.15);
        Scenario {
            branches: if rng.chance(0.2) { 2 } else { 1 },
            shoppers: usize::try_from(rng.range(2, 6)).unwrap_or(3),
            loss: if calm {
                0.0
            } else {
                [0.0, 0.01, 0.03, 0.08][rng.index(4)]
            },
            dup: if calm {
                0.0
            } else {
                [0.0, 0.05, 0.2][rng.index(3)]
            },
            jitter_ms: [5, 200, 5_000][rng.index(3)],
            crashes: if calm {
                0
            } else {
                usize::try_from(rng.range(0, 4)).unwrap_or(0)
            },
            crash_after_write: if calm {
                0.0
            } else {
                [0.0, 0.02, 0.08][rng.index(3)]
            },
            wrong_clock: [0.0, 0.3, 0.8][rng.index(3)],
            partitions: usize::try_from(rng.range(0, 4)).unwrap_or(0),
            intents: usize::try_from(rng.range(0, 3)).unwrap_or(0),
            forgeries: usize::try_from(rng.range(0, 3)).unwrap_or(0),
            tech_visits: usize::try_from(rng.range(0, 2)).unwrap_or(0),
        }
    }
}

/// One simulated run.
pub struct World {
    pub seed: u64,
    pub opts: Options,
    pub rng: Rng,
    pub now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    pub events: u64,
    pub faults: bool,
    pub chain: ChainId,
    pub hub_actors: HubActors,
    pub branches: Vec<Branch>,
    pub pis: Vec<Pi>,
    pub hub: Hub,
    pub techs: Vec<Tech>,
    pub links: Vec<Link>,
    pub shoppers: Vec<Shopper>,
    pub scenario: Scenario,
    /// Rentals the kiosk acknowledged ("take cart N"), with their Pi.
    pub acknowledged: BTreeMap<RentalId, usize>,
    /// When each rental's lock truly opened (virtual ms).
    pub true_start: BTreeMap<RentalId, u64>,
    /// Physical docks per Pi.
    pub docks: BTreeMap<usize, u64>,
    /// Forged changes a receiver refused.
    pub refused: u64,
    /// Faults injected (lost, duplicated messages, crashes, partitions).
    pub injected: u64,
    pub failure: Option<Failure>,
    /// Per (receiver, read-only sender, doc): the shared heads and connection of the last
    /// read-only message answered.
    read_only_seen: BTreeMap<(Node, Node, DocId), (Vec<automerge::ChangeHash>, u64)>,
    trace_hash: u64,
    pub trace: Option<Vec<String>>,
}

impl World {
    /// Builds the world of `seed`.
    pub fn new(seed: u64, opts: Options) -> Self {
        let mut rng = Rng::new(seed);
        let scenario = Scenario::draw(&mut rng);
        let chain = ChainId::from_uuid(rng.uuid());
        let mut world = World {
            seed,
            trace: opts.trace.then(Vec::new),
            opts,
            now: EPOCH_MS,
            seq: 0,
            queue: BTreeMap::new(),
            events: 0,
            faults: true,
            chain,
            hub_actors: HubActors::for_chain(chain),
            branches: Vec::new(),
            pis: Vec::new(),
            hub: Hub::default(),
            techs: Vec::new(),
            links: Vec::new(),
            shoppers: Vec::new(),
            acknowledged: BTreeMap::new(),
            true_start: BTreeMap::new(),
            docks: BTreeMap::new(),
            refused: 0,
            injected: 0,
            failure: None,
            read_only_seen: BTreeMap::new(),
            trace_hash: 0xcbf2_9ce4_8422_2325,
            scenario,
            rng,
        };
        world.build();
        world
    }

    fn build(&mut self) {
        for b in 0..self.scenario.branches {
            let id = BranchId::from_uuid(self.rng.uuid());
            let mut pis = Vec::new();
            for p in 0..PIS_PER_BRANCH {
                let device = DeviceId::from_uuid(self.rng.uuid());
                let index = self.pis.len();
                let skew = self.boot_skew();
                self.pis.push(Pi::new(
                    device,
                    b,
                    id,
                    format!("b{b}p{p}"),
                    self.now,
                    skew,
                    self.rng.uuid(),
                ));
                pis.push(index);
            }
            self.branches.push(Branch {
                id,
                pis,
                intents: DocId::branch_intents(id),
            });
        }
        self.techs.push(Tech {
            id: self.rng.uuid(),
            branch: 0,
            docs: BTreeMap::new(),
            states: BTreeMap::new(),
        });
        let jitter = self.scenario.jitter_ms;
        let link = |a, b, kind, up| Link {
            a,
            b,
            kind,
            up,
            connected: up,
            reconnecting: false,
            conn: 0,
            loss: 0.0,
            dup: 0.0,
            base_ms: 20,
            jitter_ms: jitter,
        };
        let mut links = Vec::new();
        for branch in &self.branches {
            for (i, &p) in branch.pis.iter().enumerate() {
                links.push(link(Node::Pi(p), Node::Hub, LinkKind::Uplink, true));
                for &q in &branch.pis[i + 1..] {
                    links.push(link(Node::Pi(p), Node::Pi(q), LinkKind::Lan, true));
                }
            }
        }
        for &p in &self.branches[0].pis {
            links.push(link(Node::Tech(0), Node::Pi(p), LinkKind::TechPi, false));
        }
        links.push(link(Node::Tech(0), Node::Hub, LinkKind::TechHub, false));
        for l in &mut links {
            l.loss = self.scenario.loss;
            l.dup = self.scenario.dup;
        }
        self.links = links;
        for b in 0..self.branches.len() {
            for s in 0..self.scenario.shoppers {
                let n = self.shoppers.len();
                self.shoppers.push(Shopper {
                    phone: format!("+97250{:07}", 1_000 + n),
                    branch: b,
                    holding: None,
                });
                let _ = s;
            }
        }
        for p in 0..self.pis.len() {
            self.pi_boot_docs(p);
        }
        self.schedule_plan();
    }

    /// The wall-clock error a boot starts with: small, or (a reboot offline) far off.
    pub fn boot_skew(&mut self) -> i64 {
        if self.rng.chance(self.scenario.wrong_clock) {
            // A Pi without a real-time clock: back to a build date, or days ahead.
            let days = i64::try_from(self.rng.range(1, 900)).unwrap_or(1);
            if self.rng.chance(0.8) {
                -days * 86_400_000
            } else {
                days * 3_600_000
            }
        } else {
            i64::try_from(self.rng.below(4_000)).unwrap_or(0) - 2_000
        }
    }

    fn schedule_plan(&mut self) {
        let span = FAULT_PHASE_MS;
        for s in 0..self.shoppers.len() {
            let branch = self.shoppers[s].branch;
            let visits = self.rng.range(1, 3);
            for _ in 0..visits {
                let at = self.rng.range(60_000, span - 5_400_000);
                let pis = &self.branches[branch].pis;
                let pi = pis[self.rng.index(pis.len())];
                self.at(at, Ev::Lend { pi, shopper: s });
            }
        }
        for _ in 0..self.scenario.crashes {
            let at = self.rng.range(60_000, span);
            let pi = self.rng.index(self.pis.len());
            self.at(at, Ev::Crash { pi });
        }
        for _ in 0..self.scenario.partitions {
            let at = self.rng.range(0, span);
            let link = self.rng.index(self.links.len());
            if matches!(self.links[link].kind, LinkKind::Uplink | LinkKind::Lan) {
                let length = self.rng.range(60_000, 2 * 3_600_000);
                self.at(at, Ev::LinkDown { link });
                self.at(at + length, Ev::LinkUp { link });
            }
        }
        if self.rng.chance(0.3) {
            // A hub outage: every uplink down for a while.
            let at = self.rng.range(0, span / 2);
            let length = self.rng.range(600_000, 3 * 3_600_000);
            for link in 0..self.links.len() {
                if self.links[link].kind == LinkKind::Uplink {
                    self.at(at, Ev::LinkDown { link });
                    self.at(at + length, Ev::LinkUp { link });
                }
            }
        }
        for _ in 0..self.scenario.intents {
            let at = self.rng.range(0, span);
            let branch = self.rng.index(self.branches.len());
            self.at(at, Ev::HubIntent { branch });
        }
        for _ in 0..self.scenario.forgeries {
            let at = self.rng.range(0, span);
            let link = self.rng.index(self.links.len());
            let from_a = self.rng.chance(0.5);
            self.at(at, Ev::Forge { link, from_a });
        }
        for _ in 0..self.scenario.tech_visits {
            let at = self.rng.range(0, span - 3_600_000);
            let pis = self.branches[0].pis.clone();
            let pi = pis[self.rng.index(pis.len())];
            let to_pi = self.link_between(Node::Tech(0), Node::Pi(pi));
            let to_hub = self.link_between(Node::Tech(0), Node::Hub);
            if let (Some(to_pi), Some(to_hub)) = (to_pi, to_hub) {
                self.at(at, Ev::LinkUp { link: to_pi });
                self.at(at + 900_000, Ev::LinkDown { link: to_pi });
                self.at(at + 1_800_000, Ev::LinkUp { link: to_hub });
                self.at(at + 2_700_000, Ev::LinkDown { link: to_hub });
            }
        }
        self.at(span, Ev::FaultsEnd);
    }

    /// Schedules `ev` at absolute virtual offset `at_ms` from the start.
    fn at(&mut self, at_ms: u64, ev: Ev) {
        self.schedule_abs(EPOCH_MS + at_ms, ev);
    }

    /// Schedules `ev` `delay_ms` from now.
    pub fn after(&mut self, delay_ms: u64, ev: Ev) {
        self.schedule_abs(self.now + delay_ms, ev);
    }

    fn schedule_abs(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    /// Records a line of the event trace (hashed always, kept when tracing).
    pub fn log(&mut self, line: impl FnOnce() -> String) {
        let line = line();
        for byte in line.as_bytes().iter().chain(b"\n") {
            self.trace_hash ^= u64::from(*byte);
            self.trace_hash = self.trace_hash.wrapping_mul(0x0100_0000_01b3);
        }
        if let Some(trace) = &mut self.trace {
            let t = self.now - EPOCH_MS;
            trace.push(format!(
                "{:>3}:{:02}:{:02}.{:03} {line}",
                t / 3_600_000,
                t / 60_000 % 60,
                t / 1000 % 60,
                t % 1000
            ));
        }
    }

    /// Records a message-level line, kept only when tracing (not hashed: too many to format
    /// on every run).
    pub fn detail(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            let t = self.now - EPOCH_MS;
            trace.push(format!(
                "{:>3}:{:02}:{:02}.{:03}   {}",
                t / 3_600_000,
                t / 60_000 % 60,
                t / 1000 % 60,
                t % 1000,
                line()
            ));
        }
    }

    /// The hash of every trace line so far.
    pub fn trace_hash(&self) -> u64 {
        self.trace_hash
    }

    /// Records the first broken invariant.
    pub fn fail(&mut self, invariant: &'static str, detail: String) {
        if self.failure.is_none() {
            self.log(|| format!("INVARIANT {invariant} broken: {detail}"));
            self.failure = Some(Failure { invariant, detail });
        }
    }

    /// Runs the seed to the end: the fault phase, then quiescence.
    pub fn run(&mut self) {
        while let Some(((at, _), ev)) = self.queue.pop_first() {
            self.now = at;
            self.events += 1;
            if self.events > EVENTS_MAX {
                self.fail(
                    "2-convergence",
                    format!("no quiescence after {EVENTS_MAX} events"),
                );
                return;
            }
            self.handle(ev);
            if self.failure.is_some() {
                return;
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Lend { pi, shopper } => self.lend(pi, shopper),
            Ev::Pulse { pi, boot, rental } => self.pulse(pi, boot, rental),
            Ev::Record {
                pi,
                boot,
                rental,
                post,
                shopper,
            } => self.record_after_unlock(pi, boot, rental, post, shopper),
            Ev::ReturnStart { shopper } => self.return_start(shopper),
            Ev::Dock { pi, post, shopper } => self.dock(pi, post, shopper),
            Ev::IntentPulse {
                pi,
                boot,
                intent,
                post,
            } => self.intent_pulse(pi, boot, intent, post),
            Ev::Relatch { pi, post } => self.relatch(pi, post),
            Ev::Crash { pi } => self.crash(pi),
            Ev::Restart { pi } => self.restart(pi),
            Ev::HubIntent { branch } => self.hub_intent(branch),
            Ev::Deliver {
                link,
                conn,
                to_a,
                msg,
            } => self.deliver(link, conn, to_a, msg),
            Ev::Reconnect { link } => {
                self.links[link].reconnecting = false;
                self.reconnect(link);
            }
            Ev::LinkDown { link } => self.link_down(link),
            Ev::LinkUp { link } => self.link_up(link),
            Ev::Forge { link, from_a } => self.forge(link, from_a),
            Ev::FaultsEnd => self.faults_end(),
        }
    }

    /// Faults stop: every Pi restarts, links heal and stop misbehaving, and every
    /// connection restarts so messages flow.
    fn faults_end(&mut self) {
        self.log(|| "faults end".into());
        self.faults = false;
        for p in 0..self.pis.len() {
            if self.pis[p].mem.is_none() {
                self.restart(p);
            }
        }
        for link in 0..self.links.len() {
            let l = &mut self.links[link];
            l.loss = 0.0;
            l.dup = 0.0;
            l.up = !matches!(l.kind, LinkKind::TechPi);
            self.reconnect(link);
        }
    }

    /// The hub's actors for the checker.
    pub fn hub_actor(&self) -> automerge::ActorId {
        hub_actor(self.chain)
    }

    /// Every document copy of every replica: (node, doc, copy).
    pub fn replicas(&mut self) -> Vec<(Node, DocId, &mut AutoCommit)> {
        let mut out = Vec::new();
        for (p, pi) in self.pis.iter_mut().enumerate() {
            if let Some(mem) = pi.mem.as_mut() {
                let own = DocId::device(pi.id);
                out.push((Node::Pi(p), own, &mut mem.doc));
                for (doc, copy) in mem.held.iter_mut() {
                    out.push((Node::Pi(p), *doc, copy));
                }
            }
        }
        for (doc, copy) in self.hub.docs.iter_mut() {
            out.push((Node::Hub, *doc, copy));
        }
        for (t, tech) in self.techs.iter_mut().enumerate() {
            for (doc, copy) in tech.docs.iter_mut() {
                out.push((Node::Tech(t), *doc, copy));
            }
        }
        out
    }

    /// Branch ids in index order.
    pub fn branch_ids(&self) -> BTreeSet<BranchId> {
        self.branches.iter().map(|b| b.id).collect()
    }
}
