//! `cartwise-edge enroll`: trade a one-time code for this device's certificate.
//!
//! `cartwise-edge enroll --url 'cartwise-enroll://HOST:PORT?code=CODE&ca=SHA256HEX'`, or the
//! same as `--hub HOST:PORT --code CODE --ca SHA256HEX`. The key is made on the Pi and never
//! leaves it; the hub is trusted only if its CA has the given fingerprint.

use std::path::PathBuf;

use anyhow::Context;
use cartwise_sync_core::identity::{EnrollUrl, parse_sha256_fingerprint};
use chrono::DateTime;
use clap::Args;

use crate::identity::{self, IdentityError};

/// `cartwise-edge enroll`.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// The enrollment URL printed by `cartwise-hub device add` (or scanned from its QR code).
    #[arg(long, conflicts_with_all = ["hub", "code", "ca"])]
    pub url: Option<String>,
    /// The hub's QUIC address, HOST:PORT.
    #[arg(long, requires_all = ["code", "ca"])]
    pub hub: Option<String>,
    /// The one-time enrollment code, e.g. K7Q2-9XWM-AB3C-DE4F-GH5J.
    #[arg(long)]
    pub code: Option<String>,
    /// SHA-256 fingerprint of the hub's platform CA (64 hex digits).
    #[arg(long)]
    pub ca: Option<String>,
    /// Data directory where identity.toml is written.
    #[arg(long, default_value = "var/edge")]
    pub data: PathBuf,
    /// Replace an existing identity (re-enrollment with a new code).
    #[arg(long)]
    pub force: bool,
}

impl EnrollArgs {
    /// The hub, code and pinned fingerprint, from `--url` or the separate flags.
    pub fn target(&self) -> anyhow::Result<EnrollUrl> {
        if let Some(url) = &self.url {
            return Ok(url.parse()?);
        }
        match (&self.hub, &self.code, &self.ca) {
            (Some(hub), Some(code), Some(ca)) => Ok(EnrollUrl {
                hub: hub.clone(),
                code: code.clone(),
                ca_sha256: parse_sha256_fingerprint(ca)?,
            }),
            _ => anyhow::bail!(
                "give --url 'cartwise-enroll://…', or all of --hub HOST:PORT --code CODE --ca SHA256HEX"
            ),
        }
    }
}

/// Runs `cartwise-edge enroll`: prints a summary of the identity on success.
pub async fn run(args: EnrollArgs) -> anyhow::Result<()> {
    let target = args.target()?;
    if !args.force {
        match identity::load(&args.data) {
            Err(IdentityError::NotEnrolled(_)) => {}
            Ok(existing) => anyhow::bail!(
                "this device is already enrolled as {} in {}; pass --force to replace it",
                existing.peer().device,
                identity::identity_path(&args.data).display()
            ),
            Err(error) => {
                return Err(error)
                    .context("the existing identity is unusable; pass --force to replace it");
            }
        }
    }
    let endpoint = identity::client_endpoint()?;
    let enrolled = identity::enroll_exchange(
        &endpoint,
        &target.hub,
        &target.code,
        target.ca_sha256,
        &args.data,
    )
    .await?;
    endpoint.wait_idle().await;
    let peer = enrolled.peer();
    let expires = DateTime::from_timestamp(enrolled.credentials.not_after_unix, 0)
        .map(|at| at.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| enrolled.credentials.not_after_unix.to_string());
    println!("enrolled with {}", target.hub);
    println!("chain    {}", peer.chain);
    println!("branch   {}", peer.branch);
    println!("device   {}", peer.device);
    println!("expires  {expires} (renewed automatically)");
    println!("identity {}", identity::identity_path(&args.data).display());
    Ok(())
}
