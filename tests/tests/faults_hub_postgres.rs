//! The hub process SIGKILLed under load, and Postgres restarted under load (immediate shutdown,
//! like a crash), with two edges of a branch lending and returning throughout: once everything
//! is back, Postgres holds every rental of both edges once, in its final state.
//!
//! Postgres here is a PRIVATE cluster this test creates from the distro's server binaries
//! (`/usr/lib/postgresql/*/bin`) in a scratch directory and restarts at will; the shared
//! development cluster other tests use is never touched. The hub is the real `cartwise-hub
//! serve` binary (build it first: `cargo build --locked --bin cartwise-hub`); the edges run
//! in-process on simulated boards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cartwise_edge_node::cu16::Lock;
use cartwise_edge_node::engine::{RentalFilter, ReturnState};
use cartwise_edge_node::identity;
use cartwise_schema::Phone;
use cartwise_sync_core::identity::parse_sha256_fingerprint;
use cartwise_tests::{Station, eventually, seed_world, workspace_bin};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// How long Postgres may take to converge once the hub and the database are back.
const CONVERGE_MAX: Duration = Duration::from_secs(90);
/// The unprivileged user `scripts/pg.sh` runs Postgres as when the tests run as root.
const PG_USER: &str = "cartwise";

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command run as [`PG_USER`] when we are root (initdb and postgres refuse root).
fn pg_command(bin: &Path) -> std::process::Command {
    if is_root() {
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", PG_USER, "--"]).arg(bin);
        command
    } else {
        std::process::Command::new(bin)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A throwaway Postgres cluster; stopped (immediately) when dropped.
struct PrivatePg {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivatePg {
    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries not found; run ./install.sh deps")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("postgres").exists())
            .max()
            .expect("no /usr/lib/postgresql/*/bin/postgres; run ./install.sh deps");
        let dir = tempfile::Builder::new()
            .prefix("cartwise-private-pg-")
            .tempdir()
            .unwrap();
        if is_root() {
            let chowned = std::process::Command::new("chown")
                .arg(PG_USER)
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(
                chowned.success(),
                "chown {PG_USER} failed (run scripts/pg.sh start once)"
            );
        }
        let data = dir.path().join("data");
        let out = pg_command(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", PG_USER, "--auth=trust", "-E", "UTF8", "--locale=C"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 100\n"
        );
        let mut text = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        text.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), text).unwrap();
        let pg = Self {
            bin,
            data,
            port,
            _dir: dir,
        };
        pg.ctl(&["start", "-w", "-t", "60"]);
        let out = std::process::Command::new(pg.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                PG_USER,
                "cartwise",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg
    }

    fn ctl(&self, args: &[&str]) {
        let log = self.data.join("../server.log");
        let out = pg_command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!("postgres://{PG_USER}@127.0.0.1:{}/cartwise", self.port)
    }

    /// Stops like a crash (`immediate`: no checkpoint) and starts again.
    fn crash_restart(&self, down: Duration) {
        self.ctl(&["stop", "-m", "immediate", "-w"]);
        std::thread::sleep(down);
        self.ctl(&["start", "-w", "-t", "60"]);
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = pg_command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", "immediate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `cartwise-hub serve` as a process (SIGKILLed when dropped).
struct HubProc {
    child: Child,
    ca_sha256: String,
}

impl HubProc {
    async fn start(url: &str, quic: SocketAddr, log: &Path) -> Self {
        let mut child = Command::new(workspace_bin("cartwise-hub"))
            .args([
                "serve",
                "--http",
                "127.0.0.1:0",
                "--quic",
                &quic.to_string(),
            ])
            .env("DATABASE_URL", url)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap(),
            )
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut ca_sha256 = None;
        while ca_sha256.is_none() {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .expect("the hub printed nothing for 30 s")
                .unwrap()
                .unwrap_or_else(|| panic!("the hub exited; see {}", log.display()));
            if let Some(rest) = line.strip_prefix("hub quic listening on ") {
                let hex = rest.split("sha256 ").nth(1).unwrap().trim_end_matches(')');
                ca_sha256 = Some(hex.to_owned());
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            ca_sha256: ca_sha256.unwrap(),
        }
    }

    async fn sigkill(mut self) {
        self.child.start_kill().unwrap();
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .unwrap()
            .unwrap();
    }
}

async fn enroll(
    pool: &PgPool,
    hub: &HubProc,
    quic: SocketAddr,
    name: &str,
    dir: &Path,
) -> identity::EdgeIdentity {
    let new = cartwise_cloud_hub::enroll::add_device(
        pool,
        "ST-RA",
        name,
        cartwise_cloud_hub::enroll::CODE_TTL_DEFAULT,
    )
    .await
    .unwrap();
    let ca = parse_sha256_fingerprint(&hub.ca_sha256).unwrap();
    let endpoint = identity::client_endpoint().unwrap();
    identity::enroll_exchange(&endpoint, &quic.to_string(), &new.code.grouped(), ca, dir)
        .await
        .unwrap()
}

/// Lends to `phone` and returns the cart at its own post.
async fn lend_and_return(station: &Station, phone: &Phone) {
    let engine = station.engine();
    let lent = engine.lend(phone).await.unwrap();
    station.wait_taken(lent.post.post).await;
    station.clock.advance_ms(60_000);
    engine.initiate_return(phone).await.unwrap();
    let (board, lock) = (lent.post.board.get(), lent.post.lock.get());
    station
        .sim
        .sim()
        .with_bus(|bus, now| bus.dock(now, board, Lock::new(lock).unwrap()))
        .unwrap();
    eventually("the return", || {
        let engine = engine.clone();
        let phone = phone.clone();
        async move {
            matches!(
                engine.return_state(&phone).await,
                Ok(ReturnState::Returned { .. })
            )
        }
    })
    .await;
}

/// Lends and returns with fresh phones until `stop`; keeps every fourth cart out.
async fn load(station: Arc<Station>, prefix: u32, stop: Arc<AtomicBool>, done: Arc<AtomicUsize>) {
    let mut n = 0u32;
    while !stop.load(Ordering::SeqCst) && n < 14 {
        n += 1;
        let phone = Phone::parse(&format!("05{prefix:02}{n:06}")).unwrap();
        if n.is_multiple_of(4) {
            let lent = station.engine().lend(&phone).await.unwrap();
            station.wait_taken(lent.post.post).await;
        } else {
            lend_and_return(&station, &phone).await;
        }
        done.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

fn wall_now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// Every rental of the station, id → status.
async fn edge_rentals(station: &Station) -> BTreeMap<String, String> {
    station
        .engine()
        .rentals(RentalFilter::History {
            limit: 1000,
            offset: 0,
        })
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.row.id.as_uuid().to_string(),
                r.row.status.as_str().to_owned(),
            )
        })
        .collect()
}

async fn wait_for(what: &str, done: &AtomicUsize, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::SeqCst) < at_least {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_sigkill_and_postgres_restart_under_load_lose_nothing() {
    let pg = PrivatePg::start();
    let pool = cartwise_cloud_hub::db::connect(&pg.url(), Duration::from_secs(10))
        .await
        .unwrap();
    cartwise_cloud_hub::db::migrate(&pool).await.unwrap();
    seed_world(&pool).await;
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("hub.log");
    let quic = free_udp();
    let hub = HubProc::start(&pg.url(), quic, &log).await;

    let mut stations = Vec::new();
    for (nth, name) in ["pg-pi-a", "pg-pi-b"].iter().enumerate() {
        let dir = scratch.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let peer = enroll(&pool, &hub, quic, name, &dir).await.peer();
        let station = Station::start(
            &dir,
            peer.device,
            peer.branch,
            1,
            wall_now_ms() + nth as i64,
        )
        .await;
        stations.push(Arc::new(station));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let loads: Vec<_> = stations
        .iter()
        .enumerate()
        .map(|(nth, s)| {
            tokio::spawn(load(
                Arc::clone(s),
                40 + u32::try_from(nth).unwrap(),
                stop.clone(),
                done.clone(),
            ))
        })
        .collect();

    // SIGKILL the hub in the middle of the stream, then start it again on the same address.
    wait_for("the first rentals", &done, 4).await;
    hub.sigkill().await;
    wait_for("rentals while the hub is dead", &done, 8).await;
    let hub = HubProc::start(&pg.url(), quic, &log).await;

    // Crash-restart Postgres under the same load, with the hub running.
    wait_for("rentals after the hub's restart", &done, 12).await;
    let pg = tokio::task::spawn_blocking(move || {
        pg.crash_restart(Duration::from_secs(2));
        pg
    })
    .await
    .unwrap();
    wait_for("rentals after the database's restart", &done, 16).await;
    stop.store(true, Ordering::SeqCst);
    for task in loads {
        task.await.unwrap();
    }

    // Everything back: Postgres converges on both edges' rentals, each once.
    let mut expected = BTreeMap::new();
    for station in &stations {
        expected.extend(edge_rentals(station).await);
    }
    assert!(expected.len() >= 16, "{expected:?}");
    let deadline = Instant::now() + CONVERGE_MAX;
    loop {
        // Empty while the pool reconnects after the restart.
        let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as("SELECT id, status FROM rentals")
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
        let got: BTreeMap<String, String> = rows
            .into_iter()
            .map(|(id, s)| (id.to_string(), s))
            .collect();
        if got == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{CONVERGE_MAX:?} after the faults Postgres holds {got:#?}, the edges {expected:#?}; \
             hub log {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "faults_hub_postgres: {} rentals converged after a hub SIGKILL and a Postgres crash-restart",
        expected.len()
    );
    drop(hub);
    for station in stations {
        if let Ok(station) = Arc::try_unwrap(station) {
            station.stop().await;
        }
    }
    drop(pg);
}
