//! States of rentals, posts and lock sensors, and the anomaly kinds (`state/anomaly.rs`),
//! each with one snake_case string form used in documents, SQL and the API.
//!
//! String forms are matched exactly (case-sensitive, no whitespace). They are stored, so a
//! form, once shipped, is never renamed or reused for another meaning.

mod anomaly;

pub use anomaly::AnomalyKind;

/// Why a state string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// A string that names no value of the enum.
    #[error("unknown {kind} {input:?}: expected one of {}", .accepted.join(", "))]
    Unknown {
        /// Which enum was parsed, e.g. "rental status".
        kind: &'static str,
        /// The start of the rejected text.
        input: String,
        /// Every accepted string.
        accepted: &'static [&'static str],
    },
}

/// Defines a fieldless enum with `ALL`, `as_str`, `parse`, `Display` and `FromStr` over one
/// string form per variant.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident as $kind:literal {
            $( $(#[$variant_meta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The string form of every value, in declaration order.
            pub const ALL_STR: &'static [&'static str] = &[$($text),+];

            /// The string form.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// Parses the exact string form.
            pub fn parse(input: &str) -> Result<Self, $crate::state::StateError> {
                match input {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::state::StateError::Unknown {
                        kind: $kind,
                        input: $crate::quoted_input(input),
                        accepted: Self::ALL_STR,
                    }),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::state::StateError;

            fn from_str(input: &str) -> Result<Self, Self::Err> {
                Self::parse(input)
            }
        }
    };
}
use string_enum;

string_enum! {
    /// The stored status of a rental (`rentals.status`). `active` and `returned` are the
    /// existing system's forms.
    ///
    /// "Overdue" is not a status: an `Active` rental is overdue once its trusted elapsed time
    /// passes the allowed rental time ([`RentalStatus::is_overdue`]), so it is derived when
    /// read and changes with no write. `parse("overdue")` is rejected; an importer of legacy
    /// rows maps `overdue` to `active`.
    pub enum RentalStatus as "rental status" {
        /// Recorded durably, before the lock is told to open; becomes `Active` once the hook
        /// is sensed open, `FailedUnlock` if it never is (also after a crash in between).
        /// Counts as open for the one-per-post and one-per-phone rules.
        Unlocking => "unlocking",
        /// The cart is out with the shopper. At most one open rental per post and (once data
        /// meets) one per phone.
        Active => "active",
        /// The cart was docked within the allowed time.
        Returned => "returned",
        /// The cart was docked after the allowed time (decided when the return is folded,
        /// from the trusted duration).
        ReturnedLate => "returned_late",
        /// The rental was recorded but the lock never opened (a jam, or a crash between
        /// recording and unlocking, reconciled on restart). No cart left; nothing to return.
        FailedUnlock => "failed_unlock",
        /// The lock opened but the shopper did not take the cart (the hook closed again on a
        /// present cart within the take window), or the shopper cancelled at the kiosk.
        Cancelled => "cancelled",
        /// Closed by a manager without a dock (a cart found in the car park and re-docked by
        /// staff, a lost cart written off).
        ClosedByStaff => "closed_by_staff",
    }
}

impl RentalStatus {
    /// Whether the rental is active (the cart is out).
    pub const fn is_active(self) -> bool {
        matches!(self, RentalStatus::Active)
    }

    /// Whether the rental is open (`Unlocking` or `Active`): it holds its post and phone.
    pub const fn is_open(self) -> bool {
        matches!(self, RentalStatus::Unlocking | RentalStatus::Active)
    }

    /// Whether the rental ended with the cart docked by the shopper.
    pub const fn is_returned(self) -> bool {
        matches!(self, RentalStatus::Returned | RentalStatus::ReturnedLate)
    }

    /// Whether the rental is overdue: active and out for longer than `allowed_ms`.
    pub const fn is_overdue(self, elapsed_ms: i64, allowed_ms: i64) -> bool {
        self.is_active() && elapsed_ms > allowed_ms
    }

    /// The status of a rental docked after `elapsed_ms`, given `allowed_ms`.
    pub const fn returned_after(elapsed_ms: i64, allowed_ms: i64) -> RentalStatus {
        if elapsed_ms > allowed_ms {
            RentalStatus::ReturnedLate
        } else {
            RentalStatus::Returned
        }
    }
}

string_enum! {
    /// The status of a post (`carts.status`; a "cart" row is the post and the cart docked in
    /// it), as the owning device's fold derives it from sensed facts and executed intents.
    pub enum PostStatus as "post status" {
        /// A cart is docked and latched, nothing holds the post: it can be rented.
        Available => "available",
        /// The post's cart is out on an active rental started here. The post is empty and
        /// can take a return.
        InUse => "in_use",
        /// No cart and no active rental from this post (its cart was returned elsewhere, or
        /// the post was never stocked): it can take a return.
        Empty => "empty",
        /// Held for one shopper: named for their return (`initiate-return`), or unlocking
        /// for their rental. Not offered to anyone else until docked or the hold lapses.
        Reserved => "reserved",
        /// A manager's maintenance intent is in effect (e.g. unlocked for service). Not
        /// offered to shoppers.
        Maintenance => "maintenance",
        /// A manager took the post out of service. Not offered to shoppers until put back.
        OutOfService => "out_of_service",
        /// The device sensed a lock fault (an unlock that did not open, a hook open with no
        /// reason, a board that does not answer). Not offered until a technician clears it.
        Fault => "fault",
    }
}

impl PostStatus {
    /// Whether a shopper can rent the docked cart.
    pub const fn is_rentable(self) -> bool {
        matches!(self, PostStatus::Available)
    }

    /// Whether the kiosk may name this post for a shopper's return.
    pub const fn accepts_return(self) -> bool {
        matches!(self, PostStatus::InUse | PostStatus::Empty)
    }

    /// Whether staff or a fault holds the post away from shoppers.
    pub const fn is_held(self) -> bool {
        matches!(
            self,
            PostStatus::Maintenance | PostStatus::OutOfService | PostStatus::Fault
        )
    }
}

string_enum! {
    /// The hook (latch) of one lock, as the board's hook bit reports it.
    pub enum HookState as "hook state" {
        /// Closed on a cart or empty and locked.
        Latched => "latched",
        /// Released: a cart can be pulled out or pushed in.
        Open => "open",
        /// Not read yet, or the board did not answer.
        Unknown => "unknown",
    }
}

string_enum! {
    /// What a hook bit of `1` means on one board: the micro-switch of some locks is wired
    /// the other way round, so polarity is per-board configuration.
    pub enum HookPolarity as "hook polarity" {
        /// `1` = latched, the vendor's documented default.
        OneIsLatched => "one_is_latched",
        /// `1` = open.
        OneIsOpen => "one_is_open",
    }
}

impl HookState {
    /// The state a hook bit reports under `polarity`.
    pub const fn from_bit(bit: bool, polarity: HookPolarity) -> HookState {
        let latched = match polarity {
            HookPolarity::OneIsLatched => bit,
            HookPolarity::OneIsOpen => !bit,
        };
        if latched {
            HookState::Latched
        } else {
            HookState::Open
        }
    }
}

string_enum! {
    /// Whether a cart is in a post, as the board's infrared bit reports it.
    pub enum Presence as "presence" {
        /// The infrared sensor sees a cart.
        Present => "present",
        /// The infrared sensor sees no cart.
        Absent => "absent",
        /// Not read yet, or the board did not answer.
        Unknown => "unknown",
    }
}

impl Presence {
    /// The presence an infrared bit reports (`1` = a cart is present).
    pub const fn from_ir_bit(bit: bool) -> Presence {
        if bit {
            Presence::Present
        } else {
            Presence::Absent
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fmt;
    use std::str::FromStr;

    use expect_test::{Expect, expect};

    use super::*;

    fn check<T: FromStr<Err = StateError> + fmt::Display>(input: &str, expect: Expect) {
        let actual = match input.parse::<T>() {
            Ok(value) => format!("ok {value}"),
            Err(error) => format!("err {error}"),
        };
        expect.assert_eq(&actual);
    }

    fn round_trips<T: FromStr<Err = StateError> + fmt::Display + PartialEq + fmt::Debug + Copy>(
        all: &[T],
    ) {
        for value in all {
            assert_eq!(value.to_string().parse::<T>(), Ok(*value));
        }
    }

    #[test]
    fn every_value_round_trips() {
        round_trips(RentalStatus::ALL);
        round_trips(PostStatus::ALL);
        round_trips(HookState::ALL);
        round_trips(HookPolarity::ALL);
        round_trips(Presence::ALL);
        round_trips(AnomalyKind::ALL);
    }

    #[test]
    fn parse_is_exact() {
        check::<RentalStatus>("active", expect![["ok active"]]);
        check::<RentalStatus>("returned", expect![["ok returned"]]);
        check::<RentalStatus>(
            "overdue",
            expect![[
                r#"err unknown rental status "overdue": expected one of unlocking, active, returned, returned_late, failed_unlock, cancelled, closed_by_staff"#
            ]],
        );
        check::<RentalStatus>(
            "Active",
            expect![[
                r#"err unknown rental status "Active": expected one of unlocking, active, returned, returned_late, failed_unlock, cancelled, closed_by_staff"#
            ]],
        );
        check::<PostStatus>("in_use", expect![["ok in_use"]]);
        check::<PostStatus>(
            " available",
            expect![[
                r#"err unknown post status " available": expected one of available, in_use, empty, reserved, maintenance, out_of_service, fault"#
            ]],
        );
        check::<HookState>(
            "closed",
            expect![[r#"err unknown hook state "closed": expected one of latched, open, unknown"#]],
        );
        check::<Presence>(
            "",
            expect![[r#"err unknown presence "": expected one of present, absent, unknown"#]],
        );
    }

    #[test]
    fn overdue_is_derived() {
        let allowed = 120 * 60_000;
        assert!(RentalStatus::Active.is_overdue(allowed + 1, allowed));
        assert!(!RentalStatus::Active.is_overdue(allowed, allowed));
        assert!(!RentalStatus::ReturnedLate.is_overdue(allowed * 2, allowed));
        assert_eq!(
            RentalStatus::returned_after(allowed, allowed),
            RentalStatus::Returned
        );
        assert_eq!(
            RentalStatus::returned_after(allowed + 1, allowed),
            RentalStatus::ReturnedLate
        );
        assert!(RentalStatus::ReturnedLate.is_returned());
        assert!(!RentalStatus::Unlocking.is_overdue(allowed * 2, allowed));
        let open: Vec<&str> = RentalStatus::ALL
            .iter()
            .filter(|status| status.is_open())
            .map(|status| status.as_str())
            .collect();
        assert_eq!(open, ["unlocking", "active"]);
    }

    #[test]
    fn post_status_classes_are_disjoint() {
        for status in PostStatus::ALL {
            let classes = [
                status.is_rentable(),
                status.accepts_return(),
                status.is_held(),
            ];
            let reserved = *status == PostStatus::Reserved;
            assert_eq!(
                classes.iter().filter(|class| **class).count(),
                usize::from(!reserved)
            );
        }
    }

    #[test]
    fn sensor_bits() {
        let table = [
            HookState::from_bit(true, HookPolarity::OneIsLatched),
            HookState::from_bit(false, HookPolarity::OneIsLatched),
            HookState::from_bit(true, HookPolarity::OneIsOpen),
            HookState::from_bit(false, HookPolarity::OneIsOpen),
        ]
        .map(HookState::as_str)
        .join(" ");
        expect![["latched open open latched"]].assert_eq(&table);
        assert_eq!(Presence::from_ir_bit(true), Presence::Present);
        assert_eq!(Presence::from_ir_bit(false), Presence::Absent);
    }
}
