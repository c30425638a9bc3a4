//! The byte pipe under the driver: a serial port (USB RS485 adapter, or a simulator's PTY)
//! or a TCP connection to a KR-BU / serial-server bridge, behind one `Transport` trait.
//!
//! The trait only accepts `RequestFrame`s, which only the codec makes, so nothing that goes
//! through a transport can be the firmware-erasing `F5 B5` frame.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

use super::codec::RequestFrame;
use super::{Baud, RangeError};

/// Reads the drain loop makes before a send, at most (each returns at once).
const DRAIN_READS_MAX: usize = 64;

/// Where a bus is: `serial:/dev/ttyUSB0[@19200]`, `pty:PATH` (a serial path) or `tcp:HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusUri {
    /// A serial device; `baud` fixed, or `None` to probe 19200 → 115200 → 9600.
    Serial { path: PathBuf, baud: Option<Baud> },
    /// A TCP serial-server bridge; the bridge owns the line speed.
    Tcp { host: String, port: u16 },
}

/// A bus URI that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusUriError {
    /// Unknown scheme.
    #[error(
        "bus `{0}` has no known scheme: use serial:/dev/ttyUSB0[@19200], pty:PATH or tcp:HOST:PORT"
    )]
    Scheme(String),
    /// `tcp:` without a usable `HOST:PORT`.
    #[error("bus `{0}` needs HOST:PORT after tcp:, e.g. tcp:192.168.1.50:5000")]
    TcpAddress(String),
    /// A bad `@baud` suffix.
    #[error("bus `{uri}`: {source}")]
    Baud { uri: String, source: RangeError },
    /// An empty path.
    #[error("bus `{0}` names no device path")]
    Path(String),
}

impl FromStr for BusUri {
    type Err = BusUriError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = uri.strip_prefix("tcp:") {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| BusUriError::TcpAddress(uri.into()))?;
            let port = port
                .parse()
                .map_err(|_| BusUriError::TcpAddress(uri.into()))?;
            if host.is_empty() {
                return Err(BusUriError::TcpAddress(uri.into()));
            }
            return Ok(BusUri::Tcp {
                host: host.into(),
                port,
            });
        }
        let rest = uri
            .strip_prefix("serial:")
            .or_else(|| uri.strip_prefix("pty:"))
            .ok_or_else(|| BusUriError::Scheme(uri.into()))?;
        let (path, baud) = match rest.rsplit_once('@') {
            Some((path, bps)) => {
                let bps: u32 = bps.parse().map_err(|_| BusUriError::Baud {
                    uri: uri.into(),
                    source: RangeError::Baud(0),
                })?;
                let baud = Baud::from_bits_per_second(bps).map_err(|source| BusUriError::Baud {
                    uri: uri.into(),
                    source,
                })?;
                (path, Some(baud))
            }
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(BusUriError::Path(uri.into()));
        }
        Ok(BusUri::Serial {
            path: path.into(),
            baud,
        })
    }
}

impl fmt::Display for BusUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusUri::Serial { path, baud: None } => write!(f, "serial:{}", path.display()),
            BusUri::Serial {
                path,
                baud: Some(baud),
            } => {
                write!(f, "serial:{}@{}", path.display(), baud.bits_per_second())
            }
            BusUri::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
        }
    }
}

/// How frames must be paced on a transport (see `BusConfig::frame_gap` and
/// `BusConfig::bridge_frame_gap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pacing {
    /// The host drives the RS485 line itself (a USB adapter, a PTY): it must leave idle time
    /// after every frame for the boards' turnaround and framing.
    Serial,
    /// A serial-server bridge (KR-BU, ZNE-100TL) drives the line and does its own turnaround.
    /// It forwards a board's reply only once the line has fallen quiet, so after an answered
    /// frame nothing more is needed; a frame nobody answers (an unlock) needs the time the
    /// bridge takes to put it on the line before the next one arrives.
    Bridge,
}

/// A byte pipe to the RS485 line. One driver task owns it; nothing else touches it.
pub trait Transport: Send + 'static {
    /// Writes one whole request.
    fn send(&mut self, frame: &RequestFrame) -> impl Future<Output = io::Result<()>> + Send;

    /// Reads what has arrived (waiting for at least one byte); `Ok(0)` means the line closed.
    fn receive(&mut self, buf: &mut [u8]) -> impl Future<Output = io::Result<usize>> + Send;

    /// Drops everything already received (stale replies, line noise) before a request.
    fn discard_input(&mut self) -> impl Future<Output = io::Result<()>> + Send;

    /// Changes the line speed. TCP bridges own their line speed and ignore this.
    fn set_baud(&mut self, baud: Baud) -> io::Result<()>;

    /// The current line speed, or `None` where the transport has none (TCP).
    fn baud(&self) -> Option<Baud>;

    /// For messages: "serial /dev/ttyUSB0 at 19200 baud", "tcp 10.0.0.5:5000".
    fn describe(&self) -> String;

    /// How the driver paces frames on this transport.
    fn pacing(&self) -> Pacing;
}

/// A serial port: a USB RS485 adapter or the device end of a simulator PTY.
pub struct SerialTransport {
    path: PathBuf,
    baud: Baud,
    port: SerialStream,
}

impl SerialTransport {
    /// Opens `path` at `baud`, 8N1, no flow control, exclusively.
    pub fn open(path: PathBuf, baud: Baud) -> io::Result<Self> {
        let path_text = path.to_string_lossy().into_owned();
        let port = tokio_serial::new(path_text, baud.bits_per_second())
            .data_bits(tokio_serial::DataBits::Eight)
            .parity(tokio_serial::Parity::None)
            .stop_bits(tokio_serial::StopBits::One)
            .flow_control(tokio_serial::FlowControl::None)
            .timeout(Duration::from_millis(10))
            .open_native_async()
            .map_err(io::Error::from)?;
        Ok(Self { path, baud, port })
    }
}

impl Drop for SerialTransport {
    fn drop(&mut self) {
        // Release TIOCEXCL so the next opener (a technician's CLI, a restarted daemon) can
        // open the port: the flag outlives the file descriptor while anyone else holds it.
        let _ = self.port.set_exclusive(false);
    }
}

impl Transport for SerialTransport {
    async fn send(&mut self, frame: &RequestFrame) -> io::Result<()> {
        self.port.write_all(frame.as_bytes()).await?;
        self.port.flush().await
    }

    async fn receive(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.port.read(buf).await
    }

    async fn discard_input(&mut self) -> io::Result<()> {
        self.port
            .clear(tokio_serial::ClearBuffer::Input)
            .map_err(io::Error::from)?;
        let mut scratch = [0u8; 256];
        for _ in 0..DRAIN_READS_MAX {
            match self.port.try_read(&mut scratch) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn set_baud(&mut self, baud: Baud) -> io::Result<()> {
        self.port
            .set_baud_rate(baud.bits_per_second())
            .map_err(io::Error::from)?;
        self.baud = baud;
        Ok(())
    }

    fn baud(&self) -> Option<Baud> {
        Some(self.baud)
    }

    fn describe(&self) -> String {
        format!("serial {} at {}", self.path.display(), self.baud)
    }

    fn pacing(&self) -> Pacing {
        Pacing::Serial
    }
}

/// A TCP connection to a serial-server bridge (KR-BU, ZNE-100TL) or a simulator.
pub struct TcpTransport {
    peer: String,
    stream: TcpStream,
}

impl TcpTransport {
    /// Connects to `host:port`, giving up after `timeout`.
    pub async fn connect(host: &str, port: u16, timeout: Duration) -> io::Result<Self> {
        let connecting = TcpStream::connect((host, port));
        let stream = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Self {
            peer: format!("{host}:{port}"),
            stream,
        })
    }
}

impl Transport for TcpTransport {
    async fn send(&mut self, frame: &RequestFrame) -> io::Result<()> {
        self.stream.write_all(frame.as_bytes()).await
    }

    async fn receive(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf).await
    }

    async fn discard_input(&mut self) -> io::Result<()> {
        let mut scratch = [0u8; 256];
        for _ in 0..DRAIN_READS_MAX {
            match self.stream.try_read(&mut scratch) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "bridge closed",
                    ));
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn set_baud(&mut self, _baud: Baud) -> io::Result<()> {
        Ok(())
    }

    fn baud(&self) -> Option<Baud> {
        None
    }

    fn describe(&self) -> String {
        format!("tcp {}", self.peer)
    }

    fn pacing(&self) -> Pacing {
        Pacing::Bridge
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_uris_parse() {
        let serial: BusUri = "serial:/dev/ttyUSB0@115200".parse().unwrap();
        assert_eq!(
            serial,
            BusUri::Serial {
                path: "/dev/ttyUSB0".into(),
                baud: Some(Baud::B115200)
            }
        );
        assert_eq!(serial.to_string(), "serial:/dev/ttyUSB0@115200");
        let pty: BusUri = "pty:/tmp/cu16".parse().unwrap();
        assert_eq!(
            pty,
            BusUri::Serial {
                path: "/tmp/cu16".into(),
                baud: None
            }
        );
        let tcp: BusUri = "tcp:127.0.0.1:5000".parse().unwrap();
        assert_eq!(
            tcp,
            BusUri::Tcp {
                host: "127.0.0.1".into(),
                port: 5000
            }
        );
        assert!("tcp:nohost".parse::<BusUri>().is_err());
        assert!("serial:/dev/x@1234".parse::<BusUri>().is_err());
        assert!("usb:/dev/x".parse::<BusUri>().is_err());
    }
}
