//! The automerge-repo side of the same-workload comparison (`automerge_repo_events_per_s`, the
//! baseline of `hub_same_workload_events_per_s`): the same D devices × R rentals written to
//! automerge-repo's JavaScript sync server instead of our hub.
//!
//! `bench/amrepo/` holds the Node programs and their exact package versions: `server.mjs` is a
//! sync server built as automerge-repo's own is (a `Repo` with the WebSocket server adapter and
//! the Node file-system storage adapter); `driver.mjs` runs one `Repo` per device, each with its
//! own WebSocket connection and one document in the layout the edge writes
//! (`sync-core/src/facts.rs`). [`prepare`] installs the packages with `npm ci` into
//! `target/amrepo/` (once per lock file); [`measure`] starts the server, runs the driver and
//! reads both processes' JSON lines.
//!
//! The clock starts just before the first write (every device connected and its document's
//! header held by the server) and stops when the server holds every device's document with all
//! its rentals returned and has written it to its storage (`repo.flush`), the counterpart of
//! "Postgres holds every rental in its final state" on our side.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::results::escape;

/// The oldest Node the programs run on.
const NODE_MAJOR_MIN: u32 = 20;
/// How long the server may take to listen, and the devices to connect and create their
/// documents.
const START_WAIT: Duration = Duration::from_secs(60);
/// How long `npm ci` may take.
const NPM_WAIT: Duration = Duration::from_secs(300);
/// How long the processes may take to exit once told to.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// One run's numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmRepoRun {
    /// D.
    pub devices: u32,
    /// R.
    pub rentals_per_device: u32,
    /// 2·D·R: each rental lent and returned, each a change.
    pub events: u64,
    /// From just before the first write until the server had every document final and stored.
    pub converge_ms: f64,
    /// `events` / `converge_ms`, per second.
    pub events_per_s: f64,
    /// From just before the first write until every device had written its last change.
    pub written_ms: f64,
    /// The server process's CPU time until convergence (includes the untimed setup).
    pub server_cpu_ms: f64,
    /// The device driver's CPU time while writing.
    pub driver_cpu_ms: f64,
}

/// Why the scenario cannot run here (it is skipped, not failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// No Node ≥ 20 on PATH.
    Node(String),
    /// npm is missing or `npm ci` failed (the registry unreachable, most likely).
    Npm(String),
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::Node(why) | Unavailable::Npm(why) => f.write_str(why),
        }
    }
}

/// The programs' sources in the repository.
pub fn sources(root: &Path) -> PathBuf {
    root.join("bench/amrepo")
}

/// The Node major version on PATH.
async fn node_major() -> Result<u32, Unavailable> {
    let output = Command::new("node")
        .args(["-p", "process.versions.node.split('.')[0]"])
        .output()
        .await
        .map_err(|e| {
            let why = format!("node is not on PATH ({e}); install Node >= {NODE_MAJOR_MIN}");
            Unavailable::Node(why)
        })?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| Unavailable::Node("`node` did not report its version".to_owned()))
}

/// Copies the programs into `target/amrepo/` and installs their packages with `npm ci` unless
/// the installed ones came from the same lock file. Returns the directory to run them in, or
/// why this machine cannot (no Node ≥ 20, no npm, or the npm registry unreachable).
pub async fn prepare(root: &Path) -> anyhow::Result<Result<PathBuf, Unavailable>> {
    let major = match node_major().await {
        Ok(major) => major,
        Err(why) => return Ok(Err(why)),
    };
    if major < NODE_MAJOR_MIN {
        return Ok(Err(Unavailable::Node(format!(
            "Node {major} is older than {NODE_MAJOR_MIN}"
        ))));
    }
    let src = sources(root);
    let dir = root.join("target/amrepo");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for file in [
        "package.json",
        "package-lock.json",
        "server.mjs",
        "driver.mjs",
    ] {
        std::fs::copy(src.join(file), dir.join(file)).with_context(|| {
            format!(
                "cannot copy {} into {}",
                src.join(file).display(),
                dir.display()
            )
        })?;
    }
    let lock = std::fs::read(src.join("package-lock.json"))
        .with_context(|| format!("cannot read {}/package-lock.json", src.display()))?;
    let stamp = dir.join("node_modules/.cartwise-lock");
    if std::fs::read(&stamp).is_ok_and(|installed| installed == lock) {
        return Ok(Ok(dir));
    }
    let install = Command::new("npm")
        .current_dir(&dir)
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(NPM_WAIT, install).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Ok(Err(Unavailable::Npm(format!("npm is not on PATH ({e})")))),
        Err(_) => {
            return Ok(Err(Unavailable::Npm(format!(
                "`npm ci` in {} did not finish within {} s; is the npm registry reachable?",
                dir.display(),
                NPM_WAIT.as_secs()
            ))));
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Ok(Err(Unavailable::Npm(format!(
            "`npm ci` in {} failed ({}); is the npm registry reachable? {}",
            dir.display(),
            output.status,
            tail.join(" | ")
        ))));
    }
    std::fs::write(&stamp, &lock).with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok(Ok(dir))
}

/// A line from one of the two processes, or the end of its output.
#[derive(Debug)]
enum Line {
    Server(Option<String>),
    Driver(Option<String>),
}

/// Forwards a process's stdout, line by line, into the shared (bounded) channel.
fn forward(
    child: &mut Child,
    tx: mpsc::Sender<Line>,
    wrap: fn(Option<String>) -> Line,
) -> anyhow::Result<()> {
    let stdout = child.stdout.take().context("a child without stdout")?;
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(wrap(Some(line))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(wrap(None)).await;
    });
    Ok(())
}

fn spawn(dir: &Path, script: &str, args: &[String]) -> anyhow::Result<(Child, ChildStdin)> {
    let mut child = Command::new("node")
        .current_dir(dir)
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start node {script} in {}", dir.display()))?;
    let stdin = child.stdin.take().context("a child without stdin")?;
    Ok((child, stdin))
}

fn field(line: &Value, name: &str, from: &str) -> anyhow::Result<f64> {
    line[name]
        .as_f64()
        .with_context(|| format!("{from} printed {line} without a number `{name}`"))
}

/// Runs D devices × R rentals against a fresh sync server in `dir` (from [`prepare`]); fails
/// if the server has not converged within `limit` of the first write.
pub async fn measure(
    dir: &Path,
    devices: u32,
    rentals: u32,
    limit: Duration,
) -> anyhow::Result<AmRepoRun> {
    if devices == 0 || rentals == 0 {
        bail!("the same workload needs at least one device and one rental");
    }
    let store = dir.join(format!("store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    std::fs::create_dir_all(&store)
        .with_context(|| format!("cannot create {}", store.display()))?;
    let run = run(dir, &store, devices, rentals, limit).await;
    let _ = std::fs::remove_dir_all(&store);
    run
}

async fn run(
    dir: &Path,
    store: &Path,
    devices: u32,
    rentals: u32,
    limit: Duration,
) -> anyhow::Result<AmRepoRun> {
    let size = [
        "--devices".to_owned(),
        devices.to_string(),
        "--rentals".to_owned(),
        rentals.to_string(),
    ];
    let (tx, mut rx) = mpsc::channel(64);
    let mut server_args = vec!["--dir".to_owned(), store.display().to_string()];
    server_args.extend(size.iter().cloned());
    let (mut server, server_stdin) = spawn(dir, "server.mjs", &server_args)?;
    forward(&mut server, tx.clone(), Line::Server)?;

    let port = loop {
        match tokio::time::timeout(START_WAIT, rx.recv()).await {
            Err(_) => bail!(
                "the automerge-repo sync server did not listen within {} s",
                START_WAIT.as_secs()
            ),
            Ok(None | Some(Line::Server(None))) => {
                bail!(
                    "the automerge-repo sync server exited before listening; its errors are above"
                )
            }
            Ok(Some(Line::Server(Some(line)))) => {
                let json: Value = serde_json::from_str(&line)
                    .with_context(|| format!("the sync server printed `{line}`, not JSON"))?;
                if let Some(port) = json["listening"].as_u64() {
                    break port;
                }
            }
            Ok(Some(Line::Driver(_))) => {}
        }
    };

    let mut driver_args = vec!["--url".to_owned(), format!("ws://127.0.0.1:{port}")];
    driver_args.extend(size.iter().cloned());
    let (mut driver, driver_stdin) = spawn(dir, "driver.mjs", &driver_args)?;
    forward(&mut driver, tx, Line::Driver)?;

    let (mut started, mut written, mut converged) = (None, None, None);
    let mut wait = START_WAIT;
    while converged.is_none() || written.is_none() {
        let line = match tokio::time::timeout(wait, rx.recv()).await {
            Err(_) if started.is_none() => bail!(
                "the {devices} devices did not connect and create their documents within {} s",
                START_WAIT.as_secs()
            ),
            Err(_) => bail!(
                "the automerge-repo sync server did not hold every rental returned within {} s \
                 of the first write ({devices} devices × {rentals} rentals); raise the limit or \
                 lower the size",
                limit.as_secs()
            ),
            Ok(None) => bail!("both node processes closed their output"),
            Ok(Some(line)) => line,
        };
        match line {
            Line::Server(None) => bail!("the sync server exited early; its errors are above"),
            Line::Driver(None) => bail!("the device driver exited early; its errors are above"),
            Line::Server(Some(text)) => {
                let json: Value = serde_json::from_str(&text)
                    .with_context(|| format!("the sync server printed `{text}`, not JSON"))?;
                if json.get("converged_at_ms").is_some() {
                    converged = Some(json);
                }
            }
            Line::Driver(Some(text)) => {
                let json: Value = serde_json::from_str(&text)
                    .with_context(|| format!("the device driver printed `{text}`, not JSON"))?;
                if json.get("started_at_ms").is_some() {
                    started = Some(field(&json, "started_at_ms", "the device driver")?);
                    wait = limit;
                } else if json.get("written_at_ms").is_some() {
                    written = Some(json);
                }
            }
        }
    }
    // Closing their stdin tells both programs to shut down.
    drop(driver_stdin);
    drop(server_stdin);
    for (name, child) in [("device driver", &mut driver), ("sync server", &mut server)] {
        if tokio::time::timeout(EXIT_WAIT, child.wait()).await.is_err() {
            eprintln!(
                "the {name} did not exit within {} s; killing it",
                EXIT_WAIT.as_secs()
            );
            let _ = child.kill().await;
        }
    }

    let started = started.context("the device driver never printed its start")?;
    let converged = converged.context("the sync server never converged")?;
    let written = written.context("the device driver never finished writing")?;
    let documents = converged["documents"].as_u64().unwrap_or(0);
    if documents < u64::from(devices) {
        bail!("the sync server reported {documents} of {devices} documents final");
    }
    let events = 2 * u64::from(devices) * u64::from(rentals);
    let converge_ms = field(&converged, "converged_at_ms", "the sync server")? - started;
    Ok(AmRepoRun {
        devices,
        rentals_per_device: rentals,
        events,
        converge_ms,
        events_per_s: events as f64 / (converge_ms.max(f64::EPSILON) / 1000.0),
        written_ms: field(&written, "written_at_ms", "the device driver")? - started,
        server_cpu_ms: field(&converged, "cpu_ms", "the sync server")?,
        driver_cpu_ms: field(&written, "cpu_ms", "the device driver")?,
    })
}

/// An SVG bar chart of the same workload's throughput: one bar per system (`(label, events/s,
/// converge ms)`), higher is better. The labels are the suite's metric names.
pub fn throughput_svg(title: &str, bars: &[(&str, f64, f64)]) -> String {
    let (w, row_h, left) = (760.0, 34.0, 270.0);
    let h = 70.0 + row_h * bars.len() as f64;
    let max = bars.iter().map(|(_, v, _)| *v).fold(1.0_f64, f64::max) * 1.1;
    let scale = |v: f64| v / max * (w - left - 200.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"15\">{}</text>\n",
        escape(title)
    );
    for (i, (label, value, converge_ms)) in bars.iter().enumerate() {
        let top = 40.0 + row_h * i as f64;
        let color = if i == 0 { "#2266aa" } else { "#999999" };
        svg.push_str(&format!(
            "<text x=\"10\" y=\"{:.1}\">{}</text>\n<rect x=\"{left}\" y=\"{top:.1}\" \
             width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\">\
             {value:.0} events/s ({converge_ms:.0} ms)</text>\n",
            top + 18.0,
            escape(label),
            scale(*value).max(1.0),
            row_h - 10.0,
            left + scale(*value).max(1.0) + 6.0,
            top + 18.0,
        ));
    }
    svg.push_str(&format!(
        "<text x=\"10\" y=\"{:.1}\" fill=\"#555555\">events/s = 2·D·R / time from the first \
         write until the server held every rental returned, stored</text>\n</svg>\n",
        h - 10.0
    ));
    svg
}
