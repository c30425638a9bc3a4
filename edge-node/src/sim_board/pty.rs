//! A pseudo-terminal for the simulator: the board side reads the master end; the device end
//! is linked at a path the real serial driver opens, so tests run the real serial code path.
//!
//! The simulator keeps the device end open too, which keeps the master readable when the
//! driver closes and reopens the port, and lets the simulator read the line speed the driver
//! set (a board at another speed hears only noise, so it stays silent). The pair comes from
//! `tokio_serial::SerialStream::pair`, a safe wrapper (the workspace denies `unsafe`).

use std::io;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::{SerialPort, SerialStream};

use crate::cu16::Baud;

/// One PTY pair with a symlink to its device end.
#[derive(Debug)]
pub struct PtyLine {
    master: SerialStream,
    device_end: SerialStream,
    link: PathBuf,
    device: PathBuf,
}

impl PtyLine {
    /// Creates the pair (raw mode) and links `link` to the device end. An existing symlink
    /// at `link` is replaced; any other file there is left alone (an error).
    pub fn create(link: &Path) -> io::Result<Self> {
        let (master, mut device_end) = SerialStream::pair().map_err(io::Error::from)?;
        let device: PathBuf = device_end
            .name()
            .ok_or_else(|| io::Error::other("the new PTY has no device name"))?
            .into();
        device_end
            .set_baud_rate(Baud::B19200.bits_per_second())
            .map_err(io::Error::from)?;
        replace_symlink(&device, link)?;
        Ok(Self {
            master,
            device_end,
            link: link.to_path_buf(),
            device,
        })
    }

    /// The path the driver opens (the symlink).
    pub fn link(&self) -> &Path {
        &self.link
    }

    /// The device the symlink points at, e.g. `/dev/pts/7`.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// The speed the driver last set on its end, if it is one a CU16 supports.
    pub fn line_baud(&self) -> Option<Baud> {
        let bps = self.device_end.baud_rate().ok()?;
        Baud::from_bits_per_second(bps).ok()
    }

    /// Reads what the driver wrote (waits for at least one byte).
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.master.read(buf).await
    }

    /// Writes all of `bytes` towards the driver.
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.master.write_all(bytes).await
    }
}

impl Drop for PtyLine {
    fn drop(&mut self) {
        if std::fs::read_link(&self.link).is_ok_and(|target| target == self.device) {
            let _ = std::fs::remove_file(&self.link);
        }
    }
}

fn replace_symlink(device: &Path, link: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(link) {
        Ok(meta) if meta.file_type().is_symlink() => std::fs::remove_file(link)?,
        Ok(_) => {
            let message = format!(
                "{} exists and is not a symlink; not replacing it",
                link.display()
            );
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, message));
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    std::os::unix::fs::symlink(device, link)
}
