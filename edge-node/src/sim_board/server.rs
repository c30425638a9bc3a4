//! The simulator's I/O shell: moves bytes between a line (TCP client or PTY) and the pure
//! `SimBus`, honouring each reply's delay. It makes no decisions of its own.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::boards::{SimBus, Transmit};
use super::pty::PtyLine;
use crate::cu16::Baud;
use crate::cu16::codec::Decoder;

/// Bytes read from a line at a time.
const READ_CHUNK: usize = 256;

/// The simulated bus and its clock, shared by every line and the control API.
#[derive(Debug)]
pub struct SimShared {
    bus: Mutex<SimBus>,
    started: Instant,
}

impl SimShared {
    pub(super) fn new(bus: SimBus) -> Self {
        Self {
            bus: Mutex::new(bus),
            started: Instant::now(),
        }
    }

    /// Time since the simulator started: the `now` its core runs on.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Runs `f` on the bus with the current time. A poisoned lock is recovered: the bus
    /// state is plain data and stays consistent between calls.
    pub fn with_bus<R>(&self, f: impl FnOnce(&mut SimBus, Duration) -> R) -> R {
        let now = self.now();
        let mut bus = self
            .bus
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut bus, now)
    }
}

/// A byte line to a bus master.
trait Line {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// The speed the master runs the line at, where a line has one.
    fn baud(&self) -> Option<Baud>;
}

impl Line for TcpStream {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        AsyncReadExt::read(self, buf).await
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        AsyncWriteExt::write_all(self, bytes).await
    }

    fn baud(&self) -> Option<Baud> {
        None
    }
}

impl Line for PtyLine {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        PtyLine::read(self, buf).await
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        PtyLine::write_all(self, bytes).await
    }

    fn baud(&self) -> Option<Baud> {
        self.line_baud()
    }
}

/// Accepts TCP clients until shutdown; each client is a master on the same simulated bus.
pub(super) async fn serve_tcp(
    listener: TcpListener,
    sim: Arc<SimShared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tracing::info!(%peer, "bus client connected");
                let (sim, shutdown) = (Arc::clone(&sim), shutdown.clone());
                tokio::spawn(async move {
                    if let Err(error) = serve_line(stream, sim, shutdown).await {
                        tracing::info!(%peer, %error, "bus client gone");
                    }
                });
            }
            Err(error) => tracing::warn!(%error, "accept failed"),
        }
    }
}

/// Serves the PTY until shutdown.
pub(super) async fn serve_pty(pty: PtyLine, sim: Arc<SimShared>, shutdown: watch::Receiver<bool>) {
    if let Err(error) = serve_line(pty, sim, shutdown).await {
        tracing::warn!(%error, "pty line failed");
    }
}

async fn serve_line<L: Line>(
    mut line: L,
    sim: Arc<SimShared>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut decoder = Decoder::new();
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        let read = tokio::select! {
            read = line.read(&mut chunk) => read?,
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        };
        if read == 0 {
            return Ok(());
        }
        let baud = line.baud();
        let transmits: Vec<Transmit> =
            sim.with_bus(|bus, now| bus.receive(now, &mut decoder, &chunk[..read], baud));
        for transmit in transmits {
            tokio::select! {
                () = tokio::time::sleep(transmit.delay) => {}
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            }
            line.write_all(&transmit.bytes).await?;
        }
    }
}
