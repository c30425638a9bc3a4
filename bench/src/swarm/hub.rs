//! A real `cartwise-hub serve` on the scratch database, and what `/proc` says about a
//! process's memory and CPU.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How long the hub may take to start listening.
const START_WAIT: Duration = Duration::from_secs(60);

/// The running hub, stopped (SIGTERM, then waited for) when dropped.
#[derive(Debug)]
pub struct HubProcess {
    child: Child,
    /// Its QUIC address.
    pub quic: SocketAddr,
    /// Its log (stdout and stderr).
    pub log: std::path::PathBuf,
}

impl HubProcess {
    /// Starts `bin/cartwise-hub serve` on `database_url` with QUIC on a free loopback port and
    /// waits until it listens. `dir` holds its log.
    pub async fn start(bin: &Path, database_url: &str, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let quic = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .context("no free UDP port for the hub")?;
        let http = TcpListener::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .context("no free TCP port for the hub")?;
        let log = dir.join("hub.out");
        let out = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let exe = bin.join("cartwise-hub");
        let child = Command::new(&exe)
            .args([
                "serve",
                "--quic",
                &quic.to_string(),
                "--http",
                &http.to_string(),
            ])
            .env("DATABASE_URL", database_url)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let mut hub = HubProcess { child, quic, log };
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&hub.log).unwrap_or_default();
            if text.contains("hub quic listening") {
                return Ok(hub);
            }
            if let Ok(Some(status)) = hub.child.try_wait() {
                bail!(
                    "the hub exited ({status}) before listening; see {}",
                    hub.log.display()
                );
            }
            if started.elapsed() > START_WAIT {
                bail!(
                    "the hub did not listen within {} s; see {}",
                    START_WAIT.as_secs(),
                    hub.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The hub's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the hub is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time and resident memory of one process at one instant.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// When it was read.
    pub at: Instant,
    /// User plus system CPU, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set, in kB.
    pub rss_kb: u64,
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux unless configured otherwise).
pub fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
}

/// Reads `/proc/<pid>/stat` (utime + stime) and `/proc/<pid>/status` (VmRSS); `pid` may be
/// `"self"`.
pub fn sample(pid: &str) -> anyhow::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("/proc stat without a command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let tick = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat has no field {}", i + 3))
    };
    let cpu_ticks = tick(11)? + tick(12)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let rss_kb = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("/proc/{pid}/status has no VmRSS"))?;
    Ok(ProcSample {
        at: Instant::now(),
        cpu_ticks,
        rss_kb,
    })
}

/// Percent of one core used between two samples.
pub fn cpu_percent(from: &ProcSample, to: &ProcSample, ticks_per_s: u64) -> f64 {
    let seconds = to.at.duration_since(from.at).as_secs_f64();
    if seconds <= 0.0 {
        return 0.0;
    }
    let used = to.cpu_ticks.saturating_sub(from.cpu_ticks) as f64 / ticks_per_s as f64;
    100.0 * used / seconds
}
