//! Tests of the OTP book: expiry boundary, attempts, re-requests, eviction.

use cartwise_schema::{MonoMillis, OTP_TTL_MS, OtpCode, Phone};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::{OtpBook, OtpBookConfig, OtpVerifyError, draw_code};

fn phone(national: &str) -> Phone {
    Phone::parse(national).unwrap()
}

fn at(ms: u64) -> MonoMillis {
    MonoMillis::new(ms)
}

/// A code that is surely not `code`.
fn other_than(code: &OtpCode) -> OtpCode {
    let value: u16 = code.as_str().parse().unwrap();
    OtpCode::from_random_u16((value + 1) % 10_000)
}

#[test]
fn a_correct_code_is_accepted_once() {
    let mut book = OtpBook::new(OtpBookConfig::default());
    let mut rng = StdRng::seed_from_u64(1);
    let shopper = phone("0501234567");
    let issued = book.request(&shopper, at(1_000), &mut rng);
    assert!(!issued.resent);
    assert_eq!(issued.expires, at(1_000 + OTP_TTL_MS));
    assert_eq!(book.verify(&shopper, &issued.code, at(2_000)), Ok(()));
    assert_eq!(
        book.verify(&shopper, &issued.code, at(2_001)),
        Err(OtpVerifyError::NoCode)
    );
    assert!(book.is_empty());
}

#[test]
fn a_code_is_valid_until_one_millisecond_before_five_minutes() {
    let mut rng = StdRng::seed_from_u64(2);
    let shopper = phone("050-7654321");
    let sent = 10_000;

    let mut book = OtpBook::new(OtpBookConfig::default());
    let issued = book.request(&shopper, at(sent), &mut rng);
    assert_eq!(
        book.verify(&shopper, &issued.code, at(sent + OTP_TTL_MS - 1)),
        Ok(())
    );

    let issued = book.request(&shopper, at(sent), &mut rng);
    assert_eq!(
        book.verify(&shopper, &issued.code, at(sent + OTP_TTL_MS)),
        Err(OtpVerifyError::Expired)
    );
    // An expired code is forgotten once reported.
    assert_eq!(
        book.verify(&shopper, &issued.code, at(sent + OTP_TTL_MS)),
        Err(OtpVerifyError::NoCode)
    );
}

#[test]
fn the_third_wrong_code_burns_the_code() {
    let mut book = OtpBook::new(OtpBookConfig::default());
    let mut rng = StdRng::seed_from_u64(3);
    let shopper = phone("+972521112233");
    let issued = book.request(&shopper, at(0), &mut rng);
    let wrong = other_than(&issued.code);
    assert_eq!(
        book.verify(&shopper, &wrong, at(1)),
        Err(OtpVerifyError::Wrong { attempts_left: 2 })
    );
    assert_eq!(
        book.verify(&shopper, &wrong, at(2)),
        Err(OtpVerifyError::Wrong { attempts_left: 1 })
    );
    assert_eq!(
        book.verify(&shopper, &wrong, at(3)),
        Err(OtpVerifyError::TooManyAttempts)
    );
    // Burnt: even the right code is refused now.
    assert_eq!(
        book.verify(&shopper, &issued.code, at(4)),
        Err(OtpVerifyError::TooManyAttempts)
    );

    // A new request replaces a burnt code with a fresh one and fresh attempts.
    let fresh = book.request(&shopper, at(5), &mut rng);
    assert!(!fresh.resent);
    let wrong = other_than(&fresh.code);
    assert_eq!(
        book.verify(&shopper, &wrong, at(6)),
        Err(OtpVerifyError::Wrong { attempts_left: 2 })
    );
    assert_eq!(book.verify(&shopper, &fresh.code, at(7)), Ok(()));
}

#[test]
fn a_re_request_before_expiry_resends_the_same_code_and_keeps_the_attempts() {
    let mut book = OtpBook::new(OtpBookConfig::default());
    let mut rng = StdRng::seed_from_u64(4);
    let shopper = phone("0541234567");
    let first = book.request(&shopper, at(0), &mut rng);
    let wrong = other_than(&first.code);
    assert_eq!(
        book.verify(&shopper, &wrong, at(1)),
        Err(OtpVerifyError::Wrong { attempts_left: 2 })
    );

    let again = book.request(&shopper, at(OTP_TTL_MS - 1), &mut rng);
    assert!(again.resent);
    assert!(again.code.matches(&first.code));
    assert_eq!(again.expires, at(2 * OTP_TTL_MS - 1));
    assert_eq!(book.len(), 1);
    // The attempt count survived the re-request.
    assert_eq!(
        book.verify(&shopper, &wrong, at(OTP_TTL_MS)),
        Err(OtpVerifyError::Wrong { attempts_left: 1 })
    );
    // The renewed lifetime holds past the first expiry.
    assert_eq!(
        book.verify(&shopper, &first.code, at(OTP_TTL_MS + 1)),
        Ok(())
    );
}

#[test]
fn a_re_request_after_expiry_sends_a_new_code() {
    let mut book = OtpBook::new(OtpBookConfig::default());
    let mut rng = StdRng::seed_from_u64(5);
    let shopper = phone("0531234567");
    book.request(&shopper, at(0), &mut rng);
    let later = book.request(&shopper, at(OTP_TTL_MS), &mut rng);
    assert!(!later.resent);
    assert_eq!(
        book.verify(&shopper, &later.code, at(OTP_TTL_MS + 1)),
        Ok(())
    );
}

#[test]
fn a_full_book_drops_expired_codes_first_then_evicts_the_oldest() {
    let config = OtpBookConfig {
        pending_max: 2,
        ..OtpBookConfig::default()
    };
    let mut book = OtpBook::new(config);
    let mut rng = StdRng::seed_from_u64(6);
    let (a, b, c, d) = (
        phone("0501111111"),
        phone("0502222222"),
        phone("0503333333"),
        phone("0504444444"),
    );

    let code_a = book.request(&a, at(0), &mut rng).code;
    let code_b = book.request(&b, at(OTP_TTL_MS / 2), &mut rng).code;
    // At OTP_TTL_MS, a's code has expired: it makes room, b's survives.
    let code_c = book.request(&c, at(OTP_TTL_MS), &mut rng).code;
    assert_eq!(book.len(), 2);
    assert_eq!(
        book.verify(&a, &code_a, at(OTP_TTL_MS)),
        Err(OtpVerifyError::NoCode)
    );

    // Nothing has expired now: the oldest pending code (b) is evicted for d.
    let code_d = book.request(&d, at(OTP_TTL_MS + 1), &mut rng).code;
    assert_eq!(book.len(), 2);
    assert_eq!(
        book.verify(&b, &code_b, at(OTP_TTL_MS + 2)),
        Err(OtpVerifyError::NoCode)
    );
    assert_eq!(book.verify(&c, &code_c, at(OTP_TTL_MS + 2)), Ok(()));
    assert_eq!(book.verify(&d, &code_d, at(OTP_TTL_MS + 2)), Ok(()));
}

#[test]
fn prune_expired_empties_a_book_of_old_codes() {
    let mut book = OtpBook::new(OtpBookConfig::default());
    let mut rng = StdRng::seed_from_u64(7);
    for index in 0..5u64 {
        let number = format!("05012345{index:02}");
        book.request(&phone(&number), at(index), &mut rng);
    }
    book.prune_expired(at(OTP_TTL_MS + 2));
    assert_eq!(book.len(), 2);
    book.prune_expired(at(OTP_TTL_MS + 4));
    assert!(book.is_empty());
}

#[test]
fn drawn_codes_are_four_digits_and_vary() {
    let mut rng = StdRng::seed_from_u64(8);
    let codes: std::collections::HashSet<String> =
        (0..200).map(|_| draw_code(&mut rng).to_string()).collect();
    assert!(
        codes
            .iter()
            .all(|code| code.len() == 4 && code.bytes().all(|b| b.is_ascii_digit()))
    );
    // 200 uniform draws from 10 000 codes repeat a few times at most.
    assert!(codes.len() > 190, "only {} distinct codes", codes.len());
}
