//! `cartwise-bench`: runs the benchmark scenarios, prints one table and, with `--json FILE`,
//! writes `{"machine", "results"}` with SVG plots beside it.
//!
//! The lend, sync and ingest scenarios are the crates' own bench targets (`cargo bench -p
//! cartwise-edge-node --bench lend|sync`, `-p cartwise-cloud-hub --bench ingest`), run with
//! `--json` and mapped to the suite's metric names; the edge → dashboard scenario is measured
//! here against the demo system (`dashboard.rs`); `amrepo` runs the same-workload rentals
//! through automerge-repo's JavaScript sync server (`amrepo.rs`, `bench/amrepo/`);
//! `sessions` and `same_workload` run a release hub against a pool of simulated Pis
//! (`swarm.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use cartwise_bench::amrepo;
use cartwise_bench::dashboard::{self, workspace_root};
use cartwise_bench::results::{self, Metric, against, plain, quantile};
use cartwise_bench::swarm::{self, SessionsConfig};
use clap::Parser;
use serde_json::Value;

/// The scenarios, in run order.
const SCENARIOS: &[&str] = &[
    "lend",
    "sync",
    "ingest",
    "dashboard",
    "sessions",
    "same_workload",
    "amrepo",
];

/// The benchmark suite.
#[derive(Debug, Parser)]
#[command(name = "cartwise-bench", version)]
struct Args {
    /// Write the results as JSON here, and the plots beside it.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Every scenario at a smaller size, for a fast check.
    #[arg(long)]
    quick: bool,
    /// Only these scenarios (comma-separated: lend, sync, ingest, dashboard, sessions,
    /// same_workload, amrepo).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Release binaries for the dashboard scenario; default: build them into target/release.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// Runs one crate bench target with `--json` and returns its JSON.
fn crate_bench(root: &Path, package: &str, bench: &str, quick: bool) -> anyhow::Result<Value> {
    let out = root.join(format!("target/bench-{bench}.json"));
    let _ = std::fs::remove_file(&out);
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    command
        .current_dir(root)
        .args(["bench", "--locked", "-p", package, "--bench", bench, "--"])
        .arg("--json")
        .arg(&out);
    if quick {
        command.arg("--quick");
    }
    let status = command
        .status()
        .with_context(|| format!("cannot run cargo bench for {bench}"))?;
    if !status.success() {
        bail!("the {bench} bench failed ({status}); its output is above");
    }
    let text = std::fs::read_to_string(&out)
        .with_context(|| format!("the {bench} bench wrote no {}", out.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", out.display()))
}

fn number(value: &Value, what: &str) -> anyhow::Result<f64> {
    value
        .as_f64()
        .with_context(|| format!("the bench output has no number at {what}"))
}

/// The lend bench already uses the suite's names (`edge_lend_p99_ms`, `edge_rss_mb`, …).
fn lend(json: &Value) -> anyhow::Result<Vec<Metric>> {
    let rows = json["results"].as_array().context("lend: no results")?;
    rows.iter()
        .map(|row| {
            let metric = row["metric"]
                .as_str()
                .context("lend: a result without a name")?;
            let value = number(&row["value"], metric)?;
            let unit = row["unit"].as_str().unwrap_or("");
            Ok(match row["baseline"]["metric"].as_str() {
                Some(base) => against(
                    metric,
                    value,
                    unit,
                    base,
                    number(&row["baseline"]["value"], base)?,
                ),
                None => plain(metric, value, unit),
            })
        })
        .collect()
}

/// The sync bench's rows under the suite's names.
fn sync(json: &Value) -> anyhow::Result<Vec<Metric>> {
    let rows = json["results"].as_array().context("sync: no results")?;
    let row = |name: &str| -> anyhow::Result<(f64, Option<f64>)> {
        let row = rows
            .iter()
            .find(|r| r["name"] == name)
            .with_context(|| format!("sync: no {name} row"))?;
        Ok((number(&row["value"], name)?, row["baseline"].as_f64()))
    };
    let mut out = Vec::new();
    let (v, _) = row("day_offline_converge")?;
    out.push(plain("reconnect_day_ms", v, "ms"));
    let (v, _) = row("day_offline_round_trips")?;
    out.push(plain("reconnect_day_round_trips", v, "round trips"));
    let (v, _) = row("day_offline_bytes_per_rental")?;
    out.push(plain("reconnect_day_bytes_per_rental", v, "B/rental"));
    let (v, _) = row("idle_reconnect_session_bytes")?;
    out.push(plain("idle_reconnect_bytes", v, "B"));
    let (v, b) = row("idle_reconnect_sync_bytes_per_doc")?;
    out.push(match b {
        Some(b) => against(
            "idle_reconnect_sync_bytes_per_doc",
            v,
            "B/doc",
            "whole_automerge_sync_bytes_per_doc",
            b,
        ),
        None => plain("idle_reconnect_sync_bytes_per_doc", v, "B/doc"),
    });
    let (v, b) = row("live_state_bytes")?;
    let b = b.context("sync: live_state_bytes has no baseline")?;
    out.push(against(
        "live_state_bytes_100k",
        v,
        "B",
        "plain_automerge_bytes_100k",
        b,
    ));
    let (v, b) = row("live_state_load")?;
    let b = b.context("sync: live_state_load has no baseline")?;
    out.push(against(
        "live_state_load_ms_100k",
        v,
        "ms",
        "plain_automerge_load_ms_100k",
        b,
    ));
    Ok(out)
}

/// The ingest bench's numbers under the suite's names.
fn ingest(json: &Value) -> anyhow::Result<Vec<Metric>> {
    Ok(vec![
        against(
            "hub_ingest_events_per_s",
            number(
                &json["ingest_events_per_second"],
                "ingest_events_per_second",
            )?,
            "events/s",
            "raw_copy_rows_per_s",
            number(&json["copy_rows_per_second"], "copy_rows_per_second")?,
        ),
        plain(
            "hub_ingest_latency_p99_ms",
            number(&json["latency_ms"]["p99"], "latency_ms.p99")?,
            "ms",
        ),
        plain(
            "hub_ingest_latency_p50_ms",
            number(&json["latency_ms"]["p50"], "latency_ms.p50")?,
            "ms",
        ),
        plain(
            "hub_ingest_burst_latency_p99_ms",
            number(&json["burst_latency_ms"]["p99"], "burst_latency_ms.p99")?,
            "ms",
        ),
        against(
            "hub_ingest_hub_only_events_per_s",
            number(
                &json["ingest_hub_only_events_per_second"],
                "ingest_hub_only_events_per_second",
            )?,
            "events/s",
            "raw_copy_rows_per_s",
            number(&json["copy_rows_per_second"], "copy_rows_per_second")?,
        ),
        plain(
            "raw_copy_bare_heap_rows_per_s",
            number(
                &json["copy_bare_heap_rows_per_second"],
                "copy_bare_heap_rows_per_second",
            )?,
            "rows/s",
        ),
    ])
}

/// Creates (or empties) a scratch database beside `DATABASE_URL`'s and returns its URL.
fn scratch_database(name: &str) -> anyhow::Result<String> {
    let url = std::env::var("DATABASE_URL")
        .context("DATABASE_URL is not set; export DATABASE_URL=$(scripts/pg.sh url)")?;
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        let status = Command::new("psql")
            .args([url.as_str(), "-qc", &sql])
            .status()
            .context("cannot run psql")?;
        if !status.success() {
            bail!("psql could not run `{sql}` on {url}");
        }
    }
    let base = url.split('?').next().unwrap_or(&url);
    let (server, _) = base
        .rsplit_once('/')
        .context("DATABASE_URL has no database path")?;
    Ok(format!("{server}/{name}"))
}

fn release_binaries(root: &Path) -> anyhow::Result<PathBuf> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .current_dir(root)
        .args(["build", "--locked", "--release", "--bins"])
        .args(["-p", "cartwise-cloud-hub", "-p", "cartwise-edge-node"])
        .args(["-p", "cartwise-netfault", "-p", "cartwise-bench"])
        .status()
        .context("cannot run cargo build")?;
    if !status.success() {
        bail!("building the release binaries failed");
    }
    Ok(root.join("target/release"))
}

/// The release hub the swarm scenarios run (`--bin-dir`, or built into target/release).
fn swarm_binaries(args: &Args, root: &Path) -> anyhow::Result<PathBuf> {
    match &args.bin_dir {
        Some(dir) => Ok(dir.clone()),
        None => release_binaries(root),
    }
}

/// 10,000 device sessions (500 with `--quick`) against a release hub (`swarm.rs`): the hub's
/// memory and CPU with 30 s heartbeats (10 s quick), then the reconnect storm.
async fn sessions(root: &Path, bin: &Path, quick: bool) -> anyhow::Result<Vec<Metric>> {
    let config = if quick {
        SessionsConfig {
            sessions: 500,
            heartbeat: std::time::Duration::from_secs(10),
            window: std::time::Duration::from_secs(10),
        }
    } else {
        SessionsConfig {
            sessions: 10_000,
            heartbeat: std::time::Duration::from_secs(30),
            window: std::time::Duration::from_secs(30),
        }
    };
    let url = scratch_database("cartwise_bench_sessions")?;
    let dir = root.join("target/bench-sessions");
    let r = swarm::sessions(bin, &url, &dir, config).await?;
    println!(
        "sessions: {} devices, {} s heartbeats: hub RSS {:.0} MB, hub CPU {:.1}% of a core over \
         {:.0} s (the device pool: {:.1}%); reconnect storm: every device synced again in \
         {:.1} s, {} errors, {} refusals at the hub's handshake door and {} deferrals (Busy) \
         honoured; hub RSS peak {:.0} MB, CPU {:.0}% during it",
        r.sessions,
        r.heartbeat_s,
        r.hub_rss_mb,
        r.hub_cpu_pct,
        r.window_s,
        r.pool_cpu_pct,
        r.storm_s,
        r.storm_errors,
        r.storm_refused,
        r.storm_deferred,
        r.storm_hub_rss_peak_mb,
        r.storm_hub_cpu_pct,
    );
    if !r.error_samples.is_empty() {
        println!("sessions: errors seen, e.g. {:?}", r.error_samples);
    }
    Ok(vec![
        plain("hub_rss_mb_10k_sessions", r.hub_rss_mb, "MB"),
        plain("hub_cpu_pct_10k_sessions", r.hub_cpu_pct, "% of a core"),
        plain(
            "swarm_pool_cpu_pct_10k_sessions",
            r.pool_cpu_pct,
            "% of a core",
        ),
        plain("reconnect_storm_10k_s", r.storm_s, "s"),
        plain("reconnect_storm_errors", r.storm_errors as f64, "errors"),
        plain("reconnect_storm_deferrals", r.storm_deferred as f64, "Busy"),
        plain(
            "reconnect_storm_refusals",
            r.storm_refused as f64,
            "refused",
        ),
    ])
}

/// The hub's side of the same workload (`swarm::same_workload`): D devices × R rentals
/// (100 × 50; 20 × 10 quick) through a release hub until Postgres holds them returned.
async fn same_workload(root: &Path, bin: &Path, quick: bool) -> anyhow::Result<Vec<Metric>> {
    let (devices, rentals) = if quick { (20, 10) } else { (100, 50) };
    let url = scratch_database("cartwise_bench_same_workload")?;
    let dir = root.join("target/bench-same-workload");
    let r = swarm::same_workload(bin, &url, &dir, devices, rentals).await?;
    println!(
        "same workload (hub): {} devices × {} rentals = {} events in Postgres in {:.0} ms \
         ({:.0} events/s; {} errors, {} deferrals); CPU: hub {:.0}%, devices {:.0}% of a core",
        r.devices,
        r.rentals_per_device,
        r.events,
        r.converge_ms,
        r.events_per_s,
        r.errors,
        r.deferred,
        r.hub_cpu_pct,
        r.pool_cpu_pct,
    );
    if !r.error_samples.is_empty() {
        println!(
            "same workload (hub): errors seen, e.g. {:?}",
            r.error_samples
        );
    }
    Ok(vec![
        plain("hub_same_workload_events_per_s", r.events_per_s, "events/s"),
        plain("hub_same_workload_converge_ms", r.converge_ms, "ms"),
    ])
}

/// The automerge-repo side of the same workload (`cartwise_bench::amrepo`). When the hub's side
/// (`hub_same_workload_*`) was measured earlier in this run, it becomes their baseline. Returns
/// the throughput plot, or `None` when this machine cannot run Node (the scenario is skipped).
async fn automerge_repo(
    root: &Path,
    quick: bool,
    results: &mut Vec<Metric>,
) -> anyhow::Result<Option<String>> {
    let dir = match amrepo::prepare(root).await? {
        Ok(dir) => dir,
        Err(why) => {
            println!("automerge-repo: skipped: {why}");
            return Ok(None);
        }
    };
    let (devices, rentals) = if quick { (20, 10) } else { (100, 50) };
    let limit = std::time::Duration::from_secs(600);
    let run = amrepo::measure(&dir, devices, rentals, limit).await?;
    println!(
        "automerge-repo: {devices} devices × {rentals} rentals = {} events stored by the sync \
         server in {:.0} ms ({:.0} events/s); the devices wrote them in {:.0} ms; CPU: server \
         {:.0} ms, devices {:.0} ms",
        run.events,
        run.converge_ms,
        run.events_per_s,
        run.written_ms,
        run.server_cpu_ms,
        run.driver_cpu_ms,
    );
    results.push(plain(
        "automerge_repo_events_per_s",
        run.events_per_s,
        "events/s",
    ));
    results.push(plain("automerge_repo_converge_ms", run.converge_ms, "ms"));
    let mut hub = [None, None];
    for (slot, (name, base, value)) in hub.iter_mut().zip([
        (
            "hub_same_workload_events_per_s",
            "automerge_repo_events_per_s",
            run.events_per_s,
        ),
        (
            "hub_same_workload_converge_ms",
            "automerge_repo_converge_ms",
            run.converge_ms,
        ),
    ]) {
        if let Some(metric) = results.iter_mut().find(|m| m.metric == name) {
            metric.baseline = Some(results::Baseline {
                metric: base.to_owned(),
                value,
            });
            *slot = Some(metric.value);
        }
    }
    let mut bars = Vec::new();
    match hub {
        [Some(events_per_s), Some(converge_ms)] => {
            bars.push(("CartWise hub (QUIC → Postgres)", events_per_s, converge_ms));
        }
        _ => println!(
            "automerge-repo: the hub's side of this workload is the same_workload scenario; run \
             both (--only same_workload,amrepo) for the side-by-side"
        ),
    }
    bars.push((
        "automerge-repo sync server",
        run.events_per_s,
        run.converge_ms,
    ));
    Ok(Some(amrepo::throughput_svg(
        &format!("Same workload: {devices} devices × {rentals} rentals, lent and returned"),
        &bars,
    )))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for name in &args.only {
        if !SCENARIOS.contains(&name.as_str()) {
            bail!(
                "unknown scenario {name}; the scenarios are {}",
                SCENARIOS.join(", ")
            );
        }
    }
    // Before the run, not after it: a report that cannot be written fails in a second.
    if let Some(dir) = args.json.as_deref().and_then(Path::parent)
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {} for the report", dir.display()))?;
    }
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let root = workspace_root();
    let mut results = Vec::new();
    let mut latencies = Vec::new();
    if wanted("lend") {
        results.extend(lend(&crate_bench(
            &root,
            "cartwise-edge-node",
            "lend",
            args.quick,
        )?)?);
    }
    if wanted("sync") {
        results.extend(sync(&crate_bench(
            &root,
            "cartwise-edge-node",
            "sync",
            args.quick,
        )?)?);
    }
    if wanted("ingest") {
        results.extend(ingest(&crate_bench(
            &root,
            "cartwise-cloud-hub",
            "ingest",
            args.quick,
        )?)?);
    }
    if wanted("dashboard") {
        let bin = match &args.bin_dir {
            Some(dir) => dir.clone(),
            None => release_binaries(&root)?,
        };
        let url = scratch_database("cartwise_bench_dashboard")?;
        let lends = if args.quick { 10 } else { 50 };
        let measured = dashboard::measure(&root, &bin, &url, lends).await?;
        latencies = measured.iter().map(|(total, _)| *total).collect();
        let mut sorted = latencies.clone();
        sorted.sort_by(f64::total_cmp);
        let mut answered: Vec<f64> = measured.iter().map(|(_, kiosk)| *kiosk).collect();
        answered.sort_by(f64::total_cmp);
        println!(
            "edge → dashboard: {} lends, p50 {:.1} ms, p99 {:.1} ms (the kiosk answered the \
             lend at p50 {:.1} ms)",
            sorted.len(),
            quantile(&sorted, 0.5),
            quantile(&sorted, 0.99),
            quantile(&answered, 0.5),
        );
        results.push(plain(
            "edge_to_dashboard_p50_ms",
            quantile(&sorted, 0.5),
            "ms",
        ));
        results.push(plain(
            "edge_to_dashboard_p99_ms",
            quantile(&sorted, 0.99),
            "ms",
        ));
        results.push(plain(
            "kiosk_lend_answer_p50_ms",
            quantile(&answered, 0.5),
            "ms",
        ));
    }
    if wanted("sessions") {
        let bin = swarm_binaries(&args, &root)?;
        results.extend(sessions(&root, &bin, args.quick).await?);
    }
    if wanted("same_workload") {
        let bin = swarm_binaries(&args, &root)?;
        results.extend(same_workload(&root, &bin, args.quick).await?);
    }
    let mut same_workload_svg = None;
    if wanted("amrepo") {
        same_workload_svg = automerge_repo(&root, args.quick, &mut results).await?;
    }
    println!("\n{}", results::table(&results));
    if let Some(path) = &args.json {
        let report = serde_json::json!({
            "machine": results::machine(args.quick),
            "results": results,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
        let stem = path.with_extension("");
        let baseline = PathBuf::from(format!("{}-baselines.svg", stem.display()));
        std::fs::write(&baseline, results::baseline_svg(&results))
            .with_context(|| format!("cannot write {}", baseline.display()))?;
        println!("wrote {}", baseline.display());
        if let Some(svg) = &same_workload_svg {
            let plot = PathBuf::from(format!("{}-same-workload.svg", stem.display()));
            std::fs::write(&plot, svg)
                .with_context(|| format!("cannot write {}", plot.display()))?;
            println!("wrote {}", plot.display());
        }
        if !latencies.is_empty() {
            let plot = PathBuf::from(format!("{}-edge-to-dashboard.svg", stem.display()));
            std::fs::write(
                &plot,
                results::latency_svg("Edge → dashboard latency (lend until listed)", &latencies),
            )
            .with_context(|| format!("cannot write {}", plot.display()))?;
            println!("wrote {}", plot.display());
        }
    }
    Ok(())
}
