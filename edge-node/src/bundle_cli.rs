//! `cartwise-edge bundle export|import`: bundles on a USB stick when even the LAN is not usable
//! by the laptop. Run on the Pi, with the technician's credential directory (the laptop's
//! `cartwise-tech` home copied to the stick: `credential.json`, `key.pem`).
//!
//! The command talks to the running daemon over its own LAN listener on this machine
//! (`[lan] listen`), as the technician's laptop would: the daemon alone writes the store and
//! the live document, and the bundle goes through exactly the checks and the code of a LAN
//! session (`tech_session.rs`): the credential against the Pi's corrected clock and branch,
//! the hub's signature, the scope and the sequence of an intents bundle, and an entry in the
//! technician log for each use, allowed or refused.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::config::EdgeConfig;
use crate::tech::carry::Carry;
use crate::tech::lan_cli::{exchange, refused};
use crate::tech::ui::{Progress, Summary};

/// `cartwise-edge bundle …`.
#[derive(Debug, Args)]
pub struct BundleArgs {
    #[command(subcommand)]
    pub command: BundleCommand,
}

/// Where the running daemon and the technician's credential are.
#[derive(Debug, Clone, Args)]
pub struct Reach {
    /// The technician's credential directory (`credential.json` and `key.pem`, as
    /// `cartwise-tech login` wrote them).
    #[arg(long, value_name = "DIR")]
    pub credential: PathBuf,
    /// The running node's config file, to find its LAN listener (`[lan] listen`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The running node's LAN listener, HOST:PORT (overrides the config).
    #[arg(long)]
    pub lan: Option<SocketAddr>,
}

/// `bundle` subcommands.
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Writes this Pi's signed facts bundle to FILE, for the technician to push to the hub.
    Export {
        /// Where to write the bundle.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        reach: Reach,
    },
    /// Applies the hub's signed intents bundle FILE to this Pi.
    Import {
        /// The intents bundle (`intents-<branch>.cwb` from the technician's laptop).
        file: PathBuf,
        #[command(flatten)]
        reach: Reach,
    },
}

fn lan_address(reach: &Reach) -> anyhow::Result<String> {
    if let Some(lan) = reach.lan {
        return Ok(lan.to_string());
    }
    let config = match &reach.config {
        Some(path) => EdgeConfig::load(path)?,
        None => EdgeConfig::default(),
    };
    let listen = config.lan.listen.ok_or_else(|| {
        anyhow::anyhow!(
            "the node has no LAN listener (`[lan] listen` in its config); set one, or pass --lan HOST:PORT"
        )
    })?;
    // A listener on every interface is reached on loopback.
    let host = if listen.ip().is_unspecified() {
        if listen.is_ipv4() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            std::net::IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
        }
    } else {
        listen.ip()
    };
    Ok(SocketAddr::new(host, listen.port()).to_string())
}

/// Runs a `bundle` command.
pub async fn run(args: BundleArgs) -> anyhow::Result<()> {
    match args.command {
        BundleCommand::Export { out, reach } => {
            let carry = Carry::open(&reach.credential)?;
            let address = lan_address(&reach)?;
            let mut progress = Progress::new("bundle export", 4);
            let result = exchange(&carry, &address, None, false, &mut progress).await;
            progress.finish(if result.is_ok() { "done" } else { "failed" });
            let exchange = result?;
            let temp = out.with_extension("cwb.tmp");
            std::fs::write(&temp, &exchange.facts)
                .and_then(|()| std::fs::rename(&temp, &out))
                .with_context(|| format!("cannot write {}", out.display()))?;
            Summary::new("bundle export")
                .row("device", exchange.pi.device)
                .row("branch", exchange.pi.branch)
                .row("bytes", exchange.facts.len())
                .row("written to", out.display())
                .print();
            Ok(())
        }
        BundleCommand::Import { file, reach } => {
            let bytes = std::fs::read(&file)
                .with_context(|| format!("cannot read the bundle {}", file.display()))?;
            let carry = Carry::open(&reach.credential)?;
            let address = lan_address(&reach)?;
            let mut progress = Progress::new("bundle import", 4);
            let result = exchange(&carry, &address, Some(bytes), false, &mut progress).await;
            progress.finish(if result.is_ok() { "done" } else { "failed" });
            let exchange = result?;
            let Some(answer) = exchange.intents_result else {
                bail!("the node did not answer the bundle; see its log");
            };
            Summary::new("bundle import")
                .row("device", exchange.pi.device)
                .row("bundle", answer.seq)
                .row("applied", answer.applied)
                .row("node said", &answer.message)
                .print();
            if refused(&answer) {
                bail!("the bundle was refused: {}", answer.message);
            }
            Ok(())
        }
    }
}
