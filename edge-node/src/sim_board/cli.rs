//! `cartwise-edge sim-board`: the simulator as a process. Prints one line per listener
//! (`bus tcp:127.0.0.1:40123`, `control 127.0.0.1:40124`) so scripts using port 0 can learn
//! the addresses, then runs until Ctrl-C.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use super::{BoundBus, Listen, SimOptions};
use crate::cu16::Baud;

/// Run a simulated bus of KERONG CU16 lock boards.
#[derive(Debug, clap::Args)]
pub struct SimBoardArgs {
    /// Boards on the bus, at addresses 0..N-1 (1–10).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=10))]
    pub boards: u8,
    /// Where to offer the bus: tcp:HOST:PORT (port 0 = any) or pty:PATH (a symlink to a PTY).
    #[arg(long, default_value = "tcp:127.0.0.1:0")]
    pub listen: Listen,
    /// Where to serve the control HTTP API (GET /state, POST /take, /dock, /fault).
    #[arg(long)]
    pub control: Option<SocketAddr>,
    /// A shopper takes the cart this many milliseconds after each unlock.
    #[arg(long)]
    pub auto_take_ms: Option<u64>,
    /// Line speed the boards listen at, in bits per second (matters on a PTY only).
    #[arg(long, default_value_t = 19200)]
    pub baud: u32,
}

/// Runs the simulator until Ctrl-C.
pub async fn run(args: SimBoardArgs) -> anyhow::Result<()> {
    let options = SimOptions {
        boards: args.boards,
        listen: args.listen,
        control: args.control,
        auto_take: args.auto_take_ms.map(Duration::from_millis),
        baud: Baud::from_bits_per_second(args.baud)?,
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let handle = super::spawn(options, shutdown).await?;
    let mut out = std::io::stdout().lock();
    match &handle.bus {
        BoundBus::Tcp(addr) => writeln!(out, "bus tcp:{addr}")?,
        BoundBus::Pty { link, device } => {
            writeln!(out, "bus pty:{} -> {}", link.display(), device.display())?;
        }
    }
    if let Some(control) = handle.control {
        writeln!(out, "control {control}")?;
    }
    out.flush()?;
    drop(out);
    handle.wait().await;
    Ok(())
}
