//! The hybrid logical clock that orders every event: `Hlc` values (totally ordered, encoded
//! as a `u128`, 16 big-endian bytes or a sortable string) and the `HlcClock` that issues them.
//!
//! An `Hlc` is (wall_ms: 48 bits, counter: 16 bits, node: 64 bits), compared in that order.
//! `wall_ms` follows the largest physical time seen, locally or from a peer; `counter` orders
//! events within one `wall_ms` and keeps the clock moving forward while the physical clock
//! stands still or goes backwards; `node` breaks ties between writers, so two events of
//! different nodes never compare equal. When the counter would pass 65 535 the clock borrows
//! one millisecond (`wall_ms + 1`, `counter = 0`), which keeps it strictly increasing.
//!
//! The physical time passed in should be the boot-corrected wall clock when it is known (see
//! `BootOffset`): a Pi that booted offline with a stale clock otherwise rejects its peers'
//! clocks as too far ahead. The rejection is deliberate: a peer whose clock is set decades
//! ahead must not drag every replica's clock with it.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use super::WallMillis;

/// Largest `wall_ms` an `Hlc` holds: 48 bits of milliseconds, the year 10889.
pub const HLC_WALL_MS_MAX: u64 = (1 << 48) - 1;
/// Default of how far a remote clock may run ahead of the local physical clock: one hour.
pub const HLC_MAX_DRIFT_MS_DEFAULT: u64 = 60 * 60_000;

/// Length of the string form `wwwwwwwwwwww-cccc-nnnnnnnnnnnnnnnn`.
const HLC_TEXT_LEN: usize = 12 + 1 + 4 + 1 + 16;

/// Why a hybrid logical clock value was rejected or could not be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HlcError {
    /// A remote clock is further ahead of the local physical clock than the allowed drift:
    /// the remote node's clock is wrong (or the local one is and has not been corrected yet).
    #[error(
        "remote clock {remote_wall_ms} ms is more than {max_drift_ms} ms ahead of the local \
         clock {physical_wall_ms} ms"
    )]
    RemoteTooFarAhead {
        /// The remote value's wall time.
        remote_wall_ms: u64,
        /// The local physical wall time, clamped to 0..=HLC_WALL_MS_MAX.
        physical_wall_ms: u64,
        /// The allowed drift.
        max_drift_ms: u64,
    },
    /// The clock stands at its largest value (wall 2^48-1 ms, counter 65 535) and cannot
    /// advance.
    #[error("the hybrid logical clock is at its largest value and cannot advance")]
    Exhausted,
    /// A wall time above 48 bits of milliseconds.
    #[error("hlc wall time {wall_ms} ms is out of range: expected 0..=281474976710655")]
    WallOutOfRange {
        /// The rejected wall time.
        wall_ms: u64,
    },
    /// Text that is not the string form of an `Hlc`.
    #[error(
        "invalid hlc {input:?}: expected 12, 4 and 16 lowercase hex digits joined by dashes, \
         e.g. 018bcfe56800-0000-8000000000001001"
    )]
    InvalidText {
        /// The start of the rejected text.
        input: String,
    },
}

/// A hybrid logical clock value. Fields are private so that `wall_ms` stays within 48 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hlc {
    wall_ms: u64,
    counter: u16,
    node: u64,
}

impl Hlc {
    /// The smallest value of `node`, below every issued value of that node.
    pub const fn zero(node: u64) -> Self {
        Self {
            wall_ms: 0,
            counter: 0,
            node,
        }
    }

    /// Builds a value, checking that `wall_ms` fits in 48 bits.
    pub const fn new(wall_ms: u64, counter: u16, node: u64) -> Result<Self, HlcError> {
        if wall_ms > HLC_WALL_MS_MAX {
            return Err(HlcError::WallOutOfRange { wall_ms });
        }
        Ok(Self {
            wall_ms,
            counter,
            node,
        })
    }

    /// The node id of a writer identified by a UUID (a device, the hub): its last 8 bytes,
    /// which are random in UUIDv4 and UUIDv7.
    pub const fn node_from_uuid(uuid: &Uuid) -> u64 {
        uuid.as_u64_pair().1
    }

    /// Milliseconds since the Unix epoch, the largest physical time this value has seen.
    pub const fn wall_ms(&self) -> u64 {
        self.wall_ms
    }

    /// Orders events within one `wall_ms`.
    pub const fn counter(&self) -> u16 {
        self.counter
    }

    /// The writer's tiebreak.
    pub const fn node(&self) -> u64 {
        self.node
    }

    /// The value as `wall_ms << 80 | counter << 64 | node`; ordering is preserved.
    pub const fn to_u128(&self) -> u128 {
        ((self.wall_ms as u128) << 80) | ((self.counter as u128) << 64) | self.node as u128
    }

    /// The inverse of [`Hlc::to_u128`]; every `u128` is a valid value.
    pub const fn from_u128(value: u128) -> Self {
        Self {
            wall_ms: (value >> 80) as u64,
            counter: (value >> 64) as u16,
            node: value as u64,
        }
    }

    /// Big-endian bytes of [`Hlc::to_u128`]; byte-wise comparison (SQL `bytea`, SQLite
    /// `BLOB`) preserves the order.
    pub const fn to_be_bytes(&self) -> [u8; 16] {
        self.to_u128().to_be_bytes()
    }

    /// The inverse of [`Hlc::to_be_bytes`].
    pub const fn from_be_bytes(bytes: [u8; 16]) -> Self {
        Self::from_u128(u128::from_be_bytes(bytes))
    }

    /// The next value of the same node, or `None` at the largest value.
    fn successor(&self) -> Option<Self> {
        if self.counter < u16::MAX {
            Some(Self {
                counter: self.counter + 1,
                ..*self
            })
        } else if self.wall_ms < HLC_WALL_MS_MAX {
            Some(Self {
                wall_ms: self.wall_ms + 1,
                counter: 0,
                ..*self
            })
        } else {
            None
        }
    }
}

/// The string form: `wall_ms`, `counter` and `node` in fixed-width lowercase hex joined by
/// dashes, so that string order is clock order.
impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:012x}-{:04x}-{:016x}",
            self.wall_ms, self.counter, self.node
        )
    }
}

impl FromStr for Hlc {
    type Err = HlcError;

    /// Parses exactly the `Display` form; uppercase hex is rejected so one value has one
    /// spelling and string order stays clock order.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = || HlcError::InvalidText {
            input: crate::quoted_input(input),
        };
        let is_hex = |part: &str| {
            part.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if input.len() != HLC_TEXT_LEN {
            return Err(invalid());
        }
        let mut parts = input.split('-');
        let (Some(wall), Some(counter), Some(node), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        if wall.len() != 12 || counter.len() != 4 || node.len() != 16 {
            return Err(invalid());
        }
        if !(is_hex(wall) && is_hex(counter) && is_hex(node)) {
            return Err(invalid());
        }
        let wall_ms = u64::from_str_radix(wall, 16).map_err(|_| invalid())?;
        let counter = u16::from_str_radix(counter, 16).map_err(|_| invalid())?;
        let node = u64::from_str_radix(node, 16).map_err(|_| invalid())?;
        Hlc::new(wall_ms, counter, node)
    }
}

/// Issues `Hlc` values for one node: strictly increasing, whatever the physical clock does.
#[derive(Debug, Clone)]
pub struct HlcClock {
    last: Hlc,
    max_drift_ms: u64,
}

impl HlcClock {
    /// A new clock for `node` that rejects remote values more than `max_drift_ms` ahead of
    /// the physical clock (see [`HLC_MAX_DRIFT_MS_DEFAULT`]).
    pub const fn new(node: u64, max_drift_ms: u64) -> Self {
        Self {
            last: Hlc::zero(node),
            max_drift_ms,
        }
    }

    /// A clock for `node` that continues after `last`, the largest value it issued before a
    /// restart (persisted with the events), so values stay increasing across reboots.
    pub const fn resume(node: u64, last: Hlc, max_drift_ms: u64) -> Self {
        Self {
            last: Hlc { node, ..last },
            max_drift_ms,
        }
    }

    /// The last value issued (or resumed from).
    pub const fn last(&self) -> Hlc {
        self.last
    }

    /// The allowed drift of remote clocks.
    pub const fn max_drift_ms(&self) -> u64 {
        self.max_drift_ms
    }

    /// A value for a local event: greater than every value issued or observed before. At the
    /// largest value (the year 10889) it stays there instead of failing.
    pub fn now(&mut self, physical: WallMillis) -> Hlc {
        let physical_ms = clamp_physical(physical);
        let next = if physical_ms > self.last.wall_ms {
            Hlc {
                wall_ms: physical_ms,
                counter: 0,
                node: self.last.node,
            }
        } else {
            self.last.successor().unwrap_or(self.last)
        };
        self.last = next;
        next
    }

    /// Takes in a value received from a peer and returns a value for the receive event,
    /// greater than both `remote` and every value issued before. Rejects `remote` (leaving
    /// the clock unchanged) if it is more than the allowed drift ahead of `physical`.
    pub fn observe(&mut self, remote: Hlc, physical: WallMillis) -> Result<Hlc, HlcError> {
        let physical_ms = clamp_physical(physical);
        if remote.wall_ms > physical_ms.saturating_add(self.max_drift_ms) {
            return Err(HlcError::RemoteTooFarAhead {
                remote_wall_ms: remote.wall_ms,
                physical_wall_ms: physical_ms,
                max_drift_ms: self.max_drift_ms,
            });
        }
        let node = self.last.node;
        let wall_ms = self.last.wall_ms.max(remote.wall_ms).max(physical_ms);
        let local_here = self.last.wall_ms == wall_ms;
        let remote_here = remote.wall_ms == wall_ms;
        let counter_base = match (local_here, remote_here) {
            (true, true) => Some(self.last.counter.max(remote.counter)),
            (true, false) => Some(self.last.counter),
            (false, true) => Some(remote.counter),
            (false, false) => None,
        };
        let next = match counter_base {
            None => Hlc {
                wall_ms,
                counter: 0,
                node,
            },
            Some(counter) => Hlc {
                wall_ms,
                counter,
                node,
            }
            .successor()
            .ok_or(HlcError::Exhausted)?,
        };
        self.last = next;
        Ok(next)
    }
}

/// A physical wall time as HLC milliseconds: negative times (a clock before 1970) count as 0,
/// times past 48 bits as the largest.
fn clamp_physical(physical: WallMillis) -> u64 {
    u64::try_from(physical.get())
        .unwrap_or(0)
        .min(HLC_WALL_MS_MAX)
}
