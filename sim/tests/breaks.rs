//! The checker has teeth: with one safeguard switched off, some seed breaks an invariant,
//! and replaying that seed gives the same failure and the same trace twice; with the
//! safeguard on, the same seed passes.

use std::collections::BTreeSet;

use cartwise_sim::{Break, Options, run_seed};

/// Seeds searched for a failure with a safeguard off.
const SEARCH: u64 = 400;

fn caught(broken: Break, invariant: &str) {
    let opts = Options {
        breaks: BTreeSet::from([broken]),
        trace: false,
    };
    let found = (0..SEARCH).find_map(|seed| {
        let outcome = run_seed(seed, &opts);
        outcome.failure.map(|f| (seed, f, outcome.trace_hash))
    });
    let Some((seed, failure, hash)) = found else {
        panic!("--break {} was not caught in {SEARCH} seeds", broken.name());
    };
    assert_eq!(
        failure.invariant,
        invariant,
        "--break {} caught as {failure:?} (seed {seed})",
        broken.name()
    );
    for _ in 0..2 {
        let again = run_seed(seed, &opts);
        assert_eq!(
            again.failure.as_ref(),
            Some(&failure),
            "seed {seed} replays the failure"
        );
        assert_eq!(again.trace_hash, hash, "seed {seed} replays the same trace");
    }
    let traced = run_seed(
        seed,
        &Options {
            trace: true,
            ..opts.clone()
        },
    );
    assert_eq!(traced.trace_hash, hash, "tracing does not change the run");
    assert!(
        traced.trace.iter().any(|line| line.contains("INVARIANT")),
        "the trace names the broken invariant"
    );
    let fixed = run_seed(seed, &Options::default());
    assert_eq!(
        fixed.failure, None,
        "seed {seed} passes with the safeguard on"
    );
}

#[test]
fn break_exactly_once_is_caught() {
    caught(Break::ExactlyOnce, "3-exactly-once");
}

#[test]
fn break_durable_before_unlock_is_caught() {
    caught(Break::DurableBeforeUnlock, "1-durable");
}

#[test]
fn break_authority_is_caught() {
    caught(Break::Authority, "6-isolation");
}

#[test]
fn same_seed_same_trace() {
    for seed in [1_u64, 17, 4_242] {
        let a = run_seed(seed, &Options::default());
        let b = run_seed(seed, &Options::default());
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed}");
        assert_eq!(a.events, b.events, "seed {seed}");
        assert_eq!(a.failure, b.failure, "seed {seed}");
    }
    let a = run_seed(1, &Options::default());
    let c = run_seed(2, &Options::default());
    assert_ne!(
        a.trace_hash, c.trace_hash,
        "different seeds, different runs"
    );
}

#[test]
fn runs_do_real_work() {
    // The seeds are not vacuous: rentals happen, faults are injected, forgeries refused.
    let (mut rentals, mut faults, mut refused) = (0, 0, 0);
    for seed in 0..20 {
        let outcome = run_seed(seed, &Options::default());
        rentals += outcome.rentals;
        faults += outcome.faults;
        refused += outcome.refused;
    }
    assert!(rentals > 20, "{rentals} rentals");
    assert!(faults > 20, "{faults} faults");
    assert!(refused > 0, "{refused} forged changes refused");
}
