//! Invariant 1 under SIGKILL with real processes, end to end to Postgres: an edge enrolled
//! with an in-process hub lends and returns through its kiosk API while it is SIGKILLed at
//! random instants of the stream; after each restart its SQLite store is checked against what
//! the shoppers were told (every 200) and what the boards show, and at the end Postgres is
//! checked against both once the edge has synced.
//!
//! The suite runs `KILLS_PER_TEST` kills in each of four tests (100 in all), each on its own
//! database, sim-board and data directory; the shopper stream and the store checks are edge-node's
//! `crash_recovery` test's. `CARTWISE_FAULT_KILLS` changes the kills per test and
//! `CARTWISE_FAULT_SEED` replays a seed (each test prints its own). The `cartwise-edge` binary
//! must be built (`cargo build --locked --bin cartwise-edge`; a whole-workspace test build does
//! it). `CARTWISE_KEEP_TEST_DATA=1` keeps the data and logs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

#[path = "../../edge-node/tests/support_proc/shoppers.rs"]
mod shoppers;
#[path = "../../edge-node/tests/support_proc/mod.rs"]
mod support_proc;

/// The edge binary under test, built beside this test.
fn edge_bin() -> std::path::PathBuf {
    cartwise_tests::workspace_bin("cartwise-edge")
}

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use shoppers::*;
use sqlx::PgPool;
use support_proc::{EdgeFiles, EdgeProc, RentalRec, Scratch, SimProc, WAIT_MAX, sign_in};

/// Boards on the simulated bus, as `--boards` takes them.
const BOARDS: &str = "0";
/// The edge's poll interval (`bus.poll_interval_ms` of the test's config): it is given two
/// before any check.
const POLL: Duration = Duration::from_millis(200);

/// Kills per test function; four functions make the suite's 100.
const KILLS_PER_TEST: u64 = 25;

/// The edge's config: its enrolled identity and a fast poll (so each kill cycle is short).
fn write_config(path: &std::path::Path, device: &str, branch: &str) {
    let text = format!(
        "[device]\nid = \"{device}\"\nbranch_id = \"{branch}\"\nname = \"fault-pi\"\n\n\
         [bus]\npoll_interval_ms = {}\n",
        POLL.as_millis()
    );
    std::fs::write(path, text).unwrap();
}

/// Kills the edge `runs` times during the shopper stream, checking the store after each
/// restart, then checks Postgres once the edge has synced. `salt` keeps the four tests' default
/// seeds apart.
async fn kills_lose_nothing(pool: PgPool, salt: u64) {
    let runs = env_u64("CARTWISE_FAULT_KILLS").unwrap_or(KILLS_PER_TEST);
    let seed = env_u64("CARTWISE_FAULT_SEED").unwrap_or_else(|| rand::rng().random::<u64>() ^ salt);
    eprintln!(
        "faults_edge_sigkill: seed {seed}, {runs} kills (replay: CARTWISE_FAULT_SEED={seed})"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    cartwise_tests::seed_world(&pool).await;
    let hub = cartwise_tests::start_hub(&pool).await;
    let scratch = Scratch::new("cartwise-fault-kill-");
    let files = EdgeFiles::under(scratch.path());
    std::fs::create_dir_all(&files.data).unwrap();
    let peer = cartwise_tests::enroll_device(&pool, &hub, "ST-RA", "fault-pi", &files.data)
        .await
        .peer();
    let config = scratch.path().join("edge.toml");
    write_config(&config, &peer.device.to_string(), &peer.branch.to_string());

    let sim =
        Arc::new(SimProc::start(1, Some(AUTO_TAKE_MS), &scratch.path().join("sim.log")).await);
    let mut edge = EdgeProc::start(&files, Some(&config), &sim.bus, BOARDS).await;
    settle(&edge, &sim, &files, true).await;

    let mut numbers = u32::try_from(salt % 1000).unwrap() * 100;
    let mut shoppers = Vec::new();
    for _ in 0..SHOPPERS {
        let phone = fresh_phone(&mut numbers);
        let token = sign_in(&edge.api, &files.outbox, &phone).await;
        shoppers.push(Shopper {
            phone,
            token,
            docked: None,
        });
    }
    let record = Arc::new(Mutex::new(Record::default()));
    let mut settled = None;

    for cycle in 1..=runs {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = shoppers
            .drain(..)
            .map(|shopper| {
                let ctx = Ctx {
                    edge: edge.api.clone(),
                    sim: Arc::clone(&sim),
                    record: Arc::clone(&record),
                    stop: Arc::clone(&stop),
                };
                tokio::spawn(shop(shopper, ctx, rng.random()))
            })
            .collect();
        // SIGKILL at a random instant of the stream; in-flight requests may fail.
        let stream_ms = rng.random_range(150..1500);
        tokio::time::sleep(Duration::from_millis(stream_ms)).await;
        edge.proc.kill().await;
        stop.store(true, Ordering::SeqCst);
        for task in tasks {
            let shopper = tokio::time::timeout(WAIT_MAX, task)
                .await
                .expect("a shopper did not stop after the kill")
                .expect("a shopper task panicked");
            shoppers.push(shopper);
        }

        edge = EdgeProc::start(&files, Some(&config), &sim.bus, BOARDS).await;
        // The last restart waits for every rental to settle; earlier ones check what is due.
        let now = settle(&edge, &sim, &files, cycle == runs).await;
        let mut found = violations(&record.lock().unwrap(), &now);
        found.extend(
            now.events
                .iter()
                .filter(|e| is_anomaly(e, "unrecorded_unlock"))
                .map(|e| format!("false unrecorded-unlock anomaly: {e:?}")),
        );
        for shopper in &mut shoppers {
            let Some((rental, post)) = shopper.docked.take() else {
                continue;
            };
            let row = now.rentals.iter().find(|r| r.id == rental);
            let closed_there =
                |r: &RentalRec| r.status.starts_with("returned") && r.return_post == Some(post);
            if !row.is_some_and(closed_there) {
                found.push(format!(
                    "{} docked {rental} at its named post {post}, but after the restart it is \
                     {row:?}",
                    shopper.phone
                ));
            }
        }
        let unexpected = record.lock().unwrap().unexpected.clone();
        found.extend(
            unexpected
                .into_iter()
                .map(|u| format!("unexpected answer: {u}")),
        );
        assert!(
            found.is_empty(),
            "seed {seed}, after kill {cycle}: invariant 1 violated:\n{}",
            found.join("\n")
        );
        settled = Some(now);
    }
    let settled = settled.expect("at least one kill");

    // After sync, Postgres holds every rental whose lock opened, in the edge's final state, and
    // every acknowledged rental and return among them.
    let opened: BTreeMap<String, String> = settled
        .rentals
        .iter()
        .filter(|r| OPENED.contains(&r.status.as_str()))
        .map(|r| (r.id.clone(), r.status.clone()))
        .collect();
    let mut last_seen: BTreeMap<String, String>;
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let rows: Vec<(uuid::Uuid, String)> =
            sqlx::query_as("SELECT id, status FROM rentals WHERE branch_id = $1")
                .bind(peer.branch.as_uuid())
                .fetch_all(&pool)
                .await
                .unwrap();
        last_seen = rows
            .into_iter()
            .map(|(id, s)| (id.to_string(), s))
            .collect();
        if opened
            .iter()
            .all(|(id, status)| last_seen.get(id) == Some(status))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: Postgres never caught up with the edge: edge {opened:#?}, Postgres \
             {last_seen:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let record = std::mem::take(&mut *record.lock().unwrap());
    for (id, post) in &record.lent {
        assert!(
            last_seen.contains_key(id),
            "seed {seed}: acknowledged rental {id} (post {post}) is not in Postgres"
        );
    }
    for (id, status) in &record.returned {
        assert_eq!(
            last_seen.get(id),
            Some(status),
            "seed {seed}: acknowledged return of {id} is not in Postgres as {status}"
        );
    }
    let unrecorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM anomalies WHERE device_id = $1 AND kind = 'unrecorded_unlock'",
    )
    .bind(peer.device.as_uuid())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        unrecorded, 0,
        "seed {seed}: unrecorded unlocks reached Postgres"
    );

    eprintln!(
        "faults_edge_sigkill: seed {seed}: {runs} kills, {} lends and {} returns acknowledged, \
         {} docks, {} rentals in Postgres, in {:.1?}",
        record.lent.len(),
        record.returned.len(),
        record.docks.values().sum::<usize>(),
        last_seen.len(),
        started.elapsed()
    );
    assert!(
        !record.lent.is_empty() && !record.returned.is_empty(),
        "seed {seed}: the stream lent or returned nothing; the test exercised nothing"
    );
    edge.proc.kill().await;
    drop(hub);
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn sigkill_edge_kills_1_to_25(pool: PgPool) {
    kills_lose_nothing(pool, 1).await;
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn sigkill_edge_kills_26_to_50(pool: PgPool) {
    kills_lose_nothing(pool, 2).await;
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn sigkill_edge_kills_51_to_75(pool: PgPool) {
    kills_lose_nothing(pool, 3).await;
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn sigkill_edge_kills_76_to_100(pool: PgPool) {
    kills_lose_nothing(pool, 4).await;
}
