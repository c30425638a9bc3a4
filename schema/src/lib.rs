//! CartWise domain model shared by every crate: ids, phone numbers, OTP codes, time, states.
//!
//! Everything here is a plain value type with validating constructors, `Display`/`FromStr` in
//! one canonical string form, and a typed `thiserror` error per module. Higher crates
//! (`sync-core`, `edge-node`, `cloud-hub`) take these types at their boundaries so that a
//! `PostNo` or a `Phone` that exists is already valid ("preconditions in types").
//!
//! Module map:
//!
//! - [`ids`]: `ChainId`, `BranchId`, `DeviceId`, `RentalId` (UUIDv7), and the hardware
//!   addresses `BoardAddr` (KR-CU16 DIP address 0..=9), `LockNo` (1..=16) and `PostNo`
//!   (1-based post number within a device).
//! - [`phone`]: `Phone`, an Israeli mobile number normalised to E.164.
//! - [`otp`]: `OtpCode` and the shopper-auth and rental constants of the existing system.
//! - [`time`]: wall, monotonic and boot identity of every event (`Stamp`), the hybrid logical
//!   clock (`Hlc`, `HlcClock`), per-boot clock correction (`BootOffset`) and durations.
//! - [`state`]: rental, post, hook and presence states, and the anomaly kinds.
//! - `serde_impls`: the only place that implements `Serialize`/`Deserialize`, in the string
//!   (or number) forms of `Display`/`FromStr`.
//!
//! Architecture Invariant: this crate does no I/O and depends on no runtime. It never reads a
//! clock (`SystemTime::now`, `Instant::now`), the environment, a file or a random source: time
//! and randomness come in as arguments.
//!
//! Architecture Invariant: domain types do not derive `Serialize`/`Deserialize`; their wire
//! forms live in `serde_impls.rs` alone, so a change of wire form is a change of one file.
//!
//! Architecture Invariant: parsing peer or user input never panics; every parser returns a
//! `Result` whose error says what was wrong and what is accepted.

pub mod ids;
pub mod migrations;
pub mod otp;
pub mod phone;
mod serde_impls;
pub mod state;
pub mod time;

pub use ids::{
    BOARDS_PER_DEVICE_MAX, BoardAddr, BranchId, ChainId, DeviceId, IdError, LOCKS_PER_BOARD,
    LockNo, POSTS_PER_DEVICE_MAX, PostError, PostNo, RENTAL_ID_UNIX_MS_MAX, RentalId,
};
pub use otp::{
    OTP_ATTEMPTS_MAX, OTP_DIGITS, OTP_RANDOM_U16_UNBIASED_BELOW, OTP_TTL_MS, OtpCode, OtpError,
    RENTAL_MINUTES_DEFAULT, SHOPPER_TOKEN_TTL_DAYS,
};
pub use phone::{Phone, PhoneError};
pub use state::{
    AnomalyKind, HookPolarity, HookState, PostStatus, Presence, RentalStatus, StateError,
};
pub use time::{
    BootId, BootOffset, BootOffsets, Clock, ClockReading, CorrectedWall, Elapsed, ElapsedBasis,
    HLC_MAX_DRIFT_MS_DEFAULT, HLC_WALL_MS_MAX, Hlc, HlcClock, HlcError, MonoMillis, Stamp,
    TimeError, WallMillis, corrected_wall, duration_ms,
};

/// At most this many characters of rejected input are quoted back in an error message, so an
/// error built from hostile input stays small.
const QUOTED_INPUT_CHARS_MAX: usize = 48;

/// The start of `input`, for an error message: at most [`QUOTED_INPUT_CHARS_MAX`] characters,
/// with `…` appended when it was cut.
pub(crate) fn quoted_input(input: &str) -> String {
    let mut chars = input.chars();
    let mut quoted: String = chars.by_ref().take(QUOTED_INPUT_CHARS_MAX).collect();
    if chars.next().is_some() {
        quoted.push('…');
    }
    quoted
}

#[cfg(test)]
mod tests {
    use super::quoted_input;

    #[test]
    fn quoted_input_cuts_long_input_on_a_char_boundary() {
        assert_eq!(quoted_input("abc"), "abc");
        let long = "א".repeat(100);
        let quoted = quoted_input(&long);
        assert_eq!(quoted.chars().count(), 49);
        assert!(quoted.ends_with('…'));
    }
}
