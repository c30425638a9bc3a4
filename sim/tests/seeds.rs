//! The simulation's CI run: seeds 0..600 in twelve parts (so nextest spreads them over the
//! cores), every invariant holding on every one. `cartwise-sim --seeds N --start S` runs more.

use cartwise_sim::{Options, run_seed};

/// Seeds per test function.
const PART: u64 = 50;

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

#[test]
fn seeds_part_0() {
    run_part(0);
}

#[test]
fn seeds_part_1() {
    run_part(1);
}

#[test]
fn seeds_part_2() {
    run_part(2);
}

#[test]
fn seeds_part_3() {
    run_part(3);
}

#[test]
fn seeds_part_4() {
    run_part(4);
}

#[test]
fn seeds_part_5() {
    run_part(5);
}

#[test]
fn seeds_part_6() {
    run_part(6);
}

#[test]
fn seeds_part_7() {
    run_part(7);
}

#[test]
fn seeds_part_8() {
    run_part(8);
}

#[test]
fn seeds_part_9() {
    run_part(9);
}

#[test]
fn seeds_part_10() {
    run_part(10);
}

#[test]
fn seeds_part_11() {
    run_part(11);
}
