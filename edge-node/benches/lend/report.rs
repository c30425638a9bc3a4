//! The lend benchmark's report: percentiles, the human table with the targets, the
//! `--json` document, and what machine it ran on.

use std::path::Path;
use std::time::Duration;

use cartwise_edge_node::cu16::BusConfig;
use serde_json::{Value, json};

use super::process::RssReport;
use super::{BOARDS, LEND_P99_OVER_RAW_MAX, LendSamples, RSS_MB_MAX};

/// Nearest-rank percentile in milliseconds.
fn percentile_ms(samples: &[Duration], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

pub(super) struct Report {
    machine: Value,
    lends: usize,
    returns: usize,
    lend_p50: f64,
    lend_p99: f64,
    status_read_p50: f64,
    status_read_p99: f64,
    pre_reads: usize,
    behind_poll: usize,
    roundtrip_p50: f64,
    roundtrip_p99: f64,
    raw_p50: f64,
    raw_p99: f64,
    raw_samples: usize,
    rss_mb: f64,
    rss_source: String,
    rss_hwm_mb: Option<f64>,
    in_process_rss_mb: Option<f64>,
}

impl Report {
    pub(super) fn new(lend: &LendSamples, rss: Option<RssReport>, dir: &Path) -> Self {
        let mb = |kb: u64| kb as f64 / 1024.0;
        let in_process_rss_mb = lend.in_process_rss_kb.map(mb);
        let (rss_mb, rss_source, rss_hwm_mb) = match rss {
            Some(r) => (mb(r.rss_kb), r.source, r.hwm_kb.map(mb)),
            None => (
                in_process_rss_mb.unwrap_or(f64::NAN),
                "in process (no cartwise-edge binary found; includes simulator and bench)".into(),
                None,
            ),
        };
        Self {
            machine: machine(dir),
            lends: lend.to_unlock.len(),
            returns: lend.returns,
            lend_p50: percentile_ms(&lend.to_unlock, 50.0),
            lend_p99: percentile_ms(&lend.to_unlock, 99.0),
            status_read_p50: percentile_ms(&lend.to_status_read, 50.0),
            status_read_p99: percentile_ms(&lend.to_status_read, 99.0),
            pre_reads: lend.to_status_read.len(),
            behind_poll: lend.behind_poll,
            roundtrip_p50: percentile_ms(&lend.roundtrip, 50.0),
            roundtrip_p99: percentile_ms(&lend.roundtrip, 99.0),
            raw_p50: percentile_ms(&lend.raw_insert, 50.0),
            raw_p99: percentile_ms(&lend.raw_insert, 99.0),
            raw_samples: lend.raw_insert.len(),
            rss_mb,
            rss_source,
            rss_hwm_mb,
            in_process_rss_mb,
        }
    }

    pub(super) fn print(&self, took: Duration) {
        let ratio = self.lend_p99 / self.raw_p99;
        println!(
            "\ncartwise-edge lend benchmark ({:.1} s)",
            took.as_secs_f64()
        );
        println!("machine: {}", self.machine);
        println!(
            "{} lends ({} returns) with {BOARDS} simulated boards over TCP; {} raw inserts\n",
            self.lends, self.returns, self.raw_samples
        );
        println!("{:<44} {:>10} {:>10}", "metric", "p50", "p99");
        let row = |name: &str, p50: f64, p99: f64| {
            println!("{name:<44} {p50:>8.2}ms {p99:>8.2}ms");
        };
        row(
            "lend: request → unlock frame written",
            self.lend_p50,
            self.lend_p99,
        );
        if self.pre_reads > 0 {
            row(
                "  of which: request → status read written",
                self.status_read_p50,
                self.status_read_p99,
            );
        }
        row(
            "lend: round trip (incl. hook settle wait)",
            self.roundtrip_p50,
            self.roundtrip_p99,
        );
        row(
            "raw SQLite insert (WAL, synchronous=FULL)",
            self.raw_p50,
            self.raw_p99,
        );
        let config = BusConfig::default();
        println!(
            "  {} of {} lends read the board before the unlock (the engine's sensed state was \
             not fresh); status read written → unlock written is that read (TCP: no gap after \
             an answered frame; serial keeps {} ms)",
            self.pre_reads,
            self.lends,
            config.frame_gap.as_millis()
        );
        println!(
            "  {} of {} lends had a poller read written between the request and the unlock",
            self.behind_poll, self.lends
        );
        println!("\n{:<44} {:>8.1}MB", "edge RSS (steady state)", self.rss_mb);
        println!("  measured on: {}", self.rss_source);
        if let Some(hwm) = self.rss_hwm_mb {
            println!("  peak (VmHWM): {hwm:.1} MB");
        }
        if let Some(in_process) = self.in_process_rss_mb {
            println!("  bench process (engine + simulator + bench): {in_process:.1} MB");
        }
        let verdict = |met: bool| if met { "MET" } else { "NOT MET" };
        println!("\ntargets:");
        println!(
            "  lend p99 ≤ {LEND_P99_OVER_RAW_MAX}× raw insert p99: {:.2} ms, limit {:.2} ms \
             ({ratio:.2}× raw) — {}",
            self.lend_p99,
            self.raw_p99 * LEND_P99_OVER_RAW_MAX,
            verdict(ratio <= LEND_P99_OVER_RAW_MAX)
        );
        println!(
            "  RSS ≤ {RSS_MB_MAX} MB: {:.1} MB — {}",
            self.rss_mb,
            verdict(self.rss_mb <= RSS_MB_MAX)
        );
    }

    pub(super) fn json(&self) -> Value {
        let result = |metric: &str, value: f64, unit: &str, baseline: Value| json!({ "metric": metric, "value": value, "unit": unit, "baseline": baseline });
        json!({
            "machine": self.machine,
            "results": [
                result("edge_lend_p99_ms", self.lend_p99, "ms",
                    json!({ "metric": "raw_sqlite_insert_p99_ms", "value": self.raw_p99 })),
                result("edge_lend_p50_ms", self.lend_p50, "ms", Value::Null),
                result("edge_lend_pre_reads", self.pre_reads as f64, "lends", Value::Null),
                result("edge_lend_behind_poll", self.behind_poll as f64, "lends", Value::Null),
                result("edge_lend_roundtrip_p99_ms", self.roundtrip_p99, "ms", Value::Null),
                result("edge_rss_mb", self.rss_mb, "MB", Value::Null),
            ],
        })
    }
}

/// What the numbers were measured on.
fn machine(dir: &Path) -> Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name") || l.starts_with("Model"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let mem_kb = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    let disk = std::process::Command::new("df")
        .args(["--output=source,fstype"])
        .arg(dir)
        .output()
        .ok()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let fields: Vec<&str> = text
                .lines()
                .nth(1)
                .unwrap_or("")
                .split_whitespace()
                .collect();
            fields.join(" ")
        })
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "arch": std::env::consts::ARCH,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "memory_mb": mem_kb / 1024,
        "disk": disk,
        "data_dir": dir.display().to_string(),
    })
}
