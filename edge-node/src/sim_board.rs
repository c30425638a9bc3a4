//! A simulated bus of KERONG CU16 boards, good enough that tests, the demo and technicians
//! drive the real driver against it: over TCP (like a KR-BU bridge) or over a PTY (the real
//! serial code path), with an HTTP control API to move carts and inject faults.
//!
//! `spawn` is the one entry point: the `cartwise-edge sim-board` process and in-process tests
//! both use it, with port 0 and an injected shutdown signal.
//!
//! Architecture Invariant: `boards` (the core) is pure; `server`, `pty` and `control` only
//! move bytes and JSON in and out of it.

pub mod boards;
pub mod cli;
pub mod control;
pub mod pty;
pub mod server;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use boards::{Fault, SimBoard, SimBus, SimError};
pub use server::SimShared;

use crate::cu16::{Baud, BusUri};

/// Where the simulated bus is offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP port, like a KR-BU serial-server bridge (`tcp:HOST:PORT`, port 0 = any).
    Tcp(SocketAddr),
    /// A PTY whose device end is symlinked at this path (`pty:PATH`).
    Pty(PathBuf),
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(addr) = text.strip_prefix("tcp:") {
            let addr = addr
                .parse()
                .map_err(|e| format!("`{addr}` is not HOST:PORT: {e}"))?;
            return Ok(Listen::Tcp(addr));
        }
        match text.strip_prefix("pty:") {
            Some(path) if !path.is_empty() => Ok(Listen::Pty(path.into())),
            _ => Err(format!("`{text}`: use tcp:HOST:PORT or pty:PATH")),
        }
    }
}

/// How to run the simulator.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Boards at addresses 0..boards-1 (1–10).
    pub boards: u8,
    /// Where the bus is offered.
    pub listen: Listen,
    /// Where the control HTTP API listens, if anywhere.
    pub control: Option<SocketAddr>,
    /// A shopper takes the cart this long after each unlock.
    pub auto_take: Option<Duration>,
    /// The speed the boards listen at (matters on a PTY only).
    pub baud: Baud,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            boards: 1,
            listen: Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 0))),
            control: None,
            auto_take: None,
            baud: Baud::B19200,
        }
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimStartError {
    /// Bad board count.
    #[error("cannot simulate that bus: {0}; use --boards 1 to 10")]
    Boards(#[from] SimError),
    /// A listener could not be opened.
    #[error("cannot listen on {what}: {source}")]
    Listen { what: String, source: io::Error },
}

/// Where the running simulator can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundBus {
    /// The bound TCP address.
    Tcp(SocketAddr),
    /// The symlink and the PTY device it points at.
    Pty { link: PathBuf, device: PathBuf },
}

/// A running simulator. Dropping it does not stop it; the shutdown signal does.
#[derive(Debug)]
pub struct SimHandle {
    /// The bus address clients connect to.
    pub bus: BoundBus,
    /// The control API address.
    pub control: Option<SocketAddr>,
    sim: Arc<SimShared>,
    tasks: JoinSet<()>,
}

impl SimHandle {
    /// The URI the driver and `cartwise-edge bus --bus` take.
    pub fn bus_uri(&self) -> BusUri {
        match &self.bus {
            BoundBus::Tcp(addr) => BusUri::Tcp {
                host: addr.ip().to_string(),
                port: addr.port(),
            },
            BoundBus::Pty { link, .. } => BusUri::Serial {
                path: link.clone(),
                baud: None,
            },
        }
    }

    /// The simulated bus, for in-process tests and demos (same state the API shows).
    pub fn sim(&self) -> &Arc<SimShared> {
        &self.sim
    }

    /// Waits until every simulator task has ended (after the shutdown signal).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts the simulator; it runs until `shutdown` completes.
pub async fn spawn(
    options: SimOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<SimHandle, SimStartError> {
    let bus = SimBus::new(options.boards, options.baud, options.auto_take)?;
    let sim = Arc::new(SimShared::new(bus));
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let bound = match &options.listen {
        Listen::Tcp(addr) => {
            let listener = TcpListener::bind(addr).await.map_err(listen_error(addr))?;
            let local = listener.local_addr().map_err(listen_error(addr))?;
            tasks.spawn(server::serve_tcp(
                listener,
                Arc::clone(&sim),
                stopped.clone(),
            ));
            BoundBus::Tcp(local)
        }
        Listen::Pty(link) => {
            let pty = pty::PtyLine::create(link).map_err(listen_error(link.display()))?;
            let bound = BoundBus::Pty {
                link: link.clone(),
                device: pty.device().to_path_buf(),
            };
            tasks.spawn(server::serve_pty(pty, Arc::clone(&sim), stopped.clone()));
            bound
        }
    };
    let control = match options.control {
        Some(addr) => Some(spawn_control(addr, &sim, stopped, &mut tasks).await?),
        None => None,
    };
    Ok(SimHandle {
        bus: bound,
        control,
        sim,
        tasks,
    })
}

async fn spawn_control(
    addr: SocketAddr,
    sim: &Arc<SimShared>,
    mut stopped: watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) -> Result<SocketAddr, SimStartError> {
    let listener = TcpListener::bind(addr).await.map_err(listen_error(addr))?;
    let local = listener.local_addr().map_err(listen_error(addr))?;
    let app = control::router(Arc::clone(sim));
    tasks.spawn(async move {
        let stop = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!(%error, "control API stopped");
        }
    });
    Ok(local)
}

fn listen_error(what: impl ToString) -> impl FnOnce(io::Error) -> SimStartError {
    let what = what.to_string();
    move |source| SimStartError::Listen { what, source }
}
