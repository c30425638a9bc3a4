//! The crate's only `Serialize`/`Deserialize` impls: the wire and storage forms of the domain
//! types, which are exactly their `Display`/`FromStr` forms (numbers for the numeric types).
//!
//! Deserializing validates like the type's own constructor, so a value that arrives from a
//! peer is as valid as one built locally. Changing a form here is a wire change: the golden
//! bytes under `fixtures/` must keep decoding.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::ids::{BoardAddr, BranchId, ChainId, DeviceId, LockNo, PostNo, RentalId};
use crate::otp::OtpCode;
use crate::phone::Phone;
use crate::state::{AnomalyKind, HookPolarity, HookState, PostStatus, Presence, RentalStatus};
use crate::time::{BootId, BootOffset, Hlc, MonoMillis, Stamp, WallMillis};

/// Deserializes a string through `T::from_str`, borrowing when the format allows.
struct FromStrVisitor<T> {
    expecting: &'static str,
    marker: PhantomData<T>,
}

impl<T> Visitor<'_> for FromStrVisitor<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<T, E> {
        value.parse().map_err(E::custom)
    }
}

/// `Serialize` as `Display`, `Deserialize` through `FromStr`.
macro_rules! serde_as_str {
    ($($name:ty => $expecting:literal,)+) => {$(
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_str(FromStrVisitor { expecting: $expecting, marker: PhantomData })
            }
        }
    )+};
}

serde_as_str! {
    ChainId => "a chain id (hyphenated UUID)",
    BranchId => "a branch id (hyphenated UUID)",
    DeviceId => "a device id (hyphenated UUID)",
    RentalId => "a rental id (hyphenated UUIDv7)",
    BootId => "a boot id (hyphenated UUID)",
    Phone => "an Israeli mobile number",
    OtpCode => "a 4-digit code",
    Hlc => "a hybrid logical clock string",
    RentalStatus => "a rental status",
    PostStatus => "a post status",
    HookState => "a hook state",
    HookPolarity => "a hook polarity",
    Presence => "a presence",
    AnomalyKind => "an anomaly kind",
}

/// `Serialize` as the inner number, `Deserialize` through a validating constructor.
macro_rules! serde_as_number {
    ($($name:ty => $inner:ty, $construct:path,)+) => {$(
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                self.get().serialize(serializer)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = <$inner>::deserialize(deserializer)?;
                $construct(value).map_err(de::Error::custom)
            }
        }
    )+};
}

/// Every `i64` is a wall time; the `Result` fits `serde_as_number!`.
fn wall_millis(value: i64) -> Result<WallMillis, std::convert::Infallible> {
    Ok(WallMillis::new(value))
}

/// Every `u64` is a monotonic time; the `Result` fits `serde_as_number!`.
fn mono_millis(value: u64) -> Result<MonoMillis, std::convert::Infallible> {
    Ok(MonoMillis::new(value))
}

serde_as_number! {
    BoardAddr => u8, BoardAddr::new,
    LockNo => u8, LockNo::new,
    PostNo => u16, PostNo::new,
    WallMillis => i64, wall_millis,
    MonoMillis => u64, mono_millis,
}

/// The wire form of [`Stamp`]: a map of its four fields. Unknown fields are ignored (a later
/// version may add some); missing ones are an error.
#[derive(Serialize, Deserialize)]
#[serde(remote = "Stamp")]
struct StampWire {
    wall: WallMillis,
    boot: BootId,
    mono: MonoMillis,
    hlc: Hlc,
}

impl Serialize for Stamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StampWire::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for Stamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        StampWire::deserialize(deserializer)
    }
}

/// The wire form of [`BootOffset`]: a map of its four fields.
#[derive(Serialize, Deserialize)]
#[serde(remote = "BootOffset")]
struct BootOffsetWire {
    boot: BootId,
    mono: MonoMillis,
    local_wall: WallMillis,
    trusted_wall: WallMillis,
}

impl Serialize for BootOffset {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        BootOffsetWire::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for BootOffset {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BootOffsetWire::deserialize(deserializer)
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};
    use serde::de::DeserializeOwned;

    use super::*;

    /// Decodes `json` as `T` and shows the value re-encoded, or the error.
    fn check<T: Serialize + DeserializeOwned>(json: &str, expect: Expect) {
        let actual = match serde_json::from_str::<T>(json) {
            Ok(value) => format!("ok {}", serde_json::to_string(&value).unwrap()),
            Err(error) => format!("err {error}"),
        };
        expect.assert_eq(&actual);
    }

    #[test]
    fn ids_and_phone() {
        check::<ChainId>(
            r#""0b1e3c2a-0000-4000-8000-000000000001""#,
            expect![[r#"ok "0b1e3c2a-0000-4000-8000-000000000001""#]],
        );
        check::<DeviceId>(
            "42",
            expect![[
                r#"err invalid type: integer `42`, expected a device id (hyphenated UUID) at line 1 column 2"#
            ]],
        );
        check::<RentalId>(
            r#""018bcfe5-6800-7bab-abab-abababababab""#,
            expect![[r#"ok "018bcfe5-6800-7bab-abab-abababababab""#]],
        );
        check::<RentalId>(
            r#""0b1e3c2a-0000-4000-8000-000000000001""#,
            expect![[
                r#"err invalid rental id "0b1e3c2a-0000-4000-8000-000000000001": expected a version 7 UUID, found version 4 at line 1 column 38"#
            ]],
        );
        check::<Phone>(r#""050-1234567""#, expect![[r#"ok "+972501234567""#]]);
        check::<Phone>(
            r#""03-1234567""#,
            expect![[
                r#"err the phone number is not an Israeli mobile number; expected an Israeli mobile number as 05XXXXXXXX, 05X-XXXXXXX or +9725XXXXXXXX at line 1 column 12"#
            ]],
        );
        check::<OtpCode>(r#""0042""#, expect![[r#"ok "0042""#]]);
    }

    #[test]
    fn numbers_are_validated() {
        check::<PostNo>("17", expect![["ok 17"]]);
        check::<PostNo>(
            "0",
            expect![[
                "err post number 0 is out of range: a device's posts are numbered 1..=160 (16 per board, at most 10 boards)"
            ]],
        );
        check::<BoardAddr>(
            "10",
            expect![["err board address 10 is out of range: a KR-CU16 board address is 0..=9"]],
        );
        check::<LockNo>("16", expect![["ok 16"]]);
        check::<LockNo>(
            "-1",
            expect![["err invalid value: integer `-1`, expected u8 at line 1 column 2"]],
        );
        check::<WallMillis>("-1", expect![["ok -1"]]);
    }

    #[test]
    fn states_use_their_string_forms() {
        check::<RentalStatus>(r#""returned_late""#, expect![[r#"ok "returned_late""#]]);
        check::<PostStatus>(
            r#""broken""#,
            expect![[
                r#"err unknown post status "broken": expected one of available, in_use, empty, reserved, maintenance, out_of_service, fault at line 1 column 8"#
            ]],
        );
        check::<AnomalyKind>(r#""clock_jump""#, expect![[r#"ok "clock_jump""#]]);
        check::<HookPolarity>(r#""one_is_open""#, expect![[r#"ok "one_is_open""#]]);
        check::<Presence>(r#""present""#, expect![[r#"ok "present""#]]);
        check::<HookState>(r#""open""#, expect![[r#"ok "open""#]]);
    }

    #[test]
    fn stamp_and_boot_offset_are_maps() {
        let json = r#"{"wall":1700000000000,"boot":"0b1e3c2a-0000-4000-8000-00000000b001","mono":5000,"hlc":"018bcfe56800-0000-8000000000001001"}"#;
        check::<Stamp>(
            json,
            expect![[
                r#"ok {"wall":1700000000000,"boot":"0b1e3c2a-0000-4000-8000-00000000b001","mono":5000,"hlc":"018bcfe56800-0000-8000000000001001"}"#
            ]],
        );
        let bad_hlc = json.replace("018bcfe56800-0000-8000000000001001", "x");
        check::<Stamp>(
            &bad_hlc,
            expect![[
                r#"err invalid hlc "x": expected 12, 4 and 16 lowercase hex digits joined by dashes, e.g. 018bcfe56800-0000-8000000000001001 at line 1 column 89"#
            ]],
        );
        let no_boot = r#"{"wall":1,"mono":5,"hlc":"018bcfe56800-0000-8000000000001001"}"#;
        check::<Stamp>(
            no_boot,
            expect!["err missing field `boot` at line 1 column 62"],
        );
        let extra = json.replace('}', r#","extra":1}"#);
        // Unknown fields are ignored, so a later version may add fields.
        check::<Stamp>(
            &extra,
            expect![[
                r#"ok {"wall":1700000000000,"boot":"0b1e3c2a-0000-4000-8000-00000000b001","mono":5000,"hlc":"018bcfe56800-0000-8000000000001001"}"#
            ]],
        );
        let offset = r#"{"boot":"0b1e3c2a-0000-4000-8000-00000000b001","mono":5,"local_wall":10,"trusted_wall":20}"#;
        check::<BootOffset>(
            offset,
            expect![[
                r#"ok {"boot":"0b1e3c2a-0000-4000-8000-00000000b001","mono":5,"local_wall":10,"trusted_wall":20}"#
            ]],
        );
    }
}
