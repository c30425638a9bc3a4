//! Tests of time: boot-offset correction and durations across reboots, the HLC's string and
//! integer encodings, and property tests that the HLC only moves forward.

use expect_test::expect;
use proptest::prelude::*;
use uuid::Uuid;

use super::*;

const NODE_A: u64 = 0xA;
const NODE_B: u64 = 0xB;

fn boot(n: u128) -> BootId {
    BootId::from_uuid(Uuid::from_u128(n))
}

fn hlc(wall_ms: u64, counter: u16, node: u64) -> Hlc {
    Hlc::new(wall_ms, counter, node).unwrap()
}

fn stamp(boot_id: BootId, mono_ms: u64, wall_ms: i64) -> Stamp {
    Stamp {
        wall: WallMillis::new(wall_ms),
        boot: boot_id,
        mono: MonoMillis::new(mono_ms),
        hlc: Hlc::zero(NODE_A),
    }
}

#[test]
fn same_boot_duration_is_monotonic_even_if_the_wall_clock_jumped() {
    let offsets = BootOffsets::new();
    let start = stamp(boot(1), 10_000, 1_700_000_000_000);
    // NTP stepped the wall clock back a day during the rental.
    let end = stamp(boot(1), 10_000 + 7_200_000, 1_700_000_000_000 - 86_400_000);
    let elapsed = duration_ms(&start, &end, &offsets);
    assert_eq!(
        elapsed,
        Elapsed {
            ms: 7_200_000,
            basis: ElapsedBasis::Monotonic
        }
    );
    assert!(elapsed.is_trusted());
}

#[test]
fn cross_boot_duration_uses_corrected_wall_time() {
    let true_start_ms: i64 = 1_700_000_000_000;
    // Boot 1 had a correct clock; boot 2 started offline in 1970 after a power cut.
    let start = stamp(boot(1), 5_000, true_start_ms);
    let end = stamp(boot(2), 60_000, 60_000);
    let mut offsets = BootOffsets::new();
    let provisional = duration_ms(&start, &end, &offsets);
    assert_eq!(provisional.basis, ElapsedBasis::UncorrectedWall);
    assert!(!provisional.is_trusted());

    offsets.learn(BootOffset::learn(
        boot(1),
        MonoMillis::new(5_000),
        WallMillis::new(true_start_ms),
        WallMillis::new(true_start_ms),
    ));
    // Boot 2 learned, at mono 90 s, that the real time was start + 3 h.
    let three_hours: i64 = 3 * 3_600_000;
    offsets.learn(BootOffset::learn(
        boot(2),
        MonoMillis::new(90_000),
        WallMillis::new(90_000),
        WallMillis::new(true_start_ms + three_hours),
    ));
    let elapsed = duration_ms(&start, &end, &offsets);
    assert_eq!(
        elapsed,
        Elapsed {
            ms: three_hours - 30_000,
            basis: ElapsedBasis::CorrectedWall
        }
    );
}

#[test]
fn corrected_wall_is_anchored_on_the_monotonic_clock() {
    let offset = BootOffset::learn(
        boot(7),
        MonoMillis::new(1_000),
        WallMillis::new(1_000),
        WallMillis::new(1_000_000),
    );
    assert_eq!(offset.offset_ms(), 999_000);
    assert_eq!(offset.trusted_boot_start(), WallMillis::new(999_000));
    // Before any step of the local clock: equals wall + offset.
    let early = stamp(boot(7), 500, 500);
    assert_eq!(
        corrected_wall(&early, &offset),
        Ok(WallMillis::new(999_500))
    );
    // After the local clock was stepped (wall no longer tracks mono): still right.
    let stepped = stamp(boot(7), 2_000, 5_000_000);
    assert_eq!(
        corrected_wall(&stepped, &offset),
        Ok(WallMillis::new(1_001_000))
    );
    let other_boot = stamp(boot(8), 2_000, 2_000);
    let error = corrected_wall(&other_boot, &offset).unwrap_err();
    expect![[r#"the clock offset was learned in boot 00000000-0000-0000-0000-000000000007, but the stamp is of boot 00000000-0000-0000-0000-000000000008"#]].assert_eq(&error.to_string());
}

#[test]
fn boot_offsets_keep_the_latest_observation() {
    let mut offsets = BootOffsets::new();
    let observe = |mono, trusted| {
        BootOffset::learn(
            boot(1),
            MonoMillis::new(mono),
            WallMillis::new(0),
            WallMillis::new(trusted),
        )
    };
    assert!(offsets.learn(observe(100, 1_000)));
    assert!(offsets.learn(observe(200, 1_100)));
    assert!(!offsets.learn(observe(150, 9_999)));
    assert_eq!(offsets.len(), 1);
    assert_eq!(
        offsets.get(&boot(1)).map(|offset| offset.trusted_wall),
        Some(WallMillis::new(1_100))
    );
    assert_eq!(
        offsets.corrected_wall(&stamp(boot(2), 1, 42)),
        CorrectedWall::Uncorrected(WallMillis::new(42))
    );
}

#[test]
fn millis_parse() {
    let show = |input: &str| {
        let (wall, mono) = (input.parse::<WallMillis>(), input.parse::<MonoMillis>());
        format!("{input:?}: wall={wall:?} mono={mono:?}")
    };
    let table = [
        "0",
        "-5",
        "1700000000000",
        "+5",
        "",
        "1 ",
        "18446744073709551615",
    ]
    .map(show)
    .join("\n");
    expect![[r#"
        "0": wall=Ok(WallMillis(0)) mono=Ok(MonoMillis(0))
        "-5": wall=Ok(WallMillis(-5)) mono=Err(NotMillis { kind: "monotonic time", input: "-5" })
        "1700000000000": wall=Ok(WallMillis(1700000000000)) mono=Ok(MonoMillis(1700000000000))
        "+5": wall=Err(NotMillis { kind: "wall time", input: "+5" }) mono=Err(NotMillis { kind: "monotonic time", input: "+5" })
        "": wall=Err(NotMillis { kind: "wall time", input: "" }) mono=Err(NotMillis { kind: "monotonic time", input: "" })
        "1 ": wall=Err(NotMillis { kind: "wall time", input: "1 " }) mono=Err(NotMillis { kind: "monotonic time", input: "1 " })
        "18446744073709551615": wall=Err(NotMillis { kind: "wall time", input: "18446744073709551615" }) mono=Ok(MonoMillis(18446744073709551615))"#]]
    .assert_eq(&table);
}

#[test]
fn hlc_text_form() {
    let value = hlc(1_700_000_000_000, 3, 0x8000_0000_0000_1001);
    expect![["018bcfe56800-0003-8000000000001001"]].assert_eq(&value.to_string());
    assert_eq!(value.to_string().parse::<Hlc>(), Ok(value));
    let show = |input: &str| match input.parse::<Hlc>() {
        Ok(value) => format!("ok {value}"),
        Err(error) => format!("err {error}"),
    };
    let table = [
        "018BCFE56800-0003-8000000000001001",
        "018bcfe56800-0003-800000000000100",
        "018bcfe56800_0003_8000000000001001",
        "018bcfe5680-00003-8000000000001001",
        "ffffffffffff-ffff-ffffffffffffffff",
        "+18bcfe56800-0003-8000000000001001",
    ]
    .map(show)
    .join("\n");
    expect![[r#"
        err invalid hlc "018BCFE56800-0003-8000000000001001": expected 12, 4 and 16 lowercase hex digits joined by dashes, e.g. 018bcfe56800-0000-8000000000001001
        err invalid hlc "018bcfe56800-0003-800000000000100": expected 12, 4 and 16 lowercase hex digits joined by dashes, e.g. 018bcfe56800-0000-8000000000001001
        err invalid hlc "018bcfe56800_0003_8000000000001001": expected 12, 4 and 16 lowercase hex digits joined by dashes, e.g. 018bcfe56800-0000-8000000000001001
        err invalid hlc "018bcfe5680-00003-8000000000001001": expected 12, 4 and 16 lowercase hex digits joined by dashes, e.g. 018bcfe56800-0000-8000000000001001
        ok ffffffffffff-ffff-ffffffffffffffff
        err invalid hlc "+18bcfe56800-0003-8000000000001001": expected 12, 4 and 16 lowercase hex digits joined by dashes, e.g. 018bcfe56800-0000-8000000000001001"#]]
    .assert_eq(&table);
    let error = Hlc::new(HLC_WALL_MS_MAX + 1, 0, 0).unwrap_err();
    expect![["hlc wall time 281474976710656 ms is out of range: expected 0..=281474976710655"]]
        .assert_eq(&error.to_string());
}

#[test]
fn hlc_counter_carries_into_wall_time() {
    let mut clock = HlcClock::resume(
        NODE_A,
        hlc(1_000, u16::MAX - 1, 0),
        HLC_MAX_DRIFT_MS_DEFAULT,
    );
    assert_eq!(
        clock.now(WallMillis::new(500)),
        hlc(1_000, u16::MAX, NODE_A)
    );
    assert_eq!(clock.now(WallMillis::new(500)), hlc(1_001, 0, NODE_A));
    let mut exhausted = HlcClock::resume(NODE_A, hlc(HLC_WALL_MS_MAX, u16::MAX, 0), 0);
    assert_eq!(
        exhausted.now(WallMillis::new(i64::MAX)),
        hlc(HLC_WALL_MS_MAX, u16::MAX, NODE_A)
    );
    let remote = hlc(HLC_WALL_MS_MAX, u16::MAX, NODE_B);
    assert_eq!(
        exhausted.observe(remote, WallMillis::new(i64::MAX)),
        Err(HlcError::Exhausted)
    );
}

#[test]
fn hlc_rejects_a_remote_clock_too_far_ahead() {
    let mut clock = HlcClock::new(NODE_A, 60_000);
    let before = clock.now(WallMillis::new(1_000_000));
    let far = hlc(1_000_000 + 60_001, 0, NODE_B);
    let error = clock.observe(far, WallMillis::new(1_000_000)).unwrap_err();
    expect![["remote clock 1060001 ms is more than 60000 ms ahead of the local clock 1000000 ms"]]
        .assert_eq(&error.to_string());
    assert_eq!(clock.last(), before);
    let near = hlc(1_000_000 + 60_000, 7, NODE_B);
    assert_eq!(
        clock.observe(near, WallMillis::new(1_000_000)),
        Ok(hlc(1_060_000, 8, NODE_A))
    );
    // A clock before 1970 counts as 0.
    let mut clock = HlcClock::new(NODE_A, 10);
    assert_eq!(clock.now(WallMillis::new(-5)), hlc(0, 1, NODE_A));
}

#[test]
fn node_from_uuid_takes_the_last_eight_bytes() {
    let device = Uuid::parse_str("0b1e3c2a-0000-4000-8000-000000001001").unwrap();
    assert_eq!(Hlc::node_from_uuid(&device), 0x8000_0000_0000_1001);
}

/// One step of a clock's life: a local event or a received remote value.
#[derive(Debug, Clone)]
enum Step {
    Now {
        physical_ms: i64,
    },
    Observe {
        physical_ms: i64,
        remote_wall_ms: u64,
        remote_counter: u16,
    },
}

fn step() -> impl Strategy<Value = Step> {
    // Physical times jump anywhere in 0..2^44 ms (to the year 2527), back and forth, with a
    // few negative ones; remote values near the physical time or far ahead of it.
    let physical = prop_oneof![8 => 0i64..(1 << 44), 1 => -1_000i64..0];
    prop_oneof![
        physical
            .clone()
            .prop_map(|physical_ms| Step::Now { physical_ms }),
        (physical, 0u64..(1 << 44), any::<u16>()).prop_map(
            |(physical_ms, remote_wall_ms, remote_counter)| Step::Observe {
                physical_ms,
                remote_wall_ms,
                remote_counter,
            }
        ),
    ]
}

proptest! {
    #[test]
    fn hlc_is_strictly_monotonic(
        steps in proptest::collection::vec(step(), 1..200),
        max_drift_ms in prop_oneof![Just(0u64), Just(HLC_MAX_DRIFT_MS_DEFAULT), Just(u64::MAX)],
    ) {
        let mut clock = HlcClock::new(NODE_A, max_drift_ms);
        for step in steps {
            let before = clock.last();
            match step {
                Step::Now { physical_ms } => {
                    let issued = clock.now(WallMillis::new(physical_ms));
                    prop_assert!(issued > before);
                    prop_assert!(issued.wall_ms() as i64 >= physical_ms.max(0));
                }
                Step::Observe { physical_ms, remote_wall_ms, remote_counter } => {
                    let remote = hlc(remote_wall_ms, remote_counter, NODE_B);
                    match clock.observe(remote, WallMillis::new(physical_ms)) {
                        Ok(issued) => {
                            prop_assert!(issued > before);
                            prop_assert!(issued > remote);
                            prop_assert_eq!(issued.node(), NODE_A);
                        }
                        Err(HlcError::RemoteTooFarAhead { .. }) => {
                            prop_assert!(remote_wall_ms > (physical_ms.max(0) as u64).saturating_add(max_drift_ms));
                            prop_assert_eq!(clock.last(), before);
                        }
                        Err(other) => prop_assert!(false, "unexpected {other}"),
                    }
                }
            }
            prop_assert_eq!(clock.last().node(), NODE_A);
        }
    }

    #[test]
    fn hlc_encodings_round_trip_and_keep_order(a in any::<u128>(), b in any::<u128>()) {
        let (a, b) = (Hlc::from_u128(a), Hlc::from_u128(b));
        prop_assert_eq!(Hlc::from_u128(a.to_u128()), a);
        prop_assert_eq!(Hlc::from_be_bytes(a.to_be_bytes()), a);
        prop_assert_eq!(a.to_string().parse::<Hlc>(), Ok(a));
        prop_assert_eq!(a.cmp(&b), a.to_u128().cmp(&b.to_u128()));
        prop_assert_eq!(a.cmp(&b), a.to_string().cmp(&b.to_string()));
        prop_assert_eq!(a.cmp(&b), a.to_be_bytes().cmp(&b.to_be_bytes()));
    }

    #[test]
    fn hlc_parse_never_panics(input in any::<String>()) {
        let _ = input.parse::<Hlc>();
    }

    #[test]
    fn same_boot_duration_ignores_wall_time(
        start_mono in 0u64..(1 << 40),
        length in 0u64..(1 << 30),
        start_wall in any::<i64>(),
        end_wall in any::<i64>(),
    ) {
        let start = stamp(boot(1), start_mono, start_wall);
        let end = stamp(boot(1), start_mono + length, end_wall);
        let elapsed = duration_ms(&start, &end, &BootOffsets::new());
        prop_assert_eq!(elapsed, Elapsed { ms: length as i64, basis: ElapsedBasis::Monotonic });
    }
}
