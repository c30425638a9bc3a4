//! Tests of the rate limiters: bursts, refill, eviction, and the paired phone/kiosk check.

use cartwise_schema::{MonoMillis, Phone};
use proptest::prelude::*;

use super::{KioskKey, RateLimit, RateLimitConfig, RateLimiter, RetryAfter, ShopperRateLimits};

fn at(ms: u64) -> MonoMillis {
    MonoMillis::new(ms)
}

const MINUTE: u64 = 60_000;

#[test]
fn three_per_ten_minutes_bursts_three_then_refills_one_every_two_hundred_seconds() {
    let mut limiter = RateLimiter::new(
        RateLimit {
            requests: 3,
            window_ms: 10 * MINUTE,
        },
        100,
    );
    let key = "phone";
    for _ in 0..3 {
        assert_eq!(limiter.check(&key, at(0)), Ok(()));
    }
    let refused = limiter.check(&key, at(0));
    assert_eq!(
        refused,
        Err(RetryAfter {
            retry_after_ms: 200_000
        })
    );
    assert_eq!(refused.map_err(|wait| wait.minutes_ceil()), Err(4));
    // A refused call is not counted: the wait shrinks with time only.
    assert_eq!(
        limiter.check(&key, at(199_999)),
        Err(RetryAfter { retry_after_ms: 1 })
    );
    assert_eq!(limiter.check(&key, at(200_000)), Ok(()));
    assert_eq!(
        limiter.check(&key, at(200_000)),
        Err(RetryAfter {
            retry_after_ms: 200_000
        })
    );
    // After a full window of silence the whole burst is back.
    for _ in 0..3 {
        assert_eq!(limiter.check(&key, at(200_000 + 10 * MINUTE)), Ok(()));
    }
}

#[test]
fn peek_does_not_count() {
    let mut limiter = RateLimiter::new(
        RateLimit {
            requests: 1,
            window_ms: MINUTE,
        },
        100,
    );
    assert_eq!(limiter.peek(&1, at(0)), Ok(()));
    assert_eq!(limiter.peek(&1, at(0)), Ok(()));
    assert!(limiter.is_empty());
    assert_eq!(limiter.check(&1, at(0)), Ok(()));
    assert_eq!(
        limiter.peek(&1, at(0)),
        Err(RetryAfter {
            retry_after_ms: MINUTE
        })
    );
}

#[test]
fn a_full_limiter_evicts_the_key_used_longest_ago() {
    let mut limiter = RateLimiter::new(
        RateLimit {
            requests: 1,
            window_ms: MINUTE,
        },
        2,
    );
    assert_eq!(limiter.check(&"a", at(0)), Ok(()));
    assert_eq!(limiter.check(&"b", at(1)), Ok(()));
    assert_eq!(limiter.check(&"c", at(2)), Ok(()));
    assert_eq!(limiter.len(), 2);
    // "a" was evicted, so its bucket starts full again; "c" is still drained.
    assert_eq!(limiter.peek(&"a", at(3)), Ok(()));
    assert!(limiter.peek(&"c", at(3)).is_err());
}

#[test]
fn wait_messages_round_up() {
    let wait = |retry_after_ms| RetryAfter { retry_after_ms };
    assert_eq!((wait(1).minutes_ceil(), wait(1).seconds_ceil()), (1, 1));
    assert_eq!(
        (wait(60_000).minutes_ceil(), wait(60_001).minutes_ceil()),
        (1, 2)
    );
    assert_eq!(wait(1_500).seconds_ceil(), 2);
}

#[test]
fn kiosk_ids_are_cut_at_a_character_boundary() {
    assert_eq!(KioskKey::from_id("kiosk-1").as_str(), "kiosk-1");
    let long = "ק".repeat(40); // 80 bytes
    let key = KioskKey::from_id(&long);
    assert_eq!(key.as_str().len(), 64);
    assert_eq!(
        KioskKey::from_ip("10.0.0.7".parse().unwrap()).as_str(),
        "10.0.0.7"
    );
}

#[test]
fn an_otp_request_counts_against_phone_and_kiosk_only_when_both_allow() {
    let config = RateLimitConfig {
        otp_requests_per_kiosk: RateLimit {
            requests: 4,
            window_ms: 10 * MINUTE,
        },
        ..RateLimitConfig::default()
    };
    let mut limits = ShopperRateLimits::new(&config);
    let kiosk = KioskKey::from_id("kiosk-1");
    let alice = Phone::parse("0501111111").unwrap();
    let bob = Phone::parse("0502222222").unwrap();
    for _ in 0..3 {
        assert_eq!(limits.check_otp_request(&alice, &kiosk, at(0)), Ok(()));
    }
    // Alice's fourth request is refused by her phone's bucket and not counted for the kiosk.
    assert!(limits.check_otp_request(&alice, &kiosk, at(0)).is_err());
    assert_eq!(limits.check_otp_request(&bob, &kiosk, at(0)), Ok(()));
    // Now the kiosk is drained too (4 counted): Bob is refused by the kiosk's bucket.
    assert_eq!(
        limits.check_otp_request(&bob, &kiosk, at(0)),
        Err(RetryAfter {
            retry_after_ms: 150_000
        })
    );
    // Verifications have their own buckets.
    assert_eq!(limits.check_otp_verification(&alice, &kiosk, at(0)), Ok(()));
}

#[test]
fn both_refusing_reports_the_longer_wait() {
    let config = RateLimitConfig {
        otp_verifications_per_phone: RateLimit {
            requests: 1,
            window_ms: MINUTE,
        },
        otp_verifications_per_kiosk: RateLimit {
            requests: 1,
            window_ms: 2 * MINUTE,
        },
        ..RateLimitConfig::default()
    };
    let mut limits = ShopperRateLimits::new(&config);
    let kiosk = KioskKey::from_id("k");
    let phone = Phone::parse("0501111111").unwrap();
    assert_eq!(limits.check_otp_verification(&phone, &kiosk, at(0)), Ok(()));
    assert_eq!(
        limits.check_otp_verification(&phone, &kiosk, at(0)),
        Err(RetryAfter {
            retry_after_ms: 2 * MINUTE
        })
    );
}

proptest! {
    /// The token-bucket guarantee: between any two allowed calls `t_i <= t_j`, at most
    /// `requests + (t_j - t_i) / interval` calls were allowed (a burst, then the refill rate).
    #[test]
    fn never_more_than_the_burst_plus_the_refill(
        requests in 1u32..6,
        gaps in proptest::collection::vec(0u64..30_000, 1..200),
    ) {
        let limit = RateLimit { requests, window_ms: MINUTE };
        let interval = MINUTE / u64::from(requests);
        let mut limiter = RateLimiter::new(limit, 10);
        let mut now = 0;
        let mut allowed = Vec::new();
        for gap in gaps {
            now += gap;
            if limiter.check(&(), at(now)).is_ok() {
                allowed.push(now);
            }
        }
        for (i, first) in allowed.iter().enumerate() {
            for (count, last) in allowed[i..].iter().enumerate() {
                let bound = u64::from(requests) + (last - first) / interval;
                prop_assert!((count as u64) < bound, "{} calls in {} ms", count + 1, last - first);
            }
        }
    }
}
