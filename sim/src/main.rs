//! `cartwise-sim`: runs seeds of the deterministic simulation and reports broken invariants.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Instant;

use cartwise_sim::{Break, Options, run_seed};
use clap::Parser;

fn breaks_help() -> String {
    let mut text =
        String::from("Switch off one safeguard (test-only) to see the checker catch it:");
    for b in Break::ALL {
        text.push_str(&format!("\n  {}: {}", b.name(), b.describe()));
    }
    text
}

/// Deterministic simulation of branches, a technician and the hub under faults.
#[derive(Debug, Parser)]
#[command(name = "cartwise-sim", after_help = breaks_help())]
struct Cli {
    /// Run this many seeds, from --start.
    #[arg(long, conflicts_with_all = ["seed", "soak"])]
    seeds: Option<u64>,
    /// The first seed of --seeds.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Replay one seed with a readable event trace.
    #[arg(long)]
    seed: Option<u64>,
    /// Run seeds until stopped, printing progress.
    #[arg(long)]
    soak: bool,
    /// A safeguard to switch off (test-only), e.g. exactly-once, durable-before-unlock,
    /// authority; may be repeated.
    #[arg(long = "break", value_name = "NAME")]
    breaks: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut breaks = BTreeSet::new();
    for name in &cli.breaks {
        match Break::parse(name) {
            Some(b) => {
                breaks.insert(b);
            }
            None => {
                let names: Vec<&str> = Break::ALL.iter().map(|b| b.name()).collect();
                eprintln!("unknown --break {name:?}; use one of: {}", names.join(", "));
                return ExitCode::from(2);
            }
        }
    }
    if let Some(seed) = cli.seed {
        let outcome = run_seed(
            seed,
            &Options {
                breaks,
                trace: true,
            },
        );
        for line in &outcome.trace {
            println!("{line}");
        }
        println!(
            "seed {seed}: {} events, {} faults, {} rentals, trace hash {:016x}",
            outcome.events, outcome.faults, outcome.rentals, outcome.trace_hash
        );
        return match outcome.failure {
            None => {
                println!("seed {seed} passed");
                ExitCode::SUCCESS
            }
            Some(f) => {
                println!("seed {seed} FAILED invariant {}: {}", f.invariant, f.detail);
                ExitCode::FAILURE
            }
        };
    }
    let opts = Options {
        breaks,
        trace: false,
    };
    if cli.soak {
        let started = Instant::now();
        let mut seed = cli.start;
        let mut failed = 0_u64;
        loop {
            let outcome = run_seed(seed, &opts);
            if let Some(f) = outcome.failure {
                failed += 1;
                println!("seed {seed} FAILED invariant {}: {}", f.invariant, f.detail);
            }
            seed += 1;
            let done = seed - cli.start;
            if done % 1000 == 0 {
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "{done} seeds, {failed} failed, {:.0} seeds/s",
                    done as f64 / secs.max(1e-9)
                );
            }
        }
    }
    let Some(count) = cli.seeds else {
        eprintln!("say what to run: --seeds N [--start S], --seed S or --soak (see --help)");
        return ExitCode::from(2);
    };
    let started = Instant::now();
    let mut failed = 0_u64;
    let (mut events, mut faults, mut rentals) = (0_u64, 0_u64, 0_usize);
    for seed in cli.start..cli.start + count {
        let outcome = run_seed(seed, &opts);
        events += outcome.events;
        faults += outcome.faults;
        rentals += outcome.rentals;
        if let Some(f) = outcome.failure {
            failed += 1;
            println!("seed {seed} FAILED invariant {}: {}", f.invariant, f.detail);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{count} seeds in {secs:.1} s ({:.0} seeds/s): {events} events, {faults} faults injected, {rentals} rentals",
        count as f64 / secs.max(1e-9)
    );
    if failed == 0 {
        println!("{count} seeds passed");
        ExitCode::SUCCESS
    } else {
        println!("{failed} of {count} seeds failed");
        ExitCode::FAILURE
    }
}
