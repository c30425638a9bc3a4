//! The benchmark results file: `{"machine": {...}, "results": [{"metric", "value", "unit",
//! "baseline": {"metric", "value"} | null}]}`.

use serde::Serialize;

/// One measured line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metric {
    /// The metric's name, e.g. `edge_lend_p99_ms`.
    pub metric: String,
    /// The value.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// What it is compared with, measured in the same run.
    pub baseline: Option<Baseline>,
}

/// A baseline measured in the same run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Baseline {
    /// Its name, e.g. `raw_sqlite_insert_p99_ms`.
    pub metric: String,
    /// Its value, in the same unit.
    pub value: f64,
}

/// One scenario's metric without a baseline.
pub fn plain(metric: &str, value: f64, unit: &str) -> Metric {
    Metric {
        metric: metric.to_owned(),
        value,
        unit: unit.to_owned(),
        baseline: None,
    }
}

/// One scenario's metric beside its baseline.
pub fn against(metric: &str, value: f64, unit: &str, baseline: &str, base: f64) -> Metric {
    Metric {
        baseline: Some(Baseline {
            metric: baseline.to_owned(),
            value: base,
        }),
        ..plain(metric, value, unit)
    }
}

/// What the numbers were measured on: CPU model, cores, memory, kernel.
pub fn machine(quick: bool) -> serde_json::Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name") || l.starts_with("Model"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mem_mb = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024);
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
    serde_json::json!({
        "cpu": cpu, "cores": cores, "memory_mb": mem_mb, "kernel": kernel,
        "quick": quick,
    })
}

/// Value at quantile `q` (0–1) of sorted samples (nearest rank); 0 when empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The human table.
pub fn table(results: &[Metric]) -> String {
    let mut out = format!(
        "{:<34} {:>14} {:<10} {:<32} {:>14}\n",
        "metric", "value", "unit", "baseline", "baseline value"
    );
    for m in results {
        let (name, value) = m
            .baseline
            .as_ref()
            .map_or(("-".to_owned(), "-".to_owned()), |b| {
                (b.metric.clone(), format!("{:.2}", b.value))
            });
        out.push_str(&format!(
            "{:<34} {:>14.2} {:<10} {:<32} {:>14}\n",
            m.metric, m.value, m.unit, name, value
        ));
    }
    out
}

/// An SVG plot of a latency distribution: sorted samples (the empirical CDF), with p50 and
/// p99 marked.
pub fn latency_svg(title: &str, samples_ms: &[f64]) -> String {
    let mut sorted = samples_ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (w, h, pad) = (640.0, 360.0, 50.0);
    let max = sorted.last().copied().unwrap_or(1.0).max(1.0) * 1.05;
    let x = |v: f64| pad + v / max * (w - 2.0 * pad);
    let y = |f: f64| h - pad - f * (h - 2.0 * pad);
    let n = sorted.len().max(1) as f64;
    let points: Vec<String> = sorted
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", x(*v), y((i + 1) as f64 / n)))
        .collect();
    let p50 = quantile(&sorted, 0.5);
    let p99 = quantile(&sorted, 0.99);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{pad}\" y=\"24\" font-size=\"15\">{}</text>\n\
         <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">ms ({} samples, max {:.1})</text>\n\
         <text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\">fraction of lends</text>\n",
        escape(title),
        h - pad,
        w - pad,
        h - pad,
        h - pad,
        w / 2.0,
        h - 12.0,
        sorted.len(),
        max / 1.05,
        h / 2.0,
        h / 2.0,
    );
    svg.push_str(&format!(
        "<polyline fill=\"none\" stroke=\"#2266aa\" stroke-width=\"2\" points=\"{}\"/>\n",
        points.join(" ")
    ));
    for (label, v, color) in [("p50", p50, "#228833"), ("p99", p99, "#cc3311")] {
        svg.push_str(&format!(
            "<line x1=\"{0:.1}\" y1=\"{pad}\" x2=\"{0:.1}\" y2=\"{1}\" stroke=\"{color}\" \
             stroke-dasharray=\"4 3\"/>\n<text x=\"{2:.1}\" y=\"{3}\" fill=\"{color}\">{label} \
             {v:.1} ms</text>\n",
            x(v),
            h - pad,
            x(v) + 4.0,
            if label == "p50" {
                pad + 14.0
            } else {
                pad + 30.0
            },
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

/// An SVG bar chart of each metric with a baseline: value / baseline (1 = as good as the
/// baseline's number; the unit decides whether higher is better).
pub fn baseline_svg(results: &[Metric]) -> String {
    let rows: Vec<(&Metric, f64)> = results
        .iter()
        .filter_map(|m| {
            let b = m.baseline.as_ref()?;
            (b.value.abs() > f64::EPSILON).then(|| (m, m.value / b.value))
        })
        .collect();
    let (w, row_h, left) = (760.0, 28.0, 250.0);
    let h = 60.0 + row_h * rows.len() as f64;
    let max = rows.iter().map(|(_, r)| *r).fold(1.0_f64, f64::max) * 1.1;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"15\">CartWise value / baseline value, same run \
         (dashed line: 1)</text>\n"
    );
    let scale = |r: f64| r / max * (w - left - 110.0);
    for (i, (m, ratio)) in rows.iter().enumerate() {
        let top = 40.0 + row_h * i as f64;
        let base = m.baseline.as_ref().map_or("", |b| b.metric.as_str());
        svg.push_str(&format!(
            "<text x=\"10\" y=\"{:.1}\">{}</text>\n<rect x=\"{left}\" y=\"{top:.1}\" \
             width=\"{:.1}\" height=\"{:.1}\" fill=\"#2266aa\"/>\n<text x=\"{:.1}\" y=\"{:.1}\">\
             {ratio:.3}× {}</text>\n",
            top + 15.0,
            escape(&m.metric),
            scale(*ratio).max(1.0),
            row_h - 8.0,
            left + scale(*ratio).max(1.0) + 6.0,
            top + 15.0,
            escape(base),
        ));
    }
    svg.push_str(&format!(
        "<line x1=\"{0:.1}\" y1=\"36\" x2=\"{0:.1}\" y2=\"{1:.1}\" stroke=\"black\" \
         stroke-dasharray=\"3 3\"/>\n</svg>\n",
        left + scale(1.0),
        h - 10.0
    ));
    svg
}

/// `text` made safe inside SVG/XML text.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
