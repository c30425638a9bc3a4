//! The RSS part of the lend benchmark: a real `cartwise-edge run` process against its own
//! simulator, driven through the kiosk HTTP API (request-otp, assign, initiate-return + dock),
//! then `VmRSS` read from `/proc/PID/status` while it idles with the poller running.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cartwise_edge_node::cu16::Lock;
use serde_json::{Value, json};

use super::{BOARDS, OPEN_RENTALS_MAX, READY_WAIT_MAX, Sim, start_sim};

pub(super) struct RssReport {
    /// What was measured: the binary and how it was driven, or the in-process fallback.
    pub(super) source: String,
    pub(super) rss_kb: u64,
    pub(super) hwm_kb: Option<u64>,
}

/// `VmRSS` of `/proc/<pid>/status` in kB.
pub(super) fn rss_kb(pid: &str) -> Option<u64> {
    proc_status_kb(pid, "VmRSS:")
}

fn proc_status_kb(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The `cartwise-edge` binary cargo built with this bench, else one left in target/.
fn edge_binary() -> Option<PathBuf> {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_cartwise-edge"));
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    [
        built,
        target.join("release/cartwise-edge"),
        target.join("debug/cartwise-edge"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

pub(super) async fn rss_phase(dir: &Path, lends: usize) -> anyhow::Result<Option<RssReport>> {
    let Some(binary) = edge_binary() else {
        return Ok(None);
    };
    let sim = start_sim().await?;
    let data = dir.join("process");
    std::fs::create_dir_all(&data)?;
    let config_path = data.join("edge.toml");
    // Kiosk rate limits raised: the bench is one kiosk renting to many phones quickly.
    std::fs::write(
        &config_path,
        "[shopper.rate_limits]\n\
         otp_requests_per_kiosk = { requests = 100000, window_ms = 600000 }\n\
         otp_verifications_per_kiosk = { requests = 100000, window_ms = 600000 }\n",
    )?;
    let outbox = data.join("outbox.jsonl");
    let boards: Vec<String> = (0..BOARDS).map(|b| b.to_string()).collect();
    let mut child = tokio::process::Command::new(&binary)
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .arg("--data")
        .arg(&data)
        .args(["--http", "127.0.0.1:0", "--bus"])
        .arg(format!("tcp:{}", sim.addr))
        .arg("--boards")
        .arg(boards.join(","))
        .arg("--sms-outbox")
        .arg(&outbox)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let pid = child
        .id()
        .context("the edge process has no pid")?
        .to_string();
    let driven = drive_process(&mut child, &sim, &outbox, lends).await;
    // Steady state: the node idles with the poller reading all ten boards.
    let mut rss = 0;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rss = rss.max(rss_kb(&pid).unwrap_or(0));
    }
    let hwm_kb = proc_status_kb(&pid, "VmHWM:");
    child.kill().await?;
    let done = driven?;
    Ok(Some(RssReport {
        source: format!(
            "{} (`run`, {BOARDS} boards polled, {done} lends + returns over HTTP)",
            binary.display()
        ),
        rss_kb: rss,
        hwm_kb,
    }))
}

/// Waits for the kiosk address, then lends and returns through the kiosk API.
async fn drive_process(
    child: &mut tokio::process::Child,
    sim: &Sim,
    outbox: &Path,
    lends: usize,
) -> anyhow::Result<usize> {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(READY_WAIT_MAX, lines.next_line())
        .await
        .context("the edge process did not start")??
        .context("the edge process exited")?;
    let http = line
        .rsplit("http://")
        .next()
        .context("no kiosk address printed")?
        .trim()
        .to_string();
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        client
            .post(format!("http://{http}{path}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    // Every post available: the node has read all ten boards once.
    let posts = usize::from(BOARDS) * 16;
    let deadline = Instant::now() + READY_WAIT_MAX;
    loop {
        let url = format!("http://{http}/carts/available");
        let available = client.get(url).send().await?.json_text().await?;
        if available.as_array().map(Vec::len) == Some(posts) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the edge process did not see all {posts} posts: {available}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut open: VecDeque<String> = VecDeque::new();
    for n in 0..lends {
        let phone = format!("052{:07}", n);
        let answer = post("/auth/request-otp", json!({ "phone": phone })).await?;
        if !answer.status().is_success() {
            bail!("request-otp: {}", answer.text().await?);
        }
        let deadline = Instant::now() + READY_WAIT_MAX;
        let code = loop {
            if let Some(code) = outbox_code(outbox, &phone)? {
                break code;
            }
            if Instant::now() > deadline {
                bail!("no code in {}", outbox.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let answer = post("/carts/assign", json!({ "phone": phone, "otp_code": code })).await?;
        if !answer.status().is_success() {
            bail!("assign for {phone}: {}", answer.text().await?);
        }
        open.push_back(phone);
        if open.len() > OPEN_RENTALS_MAX / 2
            && let Some(phone) = open.pop_front()
        {
            let answer: Value = post("/carts/initiate-return", json!({ "phone": phone }))
                .await?
                .json_text()
                .await?;
            // Posts are numbered from 1, 16 per board in address order.
            let cart = answer["cart_id"].as_u64().context("no cart_id")?;
            let index = cart.checked_sub(1).context("cart_id 0")?;
            let board = u8::try_from(index / 16)?;
            let lock = Lock::new(u8::try_from(index % 16 + 1)?)?;
            sim.handle
                .sim()
                .with_bus(|bus, now| bus.dock(now, board, lock))?;
        }
    }
    Ok(lends)
}

/// The last code the outbox holds for `phone` (national form).
fn outbox_code(outbox: &Path, phone: &str) -> anyhow::Result<Option<String>> {
    let e164 = format!("+972{}", &phone[1..]);
    let Ok(text) = std::fs::read_to_string(outbox) else {
        return Ok(None);
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["to"] == e164.as_str())
        .filter_map(|v| v["code"].as_str().map(str::to_string))
        .next_back())
}

trait JsonText {
    async fn json_text(self) -> anyhow::Result<Value>;
}

impl JsonText for reqwest::Response {
    /// The body as JSON, failing with the body's text on a non-2xx status.
    async fn json_text(self) -> anyhow::Result<Value> {
        let ok = self.status().is_success();
        let text = self.text().await?;
        if !ok {
            bail!("{text}");
        }
        Ok(serde_json::from_str(&text)?)
    }
}
