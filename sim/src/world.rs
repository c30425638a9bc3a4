//! The simulated world: nodes, links, the event queue on a virtual clock, and the network
//! that loses, duplicates, reorders, delays and partitions sync messages between them.

use std::collections::{BTreeMap, BTreeSet};

use automerge::AutoCommit;
use cartwise_schema::{BranchId, ChainId, DeviceId, RentalId};
use cartwise_sync_core::doc_sync::idle_parts;
use cartwise_sync_core::intents::IntentId;
use cartwise_sync_core::message::SyncBody;
use cartwise_sync_core::{DocId, HubActors, PeerDocState, hub_actor};

use crate::hub::Hub;
use crate::pi::Pi;
use crate::rng::Rng;
use crate::{Break, Failure, Options};

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

    /// The link joining `a` and `b`, either way round.
    pub fn link_between(&self, a: Node, b: Node) -> Option<usize> {
        self.links
            .iter()
            .position(|l| (l.a == a && l.b == b) || (l.a == b && l.b == a))
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
            Ev::LinkDown { link } => {
                if self.faults && self.links[link].up {
                    self.injected += 1;
                    self.links[link].up = false;
                    self.links[link].conn += 1;
                    let l = &self.links[link];
                    let (a, b) = (l.a, l.b);
                    self.log(|| format!("link {a:?}-{b:?} down"));
                }
            }
            Ev::LinkUp { link } => {
                if !self.links[link].up {
                    self.links[link].up = true;
                    let l = &self.links[link];
                    let (a, b) = (l.a, l.b);
                    self.log(|| format!("link {a:?}-{b:?} up"));
                    self.reconnect(link);
                }
            }
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

    /// Pushes `doc` from `node` on every link that shares it.
    pub fn push_doc(&mut self, node: Node, doc: DocId, except: Option<usize>) {
        for (link, from_a) in self.links_sharing(node, doc) {
            if Some(link) != except {
                self.pump(link, from_a, doc);
            }
        }
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

    fn copy_mut(&mut self, node: Node, doc: DocId) -> Option<&mut AutoCommit> {
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

    fn state_mut(&mut self, node: Node, peer: Node, doc: DocId) -> Option<&mut PeerDocState> {
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
                let document = self.hub.docs.entry(doc).or_default();
                let state = self
                    .hub
                    .states
                    .entry((to, doc))
                    .or_insert_with(|| PeerDocState::new(doc));
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

    fn deliver(&mut self, link: usize, conn: u64, to_a: bool, msg: Msg) {
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
                let document = self.hub.docs.entry(doc).or_default();
                let state = self
                    .hub
                    .states
                    .entry((from, doc))
                    .or_insert_with(|| PeerDocState::new(doc));
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
    fn forge(&mut self, link: usize, from_a: bool) {
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
            .find(|c| document.get_change_by_hash(&c.hash()).is_none())
        {
            return Err(format!("change {} may only be read here", new.hash()));
        }
        message.changes = automerge::sync::ChunkList::empty();
    }
    message
        .heads
        .retain(|head| document.get_change_by_hash(head).is_some());
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
