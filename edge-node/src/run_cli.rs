//! The daemon's command lines: `cartwise-edge run` and `cartwise-edge time set`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::clock::SystemClock;
use crate::config::EdgeConfig;
use crate::daemon;
use crate::shopper::SmsSenderConfig;

/// `cartwise-edge run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The TOML config file (see edge-node/config.example.toml); defaults apply without one.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory (SQLite, live documents, shopper-token key); overrides `data_dir`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Kiosk server address, HOST:PORT; overrides `http.listen`.
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Lock bus: serial:/dev/ttyUSB0[@baud], tcp:HOST:PORT or pty:PATH; overrides `bus.uri`.
    #[arg(long)]
    pub bus: Option<String>,
    /// Board addresses on the bus, comma separated (e.g. 0,1); overrides `bus.boards`.
    #[arg(long, value_delimiter = ',')]
    pub boards: Option<Vec<u8>>,
    /// Development SMS sender: append messages as JSON lines to FILE; overrides `[sms]`.
    #[arg(long, value_name = "FILE")]
    pub sms_outbox: Option<PathBuf>,
}

impl RunArgs {
    /// The config file (or the defaults) with the flags applied, validated.
    pub fn config(&self) -> anyhow::Result<EdgeConfig> {
        let mut config = match &self.config {
            Some(path) => EdgeConfig::load(path)?,
            None => EdgeConfig::default(),
        };
        if let Some(data) = &self.data {
            config.data_dir = data.clone();
        }
        if let Some(http) = self.http {
            config.http.listen = http;
        }
        if let Some(bus) = &self.bus {
            config.bus.uri = bus.clone();
        }
        if let Some(boards) = &self.boards {
            config.bus.boards = boards.clone();
        }
        if let Some(outbox) = &self.sms_outbox {
            config.sms = Some(SmsSenderConfig::Outbox {
                path: outbox.clone(),
            });
        }
        config.validate()?;
        Ok(config)
    }
}

/// Runs the daemon until Ctrl-C or SIGTERM.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let running = daemon::spawn(config, Arc::new(SystemClock::new()), shutdown_signal()).await?;
    println!("edge kiosk listening on http://{}", running.http);
    running.wait().await;
    Ok(())
}

/// `cartwise-edge time …`.
#[derive(Debug, Args)]
pub struct TimeArgs {
    #[command(subcommand)]
    pub command: TimeCommand,
}

#[derive(Debug, Subcommand)]
pub enum TimeCommand {
    /// Tell the running node the true time (RFC 3339, e.g. 2026-11-21T10:00:00Z); the current
    /// boot's timestamps are corrected from it.
    Set {
        /// The true time now.
        time: String,
        /// The node's kiosk address (the request must come from the same machine).
        #[arg(long, default_value = "127.0.0.1:8000")]
        http: SocketAddr,
    },
}

/// Sends the trusted time to the running node.
pub async fn time(args: TimeArgs) -> anyhow::Result<()> {
    let TimeCommand::Set { time, http } = args.command;
    let parsed = chrono::DateTime::parse_from_rfc3339(&time).with_context(|| {
        format!("`{time}` is not an RFC 3339 time such as 2026-11-21T10:00:00Z")
    })?;
    let body = serde_json::json!({ "trusted_time": parsed.to_rfc3339() }).to_string();
    let answer = post_json(http, "/api/v1/admin/time", &body).await?;
    println!("{answer}");
    Ok(())
}

/// A minimal HTTP/1.1 POST over loopback (the daemon's admin endpoint accepts loopback only).
async fn post_json(addr: SocketAddr, path: &str, body: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .context("the node did not answer in 5 s")?
    .with_context(|| format!("cannot reach the node at {addr}; is `cartwise-edge run` running?"))?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .context("the node did not answer in 10 s")??;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!("the node refused: {}", body.trim());
    }
    Ok(body.trim().to_string())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
