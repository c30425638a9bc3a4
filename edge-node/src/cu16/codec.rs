//! Pure CU16 wire codec: typed requests and replies, and a streaming decoder that resyncs.
//!
//! Requests are an enum, so the only bytes this crate can put on a bus are the ones listed
//! here: there is no raw-bytes send path, and no way to build the `F5 B5 …` upgrade frame that
//! erases a board's firmware. Replies are decoded losslessly (every data byte is kept).
//!
//! Framing: `0x02`/`0x03` are not escaped, so frames are found by shape (start byte, address,
//! command, length, `ETX`, checksum). Where two shapes are complete and valid the longest
//! wins; a complete valid frame is returned without waiting for a longer one, so a 0x37 *set*
//! whose value bytes are `03 xx` and that arrives split after five bytes reads as a query.

mod decode;

pub use decode::{DecodeError, Decoder, Invalid, decode_frame};

use super::{Baud, BoardAddress, Lock, LockBits, PulseTime, Target, UnlockDelay};

/// Start of a CU16 frame.
pub const STX: u8 = 0x02;
/// End of a CU16 frame's body; the checksum follows it.
pub const ETX: u8 = 0x03;
/// Address byte for bus-wide commands.
pub const ADDR_ALL_BOARDS: u8 = 0xF0;
/// First byte of the version ("OTA") framing.
pub const VERSION_HEADER: u8 = 0xF5;
/// Trailer byte of the version framing (before the checksum).
pub const VERSION_TRAILER: u8 = 0x5F;
/// Version framing command "get version". (0xB5, "enter upgrade mode", is deliberately absent.)
pub const VERSION_COMMAND: u8 = 0xB6;
/// Version framing address meaning "every board".
pub const VERSION_ADDR_ALL_BOARDS: u8 = 0x64;
/// Every CU16 reply is nine bytes.
pub const REPLY_LEN: usize = 9;
/// The longest frame of either framing.
pub const FRAME_LEN_MAX: usize = 9;
/// Unconsumed bytes the streaming decoder keeps; older bytes are dropped as garbage.
pub const DECODER_BUFFER_MAX: usize = 1024;

/// Request command bytes.
pub(crate) mod cmd {
    pub const STATUS: u8 = 0x30;
    pub const UNLOCK: u8 = 0x31;
    pub const STATUS_ALL: u8 = 0x32;
    pub const UNLOCK_ALL: u8 = 0x33;
    pub const PULSE: u8 = 0x37;
    pub const DELAY: u8 = 0x39;
    pub const BAUD: u8 = 0x40;
}

/// Reply command bytes.
pub(crate) mod rcmd {
    pub const STATUS: u8 = 0x35;
    pub const BUS_STATUS: u8 = 0x36;
    pub const PULSE: u8 = 0x38;
    pub const DELAY: u8 = 0x39;
    pub const BAUD: u8 = 0x40;
}

/// Low byte of the sum of `bytes` (the CU16 checksum; not an XOR).
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte))
}

/// Everything the host may ask of a board. There is deliberately no "raw" variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Request {
    /// 0x30: hooks and sensors of one board (reply 0x35).
    Status { board: BoardAddress },
    /// 0x31: pulse one lock (no reply).
    Unlock { board: BoardAddress, lock: Lock },
    /// 0x32 at 0xF0: every board answers 0x36, in address order.
    StatusAll,
    /// 0x33: pulse all 16 locks of a board one by one (reply 0x35, state before).
    UnlockAll { board: BoardAddress },
    /// 0x37 without data: read the unlock pulse (reply 0x38).
    QueryPulse { target: Target },
    /// 0x37 with data: set the unlock pulse (reply 0x38). A setting write.
    SetPulse { target: Target, pulse: PulseTime },
    /// 0x39: set the delayed unlock (reply 0x39). A setting write.
    SetUnlockDelay { target: Target, delay: UnlockDelay },
    /// 0x40: set the line speed (reply 0x40). A setting write.
    SetBaud { target: Target, baud: Baud },
    /// `F5 B6`: firmware and hardware version (different framing).
    Version { target: Target },
}

impl Request {
    /// The bytes to put on the wire.
    pub fn encode(&self) -> RequestFrame {
        match *self {
            Request::Status { board } => RequestFrame::stx(board_byte(board), cmd::STATUS, &[]),
            Request::Unlock { board, lock } => {
                RequestFrame::stx(board_byte(board) | lock.index(), cmd::UNLOCK, &[])
            }
            Request::StatusAll => RequestFrame::stx(ADDR_ALL_BOARDS, cmd::STATUS_ALL, &[]),
            Request::UnlockAll { board } => {
                RequestFrame::stx(board_byte(board), cmd::UNLOCK_ALL, &[])
            }
            Request::QueryPulse { target } => {
                RequestFrame::stx(target_byte(target), cmd::PULSE, &[])
            }
            Request::SetPulse { target, pulse } => RequestFrame::stx(
                target_byte(target),
                cmd::PULSE,
                &pulse.units().to_be_bytes(),
            ),
            Request::SetUnlockDelay { target, delay } => {
                RequestFrame::stx(target_byte(target), cmd::DELAY, &[delay.secs()])
            }
            Request::SetBaud { target, baud } => {
                RequestFrame::stx(target_byte(target), cmd::BAUD, &[baud.flag()])
            }
            Request::Version { target } => RequestFrame::version(target),
        }
    }

    /// Whether the board stores something and needs the 500 ms guard afterwards.
    pub fn is_setting(&self) -> bool {
        matches!(
            self,
            Request::SetPulse { .. } | Request::SetUnlockDelay { .. } | Request::SetBaud { .. }
        )
    }

    /// Whether every board on the bus answers (so replies are collected until a quiet gap).
    pub fn is_bus_wide(&self) -> bool {
        match self {
            Request::StatusAll => true,
            Request::QueryPulse { target }
            | Request::SetPulse { target, .. }
            | Request::SetUnlockDelay { target, .. }
            | Request::SetBaud { target, .. }
            | Request::Version { target } => *target == Target::AllBoards,
            Request::Status { .. } | Request::Unlock { .. } | Request::UnlockAll { .. } => false,
        }
    }

    /// A short name for messages ("status", "unlock", …).
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status { .. } => "status",
            Request::Unlock { .. } => "unlock",
            Request::StatusAll => "bus-wide status",
            Request::UnlockAll { .. } => "unlock-all",
            Request::QueryPulse { .. } => "pulse query",
            Request::SetPulse { .. } => "pulse setting",
            Request::SetUnlockDelay { .. } => "unlock-delay setting",
            Request::SetBaud { .. } => "baud setting",
            Request::Version { .. } => "version query",
        }
    }

    /// Whether `reply` is an answer to this request (from the board it was sent to).
    pub fn is_answered_by(&self, reply: &Reply) -> bool {
        let kind_matches = match self {
            Request::Status { .. } | Request::UnlockAll { .. } => {
                matches!(
                    reply,
                    Reply::Status {
                        source: StatusSource::Board,
                        ..
                    }
                )
            }
            Request::StatusAll => matches!(
                reply,
                Reply::Status {
                    source: StatusSource::Bus,
                    ..
                }
            ),
            Request::QueryPulse { .. } | Request::SetPulse { .. } => {
                matches!(reply, Reply::Pulse { .. })
            }
            Request::SetUnlockDelay { .. } => matches!(reply, Reply::UnlockDelay { .. }),
            Request::SetBaud { .. } => matches!(reply, Reply::Baud { .. }),
            Request::Version { .. } => matches!(reply, Reply::Version { .. }),
            Request::Unlock { .. } => false,
        };
        kind_matches && self.addresses(reply.board())
    }

    fn addresses(&self, board: BoardAddress) -> bool {
        match *self {
            Request::Status { board: b }
            | Request::Unlock { board: b, .. }
            | Request::UnlockAll { board: b } => b == board,
            Request::StatusAll => true,
            Request::QueryPulse { target }
            | Request::SetPulse { target, .. }
            | Request::SetUnlockDelay { target, .. }
            | Request::SetBaud { target, .. }
            | Request::Version { target } => match target {
                Target::Board(b) => b == board,
                Target::AllBoards => true,
            },
        }
    }
}

fn board_byte(board: BoardAddress) -> u8 {
    board.get() << 4
}

fn target_byte(target: Target) -> u8 {
    match target {
        Target::Board(board) => board_byte(board),
        Target::AllBoards => ADDR_ALL_BOARDS,
    }
}

/// The encoded bytes of one request. Only `Request::encode` makes these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestFrame {
    bytes: [u8; FRAME_LEN_MAX],
    len: usize,
}

impl RequestFrame {
    fn stx(addr: u8, command: u8, data: &[u8]) -> Self {
        let mut bytes = [0u8; FRAME_LEN_MAX];
        bytes[..3].copy_from_slice(&[STX, addr, command]);
        bytes[3..3 + data.len()].copy_from_slice(data);
        let etx_at = 3 + data.len();
        bytes[etx_at] = ETX;
        bytes[etx_at + 1] = checksum(&bytes[..=etx_at]);
        Self {
            bytes,
            len: etx_at + 2,
        }
    }

    fn version(target: Target) -> Self {
        let addr = match target {
            Target::Board(board) => board.get(),
            Target::AllBoards => VERSION_ADDR_ALL_BOARDS,
        };
        let mut bytes = [0u8; FRAME_LEN_MAX];
        bytes[..5].copy_from_slice(&[VERSION_HEADER, VERSION_COMMAND, addr, 0, VERSION_TRAILER]);
        bytes[5] = checksum(&bytes[..5]);
        Self { bytes, len: 6 }
    }

    /// The wire bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Which command a 0x35/0x36 status reply answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusSource {
    /// 0x35: reply to 0x30 or 0x33.
    Board,
    /// 0x36: one board's reply to the bus-wide 0x32.
    Bus,
}

/// Everything a board can send. Hook bits are as on the wire (polarity not applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reply {
    /// 0x35 / 0x36: hook bits (D1, D2) and infrared "cart present" bits (D3, D4).
    Status {
        board: BoardAddress,
        source: StatusSource,
        hooks: LockBits,
        present: LockBits,
    },
    /// 0x38: hooks and the unlock pulse in 10 ms units (big-endian D3, D4), as sent.
    Pulse {
        board: BoardAddress,
        hooks: LockBits,
        pulse_units: u16,
    },
    /// 0x39: hooks, D3 as sent, and the delay that was set (D4, seconds).
    UnlockDelay {
        board: BoardAddress,
        hooks: LockBits,
        data3: u8,
        delay_s: u8,
    },
    /// 0x40: hooks, D3 as sent, and the baud flag that was set (D4).
    Baud {
        board: BoardAddress,
        hooks: LockBits,
        data3: u8,
        flag: u8,
    },
    /// `F5 B6` version reply: software and hardware versions.
    Version {
        board: BoardAddress,
        software: u8,
        hardware: u8,
    },
}

impl Reply {
    /// The board that sent it.
    pub fn board(&self) -> BoardAddress {
        match *self {
            Reply::Status { board, .. }
            | Reply::Pulse { board, .. }
            | Reply::UnlockDelay { board, .. }
            | Reply::Baud { board, .. }
            | Reply::Version { board, .. } => board,
        }
    }

    /// The bytes a board would send (the simulator uses this).
    pub fn encode(&self) -> ReplyFrame {
        match *self {
            Reply::Status {
                board,
                source,
                hooks,
                present,
            } => {
                let command = match source {
                    StatusSource::Board => rcmd::STATUS,
                    StatusSource::Bus => rcmd::BUS_STATUS,
                };
                let [h1, h2] = hooks.to_wire();
                let [p1, p2] = present.to_wire();
                ReplyFrame::stx(board, command, [h1, h2, p1, p2])
            }
            Reply::Pulse {
                board,
                hooks,
                pulse_units,
            } => {
                let [h1, h2] = hooks.to_wire();
                let [hi, lo] = pulse_units.to_be_bytes();
                ReplyFrame::stx(board, rcmd::PULSE, [h1, h2, hi, lo])
            }
            Reply::UnlockDelay {
                board,
                hooks,
                data3,
                delay_s,
            } => {
                let [h1, h2] = hooks.to_wire();
                ReplyFrame::stx(board, rcmd::DELAY, [h1, h2, data3, delay_s])
            }
            Reply::Baud {
                board,
                hooks,
                data3,
                flag,
            } => {
                let [h1, h2] = hooks.to_wire();
                ReplyFrame::stx(board, rcmd::BAUD, [h1, h2, data3, flag])
            }
            Reply::Version {
                board,
                software,
                hardware,
            } => ReplyFrame::version(board, software, hardware),
        }
    }
}

/// The encoded bytes of one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyFrame {
    bytes: [u8; FRAME_LEN_MAX],
    len: usize,
}

impl ReplyFrame {
    fn stx(board: BoardAddress, command: u8, data: [u8; 4]) -> Self {
        let mut bytes = [0u8; FRAME_LEN_MAX];
        bytes[..3].copy_from_slice(&[STX, board_byte(board), command]);
        bytes[3..7].copy_from_slice(&data);
        bytes[7] = ETX;
        bytes[8] = checksum(&bytes[..8]);
        Self {
            bytes,
            len: REPLY_LEN,
        }
    }

    fn version(board: BoardAddress, software: u8, hardware: u8) -> Self {
        let mut bytes = [0u8; FRAME_LEN_MAX];
        bytes[..5].copy_from_slice(&[
            VERSION_HEADER,
            VERSION_COMMAND,
            board.get(),
            2,
            VERSION_TRAILER,
        ]);
        bytes[6] = software;
        bytes[7] = hardware;
        bytes[5] = checksum(&bytes[..5])
            .wrapping_add(software)
            .wrapping_add(hardware);
        Self { bytes, len: 8 }
    }

    /// The wire bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The wire bytes, mutable (the simulator's `corrupt_sum` fault uses this).
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.len]
    }
}

/// One decoded frame: a reply, or a request (on the host side, an echo of what it sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Frame {
    /// A host → board frame.
    Request(Request),
    /// A board → host frame.
    Reply(Reply),
}
