//! KERONG KR-CU16 RS485 lock boards: bus-level value types shared by the codec, driver and simulator.
//!
//! The protocol notes live in `shared/reference/kerong-cu16.md`. Every type here is checked
//! on construction, so a value that exists is one the wire can carry: a `BoardAddress` is
//! 0–9, a `Lock` is 1–16, a `PulseTime` is at most 60 s.
//!
//! Architecture Invariant: nothing in this module or `codec` does I/O or reads a clock.

pub mod codec;
#[cfg(feature = "node")]
pub mod driver;
#[cfg(feature = "node")]
pub mod poller;
#[cfg(feature = "node")]
pub mod transport;

use std::fmt;
use std::time::Duration;

pub use codec::{Decoder, Frame, Reply, Request, RequestFrame};
#[cfg(feature = "node")]
pub use driver::{Bus, BusConfig, BusError, PreRead, Sensed, UnlockOutcome};
#[cfg(feature = "node")]
pub use poller::{PollEvent, PollerConfig, PollerHandle, spawn_poller};
#[cfg(feature = "node")]
pub use transport::{BusUri, Pacing, Transport};

/// Highest board address a bus may carry (DIP switch 0–9, at most 10 boards).
pub const BOARD_ADDRESS_MAX: u8 = 9;
/// Locks per board.
pub const LOCKS_PER_BOARD: u8 = 16;
/// Longest unlock pulse the board accepts, in 10 ms units (60 s).
pub const PULSE_UNITS_MAX: u16 = 6000;
/// Longest delayed unlock the board accepts, in seconds.
pub const UNLOCK_DELAY_S_MAX: u8 = 250;

/// A value out of the range the CU16 protocol allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Board addresses are set by DIP switch, 0–9.
    #[error("board address {0} is out of range: a CU16 bus has boards 0 to 9")]
    BoardAddress(u8),
    /// Locks are numbered 1–16 on every board.
    #[error("lock {0} is out of range: a CU16 board has locks 1 to 16")]
    Lock(u8),
    /// The unlock pulse is set in 10 ms steps up to 60 s.
    #[error("unlock pulse {0} ms is not allowed: use a multiple of 10 ms from 0 to 60000")]
    PulseMillis(u32),
    /// The delayed unlock is at most 250 s.
    #[error("unlock delay {0} s is out of range: use 0 to 250 seconds")]
    UnlockDelay(u32),
    /// Only four line speeds exist.
    #[error("baud {0} is not supported by the CU16: use 9600, 19200, 57600 or 115200")]
    Baud(u32),
}

/// The DIP-switch address of one board on the bus, 0–9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BoardAddress(u8);

impl BoardAddress {
    /// Checks that `address` is 0–9.
    pub fn new(address: u8) -> Result<Self, RangeError> {
        if address <= BOARD_ADDRESS_MAX {
            Ok(Self(address))
        } else {
            Err(RangeError::BoardAddress(address))
        }
    }

    /// The address as set on the DIP switch.
    pub fn get(self) -> u8 {
        self.0
    }

    /// Every address a bus can carry, in order.
    pub fn all() -> impl Iterator<Item = BoardAddress> {
        (0..=BOARD_ADDRESS_MAX).map(BoardAddress)
    }
}

impl fmt::Display for BoardAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "board {}", self.0)
    }
}

/// One lock of a board, numbered 1–16 as printed on the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lock(u8);

impl Lock {
    /// Checks that `number` is 1–16.
    pub fn new(number: u8) -> Result<Self, RangeError> {
        if (1..=LOCKS_PER_BOARD).contains(&number) {
            Ok(Self(number))
        } else {
            Err(RangeError::Lock(number))
        }
    }

    /// The lock number, 1–16.
    pub fn get(self) -> u8 {
        self.0
    }

    /// The wire index, 0–15 (lock 1 is index 0).
    pub fn index(self) -> u8 {
        self.0 - 1
    }

    /// The lock at wire index `index` (0–15).
    pub fn from_index(index: u8) -> Result<Self, RangeError> {
        Self::new(index.saturating_add(1))
    }

    /// Every lock of a board, 1 to 16.
    pub fn all() -> impl Iterator<Item = Lock> {
        (1..=LOCKS_PER_BOARD).map(Lock)
    }

    fn bit(self) -> u16 {
        1 << self.index()
    }
}

impl fmt::Display for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lock {}", self.0)
    }
}

/// Who a setting or query is for: one board, or every board on the bus (`ADDR 0xF0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// One board.
    Board(BoardAddress),
    /// Every board; each answers in address order.
    AllBoards,
}

/// Sixteen bits, bit 0 = lock 1, exactly as the board sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LockBits(pub u16);

impl LockBits {
    /// Every bit set.
    pub const ALL: LockBits = LockBits(u16::MAX);

    /// Whether `lock`'s bit is set.
    pub fn contains(self, lock: Lock) -> bool {
        self.0 & lock.bit() != 0
    }

    /// This set with `lock`'s bit set to `on`.
    pub fn with(self, lock: Lock, on: bool) -> LockBits {
        if on {
            LockBits(self.0 | lock.bit())
        } else {
            LockBits(self.0 & !lock.bit())
        }
    }

    /// The locks whose bit is set.
    pub fn iter(self) -> impl Iterator<Item = Lock> {
        Lock::all().filter(move |lock| self.contains(*lock))
    }

    /// Low byte (locks 1–8) and high byte (locks 9–16), the order they travel in.
    pub fn to_wire(self) -> [u8; 2] {
        [(self.0 & 0xFF) as u8, (self.0 >> 8) as u8]
    }

    /// From the two wire bytes (locks 1–8, then 9–16).
    pub fn from_wire(low: u8, high: u8) -> LockBits {
        LockBits(u16::from(low) | (u16::from(high) << 8))
    }
}

/// How a board's hook bit reads: the vendor's default is 1 = latched, but it flips with the
/// lock's NO/NC micro-switch, so it is configured per board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HookPolarity {
    /// Bit 1 = hook latched (vendor default).
    #[default]
    LatchedHigh,
    /// Bit 0 = hook latched.
    LatchedLow,
}

impl HookPolarity {
    /// Turns wire hook bits into the set of latched locks.
    pub fn latched(self, wire: LockBits) -> LockBits {
        match self {
            HookPolarity::LatchedHigh => wire,
            HookPolarity::LatchedLow => LockBits(!wire.0),
        }
    }

    /// Turns the set of latched locks into wire hook bits (the inverse of `latched`).
    pub fn wire(self, latched: LockBits) -> LockBits {
        self.latched(latched)
    }
}

/// The unlock pulse, in the board's 10 ms units (0–6000, i.e. 0–60 s; default 550 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PulseTime(u16);

impl PulseTime {
    /// The factory default, 550 ms.
    pub const DEFAULT: PulseTime = PulseTime(55);

    /// From a whole number of milliseconds, a multiple of 10 up to 60000.
    pub fn from_millis(ms: u32) -> Result<Self, RangeError> {
        let units = ms / 10;
        if !ms.is_multiple_of(10) || units > u32::from(PULSE_UNITS_MAX) {
            return Err(RangeError::PulseMillis(ms));
        }
        u16::try_from(units)
            .map(PulseTime)
            .map_err(|_| RangeError::PulseMillis(ms))
    }

    /// From the board's 10 ms units.
    pub fn from_units(units: u16) -> Result<Self, RangeError> {
        if units <= PULSE_UNITS_MAX {
            Ok(Self(units))
        } else {
            Err(RangeError::PulseMillis(u32::from(units) * 10))
        }
    }

    /// The board's 10 ms units.
    pub fn units(self) -> u16 {
        self.0
    }

    /// The pulse length.
    pub fn duration(self) -> Duration {
        Duration::from_millis(u64::from(self.0) * 10)
    }
}

/// Delayed unlock: how long the board waits after 0x31 before pulsing, 0–250 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UnlockDelay(u8);

impl UnlockDelay {
    /// No delay (the factory default, and what cart posts want).
    pub const NONE: UnlockDelay = UnlockDelay(0);

    /// Checks that `seconds` is 0–250.
    pub fn from_secs(seconds: u32) -> Result<Self, RangeError> {
        match u8::try_from(seconds) {
            Ok(s) if s <= UNLOCK_DELAY_S_MAX => Ok(Self(s)),
            _ => Err(RangeError::UnlockDelay(seconds)),
        }
    }

    /// The delay in seconds.
    pub fn secs(self) -> u8 {
        self.0
    }
}

/// The four line speeds a CU16 can be set to (the 0x40 flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Baud {
    /// Flag 0.
    B9600,
    /// Flag 1, the factory default.
    B19200,
    /// Flag 2.
    B57600,
    /// Flag 3.
    B115200,
}

impl Baud {
    /// The order to try when a board does not answer: factory default first.
    pub const PROBE_ORDER: [Baud; 3] = [Baud::B19200, Baud::B115200, Baud::B9600];

    /// Bits per second.
    pub fn bits_per_second(self) -> u32 {
        match self {
            Baud::B9600 => 9600,
            Baud::B19200 => 19200,
            Baud::B57600 => 57600,
            Baud::B115200 => 115200,
        }
    }

    /// From bits per second.
    pub fn from_bits_per_second(bps: u32) -> Result<Self, RangeError> {
        match bps {
            9600 => Ok(Baud::B9600),
            19200 => Ok(Baud::B19200),
            57600 => Ok(Baud::B57600),
            115200 => Ok(Baud::B115200),
            other => Err(RangeError::Baud(other)),
        }
    }

    /// The 0x40 flag byte.
    pub fn flag(self) -> u8 {
        match self {
            Baud::B9600 => 0,
            Baud::B19200 => 1,
            Baud::B57600 => 2,
            Baud::B115200 => 3,
        }
    }

    /// From the 0x40 flag byte.
    pub fn from_flag(flag: u8) -> Option<Self> {
        match flag {
            0 => Some(Baud::B9600),
            1 => Some(Baud::B19200),
            2 => Some(Baud::B57600),
            3 => Some(Baud::B115200),
            _ => None,
        }
    }
}

impl fmt::Display for Baud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} baud", self.bits_per_second())
    }
}

/// What one board reported, with its hook polarity already applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BoardStatus {
    /// The board that answered.
    pub board: BoardAddress,
    /// Locks whose hook is latched (closed on a cart or an empty post).
    pub latched: LockBits,
    /// Locks whose infrared sensor sees a cart.
    pub present: LockBits,
}

impl BoardStatus {
    /// Whether `lock`'s hook is latched.
    pub fn is_latched(&self, lock: Lock) -> bool {
        self.latched.contains(lock)
    }

    /// Whether a cart is in front of `lock`.
    pub fn has_cart(&self, lock: Lock) -> bool {
        self.present.contains(lock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_enforced() {
        assert!(BoardAddress::new(9).is_ok());
        assert_eq!(BoardAddress::new(10), Err(RangeError::BoardAddress(10)));
        assert!(Lock::new(0).is_err());
        assert!(Lock::new(17).is_err());
        assert_eq!(Lock::new(16).map(Lock::index), Ok(15));
        assert_eq!(PulseTime::from_millis(550), Ok(PulseTime::DEFAULT));
        assert!(PulseTime::from_millis(555).is_err());
        assert!(PulseTime::from_millis(60_010).is_err());
        assert!(UnlockDelay::from_secs(251).is_err());
        assert_eq!(Baud::from_bits_per_second(19200), Ok(Baud::B19200));
    }

    #[test]
    fn polarity_round_trips_and_bits_travel_low_byte_first() {
        let latched = LockBits(0x00FF);
        for polarity in [HookPolarity::LatchedHigh, HookPolarity::LatchedLow] {
            assert_eq!(polarity.latched(polarity.wire(latched)), latched);
        }
        assert_eq!(LockBits(0x0301).to_wire(), [0x01, 0x03]);
        assert_eq!(LockBits::from_wire(0x01, 0x03), LockBits(0x0301));
        let lock9 = Lock::new(9).unwrap();
        assert!(LockBits(0x0100).contains(lock9));
        assert_eq!(LockBits(0).with(lock9, true), LockBits(0x0100));
    }
}
