//! Time of events on devices without a real-time clock: the `Stamp` every event records (wall
//! time, boot id, monotonic time, hybrid logical clock), the per-boot correction learned from
//! a trusted peer (`BootOffset`), and durations that stay right across reboots.
//!
//! A Raspberry Pi that boots offline starts with a wrong wall clock, but its monotonic clock
//! counts correctly from boot. So each event records both, with the boot they belong to:
//!
//! - within one boot, a duration is the difference of monotonic times: exact whatever the wall
//!   clock did;
//! - across boots, each boot's wall time is corrected with the offset learned when the device
//!   next talked to a trusted peer (the hub, or a peer whose own boot is corrected), anchored
//!   on the monotonic clock so a wall-clock step later in the boot does not skew it;
//! - events are ordered by the hybrid logical clock ([`Hlc`]), never by raw wall time.
//!
//! Nothing here reads a clock: the daemon's `Clock` seam reads them and passes them in.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::ids::uuid_newtype;

mod hlc;
#[cfg(test)]
mod tests;

pub use hlc::{HLC_MAX_DRIFT_MS_DEFAULT, HLC_WALL_MS_MAX, Hlc, HlcClock, HlcError};

/// Wall-clock time: milliseconds since the Unix epoch as the local clock reported it. On a Pi
/// this may be wrong by anything until the boot's offset is learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WallMillis(i64);

/// Monotonic time: milliseconds since this boot began (`CLOCK_MONOTONIC`). Comparable only
/// with times of the same boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MonoMillis(u64);

uuid_newtype!(
    /// One boot of a device, minted at start-up: monotonic times are comparable only within
    /// one `BootId`.
    BootId,
    "boot id"
);

/// Why a time value or correction was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// A boot offset was applied to a stamp of another boot.
    #[error(
        "the clock offset was learned in boot {offset_boot}, but the stamp is of boot {stamp_boot}"
    )]
    BootMismatch {
        /// The stamp's boot.
        stamp_boot: BootId,
        /// The boot the offset belongs to.
        offset_boot: BootId,
    },
    /// Text that is not a decimal millisecond count.
    #[error("invalid {kind} {input:?}: expected a decimal number of milliseconds")]
    NotMillis {
        /// "wall time" or "monotonic time".
        kind: &'static str,
        /// The start of the rejected text.
        input: String,
    },
}

impl WallMillis {
    /// Wraps milliseconds since the Unix epoch.
    pub const fn new(unix_ms: i64) -> Self {
        Self(unix_ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn get(self) -> i64 {
        self.0
    }

    /// This time moved by `delta_ms`, saturating at the ends of `i64`.
    pub const fn saturating_add_ms(self, delta_ms: i64) -> Self {
        Self(self.0.saturating_add(delta_ms))
    }
}

impl MonoMillis {
    /// Wraps milliseconds since boot.
    pub const fn new(since_boot_ms: u64) -> Self {
        Self(since_boot_ms)
    }

    /// Milliseconds since boot.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// `self - earlier` in milliseconds, negative when `earlier` is later; saturating.
    pub fn signed_diff_ms(self, earlier: MonoMillis) -> i64 {
        let diff = i128::from(self.0) - i128::from(earlier.0);
        i64::try_from(diff).unwrap_or(if diff < 0 { i64::MIN } else { i64::MAX })
    }
}

/// When an event happened, recorded every way that will be needed to place it later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// The local wall clock, possibly wrong.
    pub wall: WallMillis,
    /// The boot the monotonic time belongs to.
    pub boot: BootId,
    /// Milliseconds since that boot began.
    pub mono: MonoMillis,
    /// The event's place in the total order of events.
    pub hlc: Hlc,
}

/// What a device learned about one boot's wall clock: at monotonic time `mono` its own clock
/// read `local_wall` and a trusted peer's read `trusted_wall` (the peer's reported time plus
/// half the round trip).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BootOffset {
    /// The boot this offset corrects.
    pub boot: BootId,
    /// The monotonic time of the observation.
    pub mono: MonoMillis,
    /// The local wall clock at that instant.
    pub local_wall: WallMillis,
    /// The trusted wall clock at that instant.
    pub trusted_wall: WallMillis,
}

impl BootOffset {
    /// Records an observation of the local and trusted wall clocks at one monotonic instant.
    pub const fn learn(
        boot: BootId,
        mono: MonoMillis,
        local_wall: WallMillis,
        trusted_wall: WallMillis,
    ) -> Self {
        Self {
            boot,
            mono,
            local_wall,
            trusted_wall,
        }
    }

    /// `trusted_wall - local_wall`: what to add to the local wall clock, as long as the local
    /// clock did not step during the boot.
    pub fn offset_ms(&self) -> i64 {
        self.trusted_wall
            .get()
            .saturating_sub(self.local_wall.get())
    }

    /// The trusted wall time at monotonic time `mono` of this boot.
    pub fn trusted_wall_at(&self, mono: MonoMillis) -> WallMillis {
        self.trusted_wall
            .saturating_add_ms(mono.signed_diff_ms(self.mono))
    }

    /// The trusted wall time at which the boot began (monotonic time 0): the one number
    /// that corrects every stamp of the boot (`trusted_boot_start + stamp.mono`), and the one
    /// to persist if only one is kept.
    pub fn trusted_boot_start(&self) -> WallMillis {
        self.trusted_wall_at(MonoMillis::new(0))
    }
}

/// The corrected wall time of `stamp`: the trusted clock at the stamp's monotonic instant.
/// This equals `stamp.wall + offset.offset_ms()` when the local clock did not step during the
/// boot, and stays right when it did (an NTP step, a manual `date`).
pub fn corrected_wall(stamp: &Stamp, offset: &BootOffset) -> Result<WallMillis, TimeError> {
    if stamp.boot != offset.boot {
        return Err(TimeError::BootMismatch {
            stamp_boot: stamp.boot,
            offset_boot: offset.boot,
        });
    }
    Ok(offset.trusted_wall_at(stamp.mono))
}

/// A wall time, and whether a learned offset corrected it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorrectedWall {
    /// Corrected with the boot's learned offset: trustworthy.
    Corrected(WallMillis),
    /// The raw local wall clock: the boot's offset is not known (yet).
    Uncorrected(WallMillis),
}

impl CorrectedWall {
    /// The wall time, corrected or not.
    pub const fn wall(self) -> WallMillis {
        match self {
            CorrectedWall::Corrected(wall) | CorrectedWall::Uncorrected(wall) => wall,
        }
    }

    /// Whether a learned offset corrected it.
    pub const fn is_corrected(self) -> bool {
        matches!(self, CorrectedWall::Corrected(_))
    }
}

/// The offsets learned so far, one per boot: the most recent observation of each boot wins,
/// since it carries the least accumulated drift of the monotonic clock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootOffsets {
    by_boot: BTreeMap<BootId, BootOffset>,
}

impl BootOffsets {
    /// No offsets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `offset`, unless an observation of the same boot at a later monotonic time is
    /// already known. Returns whether it was recorded.
    pub fn learn(&mut self, offset: BootOffset) -> bool {
        match self.by_boot.get(&offset.boot) {
            Some(known) if known.mono > offset.mono => false,
            _ => {
                self.by_boot.insert(offset.boot, offset);
                true
            }
        }
    }

    /// The offset of `boot`, if learned.
    pub fn get(&self, boot: &BootId) -> Option<&BootOffset> {
        self.by_boot.get(boot)
    }

    /// Boots with a learned offset.
    pub fn len(&self) -> usize {
        self.by_boot.len()
    }

    /// Whether no offset is learned.
    pub fn is_empty(&self) -> bool {
        self.by_boot.is_empty()
    }

    /// The stamp's wall time, corrected if its boot's offset is known.
    pub fn corrected_wall(&self, stamp: &Stamp) -> CorrectedWall {
        match self.by_boot.get(&stamp.boot) {
            Some(offset) => CorrectedWall::Corrected(offset.trusted_wall_at(stamp.mono)),
            None => CorrectedWall::Uncorrected(stamp.wall),
        }
    }
}

/// What a duration was measured with, from most to least trustworthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ElapsedBasis {
    /// Both stamps are of one boot: the monotonic clock, exact.
    Monotonic,
    /// Different boots, both with learned offsets: corrected wall times.
    CorrectedWall,
    /// Different boots, at least one without a learned offset: raw wall time for that end, so
    /// the value is provisional (recompute when the offset is learned).
    UncorrectedWall,
}

/// A duration between two stamps and how it was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Elapsed {
    /// Milliseconds from start to end; negative if end precedes start.
    pub ms: i64,
    /// How `ms` was measured.
    pub basis: ElapsedBasis,
}

impl Elapsed {
    /// Whether `ms` is final (monotonic or corrected), not provisional.
    pub const fn is_trusted(&self) -> bool {
        !matches!(self.basis, ElapsedBasis::UncorrectedWall)
    }
}

/// The time from `start` to `end`: monotonic when both are of one boot, corrected wall time
/// otherwise (raw wall time, flagged, where a boot's offset is not learned yet).
pub fn duration_ms(start: &Stamp, end: &Stamp, offsets: &BootOffsets) -> Elapsed {
    if start.boot == end.boot {
        return Elapsed {
            ms: end.mono.signed_diff_ms(start.mono),
            basis: ElapsedBasis::Monotonic,
        };
    }
    let start_wall = offsets.corrected_wall(start);
    let end_wall = offsets.corrected_wall(end);
    let basis = if start_wall.is_corrected() && end_wall.is_corrected() {
        ElapsedBasis::CorrectedWall
    } else {
        ElapsedBasis::UncorrectedWall
    };
    Elapsed {
        ms: end_wall
            .wall()
            .get()
            .saturating_sub(start_wall.wall().get()),
        basis,
    }
}

impl fmt::Display for WallMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for MonoMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Accepts an optional `-` then ASCII digits (no `+`, no spaces).
impl FromStr for WallMillis {
    type Err = TimeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = || TimeError::NotMillis {
            kind: "wall time",
            input: crate::quoted_input(input),
        };
        let digits = input.strip_prefix('-').unwrap_or(input);
        if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(invalid());
        }
        input.parse::<i64>().map(Self).map_err(|_| invalid())
    }
}

/// Accepts ASCII digits only.
impl FromStr for MonoMillis {
    type Err = TimeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = || TimeError::NotMillis {
            kind: "monotonic time",
            input: crate::quoted_input(input),
        };
        if input.is_empty() || !input.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(invalid());
        }
        input.parse::<u64>().map(Self).map_err(|_| invalid())
    }
}

/// One reading of a device's clocks: wall time, the boot, and monotonic time within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockReading {
    /// The local wall clock, possibly wrong.
    pub wall: WallMillis,
    /// The boot the monotonic time belongs to.
    pub boot: BootId,
    /// Milliseconds since that boot began.
    pub mono: MonoMillis,
}

/// The seam through which a daemon reads its clocks; tests pass a manual fake.
pub trait Clock: Send + Sync {
    /// Reads the wall clock, the boot id and the monotonic clock at one instant.
    fn read(&self) -> ClockReading;
}
