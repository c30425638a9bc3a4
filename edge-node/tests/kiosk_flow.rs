//! The existing kiosk flow end to end against the board simulator over TCP: sign in, take a
//! cart, return it; the refusals a shopper can meet; a jammed lock; a reboot whose clock came
//! up wrong, and the later time correction.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod station;

use serde_json::json;
use station::{MINUTE, Station, T0, iso};

const PHONE: &str = "0521234567";
const E164: &str = "+972521234567";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_existing_kiosk_flow_lends_and_returns_a_cart() {
    let station = Station::start().await;
    let (status, body) = station
        .post("/auth/request-otp", json!({ "phone": PHONE }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["expires_in_minutes"], 5);
    assert_eq!(body["already_authenticated"], false);
    let code = station.last_code(E164);
    let (status, body) = station
        .post(
            "/auth/verify-otp",
            json!({ "phone": PHONE, "otp_code": code }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["phone"], E164);
    assert_eq!(body["token_expires_days"], 30);

    // The existing kiosk may present the verified code again with `assign`.
    let (status, lent) = station
        .post("/carts/assign", json!({ "phone": PHONE, "otp_code": code }))
        .await;
    assert_eq!(status, 200, "{lent}");
    let cart = lent["cart"]["cart_id"].as_u64().unwrap();
    assert_eq!(lent["cart"]["locker_id"].as_u64().unwrap(), cart - 1);
    assert_eq!(lent["expected_return"], iso(T0 + 120 * MINUTE as i64));
    assert!(
        lent["message"]
            .as_str()
            .unwrap()
            .contains(&format!("עגלה מספר {cart}"))
    );
    // The simulator shows that post's hook open, and (auto-take) the cart gone.
    let deadline = tokio::time::Instant::now() + station::WAIT_MAX;
    while station.sim_post_state(cart).await != (false, false) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cart never left post {cart}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    station
        .wait_for(|c| c["status"] == "in_use", &format!("/carts/{cart}"))
        .await;

    station.clock.advance_ms(30 * MINUTE);
    let returned_at = station.give_back(PHONE).await;
    let history = station
        .wait_for(|h| h[0]["status"] == "returned", "/rentals/history")
        .await;
    let rental = &history[0];
    assert_eq!(rental["rental_id"], lent["rental_id"]);
    assert_eq!(rental["cart_id"].as_u64(), Some(cart));
    assert_eq!(rental["return_cart_id"].as_u64(), Some(returned_at));
    assert_eq!(rental["start_time"], iso(T0));
    assert_eq!(rental["actual_return"], iso(T0 + 30 * MINUTE as i64));
    assert_eq!(rental["duration_minutes"], 30);
    assert_eq!(rental["is_overdue"], false);
    let (_, active) = station.get("/rentals/active").await;
    assert_eq!(active, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_rental_for_the_same_phone_is_refused_in_hebrew() {
    let station = Station::start().await;
    let lent = station.rent(PHONE, E164).await;
    let token = station.sign_in(PHONE, E164).await;
    let bearer = format!("Bearer {token}");
    let (status, body) = station
        .post_with(
            "/carts/assign",
            json!({ "phone": PHONE }),
            &[("authorization", bearer.as_str())],
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("כבר יש לכם השכרה פעילה"), "{detail}");
    assert!(
        detail.contains(&lent["cart"]["cart_id"].to_string()),
        "{detail}"
    );
    let (status, body) = station
        .post_with(
            "/carts/assign",
            json!({ "phone": PHONE }),
            &[
                ("authorization", bearer.as_str()),
                ("accept-language", "en"),
            ],
        )
        .await;
    assert_eq!(status, 409);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("You already have an active rental")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_with_a_detail_and_never_a_5xx() {
    let station = Station::start().await;
    let (status, _) = station
        .post("/auth/request-otp", json!({ "phone": PHONE }))
        .await;
    assert_eq!(status, 200);
    let code = station.last_code(E164);
    let wrong = if code == "0000" { "1111" } else { "0000" };
    let cases: Vec<(&str, &str, Vec<u8>, &str, u16)> = vec![
        (
            "malformed JSON",
            "/auth/request-otp",
            b"{\"phone\":".to_vec(),
            "application/json",
            422,
        ),
        (
            "missing field",
            "/auth/verify-otp",
            br#"{"phone":"0521234567"}"#.to_vec(),
            "application/json",
            422,
        ),
        (
            "wrong type",
            "/auth/request-otp",
            br#"{"phone":521234567}"#.to_vec(),
            "application/json",
            422,
        ),
        (
            "not JSON",
            "/carts/initiate-return",
            b"phone=052".to_vec(),
            "text/plain",
            415,
        ),
        (
            "landline",
            "/auth/request-otp",
            br#"{"phone":"031234567"}"#.to_vec(),
            "application/json",
            400,
        ),
        (
            "letters",
            "/carts/initiate-return",
            br#"{"phone":"05a1234567"}"#.to_vec(),
            "application/json",
            400,
        ),
        (
            "code too short",
            "/auth/verify-otp",
            br#"{"phone":"0521234567","otp_code":"12"}"#.to_vec(),
            "application/json",
            400,
        ),
        (
            "no sign-in",
            "/carts/assign",
            br#"{"phone":"0521234567"}"#.to_vec(),
            "application/json",
            401,
        ),
        (
            "bad token",
            "/carts/assign",
            br#"{"phone":"0521234567","otp_code":"99x9"}"#.to_vec(),
            "application/json",
            400,
        ),
        (
            "huge body",
            "/auth/request-otp",
            vec![b' '; 64 * 1024],
            "application/json",
            413,
        ),
        (
            "no rental",
            "/carts/initiate-return",
            br#"{"phone":"0529999999"}"#.to_vec(),
            "application/json",
            404,
        ),
        (
            "wrong method",
            "/carts/fly",
            b"{}".to_vec(),
            "application/json",
            405,
        ),
        (
            "unknown path",
            "/nowhere",
            b"{}".to_vec(),
            "application/json",
            404,
        ),
    ];
    for (name, path, body, content_type, expected) in cases {
        let (status, answer) = station.post_raw(path, body, content_type).await;
        assert_eq!(status, expected, "{name}: {answer}");
        assert!(
            answer["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{name}: no detail in {answer}"
        );
    }
    // A wrong code is 401 and says how many tries are left.
    let (status, body) = station
        .post(
            "/auth/verify-otp",
            json!({ "phone": PHONE, "otp_code": wrong }),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    // An expired code is 401 too.
    station.clock.advance_ms(5 * MINUTE + 1);
    let (status, body) = station
        .post(
            "/auth/verify-otp",
            json!({ "phone": PHONE, "otp_code": code }),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    let (status, body) = station.get("/carts/abc").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = station.get("/rentals/my-rental?phone=123").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jammed_lock_fails_that_rental_and_the_shopper_gets_another_cart() {
    let station = Station::start().await;
    // Every post is equally used, so the first pick is post 1: jam it.
    station
        .sim_post("/fault", json!({ "kind": "jam", "board": 0, "lock": 1 }))
        .await;
    let lent = station.rent(PHONE, E164).await;
    let cart = lent["cart"]["cart_id"].as_u64().unwrap();
    assert_ne!(cart, 1, "the jammed post must not be lent");
    let (_, history) = station.get("/rentals/history").await;
    let failed: Vec<_> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "failed_unlock")
        .collect();
    assert_eq!(failed.len(), 1, "{history}");
    assert_eq!(failed[0]["cart_id"], 1);
    let (_, post) = station.get("/carts/1").await;
    assert_eq!(post["status"], "fault", "{post}");
    let (_, available) = station.get("/carts/available").await;
    assert!(
        available
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["cart_id"] != 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_with_the_clock_set_back_keeps_overdue_right_and_a_correction_fixes_times() {
    let mut station = Station::start().await;
    let first = station.rent(PHONE, E164).await;
    let first_id = first["rental_id"].clone();
    station.clock.advance_ms(60 * MINUTE);
    station.stop_edge().await;
    // The Pi reboots and its clock comes up five hours in the past.
    let true_restart = T0 + 70 * MINUTE as i64;
    station.clock.reboot(T0 - 5 * 60 * MINUTE as i64);
    station.start_edge().await;

    // 30 minutes into the new boot: 90 counted minutes, not overdue (nor "late" by hours).
    station.clock.advance_ms(30 * MINUTE);
    let (_, overdue) = station.get("/rentals/overdue").await;
    assert_eq!(overdue, json!([]), "overdue too early");
    let (_, active) = station.get("/rentals/active").await;
    assert_eq!(active[0]["rental_id"], first_id);
    assert_eq!(active[0]["start_time"], iso(T0));
    // 40 more: 130 counted minutes > 120: overdue, although the wall clock says 3 h ago.
    station.clock.advance_ms(40 * MINUTE);
    let (_, overdue) = station.get("/rentals/overdue").await;
    assert_eq!(
        overdue[0]["rental_id"], first_id,
        "overdue not detected: {overdue}"
    );

    // A rental started in this boot is stamped on the estimate until the true time is known.
    let second = station.rent("0547654321", "+972547654321").await;
    let (_, mine) = station.get("/rentals/my-rental?phone=0547654321").await;
    let estimated = T0 + 60 * MINUTE as i64 + 70 * MINUTE as i64;
    assert_eq!(mine["rental"]["start_time"], iso(estimated));
    // The true time arrives: the boot really started 10 minutes after the first boot ended.
    let true_now = true_restart + 70 * MINUTE as i64;
    let (status, body) = station
        .post(
            "/api/v1/admin/time",
            json!({ "trusted_time": iso(true_now) }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, mine) = station.get("/rentals/my-rental?phone=0547654321").await;
    assert_eq!(mine["rental"]["rental_id"], second["rental_id"]);
    assert_eq!(
        mine["rental"]["start_time"],
        iso(true_now),
        "the stored times are corrected"
    );
    let (_, overdue) = station.get("/rentals/overdue").await;
    assert_eq!(overdue.as_array().unwrap().len(), 1, "{overdue}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docks_at_unreserved_posts_are_matched_only_when_unambiguous() {
    let station = Station::start().await;
    let a = station.rent(PHONE, E164).await;
    let a_post = a["cart"]["cart_id"].as_u64().unwrap();
    station
        .wait_for(|c| c["status"] == "in_use", &format!("/carts/{a_post}"))
        .await;
    // One cart out, nobody asked to return: a dock anywhere free is that shopper's return.
    station.dock(a_post).await;
    let history = station
        .wait_for(|h| h[0]["status"] == "returned", "/rentals/history")
        .await;
    assert_eq!(history[0]["rental_id"], a["rental_id"]);

    // Two carts out: a dock at a post nobody reserved is recorded as an anomaly, not guessed.
    let b = station.rent(PHONE, E164).await;
    let c = station.rent("0547654321", "+972547654321").await;
    for lent in [&b, &c] {
        let post = lent["cart"]["cart_id"].as_u64().unwrap();
        station
            .wait_for(|p| p["status"] == "in_use", &format!("/carts/{post}"))
            .await;
    }
    let b_post = b["cart"]["cart_id"].as_u64().unwrap();
    station.dock(b_post).await;
    let anomalies = station
        .wait_for(
            |a| {
                a.as_array()
                    .is_some_and(|l| l.iter().any(|x| x["kind"] == "unmatched_dock"))
            },
            "/api/v1/anomalies",
        )
        .await;
    let unmatched = anomalies
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["kind"] == "unmatched_dock")
        .unwrap();
    assert_eq!(unmatched["cart_id"].as_u64(), Some(b_post));
    let (_, active) = station.get("/rentals/active").await;
    assert_eq!(
        active.as_array().unwrap().len(),
        2,
        "nothing was closed by guesswork: {active}"
    );
}
