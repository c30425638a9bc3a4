//! Deterministic simulation of CartWise: a branch or two (three Pis each), a technician's
//! laptop and the hub in one thread, on a virtual clock with one seeded generator, under lost,
//! duplicated, reordered and delayed messages, partitions, power cuts between any two writes,
//! and wrong wall clocks; then, once the faults stop and messages flow, the design's
//! invariants 1–6 checked on every replica and on the hub's projection.
//!
//! The same seed on the same commit gives the same run, event for event: nothing reads the
//! wall clock or ambient randomness, nothing depends on thread scheduling or hash-map order.

pub mod check;
pub mod docw;
pub mod hub;
pub mod pi;
pub mod rng;
pub mod world;

use std::collections::BTreeSet;

use world::World;

/// A safeguard a test may switch off to see the checker catch its absence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Break {
    /// The hub's projection does not deduplicate a rental seen again on merge.
    ExactlyOnce,
    /// The lock opens before the rental is persisted.
    DurableBeforeUnlock,
    /// Receivers apply sync messages without the authority check.
    Authority,
}

impl Break {
    /// Every safeguard that can be switched off.
    pub const ALL: [Break; 3] = [
        Break::ExactlyOnce,
        Break::DurableBeforeUnlock,
        Break::Authority,
    ];

    /// The name on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Break::ExactlyOnce => "exactly-once",
            Break::DurableBeforeUnlock => "durable-before-unlock",
            Break::Authority => "authority",
        }
    }

    /// What switching it off does.
    pub const fn describe(self) -> &'static str {
        match self {
            Break::ExactlyOnce => "skip the dedup of a rental on merge at the hub",
            Break::DurableBeforeUnlock => "unlock before the rental is persisted",
            Break::Authority => "apply sync messages without the document authority check",
        }
    }

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Option<Break> {
        Break::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// How to run a seed.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Safeguards switched off.
    pub breaks: BTreeSet<Break>,
    /// Keep the readable event trace.
    pub trace: bool,
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Which (`1-durable`, `2-convergence`, `3-exactly-once`, `4-one-per-post`,
    /// `5-anomalies`, `6-isolation`, `time`).
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
}

/// What one seed did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub seed: u64,
    pub failure: Option<Failure>,
    /// Hash of the whole event trace: equal runs have equal hashes.
    pub trace_hash: u64,
    pub events: u64,
    /// Faults injected: lost and duplicated messages, partitions, crashes, forgeries.
    pub faults: u64,
    /// Rentals the kiosk acknowledged.
    pub rentals: usize,
    /// Forged or out-of-scope changes refused.
    pub refused: u64,
    /// The readable trace (with `Options::trace`).
    pub trace: Vec<String>,
}

/// Runs one seed to quiescence and checks the invariants.
pub fn run_seed(seed: u64, opts: &Options) -> Outcome {
    let mut world = World::new(seed, opts.clone());
    world.run();
    if world.failure.is_none() {
        check::check(&mut world);
    }
    Outcome {
        seed,
        failure: world.failure.clone(),
        trace_hash: world.trace_hash(),
        events: world.events,
        faults: world.injected,
        rentals: world.acknowledged.len(),
        refused: world.refused,
        trace: world.trace.take().unwrap_or_default(),
    }
}
