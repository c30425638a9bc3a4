//! Tests of shopper tokens: round trip, tampering, expiry, malformed input, and the replay of
//! the fuzz corpus and regressions.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cartwise_schema::{Phone, WallMillis};
use hmac::Mac as _;
use proptest::prelude::*;

use super::*;

/// The key the fuzz target and the corpus replay use.
const FUZZ_KEY_BYTES: [u8; 32] = [0x42; 32];
/// The wall time the fuzz target and the corpus replay verify at (2023-11-14).
const FUZZ_NOW_MS: i64 = 1_700_000_000_000;

fn key() -> ShopperTokenKey {
    ShopperTokenKey::from_bytes(&FUZZ_KEY_BYTES).unwrap()
}

fn shopper() -> Phone {
    Phone::parse("0501234567").unwrap()
}

fn at(ms: i64) -> WallMillis {
    WallMillis::new(ms)
}

/// A token whose payload is `payload`, correctly signed: for fields the issuer never writes.
fn sign_raw(key: &ShopperTokenKey, payload: &[u8]) -> String {
    let mac = key.mac().chain_update(payload).finalize().into_bytes();
    URL_SAFE_NO_PAD.encode([payload, mac.as_slice()].concat())
}

#[test]
fn an_issued_token_verifies_until_it_expires() {
    let issued = key().issue(&shopper(), at(FUZZ_NOW_MS), SHOPPER_TOKEN_TTL_MS_DEFAULT);
    assert_eq!(issued.token.len(), 84);
    assert!(
        issued
            .token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    let expires = FUZZ_NOW_MS + 30 * 24 * 60 * 60 * 1_000;
    assert_eq!(issued.claims.expires, at(expires));

    let claims = key().verify(&issued.token, at(expires - 1)).unwrap();
    assert_eq!(claims, issued.claims);
    assert_eq!(claims.phone.as_e164(), "+972501234567");
    assert_eq!(
        key().verify(&issued.token, at(expires)),
        Err(ShopperTokenError::Expired {
            expired_ms: expires
        })
    );
    // Issued "in the future" (our clock is behind the issuer's): still accepted.
    assert!(
        key()
            .verify(&issued.token, at(FUZZ_NOW_MS - 60_000))
            .is_ok()
    );
}

#[test]
fn another_branch_key_is_a_bad_signature() {
    let issued = key().issue(&shopper(), at(FUZZ_NOW_MS), SHOPPER_TOKEN_TTL_MS_DEFAULT);
    let other = ShopperTokenKey::from_bytes(&[0x43; 32]).unwrap();
    assert_eq!(
        other.verify(&issued.token, at(FUZZ_NOW_MS)),
        Err(ShopperTokenError::BadSignature)
    );
}

#[test]
fn flipping_any_bit_is_refused() {
    let issued = key().issue(&shopper(), at(FUZZ_NOW_MS), SHOPPER_TOKEN_TTL_MS_DEFAULT);
    let bytes = URL_SAFE_NO_PAD.decode(&issued.token).unwrap();
    for index in 0..bytes.len() {
        for bit in 0..8 {
            let mut tampered = bytes.clone();
            tampered[index] ^= 1 << bit;
            let result = key().verify(&URL_SAFE_NO_PAD.encode(&tampered), at(FUZZ_NOW_MS));
            assert!(result.is_err(), "byte {index} bit {bit} accepted");
        }
    }
}

#[test]
fn the_mac_key_padding_equals_hmac_of_the_raw_key() {
    let padded = key().mac().chain_update(b"payload").finalize().into_bytes();
    let raw = <HmacSha256 as hmac::Mac>::new_from_slice(&FUZZ_KEY_BYTES)
        .unwrap()
        .chain_update(TOKEN_MAC_CONTEXT)
        .chain_update(b"payload")
        .finalize()
        .into_bytes();
    assert_eq!(padded, raw);
}

#[test]
fn malformed_tokens_get_typed_errors() {
    let now = at(FUZZ_NOW_MS);
    let verify = |token: &str| key().verify(token, now).unwrap_err();
    assert_eq!(verify(""), ShopperTokenError::Empty);
    assert_eq!(verify("  \n"), ShopperTokenError::Empty);
    assert_eq!(
        verify(&"A".repeat(129)),
        ShopperTokenError::TooLong { len: 129, max: 128 }
    );
    assert_eq!(verify("not a token!"), ShopperTokenError::NotBase64);
    assert_eq!(verify("AAAA+/=="), ShopperTokenError::NotBase64);
    assert_eq!(verify("AAAA"), ShopperTokenError::Malformed { len: 3 });

    let issued = key().issue(&shopper(), now, SHOPPER_TOKEN_TTL_MS_DEFAULT);
    let mut bytes = URL_SAFE_NO_PAD.decode(&issued.token).unwrap();
    bytes[0] = 2;
    assert_eq!(
        verify(&URL_SAFE_NO_PAD.encode(&bytes)),
        ShopperTokenError::UnsupportedVersion { version: 2 }
    );
    bytes[0] = 1;
    bytes[17] = 14; // phone length one more than present
    assert_eq!(
        verify(&URL_SAFE_NO_PAD.encode(&bytes)),
        ShopperTokenError::Malformed { len: 63 }
    );
}

#[test]
fn signed_but_invalid_fields_are_refused() {
    let payload = |issued: i64, expires: i64, phone: &[u8]| {
        let mut bytes = vec![1];
        bytes.extend_from_slice(&issued.to_be_bytes());
        bytes.extend_from_slice(&expires.to_be_bytes());
        bytes.push(u8::try_from(phone.len()).unwrap());
        bytes.extend_from_slice(phone);
        bytes
    };
    let now = at(FUZZ_NOW_MS);
    let verify = |payload: Vec<u8>| key().verify(&sign_raw(&key(), &payload), now);
    let good_phone = b"+972501234567";
    assert!(verify(payload(FUZZ_NOW_MS, FUZZ_NOW_MS + 1, good_phone)).is_ok());
    // A national form is a valid phone, but not the canonical field.
    assert_eq!(
        verify(payload(FUZZ_NOW_MS, FUZZ_NOW_MS + 1, b"0501234567")),
        Err(ShopperTokenError::BadPhone)
    );
    assert_eq!(
        verify(payload(FUZZ_NOW_MS, FUZZ_NOW_MS + 1, b"+972201234567")),
        Err(ShopperTokenError::BadPhone)
    );
    assert_eq!(
        verify(payload(FUZZ_NOW_MS, FUZZ_NOW_MS, good_phone)),
        Err(ShopperTokenError::BadValidity)
    );
    let too_long = FUZZ_NOW_MS + SHOPPER_TOKEN_TTL_MS_MAX + 1;
    assert_eq!(
        verify(payload(FUZZ_NOW_MS, too_long, good_phone)),
        Err(ShopperTokenError::BadValidity)
    );
    assert_eq!(
        verify(payload(i64::MIN, i64::MAX, good_phone)),
        Err(ShopperTokenError::BadValidity)
    );
}

#[test]
fn issue_clamps_the_lifetime() {
    let issued = key().issue(&shopper(), at(0), i64::MAX);
    assert_eq!(issued.claims.expires, at(SHOPPER_TOKEN_TTL_MS_MAX));
    let issued = key().issue(&shopper(), at(0), -5);
    assert_eq!(issued.claims.expires, at(1));
    assert!(key().verify(&issued.token, at(0)).is_ok());
}

/// Replays every input the fuzzer was seeded with or ever found: none may panic, and the
/// valid seed must verify.
#[test]
fn fuzz_corpus_and_regressions_replay_without_panic() {
    let fuzz_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for dir in ["corpus/shopper_token", "regressions/shopper_token"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir.join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let result =
                std::str::from_utf8(&bytes).map(|text| key().verify(text, at(FUZZ_NOW_MS)));
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            check_seed_outcome(&name, &result);
            replayed += 1;
        }
    }
    assert!(
        replayed >= 3,
        "the shopper_token seed corpus is missing under {fuzz_dir:?}"
    );
}

/// The seeds were made by an independent implementation (Python's `hmac`); their outcomes
/// pin the format.
fn check_seed_outcome(
    name: &str,
    result: &Result<Result<ShopperTokenClaims, ShopperTokenError>, std::str::Utf8Error>,
) {
    let Ok(result) = result else { return };
    let expected_error = match name {
        "seed-valid-v1" => {
            assert_eq!(
                result.as_ref().map(|claims| claims.phone.as_e164()),
                Ok("+972501234567")
            );
            return;
        }
        "seed-expired-v1" => "Expired",
        "seed-other-key" | "seed-tampered-last-char" => "BadSignature",
        "seed-version-2" => "UnsupportedVersion",
        "seed-signed-national-phone" => "BadPhone",
        "seed-signed-bad-validity" => "BadValidity",
        _ => return,
    };
    let actual = format!("{result:?}");
    assert!(
        actual.starts_with(&format!("Err({expected_error}")),
        "{name}: {actual}"
    );
}

proptest! {
    #[test]
    fn verify_never_panics_on_arbitrary_text(text in any::<String>(), now in any::<i64>()) {
        let _ = key().verify(&text, at(now));
    }

    #[test]
    fn verify_never_panics_on_arbitrary_decoded_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
        let result = key().verify(&URL_SAFE_NO_PAD.encode(&bytes), at(FUZZ_NOW_MS));
        prop_assert!(result.is_err());
    }

    #[test]
    fn round_trip_for_any_phone_and_time(subscriber in 0u32..100_000_000, now in -1_000_000_000_000i64..4_000_000_000_000) {
        let phone = Phone::parse(&format!("05{subscriber:08}")).unwrap();
        let issued = key().issue(&phone, at(now), SHOPPER_TOKEN_TTL_MS_DEFAULT);
        prop_assert_eq!(key().verify(&issued.token, at(now)), Ok(issued.claims));
    }
}
