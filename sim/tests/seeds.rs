//! The simulation's CI run: seeds 0..10,000 in forty parts of 250 (so nextest spreads them
//! over the cores and no part nears the slow-test period), every invariant holding on every
//! one. `cartwise-sim --seeds N --start S` runs more; `cartwise-sim --seed S` replays one.

use cartwise_sim::{Options, run_seed};

/// Seeds per test function.
const PART: u64 = 250;

fn run_part(part: u64) {
    let opts = Options::default();
    let mut failed = Vec::new();
    for seed in part * PART..(part + 1) * PART {
        let outcome = run_seed(seed, &opts);
        if let Some(f) = outcome.failure {
            failed.push(format!(
                "seed {seed}: invariant {}: {} (replay: cartwise-sim --seed {seed})",
                f.invariant, f.detail
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} seeds failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// One test function per part, named after it.
macro_rules! parts {
    ($($name:ident = $part:literal),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_part($part);
            }
        )*
    };
}

parts! {
    seeds_part_0 = 0, seeds_part_1 = 1, seeds_part_2 = 2, seeds_part_3 = 3,
    seeds_part_4 = 4, seeds_part_5 = 5, seeds_part_6 = 6, seeds_part_7 = 7,
    seeds_part_8 = 8, seeds_part_9 = 9, seeds_part_10 = 10, seeds_part_11 = 11,
    seeds_part_12 = 12, seeds_part_13 = 13, seeds_part_14 = 14, seeds_part_15 = 15,
    seeds_part_16 = 16, seeds_part_17 = 17, seeds_part_18 = 18, seeds_part_19 = 19,
    seeds_part_20 = 20, seeds_part_21 = 21, seeds_part_22 = 22, seeds_part_23 = 23,
    seeds_part_24 = 24, seeds_part_25 = 25, seeds_part_26 = 26, seeds_part_27 = 27,
    seeds_part_28 = 28, seeds_part_29 = 29, seeds_part_30 = 30, seeds_part_31 = 31,
    seeds_part_32 = 32, seeds_part_33 = 33, seeds_part_34 = 34, seeds_part_35 = 35,
    seeds_part_36 = 36, seeds_part_37 = 37, seeds_part_38 = 38, seeds_part_39 = 39,
}
