//! The pieces of the load generator and the results file that need no running system: the
//! demo's endpoints file, post → (board, lock), phone numbers, quantiles, the JSON shape and
//! the plots.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cartwise_bench::endpoints::Endpoints;
use cartwise_bench::loadgen::{LoadConfig, demo_phone, e164};
use cartwise_bench::results::{self, against, plain, quantile};

const ENDPOINTS: &str = r#"{"hub": {"api": "http://127.0.0.1:8080/api", "dashboard": "http://127.0.0.1:8080/dashboard/", "health": "http://127.0.0.1:8080/health", "quic": "127.0.0.1:4433"},
 "database_url": "postgres://cartwise@127.0.0.1:5432/cartwise",
 "users": [{"role": "platform_admin", "login": "admin", "password": "cartwise-demo", "scope": "every chain"}],
 "edges": [{"chain": "c", "branch_code": "ST-RA", "branch_id": "b", "device_id": "d", "name": "st-ra-pi-2", "kiosk": "http://127.0.0.1:1", "sms_outbox": "/tmp/o.jsonl", "sim_control": "http://127.0.0.1:2", "boards": [0, 1], "first_post": 33}],
 "proxies": [{"branch_code": "ST-RA", "listen": "127.0.0.1:3", "control": "http://127.0.0.1:4"}]}"#;

#[test]
fn the_endpoints_file_parses_and_maps_posts_to_locks() {
    let endpoints = Endpoints::parse(ENDPOINTS).unwrap();
    assert_eq!(endpoints.hub.quic, "127.0.0.1:4433");
    assert_eq!(endpoints.users[0].role, "platform_admin");
    assert_eq!(endpoints.proxies[0].control, "http://127.0.0.1:4");
    let edge = &endpoints.edges[0];
    assert_eq!(edge.board_lock(33), Some((0, 1)));
    assert_eq!(edge.board_lock(48), Some((0, 16)));
    assert_eq!(edge.board_lock(49), Some((1, 1)));
    assert_eq!(edge.board_lock(65), None, "past the last board");
    assert_eq!(edge.board_lock(32), None, "another device's post");
}

#[test]
fn demo_phones_are_distinct_per_kiosk_and_normalise() {
    assert_eq!(demo_phone(2, 7), "0502000007");
    assert_ne!(demo_phone(0, 1), demo_phone(1, 1));
    assert_eq!(e164("0502000007"), "+972502000007");
}

#[test]
fn the_load_is_bounded() {
    let wild = LoadConfig {
        lends_per_minute: 1e9,
        shoppers: 10_000,
        hold_min_s: 10_000,
        hold_max_s: 1_000_000,
        seed: 0,
    }
    .bounded();
    assert_eq!(wild.lends_per_minute, 30.0);
    assert_eq!(wild.shoppers, 50);
    assert_eq!(wild.hold_max_s, 3600);
    assert!(wild.hold_min_s <= wild.hold_max_s);
    let nan = LoadConfig {
        lends_per_minute: f64::NAN,
        ..LoadConfig::default()
    }
    .bounded();
    assert!(nan.lends_per_minute.is_finite());
}

#[test]
fn quantiles_use_the_nearest_rank() {
    let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(quantile(&sorted, 0.5), 50.0);
    assert_eq!(quantile(&sorted, 0.99), 99.0);
    assert_eq!(quantile(&sorted, 1.0), 100.0);
    assert_eq!(quantile(&[], 0.99), 0.0);
}

#[test]
fn results_have_the_issue_shape_and_plots_are_svg() {
    let rows = vec![
        against(
            "edge_lend_p99_ms",
            4.0,
            "ms",
            "raw_sqlite_insert_p99_ms",
            2.0,
        ),
        plain("edge_rss_mb", 20.0, "MB"),
    ];
    let json = serde_json::to_value(&rows).unwrap();
    assert_eq!(json[0]["metric"], "edge_lend_p99_ms");
    assert_eq!(json[0]["baseline"]["metric"], "raw_sqlite_insert_p99_ms");
    assert_eq!(json[0]["baseline"]["value"], 2.0);
    assert!(json[1]["baseline"].is_null());
    let table = results::table(&rows);
    assert!(table.contains("raw_sqlite_insert_p99_ms"), "{table}");
    let bars = results::baseline_svg(&rows);
    assert!(
        bars.starts_with("<svg") && bars.contains("2.000×"),
        "{bars}"
    );
    assert!(
        !bars.contains("edge_rss_mb"),
        "only rows with a baseline are plotted"
    );
    let cdf = results::latency_svg("a <b>", &[3.0, 1.0, 2.0]);
    assert!(
        cdf.contains("a &lt;b&gt;") && cdf.contains("p99 3.0 ms"),
        "{cdf}"
    );
}
