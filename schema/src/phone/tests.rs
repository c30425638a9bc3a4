//! Tests of `Phone`: a table of accepted and rejected inputs, the derived forms, and property
//! tests that parsing never panics and that normalisation is idempotent.

use expect_test::{Expect, expect};
use proptest::prelude::*;

use super::*;

/// One line per input: the E.164 form, or the error variant.
fn check(input: &str, expect: Expect) {
    let actual = match Phone::parse(input) {
        Ok(phone) => format!("ok {}", phone.as_e164()),
        Err(error) => format!("err {error:?}"),
    };
    expect.assert_eq(&actual);
}

#[test]
fn accepts_the_three_legacy_forms() {
    check("0501234567", expect![["ok +972501234567"]]);
    check("050-1234567", expect![["ok +972501234567"]]);
    check("+972501234567", expect![["ok +972501234567"]]);
    check("0521234567", expect![["ok +972521234567"]]);
    check("058-7654321", expect![["ok +972587654321"]]);
    check("+972599999999", expect![["ok +972599999999"]]);
    check("0500000000", expect![["ok +972500000000"]]);
}

#[test]
fn tolerates_surrounding_whitespace_only() {
    check("  0501234567  ", expect![["ok +972501234567"]]);
    check("\t+972501234567\n", expect![["ok +972501234567"]]);
    check("\u{a0}050-1234567\u{3000}", expect![["ok +972501234567"]]);
    check("050 1234567", expect![["err InvalidCharacter"]]);
    check("050 123 4567", expect![["err InvalidCharacter"]]);
    check("+972 50 123 4567", expect![["err InvalidCharacter"]]);
}

#[test]
fn rejects_empty() {
    check("", expect![["err Empty"]]);
    check("   ", expect![["err Empty"]]);
}

#[test]
fn rejects_landlines_and_non_mobile() {
    check("02-1234567", expect![["err NotMobile"]]);
    check("03-1234567", expect![["err NotMobile"]]);
    check("031234567", expect![["err NotMobile"]]);
    check("0771234567", expect![["err NotMobile"]]);
    check("+97231234567", expect![["err NotMobile"]]);
    check("+972771234567", expect![["err NotMobile"]]);
    check("+15551234567", expect![["err NotMobile"]]);
    check("+447911123456", expect![["err NotMobile"]]);
}

#[test]
fn rejects_wrong_lengths() {
    check("050123456", expect![["err WrongLength"]]);
    check("05012345678", expect![["err WrongLength"]]);
    check("050-123456", expect![["err WrongLength"]]);
    check("050-12345678", expect![["err WrongLength"]]);
    check("+97250123456", expect![["err WrongLength"]]);
    check("+9725012345678", expect![["err WrongLength"]]);
    check("0", expect![["err WrongLength"]]);
    check("+972", expect![["err WrongLength"]]);
    check("05", expect![["err WrongLength"]]);
}

#[test]
fn rejects_dashes_and_plus_elsewhere() {
    check("05-01234567", expect![["err Malformed"]]);
    check("0501-234567", expect![["err Malformed"]]);
    check("050-123-4567", expect![["err Malformed"]]);
    check("050--1234567", expect![["err Malformed"]]);
    check("0501234567-", expect![["err Malformed"]]);
    check("-0501234567", expect![["err Malformed"]]);
    check("+972-50-1234567", expect![["err Malformed"]]);
    check("+972-501234567", expect![["err Malformed"]]);
    check("972501234567", expect![["err Malformed"]]);
    check("+9720501234567", expect![["err Malformed"]]);
    check("+0501234567", expect![["err Malformed"]]);
    check("++972501234567", expect![["err Malformed"]]);
    check("0501234567+", expect![["err Malformed"]]);
    check("+", expect![["err Malformed"]]);
    check("-", expect![["err Malformed"]]);
}

#[test]
fn rejects_letters_and_unicode_digits() {
    check("05O1234567", expect![["err InvalidCharacter"]]);
    check("phone", expect![["err InvalidCharacter"]]);
    check("(050)1234567", expect![["err InvalidCharacter"]]);
    check("050.123.4567", expect![["err InvalidCharacter"]]);
    check("٠٥٠١٢٣٤٥٦٧", expect![["err InvalidCharacter"]]);
    check("０５０１２３４５６７", expect![["err InvalidCharacter"]]);
    check("\u{200f}0501234567", expect![["err InvalidCharacter"]]);
    check("050\u{2011}1234567", expect![["err InvalidCharacter"]]);
    check("0501234567\u{0}", expect![["err InvalidCharacter"]]);
}

#[test]
fn derived_forms() {
    let phone = Phone::parse("050-1234567").unwrap();
    let forms = format!(
        "e164={} national={} masked={} display={phone} debug={phone:?}",
        phone.as_e164(),
        phone.national(),
        phone.masked(),
    );
    expect![["e164=+972501234567 national=0501234567 masked=+97250***4567 display=+972501234567 debug=Phone(+97250***4567)"]].assert_eq(&forms);
}

#[test]
fn messages_name_the_accepted_forms_and_never_the_number() {
    let error = Phone::parse("03-1234567").unwrap_err();
    expect![["the phone number is not an Israeli mobile number; expected an Israeli mobile number as 05XXXXXXXX, 05X-XXXXXXX or +9725XXXXXXXX"]].assert_eq(&error.to_string());
    expect![["ניתן להשתמש רק במספר טלפון נייד ישראלי (המתחיל ב-05), לדוגמה 0501234567"]]
        .assert_eq(error.message_he());
    expect![["מספר טלפון לא תקין. יש להזין מספר נייד ישראלי, לדוגמה 0501234567"]]
        .assert_eq(PhoneError::Malformed.message_he());
    expect![["יש להזין מספר טלפון נייד, לדוגמה 0501234567"]]
        .assert_eq(PhoneError::Empty.message_he());
    for error in [
        PhoneError::Empty,
        PhoneError::InvalidCharacter,
        PhoneError::NotMobile,
        PhoneError::WrongLength,
        PhoneError::Malformed,
    ] {
        assert!(!error.to_string().contains("1234567"), "{error}");
    }
}

#[test]
fn every_form_of_one_number_is_equal() {
    let forms = [
        "0541112233",
        "054-1112233",
        "+972541112233",
        " 0541112233\n",
    ];
    let phones: Vec<Phone> = forms.iter().map(|form| form.parse().unwrap()).collect();
    assert!(phones.windows(2).all(|pair| pair[0] == pair[1]));
}

proptest! {
    #[test]
    fn parse_never_panics(input in any::<String>()) {
        let _ = Phone::parse(&input);
    }

    #[test]
    fn parse_never_panics_on_phone_like_text(input in "[ +0-9\\-٠-٩]{0,16}") {
        let _ = Phone::parse(&input);
    }

    #[test]
    fn normalisation_is_idempotent(subscriber in "5[0-9]{8}", form in 0..3usize) {
        let input = match form {
            0 => format!("0{subscriber}"),
            1 => format!("0{}-{}", &subscriber[..2], &subscriber[2..]),
            _ => format!("+972{subscriber}"),
        };
        let phone = Phone::parse(&input).unwrap();
        prop_assert_eq!(Phone::parse(phone.as_e164()), Ok(phone.clone()));
        prop_assert_eq!(Phone::parse(&phone.national()), Ok(phone.clone()));
        prop_assert_eq!(phone.as_e164(), format!("+972{subscriber}"));
    }

    #[test]
    fn accepted_text_round_trips(input in "[ +0-9\\-]{0,16}") {
        if let Ok(phone) = Phone::parse(&input) {
            prop_assert_eq!(Phone::parse(phone.as_e164()), Ok(phone.clone()));
            prop_assert_eq!(phone.as_e164().len(), 13);
            prop_assert!(phone.as_e164().starts_with("+9725"));
        }
    }
}
