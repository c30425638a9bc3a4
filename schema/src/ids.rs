//! Identifier newtypes: tenant, branch, device and rental UUIDs, and the hardware addresses of
//! a post (`BoardAddr`, `LockNo`, `PostNo`, in `ids/post.rs`).
//!
//! String form of every UUID id: the 36-character hyphenated form, lowercase on output, either
//! case on input. The braced, URN and 32-digit "simple" forms are rejected so that one id has
//! one spelling in logs, URLs and SQL; the nil UUID is rejected because it is always a bug.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

mod post;

pub use post::{
    BOARDS_PER_DEVICE_MAX, BoardAddr, LOCKS_PER_BOARD, LockNo, POSTS_PER_DEVICE_MAX, PostError,
    PostNo,
};

/// Length of the hyphenated UUID form, the only one accepted.
const UUID_HYPHENATED_LEN: usize = 36;

/// Largest Unix millisecond timestamp a UUIDv7 can hold (48 bits; the year 10889).
pub const RENTAL_ID_UNIX_MS_MAX: u64 = (1 << 48) - 1;

/// Why a UUID id failed to parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The text is not a 36-character hyphenated UUID.
    #[error(
        "invalid {kind} {input:?}: expected a UUID in the 36-character hyphenated form, \
         e.g. 0b1e3c2a-0000-4000-8000-000000000001"
    )]
    NotAUuid {
        /// Which id was being parsed, e.g. "chain id".
        kind: &'static str,
        /// The start of the rejected text.
        input: String,
    },
    /// The text is the nil UUID (all zeros), which never names anything.
    #[error("invalid {kind}: the nil UUID 00000000-0000-0000-0000-000000000000 is not an id")]
    Nil {
        /// Which id was being parsed.
        kind: &'static str,
    },
    /// A rental id is a UUID of another version; rental ids are UUIDv7 (time-ordered).
    #[error("invalid rental id {input:?}: expected a version 7 UUID, found version {version}")]
    NotV7 {
        /// The start of the rejected text.
        input: String,
        /// The version nibble that was found.
        version: usize,
    },
}

/// Parses the hyphenated form of a non-nil UUID; `kind` names the id in the error.
pub(crate) fn parse_uuid(input: &str, kind: &'static str) -> Result<Uuid, IdError> {
    let not_a_uuid = || IdError::NotAUuid {
        kind,
        input: crate::quoted_input(input),
    };
    if input.len() != UUID_HYPHENATED_LEN {
        return Err(not_a_uuid());
    }
    let uuid = Uuid::try_parse(input).map_err(|_| not_a_uuid())?;
    if uuid.is_nil() {
        return Err(IdError::Nil { kind });
    }
    Ok(uuid)
}

/// Defines a `Copy` newtype over [`Uuid`] with parsing, `Display`, `FromStr` and conversions.
/// Shared with `time.rs` (`BootId`).
macro_rules! uuid_newtype {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(::uuid::Uuid);

        impl $name {
            /// Wraps a UUID taken from a trusted source (a database row, a certificate).
            pub const fn from_uuid(uuid: ::uuid::Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID inside.
            pub const fn as_uuid(&self) -> &::uuid::Uuid {
                &self.0
            }

            /// Parses the hyphenated form; rejects other forms and the nil UUID.
            pub fn parse(input: &str) -> Result<Self, $crate::ids::IdError> {
                $crate::ids::parse_uuid(input, $kind).map(Self)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                ::std::fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl ::std::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::ids::IdError;

            fn from_str(input: &str) -> Result<Self, Self::Err> {
                Self::parse(input)
            }
        }

        impl From<::uuid::Uuid> for $name {
            fn from(uuid: ::uuid::Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for ::uuid::Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }
    };
}
pub(crate) use uuid_newtype;

uuid_newtype!(
    /// A chain (tenant): the outermost scope of every read and write.
    ChainId,
    "chain id"
);

uuid_newtype!(
    /// A branch of a chain: one cart corral, one or more devices.
    BranchId,
    "branch id"
);

uuid_newtype!(
    /// A device (Raspberry Pi): the only writer of facts about its own posts.
    DeviceId,
    "device id"
);

/// A rental: a UUIDv7, so ids sort by creation time and can be minted offline on any device
/// without coordination. The crate has no RNG: the caller supplies the 10 random bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RentalId(Uuid);

impl RentalId {
    /// Builds a UUIDv7 from the Unix time in milliseconds and 10 random bytes. Times above
    /// [`RENTAL_ID_UNIX_MS_MAX`] saturate to it (a v7 timestamp has 48 bits) rather than wrap,
    /// so ids never sort before older ones.
    pub fn from_parts(unix_ms: u64, random_bytes: [u8; 10]) -> Self {
        let unix_ms = unix_ms.min(RENTAL_ID_UNIX_MS_MAX);
        Self(uuid::Builder::from_unix_timestamp_millis(unix_ms, &random_bytes).into_uuid())
    }

    /// Wraps a UUID, checking that it is a version 7 UUID.
    pub fn from_uuid(uuid: Uuid) -> Result<Self, IdError> {
        let version = uuid.get_version_num();
        if version != 7 {
            return Err(IdError::NotV7 {
                input: uuid.hyphenated().to_string(),
                version,
            });
        }
        Ok(Self(uuid))
    }

    /// Parses the hyphenated form of a version 7 UUID.
    pub fn parse(input: &str) -> Result<Self, IdError> {
        let uuid = parse_uuid(input, "rental id")?;
        let version = uuid.get_version_num();
        if version != 7 {
            return Err(IdError::NotV7 {
                input: crate::quoted_input(input),
                version,
            });
        }
        Ok(Self(uuid))
    }

    /// The UUID inside.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The Unix millisecond timestamp in the id: the creating device's clock at creation,
    /// possibly wrong (a Pi has no RTC), so never use it for durations; it only orders ids.
    pub fn unix_ms(&self) -> u64 {
        let (high, _) = self.0.as_u64_pair();
        high >> 16
    }
}

impl fmt::Display for RentalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for RentalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RentalId({})", self.0.hyphenated())
    }
}

impl FromStr for RentalId {
    type Err = IdError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Self::parse(input)
    }
}

impl From<RentalId> for Uuid {
    fn from(id: RentalId) -> Self {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;

    fn check_chain(input: &str, expect: Expect) {
        let actual = match ChainId::parse(input) {
            Ok(id) => format!("ok {id}"),
            Err(error) => format!("err {error}"),
        };
        expect.assert_eq(&actual);
    }

    fn check_rental(input: &str, expect: Expect) {
        let actual = match RentalId::parse(input) {
            Ok(id) => format!("ok {id} ms={}", id.unix_ms()),
            Err(error) => format!("err {error}"),
        };
        expect.assert_eq(&actual);
    }

    #[test]
    fn chain_id_forms() {
        check_chain(
            "0b1e3c2a-0000-4000-8000-000000000001",
            expect![["ok 0b1e3c2a-0000-4000-8000-000000000001"]],
        );
        check_chain(
            "0B1E3C2A-0000-4000-8000-00000000000A",
            expect![["ok 0b1e3c2a-0000-4000-8000-00000000000a"]],
        );
        check_chain(
            "0b1e3c2a000040008000000000000001",
            expect![[
                r#"err invalid chain id "0b1e3c2a000040008000000000000001": expected a UUID in the 36-character hyphenated form, e.g. 0b1e3c2a-0000-4000-8000-000000000001"#
            ]],
        );
        check_chain(
            "{0b1e3c2a-0000-4000-8000-0000000001}",
            expect![[
                r#"err invalid chain id "{0b1e3c2a-0000-4000-8000-0000000001}": expected a UUID in the 36-character hyphenated form, e.g. 0b1e3c2a-0000-4000-8000-000000000001"#
            ]],
        );
        check_chain(
            "0b1e3c2a-0000-4000-8000-00000000000g",
            expect![[
                r#"err invalid chain id "0b1e3c2a-0000-4000-8000-00000000000g": expected a UUID in the 36-character hyphenated form, e.g. 0b1e3c2a-0000-4000-8000-000000000001"#
            ]],
        );
        check_chain(
            "",
            expect![[
                r#"err invalid chain id "": expected a UUID in the 36-character hyphenated form, e.g. 0b1e3c2a-0000-4000-8000-000000000001"#
            ]],
        );
        check_chain(
            "00000000-0000-0000-0000-000000000000",
            expect![[
                "err invalid chain id: the nil UUID 00000000-0000-0000-0000-000000000000 is not an id"
            ]],
        );
    }

    #[test]
    fn rental_id_from_parts_round_trips() {
        let id = RentalId::from_parts(1_700_000_000_000, [0xAB; 10]);
        assert_eq!(id.unix_ms(), 1_700_000_000_000);
        assert_eq!(id.as_uuid().get_version_num(), 7);
        assert_eq!(RentalId::parse(&id.to_string()), Ok(id));
        assert_eq!(RentalId::from_uuid(*id.as_uuid()), Ok(id));
        check_rental(
            &id.to_string(),
            expect![["ok 018bcfe5-6800-7bab-abab-abababababab ms=1700000000000"]],
        );
    }

    #[test]
    fn rental_ids_sort_by_time_and_saturate() {
        let early = RentalId::from_parts(1_000, [0xFF; 10]);
        let late = RentalId::from_parts(1_001, [0x00; 10]);
        assert!(early < late);
        let max = RentalId::from_parts(u64::MAX, [0; 10]);
        assert_eq!(max.unix_ms(), RENTAL_ID_UNIX_MS_MAX);
        assert!(late < max);
    }

    #[test]
    fn rental_id_rejects_other_versions() {
        check_rental(
            "0b1e3c2a-0000-4000-8000-000000000001",
            expect![[
                r#"err invalid rental id "0b1e3c2a-0000-4000-8000-000000000001": expected a version 7 UUID, found version 4"#
            ]],
        );
        check_rental(
            "42",
            expect![[
                r#"err invalid rental id "42": expected a UUID in the 36-character hyphenated form, e.g. 0b1e3c2a-0000-4000-8000-000000000001"#
            ]],
        );
    }

    #[test]
    fn debug_names_the_type() {
        let device: DeviceId = "0b1e3c2a-0000-4000-8000-000000001001".parse().unwrap();
        assert_eq!(
            format!("{device:?}"),
            "DeviceId(0b1e3c2a-0000-4000-8000-000000001001)"
        );
        let uuid: Uuid = device.into();
        assert_eq!(DeviceId::from(uuid), device);
        assert_eq!(BranchId::from_uuid(uuid).as_uuid(), &uuid);
    }
}
