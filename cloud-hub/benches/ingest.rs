//! Hub ingest benchmark: 1,000 simulated devices, in-process, each with its own live document
//! (written as the edge writes it), syncing through the hub's merge path (`Merger::submit`,
//! the API every QUIC session uses; QUIC and TLS are not in the loop). The hub runs on its own
//! Tokio runtime with its own connection pool, as it is its own process in the field: the
//! simulated devices share the machine's cores with it, not its task queue (on one runtime a
//! merge pass's Postgres replies waited behind hundreds of device tasks writing their
//! documents). The devices drop acknowledged rentals from their documents as the edge does,
//! and the scratch database starts with a history (100 closed rentals per device, analyzed),
//! as a hub that has run for a while has. Measured in one run on a scratch database:
//!
//! - ingest: rental events per second reaching Postgres (each device lends N rentals, syncs,
//!   returns them, syncs: 2·N events per device), beside a raw `COPY` of the same rows into
//!   `rentals` itself (its key, indexes and foreign keys; rolled back) and, for reference,
//!   into a bare heap of the same columns; then
//!   the same again with the devices' document writes made before the clock starts (the hub's
//!   share alone: in the field the edges' Automerge work runs on their own machines);
//! - edge → Postgres latency: the time from a device's commit of a rental until the hub answers
//!   the message carrying it (the hub answers after the transaction holding the rental row
//!   committed), p50/p99, under two loads: steady (every device lends with exponentially
//!   distributed gaps of mean 1 s, so 1,000 lends per second arrive independently; the suite's
//!   number), and a burst (every device lends at once, R rounds: the last of a burst waits for
//!   the whole burst).
//!
//! `cargo bench -p cartwise-cloud-hub --bench ingest -- [--quick] [--json FILE]`
//! (`RUST_LOG=cartwise_cloud_hub::merge=debug` adds each merge pass's phase times on stderr).
//! Needs `DATABASE_URL` (a server where it may create and drop a scratch database).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT, ReadDoc};
use cartwise_cloud_hub::clock::HubClock;
use cartwise_cloud_hub::merge::{Access, Job, Work};
use cartwise_cloud_hub::sync_server::SyncServer;
use cartwise_cloud_hub::{db, seed, world::World};
use cartwise_schema::{BranchId, ChainId, DeviceId, RentalId};
use cartwise_sync_core::identity::{PeerIdentity, Role};
use cartwise_sync_core::{DocId, HubActors, PeerDocState, device_actor};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

const T0: i64 = 1_795_248_000_000;
/// Closed rentals already in Postgres before the run, per device.
const HISTORY_PER_DEVICE: usize = 100;

struct Args {
    quick: bool,
    json: Option<String>,
}

fn args() -> Args {
    let mut out = Args {
        quick: false,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => out.quick = true,
            "--json" => out.json = it.next(),
            _ => {}
        }
    }
    out
}

/// A simulated device: its document and its sync state with the hub.
struct Device {
    peer: PeerIdentity,
    doc: AutoCommit,
    mine: PeerDocState,
    hub: Option<PeerDocState>,
    next: u32,
    rentals: Vec<String>,
}

impl Device {
    fn new(peer: PeerIdentity) -> Device {
        let mut doc = AutoCommit::new().with_actor(device_actor(&peer.device));
        doc.put(ROOT, "schema", 1).unwrap();
        doc.put(ROOT, "device", peer.device.to_string()).unwrap();
        doc.put(ROOT, "branch", peer.branch.to_string()).unwrap();
        doc.put_object(ROOT, "rentals", ObjType::Map).unwrap();
        doc.commit();
        let id = DocId::device(peer.device);
        Device {
            peer,
            doc,
            mine: PeerDocState::new(id),
            hub: Some(PeerDocState::new(id)),
            next: 0,
            rentals: Vec::new(),
        }
    }

    fn lend(&mut self) {
        let rentals = self.doc.get(ROOT, "rentals").unwrap().unwrap().1;
        let id = uuid::Uuid::now_v7().to_string();
        let r = self.doc.put_object(&rentals, &id, ObjType::Map).unwrap();
        let start = T0 + i64::from(self.next) * 60_000;
        self.next += 1;
        self.doc.put(&r, "phone", "+972521234567").unwrap();
        self.doc
            .put(&r, "post", u64::from(1 + self.next % 16))
            .unwrap();
        self.doc.put(&r, "status", "active").unwrap();
        self.doc.put(&r, "minutes", 120_u64).unwrap();
        self.doc.put(&r, "start_hlc", format!("{start}:0")).unwrap();
        self.doc.put(&r, "start_at", start).unwrap();
        self.doc.put(&r, "time_trusted", true).unwrap();
        self.doc.commit();
        self.rentals.push(id);
    }

    fn return_all(&mut self) {
        let rentals = self.doc.get(ROOT, "rentals").unwrap().unwrap().1;
        for id in std::mem::take(&mut self.rentals) {
            let r = self.doc.get(&rentals, id.as_str()).unwrap().unwrap().1;
            self.doc.put(&r, "status", "returned").unwrap();
            self.doc.put(&r, "end_at", T0 + 3_600_000).unwrap();
            self.doc.put(&r, "end_hlc", "e:0").unwrap();
        }
        self.doc.commit();
    }

    /// Drops acknowledged rentals from the document, as the edge does on a `LedgerAck`
    /// (`edge-node/src/engine/sync.rs`): the deletion is itself a change the next message
    /// carries, and the document stays as small as an edge's live document.
    fn drop_acked(&mut self, acked: &[RentalId]) {
        if acked.is_empty() {
            return;
        }
        let rentals = self.doc.get(ROOT, "rentals").unwrap().unwrap().1;
        for id in acked {
            let key = id.to_string();
            if self.doc.get(&rentals, key.as_str()).unwrap().is_some() {
                self.doc.delete(&rentals, key.as_str()).unwrap();
            }
        }
        self.doc.commit();
    }

    /// Syncs until settled; returns the time until the hub answered the first message
    /// (which, with shared heads, is the one carrying the new changes).
    async fn sync(&mut self, server: &SyncServer, since: Instant) -> Duration {
        let actors = HubActors::new([]);
        let mut first = None;
        while let Some(body) = self.mine.generate(&mut self.doc).unwrap() {
            let done = server
                .merger()
                .submit(Job {
                    peer: self.peer,
                    doc: body.doc,
                    access: Access::Write,
                    state: self.hub.take().unwrap(),
                    work: Work::Receive(body),
                })
                .await;
            first.get_or_insert_with(|| since.elapsed());
            self.hub = Some(done.state);
            match done.outcome {
                Ok(merged) => {
                    if let Some(reply) = merged.reply {
                        self.mine.receive(&mut self.doc, &reply, &actors).unwrap();
                    }
                    self.drop_acked(&merged.acked);
                }
                Err(error) => panic!("merge failed: {error}"),
            }
        }
        first.unwrap_or_default()
    }
}

async fn scratch_database(url: &str) -> (PgPool, PgConnectOptions, String) {
    let admin = PgConnectOptions::from_str(url).unwrap();
    let name = format!("cartwise_bench_{}", std::process::id());
    let mut conn = admin.connect().await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(db::POOL_CONNECTIONS_MAX)
        .connect_with(admin.clone().database(&name))
        .await
        .unwrap();
    db::migrate(&pool).await.unwrap();
    let text = std::fs::read_to_string(cartwise_fixtures::world_path()).unwrap();
    seed::seed(&pool, &World::parse(&text).unwrap())
        .await
        .unwrap();
    (pool, admin, name)
}

/// Adds `count` devices spread over the seeded branches.
async fn devices(pool: &PgPool, count: usize) -> Vec<Device> {
    let branches: Vec<(uuid::Uuid, uuid::Uuid)> =
        sqlx::query_as("SELECT id, chain_id FROM branches ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut out = Vec::with_capacity(count);
    for n in 0..count {
        let (branch, chain) = branches[n % branches.len()];
        let device = uuid::Uuid::now_v7();
        sqlx::query("INSERT INTO devices (id, branch_id, device_name) VALUES ($1, $2, $3)")
            .bind(device)
            .bind(branch)
            .bind(format!("bench-{n}"))
            .execute(pool)
            .await
            .unwrap();
        out.push(Device::new(PeerIdentity {
            role: Role::Device,
            chain: ChainId::from_uuid(chain),
            branch: BranchId::from_uuid(branch),
            device: DeviceId::from_uuid(device),
        }));
    }
    out
}

/// Gives the hub a history, as a hub that has run for a while has: `rows` closed rentals of
/// the devices, spread over their branches' carts, then `ANALYZE`, so the projection writes
/// into indexes of a realistic size and Postgres plans for them (on a table planned while it
/// was empty, a cached plan scans it whole).
async fn seed_history(pool: &PgPool, devices: &[Device], rows: usize) {
    let carts: Vec<(uuid::Uuid, uuid::Uuid)> =
        sqlx::query_as("SELECT branch_id, id FROM carts ORDER BY branch_id, cart_number")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut by_branch: HashMap<uuid::Uuid, Vec<uuid::Uuid>> = HashMap::new();
    for (branch, cart) in carts {
        by_branch.entry(branch).or_default().push(cart);
    }
    let mut data = String::new();
    for n in 0..rows {
        let device = &devices[n % devices.len()].peer;
        let branch = *device.branch.as_uuid();
        let mine = &by_branch[&branch];
        let day = n % 28 + 1;
        push_rental_row(
            &mut data,
            mine[n % mine.len()],
            branch,
            *device.device.as_uuid(),
            &format!("2026-10-{day:02}"),
        );
    }
    let mut conn = pool.acquire().await.unwrap();
    copy_rentals(&mut conn, "rentals", &data).await;
    sqlx::query("ANALYZE").execute(&mut *conn).await.unwrap();
}

/// Appends one closed rental row, as the projection writes it, in `COPY … (FORMAT csv)` form.
fn push_rental_row(
    data: &mut String,
    cart: uuid::Uuid,
    branch: uuid::Uuid,
    device: uuid::Uuid,
    day: &str,
) {
    data.push_str(&format!(
        "{},{cart},{branch},{device},+972521234567,{day} 08:00:00+00,{day} 10:00:00+00,{day} 09:00:00+00,returned,60,,,true\n",
        uuid::Uuid::now_v7()
    ));
}

/// `COPY`s rows made by [`push_rental_row`] into `table` (`rentals` or a copy of its columns).
async fn copy_rentals(conn: &mut sqlx::PgConnection, table: &str, data: &str) {
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {table} (id, cart_id, branch_id, device_id, user_phone, start_time,
                           expected_return, actual_return, status, duration_minutes, notes,
                           return_cart_id, time_trusted) FROM STDIN (FORMAT csv)"
        ))
        .await
        .unwrap();
    copy.send(data.as_bytes()).await.unwrap();
    copy.finish().await.unwrap();
}

/// Runs `step` then a sync on every device at once; returns the devices and the latencies.
async fn round(
    server: &Arc<SyncServer>,
    devices: Vec<Device>,
    step: fn(&mut Device),
) -> (Vec<Device>, Vec<Duration>) {
    let tasks: Vec<_> = devices
        .into_iter()
        .map(|mut device| {
            let server = Arc::clone(server);
            tokio::spawn(async move {
                step(&mut device);
                let since = Instant::now();
                let latency = device.sync(&server, since).await;
                (device, latency)
            })
        })
        .collect();
    let mut out = Vec::new();
    let mut latencies = Vec::new();
    for task in tasks {
        let (device, latency) = task.await.unwrap();
        out.push(device);
        latencies.push(latency);
    }
    (out, latencies)
}

/// Every device lends one rental and syncs it, again and again, with exponentially
/// distributed gaps of mean `gap` (so the hub sees `devices / gap` lends per second on average,
/// arriving independently, as a fleet's do), for `window`; returns the devices, each lend's
/// latency (from the device's commit until the hub answered the message carrying it) and how
/// many lends were made.
async fn steady(
    server: &Arc<SyncServer>,
    devices: Vec<Device>,
    gap: Duration,
    window: Duration,
) -> (Vec<Device>, Vec<Duration>) {
    let until = Instant::now() + window;
    let tasks: Vec<_> = devices
        .into_iter()
        .enumerate()
        .map(|(n, mut device)| {
            let server = Arc::clone(server);
            tokio::spawn(async move {
                // xorshift64*, seeded per device: independent arrivals, same every run.
                let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ (n as u64 + 1).wrapping_mul(0xD1B5);
                let mut uniform = move || {
                    state ^= state >> 12;
                    state ^= state << 25;
                    state ^= state >> 27;
                    (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
                };
                let mut latencies = Vec::new();
                loop {
                    let wait = gap.mul_f64(-(1.0 - uniform()).ln());
                    if Instant::now() + wait >= until {
                        break;
                    }
                    tokio::time::sleep(wait).await;
                    device.lend();
                    let since = Instant::now();
                    latencies.push(device.sync(&server, since).await);
                }
                (device, latencies)
            })
        })
        .collect();
    let mut out = Vec::new();
    let mut latencies = Vec::new();
    for task in tasks {
        let (device, mut own) = task.await.unwrap();
        out.push(device);
        latencies.append(&mut own);
    }
    (out, latencies)
}

/// Where a raw `COPY` of the rental rows goes.
#[derive(Clone, Copy)]
enum CopyInto {
    /// The `rentals` table itself, with its keys, indexes and foreign keys (what the hub's
    /// projection writes into); the transaction is rolled back afterwards.
    Rentals,
    /// A bare heap of the same columns: no key, no index, no constraint.
    BareHeap,
}

/// COPYs `rows` rental rows (the same shape the projection writes) and returns the time the
/// `COPY` took.
async fn raw_copy(pool: &PgPool, rows: usize, into: CopyInto) -> Duration {
    let (cart, branch, device): (uuid::Uuid, uuid::Uuid, uuid::Uuid) = sqlx::query_as(
        "SELECT c.id, c.branch_id, d.id FROM carts c JOIN devices d ON d.branch_id = c.branch_id LIMIT 1",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let mut data = String::new();
    for _ in 0..rows {
        push_rental_row(&mut data, cart, branch, device, "2026-11-21");
    }
    let mut tx = pool.begin().await.unwrap();
    let table = match into {
        CopyInto::Rentals => "rentals",
        CopyInto::BareHeap => {
            sqlx::query("CREATE TEMP TABLE rentals_copy (LIKE rentals INCLUDING DEFAULTS)")
                .execute(&mut *tx)
                .await
                .unwrap();
            "rentals_copy"
        }
    };
    let started = Instant::now();
    copy_rentals(&mut tx, table, &data).await;
    let took = started.elapsed();
    tx.rollback().await.unwrap();
    took
}

/// CPU seconds so far: this process's hub threads (the hub runtime's workers and blocking
/// pool, all named `hub`), its other threads (the simulated devices), and every `postgres`
/// process of the machine, from `/proc` (`utime + stime`, in USER_HZ = 100 ticks per second).
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    hub: f64,
    devices: f64,
    postgres: f64,
}

fn proc_ticks(stat_path: &std::path::Path) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    // After the command name: state is field 3, utime 14 and stime 15 (1-based).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

fn cpu_now() -> Cpu {
    let mut cpu = Cpu::default();
    for entry in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Some((comm, ticks)) = proc_ticks(&entry.path().join("stat")) {
            if comm == "hub" {
                cpu.hub += ticks as f64 / 100.0;
            } else {
                cpu.devices += ticks as f64 / 100.0;
            }
        }
    }
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Some((comm, ticks)) = proc_ticks(&entry.path().join("stat"))
            && comm == "postgres"
        {
            cpu.postgres += ticks as f64 / 100.0;
        }
    }
    cpu
}

impl std::ops::Add for Cpu {
    type Output = Cpu;
    fn add(self, other: Cpu) -> Cpu {
        Cpu {
            hub: self.hub + other.hub,
            devices: self.devices + other.devices,
            postgres: self.postgres + other.postgres,
        }
    }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, earlier: Cpu) -> Cpu {
        Cpu {
            hub: self.hub - earlier.hub,
            devices: self.devices - earlier.devices,
            postgres: self.postgres - earlier.postgres,
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let args = args();
    // `RUST_LOG=cartwise_cloud_hub::merge=debug` prints each merge pass's phase times.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let Ok(url) = std::env::var("DATABASE_URL") else {
        println!(
            "ingest: DATABASE_URL is not set; skipping (export DATABASE_URL=$(scripts/pg.sh url))"
        );
        return;
    };
    let (device_count, rentals_each, latency_rounds) = if args.quick {
        (200, 5, 3)
    } else {
        (1000, 10, 5)
    };
    let (pool, admin, name) = scratch_database(&url).await;
    let hub_runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("hub")
        .enable_all()
        .build()
        .unwrap();
    let hub_options = admin.clone().database(&name);
    let hub_pool = hub_runtime
        .spawn(async move {
            PgPoolOptions::new()
                .max_connections(db::POOL_CONNECTIONS_MAX)
                .connect_with(hub_options)
                .await
        })
        .await
        .unwrap()
        .unwrap();
    let server = {
        let _hub = hub_runtime.enter();
        SyncServer::new(hub_pool.clone(), Arc::new(HubClock::new()))
    };
    let devices = devices(&pool, device_count).await;
    let history = HISTORY_PER_DEVICE * device_count;
    seed_history(&pool, &devices, history).await;

    // First contact (empty documents), not timed.
    let (devices, _) = round(&server, devices, |_| {}).await;

    // Ingest: N lends per device, then their returns.
    let cpu_before = cpu_now();
    let started = Instant::now();
    let lend_all = |d: &mut Device| {
        for _ in 0..10 {
            d.lend();
        }
    };
    let lend_few = |d: &mut Device| {
        for _ in 0..5 {
            d.lend();
        }
    };
    let lend: fn(&mut Device) = if rentals_each == 10 {
        lend_all
    } else {
        lend_few
    };
    let (devices, _) = round(&server, devices, lend).await;
    let (devices, _) = round(&server, devices, Device::return_all).await;
    let ingest = started.elapsed();
    let ingest_cpu = cpu_now() - cpu_before;
    let events = device_count * rentals_each * 2;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM rentals WHERE status = 'returned'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        rows as usize,
        history + device_count * rentals_each,
        "every rental reached Postgres"
    );

    // The same again with the devices' writes made before the clock starts: on separate
    // machines the edges' Automerge work is not the hub's.
    let mut devices = devices;
    devices.iter_mut().for_each(lend);
    let cpu_before = cpu_now();
    let started = Instant::now();
    let (mut devices, _) = round(&server, devices, |_| {}).await;
    let mut hub_only = started.elapsed();
    let mut hub_only_cpu = cpu_now() - cpu_before;
    devices.iter_mut().for_each(Device::return_all);
    let cpu_before = cpu_now();
    let started = Instant::now();
    let (devices, _) = round(&server, devices, |_| {}).await;
    hub_only += started.elapsed();
    hub_only_cpu = hub_only_cpu + (cpu_now() - cpu_before);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM rentals WHERE status = 'returned'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        rows as usize,
        history + 2 * device_count * rentals_each,
        "every rental reached Postgres"
    );

    // Latency under a steady load: lends arriving independently at `device_count / gap` per
    // second, the hub's usual day (a busy branch lends a cart every few seconds per kiosk).
    let steady_gap = Duration::from_secs(1);
    let steady_window = Duration::from_secs(if args.quick { 4 } else { 10 });
    let (devices, mut steady_latencies) = steady(&server, devices, steady_gap, steady_window).await;
    steady_latencies.sort();
    let steady_rate = steady_latencies.len() as f64 / steady_window.as_secs_f64();

    // Latency of a burst: one new rental per device, all devices at once, several rounds
    // (the last of a burst waits for the whole burst to be merged before it).
    let mut latencies = Vec::new();
    let mut devices = devices;
    for _ in 0..latency_rounds {
        let (next, mut round_latencies) = round(&server, devices, Device::lend).await;
        devices = next;
        latencies.append(&mut round_latencies);
    }
    latencies.sort();
    drop(devices);

    let copy = raw_copy(&pool, events, CopyInto::Rentals).await;
    let copy_heap = raw_copy(&pool, events, CopyInto::BareHeap).await;
    let ingest_rate = events as f64 / ingest.as_secs_f64();
    let hub_only_rate = events as f64 / hub_only.as_secs_f64();
    let copy_rate = events as f64 / copy.as_secs_f64();
    let copy_heap_rate = events as f64 / copy_heap.as_secs_f64();
    let p50 = percentile(&latencies, 0.50);
    let p99 = percentile(&latencies, 0.99);
    println!("hub ingest, {device_count} devices in-process through the merge path (no QUIC)");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| rental events into Postgres | {events} in {:.2} s |",
        ingest.as_secs_f64()
    );
    println!("| ingest rate | {ingest_rate:.0} events/s |");
    println!(
        "| raw COPY of the same rows into `rentals` | {copy_rate:.0} rows/s ({:.3} s) |",
        copy.as_secs_f64()
    );
    println!(
        "| raw COPY of the same rows into a bare heap (no key, index or constraint) | {copy_heap_rate:.0} rows/s ({:.3} s) |",
        copy_heap.as_secs_f64()
    );
    println!("| ingest / COPY | {:.3} |", ingest_rate / copy_rate);
    println!(
        "| ingest, device writes made before the clock | {hub_only_rate:.0} events/s ({:.3} × COPY) |",
        hub_only_rate / copy_rate
    );
    let per_event = |cpu: Cpu| {
        format!(
            "hub {:.0} µs, devices {:.0} µs, Postgres {:.0} µs",
            cpu.hub * 1e6 / events as f64,
            cpu.devices * 1e6 / events as f64,
            cpu.postgres * 1e6 / events as f64
        )
    };
    println!("| CPU per event, ingest | {} |", per_event(ingest_cpu));
    println!(
        "| CPU per event, device writes made before the clock | {} |",
        per_event(hub_only_cpu)
    );
    let steady_p50 = percentile(&steady_latencies, 0.50);
    let steady_p99 = percentile(&steady_latencies, 0.99);
    println!(
        "| edge → Postgres latency, steady {steady_rate:.0} lends/s from {device_count} devices ({} samples) | p50 {:.1} ms, p99 {:.1} ms |",
        steady_latencies.len(),
        steady_p50.as_secs_f64() * 1e3,
        steady_p99.as_secs_f64() * 1e3
    );
    println!(
        "| edge → Postgres latency, all {device_count} devices at once ({} samples) | p50 {:.1} ms, p99 {:.1} ms |",
        latencies.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "devices": device_count,
            "events": events,
            "ingest_seconds": ingest.as_secs_f64(),
            "ingest_events_per_second": ingest_rate,
            "copy_rows_per_second": copy_rate,
            "copy_into": "rentals (its keys, indexes and foreign keys; rolled back)",
            "copy_bare_heap_rows_per_second": copy_heap_rate,
            "ingest_over_copy": ingest_rate / copy_rate,
            "ingest_hub_only_events_per_second": hub_only_rate,
            "ingest_hub_only_over_copy": hub_only_rate / copy_rate,
            "latency_ms": { "p50": steady_p50.as_secs_f64() * 1e3,
                            "p99": steady_p99.as_secs_f64() * 1e3,
                            "samples": steady_latencies.len(),
                            "lends_per_second": steady_rate,
                            "load": "steady: each device lends with exponential gaps of mean 1 s" },
            "burst_latency_ms": { "p50": p50.as_secs_f64() * 1e3, "p99": p99.as_secs_f64() * 1e3,
                                  "samples": latencies.len(),
                                  "load": "every device lends at once, one round after another" },
            "cpu_seconds": {
                "ingest": { "hub": ingest_cpu.hub, "devices": ingest_cpu.devices,
                            "postgres": ingest_cpu.postgres },
                "hub_only": { "hub": hub_only_cpu.hub, "devices": hub_only_cpu.devices,
                              "postgres": hub_only_cpu.postgres },
            },
            "transport": "in-process merge API (no QUIC)",
        });
        std::fs::write(path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    }
    pool.close().await;
    drop(server);
    hub_runtime.shutdown_background();
    let mut conn = admin.connect().await.unwrap();
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await;
}
