//! `AnomalyKind`: what the branch fold records, and the dashboard shows, when facts from
//! different writers do not fit together. Anomalies are never silently dropped (design
//! invariant 5); each kind has a description for staff in English and Hebrew.

use super::string_enum;

string_enum! {
    /// A kind of anomaly. Stored, so a string form is never renamed or reused.
    pub enum AnomalyKind as "anomaly kind" {
        /// A cart docked at a post with no return reserved there and no active rental to
        /// close.
        UnmatchedDock => "unmatched_dock",
        /// Two active rentals for one phone, started on different devices while they were
        /// out of touch; found when their data met.
        DuplicatePhoneRental => "duplicate_phone_rental",
        /// A return names a rental that no device's data contains.
        ReturnOfUnknownRental => "return_of_unknown_rental",
        /// Two returns close one rental; the earlier by HLC counts.
        ConflictingReturn => "conflicting_return",
        /// An unlock was sent but the hook stayed latched (a jammed lock).
        UnlockNotOpened => "unlock_not_opened",
        /// A hook was found open with no rental or maintenance intent to explain it.
        UnrecordedUnlock => "unrecorded_unlock",
        /// A rental was recorded but its lock was never unlocked (power lost between
        /// recording and unlocking); reconciled on restart and closed.
        PhantomRental => "phantom_rental",
        /// A device's wall clock jumped against its monotonic clock, or a peer's clock was
        /// rejected as too far ahead.
        ClockJump => "clock_jump",
        /// A write outside its writer's authority (another device's posts, another branch)
        /// was rejected.
        OutOfAuthorityWrite => "out_of_authority_write",
    }
}

impl AnomalyKind {
    /// A one-sentence description for staff, in English.
    pub const fn description_en(self) -> &'static str {
        match self {
            AnomalyKind::UnmatchedDock => {
                "A cart was docked at a post with no reserved return and no active rental to close."
            }
            AnomalyKind::DuplicatePhoneRental => {
                "One phone number has two active rentals, started on different devices while \
                 they were offline."
            }
            AnomalyKind::ReturnOfUnknownRental => {
                "A return was recorded for a rental that no device knows."
            }
            AnomalyKind::ConflictingReturn => {
                "Two returns were recorded for the same rental; the earlier one was kept."
            }
            AnomalyKind::UnlockNotOpened => {
                "A lock was told to open but stayed locked; it may be jammed."
            }
            AnomalyKind::UnrecordedUnlock => {
                "A lock was found open with no rental or maintenance request to explain it."
            }
            AnomalyKind::PhantomRental => {
                "A rental was recorded but its lock never opened (power was lost in between); \
                 the rental was closed."
            }
            AnomalyKind::ClockJump => {
                "A device's clock jumped, or was too far off a trusted clock."
            }
            AnomalyKind::OutOfAuthorityWrite => {
                "A write outside the writer's permissions (another device or branch) was rejected."
            }
        }
    }

    /// A one-sentence description for staff, in Hebrew.
    pub const fn description_he(self) -> &'static str {
        match self {
            AnomalyKind::UnmatchedDock => {
                "עגלה הוחזרה לעמדה שלא הוזמנה להחזרה, ואין השכרה פעילה לסגור."
            }
            AnomalyKind::DuplicatePhoneRental => {
                "למספר טלפון אחד יש שתי השכרות פעילות, שנפתחו בהתקנים שונים בזמן ניתוק מהרשת."
            }
            AnomalyKind::ReturnOfUnknownRental => "נרשמה החזרה של השכרה שאינה מוכרת באף התקן.",
            AnomalyKind::ConflictingReturn => "נרשמו שתי החזרות לאותה השכרה; נשמרה ההחזרה המוקדמת.",
            AnomalyKind::UnlockNotOpened => {
                "נשלחה פקודת פתיחה אך המנעול נשאר נעול; ייתכן שהוא תקוע."
            }
            AnomalyKind::UnrecordedUnlock => {
                "מנעול נמצא פתוח ללא השכרה או בקשת תחזוקה שמסבירות זאת."
            }
            AnomalyKind::PhantomRental => {
                "השכרה נרשמה אך המנעול לא נפתח (החשמל נותק בינתיים); ההשכרה נסגרה."
            }
            AnomalyKind::ClockJump => "שעון של התקן קפץ או סטה יותר מדי משעון אמין.",
            AnomalyKind::OutOfAuthorityWrite => {
                "נדחתה כתיבה מחוץ להרשאות הכותב (התקן אחר או סניף אחר)."
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    #[test]
    fn every_kind_has_both_descriptions() {
        let table: Vec<String> = AnomalyKind::ALL
            .iter()
            .map(|kind| format!("{kind}: {}", kind.description_en()))
            .collect();
        expect![[r#"
            unmatched_dock: A cart was docked at a post with no reserved return and no active rental to close.
            duplicate_phone_rental: One phone number has two active rentals, started on different devices while they were offline.
            return_of_unknown_rental: A return was recorded for a rental that no device knows.
            conflicting_return: Two returns were recorded for the same rental; the earlier one was kept.
            unlock_not_opened: A lock was told to open but stayed locked; it may be jammed.
            unrecorded_unlock: A lock was found open with no rental or maintenance request to explain it.
            phantom_rental: A rental was recorded but its lock never opened (power was lost in between); the rental was closed.
            clock_jump: A device's clock jumped, or was too far off a trusted clock.
            out_of_authority_write: A write outside the writer's permissions (another device or branch) was rejected."#]]
        .assert_eq(&table.join("\n"));
        for kind in AnomalyKind::ALL {
            let hebrew = kind.description_he();
            assert!(
                hebrew.chars().any(|c| ('\u{5d0}'..='\u{5ea}').contains(&c)),
                "{kind}"
            );
            assert!(hebrew.ends_with('.'), "{kind}");
        }
    }

    #[test]
    fn string_forms_are_unique() {
        let mut forms = AnomalyKind::ALL_STR.to_vec();
        forms.sort_unstable();
        forms.dedup();
        assert_eq!(forms.len(), AnomalyKind::ALL.len());
    }
}
