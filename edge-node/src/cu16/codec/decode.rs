//! Decoding CU16 frames: one frame at the front of a buffer (`decode_frame`, which tells
//! `Incomplete` from `Invalid`), and the streaming `Decoder` that resyncs byte by byte.

use super::{
    ADDR_ALL_BOARDS, DECODER_BUFFER_MAX, ETX, Frame, Reply, Request, STX, StatusSource,
    VERSION_ADDR_ALL_BOARDS, VERSION_COMMAND, VERSION_HEADER, VERSION_TRAILER, checksum, cmd, rcmd,
};
use crate::cu16::{
    BOARD_ADDRESS_MAX, Baud, BoardAddress, Lock, LockBits, PulseTime, Target, UnlockDelay,
};

/// Why the bytes at the front of a buffer are not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// They may become one: at least `needed` more bytes are required.
    #[error("incomplete frame: at least {needed} more bytes needed")]
    Incomplete { needed: usize },
    /// They never will: drop one byte and try again.
    #[error("not a frame: {0}")]
    Invalid(Invalid),
}

/// The first rule a would-be frame broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Not `0x02` or `0xF5`.
    #[error("not a start byte")]
    Start,
    /// An address no board or bus-wide command uses.
    #[error("bad address byte")]
    Address,
    /// A command byte this protocol does not define (or a version command other than B6).
    #[error("unknown command")]
    Command,
    /// `ETX` (or the version trailer) not where the length puts it.
    #[error("terminator missing")]
    Terminator,
    /// The checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// A data byte out of the protocol's range.
    #[error("data out of range")]
    Data,
}

/// Decodes one frame at the front of `buf`, returning it and its length.
pub fn decode_frame(buf: &[u8]) -> Result<(Frame, usize), DecodeError> {
    match buf.first() {
        None => Err(DecodeError::Incomplete { needed: 1 }),
        Some(&STX) => decode_stx(buf),
        Some(&VERSION_HEADER) => decode_version(buf),
        Some(_) => Err(DecodeError::Invalid(Invalid::Start)),
    }
}

/// Frame lengths a `STX`-framed command byte can have, longest first.
fn stx_lengths(command: u8) -> &'static [usize] {
    match command {
        cmd::PULSE => &[7, 5],
        cmd::DELAY | cmd::BAUD => &[9, 6],
        cmd::STATUS | cmd::UNLOCK | cmd::STATUS_ALL | cmd::UNLOCK_ALL => &[5],
        rcmd::STATUS | rcmd::BUS_STATUS | rcmd::PULSE => &[9],
        _ => &[],
    }
}

fn address_possible(addr: u8) -> bool {
    addr >> 4 <= BOARD_ADDRESS_MAX || addr == ADDR_ALL_BOARDS
}

fn decode_stx(buf: &[u8]) -> Result<(Frame, usize), DecodeError> {
    if let Some(&addr) = buf.get(1)
        && !address_possible(addr)
    {
        return Err(DecodeError::Invalid(Invalid::Address));
    }
    let Some(&command) = buf.get(2) else {
        return Err(DecodeError::Incomplete {
            needed: 3 - buf.len(),
        });
    };
    let lengths = stx_lengths(command);
    let mut failure = Invalid::Command;
    let mut needed: Option<usize> = None;
    for &len in lengths {
        match buf.get(..len) {
            Some(frame) => match parse_stx(frame) {
                Ok(decoded) => return Ok((decoded, len)),
                Err(invalid) => failure = invalid,
            },
            None if buf.get(len - 2).is_none_or(|&b| b == ETX) => {
                let more = len - buf.len();
                needed = Some(needed.map_or(more, |n| n.min(more)));
            }
            None => failure = Invalid::Terminator,
        }
    }
    match needed {
        Some(needed) => Err(DecodeError::Incomplete { needed }),
        None => Err(DecodeError::Invalid(failure)),
    }
}

/// Parses one complete `STX`-framed frame of the length the caller chose.
fn parse_stx(frame: &[u8]) -> Result<Frame, Invalid> {
    let len = frame.len();
    if frame[len - 2] != ETX {
        return Err(Invalid::Terminator);
    }
    if checksum(&frame[..len - 1]) != frame[len - 1] {
        return Err(Invalid::Checksum);
    }
    let (addr, command, data) = (frame[1], frame[2], &frame[3..len - 2]);
    match *data {
        [] => parse_short_request(addr, command).map(Frame::Request),
        [value] => parse_setting_request(addr, command, value).map(Frame::Request),
        [hi, lo] if command == cmd::PULSE => {
            let pulse =
                PulseTime::from_units(u16::from_be_bytes([hi, lo])).map_err(|_| Invalid::Data)?;
            Ok(Frame::Request(Request::SetPulse {
                target: target_of(addr)?,
                pulse,
            }))
        }
        [d1, d2, d3, d4] => parse_reply(addr, command, [d1, d2, d3, d4]).map(Frame::Reply),
        _ => Err(Invalid::Command),
    }
}

fn board_of(addr: u8) -> Result<BoardAddress, Invalid> {
    BoardAddress::new(addr >> 4).map_err(|_| Invalid::Address)
}

/// A board address with the lock nibble zero, as replies and per-board commands carry it.
fn board_only(addr: u8) -> Result<BoardAddress, Invalid> {
    if addr & 0x0F != 0 {
        return Err(Invalid::Address);
    }
    board_of(addr)
}

fn target_of(addr: u8) -> Result<Target, Invalid> {
    if addr == ADDR_ALL_BOARDS {
        Ok(Target::AllBoards)
    } else {
        board_only(addr).map(Target::Board)
    }
}

fn parse_short_request(addr: u8, command: u8) -> Result<Request, Invalid> {
    match command {
        // Boards ignore the lock nibble of 0x30; several public apps set it.
        cmd::STATUS => Ok(Request::Status {
            board: board_of(addr)?,
        }),
        cmd::UNLOCK => {
            let lock = Lock::from_index(addr & 0x0F).map_err(|_| Invalid::Address)?;
            Ok(Request::Unlock {
                board: board_of(addr)?,
                lock,
            })
        }
        cmd::STATUS_ALL if addr == ADDR_ALL_BOARDS => Ok(Request::StatusAll),
        cmd::STATUS_ALL => Err(Invalid::Address),
        cmd::UNLOCK_ALL => Ok(Request::UnlockAll {
            board: board_only(addr)?,
        }),
        cmd::PULSE => Ok(Request::QueryPulse {
            target: target_of(addr)?,
        }),
        _ => Err(Invalid::Command),
    }
}

fn parse_setting_request(addr: u8, command: u8, value: u8) -> Result<Request, Invalid> {
    let target = target_of(addr)?;
    match command {
        cmd::DELAY => {
            let delay = UnlockDelay::from_secs(u32::from(value)).map_err(|_| Invalid::Data)?;
            Ok(Request::SetUnlockDelay { target, delay })
        }
        cmd::BAUD => {
            let baud = Baud::from_flag(value).ok_or(Invalid::Data)?;
            Ok(Request::SetBaud { target, baud })
        }
        _ => Err(Invalid::Command),
    }
}

fn parse_reply(addr: u8, command: u8, data: [u8; 4]) -> Result<Reply, Invalid> {
    let board = board_only(addr)?;
    let hooks = LockBits::from_wire(data[0], data[1]);
    let status = |source| Reply::Status {
        board,
        source,
        hooks,
        present: LockBits::from_wire(data[2], data[3]),
    };
    match command {
        rcmd::STATUS => Ok(status(StatusSource::Board)),
        rcmd::BUS_STATUS => Ok(status(StatusSource::Bus)),
        rcmd::PULSE => Ok(Reply::Pulse {
            board,
            hooks,
            pulse_units: u16::from_be_bytes([data[2], data[3]]),
        }),
        rcmd::DELAY => Ok(Reply::UnlockDelay {
            board,
            hooks,
            data3: data[2],
            delay_s: data[3],
        }),
        rcmd::BAUD => Ok(Reply::Baud {
            board,
            hooks,
            data3: data[2],
            flag: data[3],
        }),
        _ => Err(Invalid::Command),
    }
}

/// `F5 B6 ADDR LEN 5F SUM [DATA…]`: a 6-byte request (LEN 0) or an 8-byte reply (LEN 2).
fn decode_version(buf: &[u8]) -> Result<(Frame, usize), DecodeError> {
    let invalid = |why| Err(DecodeError::Invalid(why));
    if buf.get(1).is_some_and(|&c| c != VERSION_COMMAND) {
        return invalid(Invalid::Command);
    }
    if buf
        .get(2)
        .is_some_and(|&a| a > BOARD_ADDRESS_MAX && a != VERSION_ADDR_ALL_BOARDS)
    {
        return invalid(Invalid::Address);
    }
    let Some(&data_len) = buf.get(3) else {
        return Err(DecodeError::Incomplete {
            needed: 4 - buf.len(),
        });
    };
    let len = match data_len {
        0 => 6,
        2 => 8,
        _ => return invalid(Invalid::Data),
    };
    if buf.get(4).is_some_and(|&t| t != VERSION_TRAILER) {
        return invalid(Invalid::Terminator);
    }
    let Some(frame) = buf.get(..len) else {
        return Err(DecodeError::Incomplete {
            needed: len - buf.len(),
        });
    };
    let sum = checksum(&frame[..5]).wrapping_add(checksum(&frame[6..]));
    if sum != frame[5] {
        return invalid(Invalid::Checksum);
    }
    let addr = frame[2];
    let decoded = if len == 6 {
        let target = match addr {
            VERSION_ADDR_ALL_BOARDS => Target::AllBoards,
            board => Target::Board(BoardAddress::new(board).map_err(|_| bad_address())?),
        };
        Frame::Request(Request::Version { target })
    } else {
        let board = BoardAddress::new(addr).map_err(|_| bad_address())?;
        Frame::Reply(Reply::Version {
            board,
            software: frame[6],
            hardware: frame[7],
        })
    };
    Ok((decoded, len))
}

fn bad_address() -> DecodeError {
    DecodeError::Invalid(Invalid::Address)
}

/// Streaming decoder: feed it bytes as they arrive, pull frames out.
///
/// Garbage is skipped one byte at a time until a frame lines up; at most
/// `DECODER_BUFFER_MAX` unconsumed bytes are kept.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    skipped_bytes: u64,
    echoes_dropped: u64,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.drain(..self.start);
        self.start = 0;
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > DECODER_BUFFER_MAX {
            let excess = self.buf.len() - DECODER_BUFFER_MAX;
            self.buf.drain(..excess);
            self.skipped_bytes += excess as u64;
        }
    }

    /// The next whole frame, skipping garbage; `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let pending = &self.buf[self.start..];
            match decode_frame(pending) {
                Ok((frame, len)) => {
                    self.start += len;
                    return Some(frame);
                }
                Err(DecodeError::Incomplete { .. }) => return None,
                Err(DecodeError::Invalid(_)) => {
                    self.start += 1;
                    self.skipped_bytes += 1;
                }
            }
        }
    }

    /// The next reply, dropping echoed requests (some USB adapters echo what they send).
    pub fn next_reply(&mut self) -> Option<Reply> {
        loop {
            match self.next_frame()? {
                Frame::Reply(reply) => return Some(reply),
                Frame::Request(_) => self.echoes_dropped += 1,
            }
        }
    }

    /// Forgets every buffered byte (before a new request).
    pub fn clear(&mut self) {
        self.skipped_bytes += (self.buf.len() - self.start) as u64;
        self.buf.clear();
        self.start = 0;
    }

    /// Bytes waiting for the rest of their frame.
    pub fn pending_len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Bytes dropped as garbage so far.
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped_bytes
    }

    /// Echoed requests dropped so far by `next_reply`.
    pub fn echoes_dropped(&self) -> u64 {
        self.echoes_dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_is_told_from_invalid() {
        assert_eq!(
            decode_frame(&[]),
            Err(DecodeError::Incomplete { needed: 1 })
        );
        assert_eq!(
            decode_frame(&[0x02, 0x00, 0x35]),
            Err(DecodeError::Incomplete { needed: 6 })
        );
        assert_eq!(
            decode_frame(&[0x02, 0xA0]),
            Err(DecodeError::Invalid(Invalid::Address))
        );
        assert_eq!(
            decode_frame(&[0x02, 0x00, 0x99]),
            Err(DecodeError::Invalid(Invalid::Command))
        );
        assert_eq!(
            decode_frame(&[0x07]),
            Err(DecodeError::Invalid(Invalid::Start))
        );
        let bad_sum = [0x02, 0x00, 0x30, 0x03, 0x36];
        assert_eq!(
            decode_frame(&bad_sum),
            Err(DecodeError::Invalid(Invalid::Checksum))
        );
        let upgrade = [0xF5, 0xB5, 0x00, 0x04, 0x5F, 0xE7];
        assert_eq!(
            decode_frame(&upgrade),
            Err(DecodeError::Invalid(Invalid::Command))
        );
    }

    #[test]
    fn streaming_drops_echo_and_resyncs() {
        let mut decoder = Decoder::new();
        decoder.feed(&[0xFF, 0x02, 0x00, 0x30, 0x03, 0x35, 0x02, 0x00, 0x35, 0x01]);
        assert_eq!(decoder.next_reply(), None);
        decoder.feed(&[0x00, 0x01, 0x00, 0x03, 0x3C]);
        let reply = decoder.next_reply();
        assert!(
            matches!(
                reply,
                Some(Reply::Status {
                    hooks: LockBits(1),
                    ..
                })
            ),
            "{reply:?}"
        );
        assert_eq!((decoder.skipped_bytes(), decoder.echoes_dropped()), (1, 1));
        assert_eq!(decoder.pending_len(), 0);
    }
}
