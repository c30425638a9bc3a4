//! `scripts/demo.sh` end to end with the debug binaries: the demo comes up and writes its
//! endpoints file, the load generator's rentals reach Postgres, a branch cut off from the hub
//! keeps lending, its rental arrives once the branch is healed, and SIGINT leaves no process
//! behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cartwise_fixtures::world_counts;
use serde_json::Value;
use sqlx::PgPool;

/// The binaries the demo runs.
const BINARIES: [&str; 4] = [
    "cartwise-hub",
    "cartwise-edge",
    "cartwise-netfault",
    "cartwise-loadgen",
];
/// The branch this test cuts off.
const BRANCH: &str = "ST-HF";
/// Upper bound on every wait (the debug binaries are slow to start on 2 cores).
const WAIT: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The debug binaries, built once if a narrow test run has not built them.
fn binaries() -> PathBuf {
    let dir = workspace().join("target/debug");
    if BINARIES.iter().any(|b| !dir.join(b).exists()) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .current_dir(workspace())
            .args(["build", "--bins"])
            .args(["-p", "cartwise-cloud-hub", "-p", "cartwise-edge-node"])
            .args(["-p", "cartwise-netfault", "-p", "cartwise-bench"])
            .status()
            .unwrap();
        assert!(status.success(), "building the demo binaries failed");
    }
    dir
}

/// `DATABASE_URL` with its database replaced by `name`.
fn database_url(name: &str) -> String {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL is set for Postgres tests");
    let base = url.split('?').next().unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    format!("{server}/{name}")
}

/// The running demo; killed (with its whole process group) if the test fails.
struct Demo {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .status();
            let _ = self.child.wait();
        }
    }
}

impl Demo {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("demo.out")).unwrap_or_default()
    }

    /// Polls `check` until it gives a value; fails with the demo's output after `WAIT`.
    async fn until<T>(&mut self, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the demo exited ({status}) waiting for {what}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}\nloadgen:\n{}",
                self.log(),
                std::fs::read_to_string(self.path("var/loadgen.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `scripts/demo.sh offline|online BRANCH` against this demo.
    fn switch(&self, action: &str) {
        let out = Command::new("bash")
            .arg(workspace().join("scripts/demo.sh"))
            .args([action, BRANCH])
            .env("CARTWISE_DEMO_DIR", self.path("var"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "demo.sh {action} {BRANCH}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Rentals the load generator asked for at `branch` after unix ms `after`.
fn lends(log: &str, branch: &str, after: u128) -> Vec<String> {
    log.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split(' ').collect();
            if words.get(1) != Some(&branch) || words.get(3) != Some(&"lent") {
                return None;
            }
            let field = |name: &str| words.iter().find_map(|w| w.strip_prefix(name));
            let asked: u128 = field("asked=")?.parse().ok()?;
            (asked > after).then(|| field("rental=").map(str::to_owned))?
        })
        .collect()
}

async fn in_postgres(pool: &PgPool, rental: &str) -> bool {
    let id: uuid::Uuid = rental.parse().unwrap();
    sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM rentals WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The live children of `parent` (pid and command).
fn children(parent: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces, so read after the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            let comm = head.split_once('(').map(|(_, c)| c).unwrap_or_default();
            found.push((pid, comm.to_owned()));
        }
    }
    found
}

/// Whether `pid` is still a process (not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

#[sqlx::test(migrations = false)]
async fn the_demo_lends_keeps_a_cut_off_branch_lending_and_stops_cleanly(pool: PgPool) {
    let bin = binaries();
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = std::fs::File::create(dir.path().join("demo.out")).unwrap();
    let port = 20_000 + (std::process::id() % 20_000);
    let child = Command::new("bash")
        .arg(workspace().join("scripts/demo.sh"))
        .env("DATABASE_URL", database_url(&name))
        .env("CARTWISE_DEMO_BIN", &bin)
        .env("CARTWISE_DEMO_DIR", dir.path().join("var"))
        .env("CARTWISE_DEMO_HUB_PORT", port.to_string())
        .env(
            "CARTWISE_LOADGEN_ARGS",
            "--lends-per-minute 30 --shoppers 4 --hold-min 2 --hold-max 4",
        )
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .process_group(0)
        .spawn()
        .unwrap();
    let mut demo = Demo { child, dir };

    // The endpoints file, as the issue specifies it.
    let endpoints_path = demo.path("var/endpoints.json");
    let endpoints: Value = demo
        .until("endpoints.json", async || {
            serde_json::from_str(&std::fs::read_to_string(&endpoints_path).ok()?).ok()
        })
        .await;
    assert!(endpoints["hub"]["api"].as_str().unwrap().ends_with("/api"));
    assert!(
        endpoints["hub"]["dashboard"]
            .as_str()
            .unwrap()
            .contains("/dashboard")
    );
    assert!(
        endpoints["hub"]["quic"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(endpoints["database_url"], database_url(&name));
    let roles: Vec<&str> = endpoints["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        [
            "platform_admin",
            "chain_admin",
            "branch_manager",
            "technician",
            "viewer"
        ]
    );
    let edges = endpoints["edges"].as_array().unwrap();
    assert_eq!(edges.len(), world_counts::DEVICES);
    for edge in edges {
        for key in [
            "chain",
            "branch_code",
            "device_id",
            "kiosk",
            "sms_outbox",
            "sim_control",
        ] {
            assert!(edge[key].is_string(), "edge without {key}: {edge}");
        }
    }
    assert_eq!(
        endpoints["proxies"].as_array().unwrap().len(),
        world_counts::BRANCHES
    );
    // The demo logins exist at the hub.
    let users: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM users WHERE login IN \
         ('admin', 'chain-admin', 'manager', 'technician', 'viewer')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(users, 5);

    // The shoppers' rentals reach Postgres, from every branch.
    demo.until("rentals of every branch in Postgres", async || {
        let branches: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT branch_id) FROM rentals WHERE user_phone LIKE '+97250%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (branches == world_counts::BRANCHES as i64).then_some(())
    })
    .await;

    // Cut the branch off: its kiosk still lends, and that rental stays away from the hub.
    demo.switch("offline");
    let cut_at = now_ms();
    let loadgen = demo.path("var/loadgen.log");
    let rental = demo
        .until("a lend at the cut-off branch", async || {
            let log = std::fs::read_to_string(&loadgen).ok()?;
            lends(&log, BRANCH, cut_at).into_iter().next()
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !in_postgres(&pool, &rental).await,
        "rental {rental} reached the hub while its branch was cut off"
    );

    // Heal: the rental made offline arrives.
    demo.switch("online");
    demo.until("the offline rental in Postgres", async || {
        in_postgres(&pool, &rental).await.then_some(())
    })
    .await;

    // Ctrl-C stops every process the demo started.
    // hub, a proxy per branch, a simulator and an edge per device, the load generator
    let started = children(demo.child.id());
    assert_eq!(
        started.len(),
        1 + world_counts::BRANCHES + 2 * world_counts::DEVICES + 1,
        "{started:?}"
    );
    let status = Command::new("kill")
        .args(["-INT", &demo.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while demo.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the demo did not stop on SIGINT");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(demo.log().contains("demo stopped"), "{}", demo.log());
    let left: Vec<_> = started.iter().filter(|(pid, _)| alive(*pid)).collect();
    assert!(left.is_empty(), "processes left after Ctrl-C: {left:?}");
    assert!(!endpoints_path.exists(), "endpoints.json outlived the demo");
}
