//! `/health` and `/metrics` through the real router, and the shipped Prometheus alert rules
//! checked against the metrics the hub really exports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use cartwise_cloud_hub::clock::HubClock;
use cartwise_cloud_hub::http::{AppState, router};
use cartwise_cloud_hub::sync_server::SyncServer;
use cartwise_cloud_hub::{metrics, seed, world::World};
use sqlx::PgPool;
use tower::ServiceExt;

async fn get(app: &Router, path: &str) -> (StatusCode, String, String) {
    let response = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(response.into_body(), 1024 * 1024)
        .await
        .unwrap();
    (
        status,
        content_type,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

async fn seeded(pool: &PgPool) {
    let text = std::fs::read_to_string(cartwise_fixtures::world_path()).unwrap();
    seed::seed(pool, &World::parse(&text).unwrap())
        .await
        .unwrap();
}

/// One parsed sample: family name, labels, value.
type Samples = Vec<(String, BTreeMap<String, String>, f64)>;

/// Parses the text exposition strictly enough to catch format slips: every sample's family
/// has `# HELP` and `# TYPE` before it, labels are `name="value"`, values are numbers.
fn parse_exposition(text: &str) -> Samples {
    let mut typed = BTreeMap::new();
    let mut helped = BTreeSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').unwrap();
                let mut map = BTreeMap::new();
                for pair in labels.split("\",") {
                    let (key, value) = pair.split_once("=\"").unwrap();
                    map.insert(key.to_owned(), value.trim_end_matches('"').to_owned());
                }
                (name.to_owned(), map)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| typed.get(*base).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(&name)
            .to_owned();
        assert!(typed.contains_key(&family), "no TYPE for {name}");
        assert!(helped.contains(&family), "no HELP for {name}");
        samples.push((name, labels, value));
    }
    samples
}

fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn health_reports_sync_load_and_degrades_when_device_gauges_stop_refreshing(pool: PgPool) {
    let server = SyncServer::new(pool.clone(), Arc::new(HubClock::new()));
    metrics::register_sync_server(&server);
    let app = router(AppState { pool: pool.clone() });

    let (status, _, body) = get(&app, "/health").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "healthy", "{body}");
    assert_eq!(body["database"], "ok");
    let admission = server.admission();
    assert_eq!(
        body["sync"]["connected_devices"],
        admission.sessions() as u64
    );
    assert_eq!(
        body["sync"]["sessions_max"],
        admission.sessions_max() as u64
    );
    assert_eq!(
        body["queues"]["merge_backlog"],
        server.merger().backlog() as u64
    );
    assert_eq!(
        body["queues"]["merge_backlog_max"],
        admission.merge_backlog_max() as u64
    );

    // The device gauges refresh, then their database goes away: degraded, still 200.
    metrics::global().refresh_fleet(&pool).await.unwrap();
    let gone = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_millis(300))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    assert!(metrics::global().refresh_fleet(&gone).await.is_err());
    let (status, _, body) = get(&app, "/health").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["reasons"][0], "device metrics not refreshing");

    // An unreachable database makes the hub unhealthy: 503.
    let (status, _, body) = get(&router(AppState { pool: gone }), "/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "unhealthy");
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn metrics_count_requests_by_route_and_export_fleet_gauges(pool: PgPool) {
    seeded(&pool).await;
    sqlx::query("UPDATE devices SET status = 'online', last_heartbeat = now() WHERE id = (SELECT id FROM devices ORDER BY id LIMIT 1)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE devices SET last_heartbeat = now() - interval '1 hour' WHERE status <> 'online'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let server = SyncServer::new(pool.clone(), Arc::new(HubClock::new()));
    metrics::register_sync_server(&server);
    metrics::global().refresh_fleet(&pool).await.unwrap();
    let app = router(AppState { pool: pool.clone() });

    for _ in 0..3 {
        assert_eq!(get(&app, "/health").await.0, StatusCode::OK);
    }
    let chain = "0b1e3c2a-0000-4000-8000-000000000001";
    let unauthorised = get(&app, &format!("/api/chains/{chain}")).await.0;
    assert_eq!(get(&app, "/no/such/page").await.0, StatusCode::NOT_FOUND);

    let (status, content_type, text) = get(&app, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let samples = parse_exposition(&text);

    let health = [("route", "/health"), ("method", "GET"), ("status", "200")];
    assert_eq!(
        value(&samples, "cartwise_http_requests_total", &health),
        Some(3.0)
    );
    assert_eq!(
        value(
            &samples,
            "cartwise_http_request_duration_seconds_count",
            &health
        ),
        Some(3.0)
    );
    let inf = [health.as_slice(), &[("le", "+Inf")]].concat();
    assert_eq!(
        value(
            &samples,
            "cartwise_http_request_duration_seconds_bucket",
            &inf
        ),
        Some(3.0)
    );
    // The route template, never the id.
    let status_text = unauthorised.as_u16().to_string();
    assert_eq!(
        value(
            &samples,
            "cartwise_http_requests_total",
            &[("route", "/api/chains/{id}"), ("status", &status_text)]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains(chain), "a raw path leaked into the labels");
    assert_eq!(
        value(
            &samples,
            "cartwise_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        Some(1.0)
    );

    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap() as f64
        }
    };
    assert_eq!(
        value(&samples, "cartwise_devices", &[("status", "online")]),
        Some(count("SELECT count(*) FROM devices WHERE status = 'online'").await)
    );
    let offline = count("SELECT count(*) FROM devices WHERE status <> 'online'").await;
    assert!(offline > 0.0);
    assert_eq!(
        value(&samples, "cartwise_devices", &[("status", "offline")]),
        Some(offline)
    );
    assert_eq!(
        value(&samples, "cartwise_devices_offline_long", &[]),
        Some(offline)
    );
    assert_eq!(
        value(&samples, "cartwise_projection_rows", &[("table", "carts")]),
        Some(count("SELECT count(*) FROM carts").await)
    );
    assert_eq!(
        value(&samples, "cartwise_sync_sessions_open", &[]),
        Some(server.admission().sessions() as f64)
    );
    assert_eq!(
        value(&samples, "cartwise_merge_backlog", &[]),
        Some(server.merger().backlog() as f64)
    );
    for counter in [
        "cartwise_sync_sessions_opened_total",
        "cartwise_sync_sessions_admitted_total",
        "cartwise_sync_sessions_busy_total",
        "cartwise_merge_passes_total",
        "cartwise_documents_merged_total",
    ] {
        assert!(value(&samples, counter, &[]).is_some(), "{counter} missing");
    }
}

/// Metric names an expression refers to (identifiers starting with `cartwise_`).
fn referenced_metrics(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("cartwise_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn shipped_alert_rules_parse_and_use_exported_metrics(pool: PgPool) {
    use yaml_rust2::{Yaml, YamlLoader};

    // Every family present: a request, a registered sync server, refreshed gauges.
    let server = SyncServer::new(pool.clone(), Arc::new(HubClock::new()));
    metrics::register_sync_server(&server);
    metrics::global().refresh_fleet(&pool).await.unwrap();
    let app = router(AppState { pool });
    get(&app, "/health").await;
    let (_, _, text) = get(&app, "/metrics").await;
    let exported: BTreeSet<String> = parse_exposition(&text)
        .into_iter()
        .map(|(name, _, _)| name)
        .collect();

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/alerts.yml");
    let docs = YamlLoader::load_from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(docs.len(), 1);
    let groups = docs[0]["groups"].as_vec().expect("a groups list");
    let names: Vec<&str> = groups.iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cartwise-devices", "cartwise-hub"]);
    let mut alerts = BTreeMap::new();
    for group in groups {
        for rule in group["rules"].as_vec().expect("rules") {
            let alert = rule["alert"].as_str().expect("alert name");
            let expr = rule["expr"].as_str().expect("expr").to_owned();
            assert!(rule["for"].as_str().is_some(), "{alert}: no `for`");
            assert!(
                matches!(rule["labels"]["severity"], Yaml::String(_)),
                "{alert}: no severity"
            );
            assert!(rule["annotations"]["summary"].as_str().is_some());
            let used = referenced_metrics(&expr);
            assert!(!used.is_empty(), "{alert} uses no hub metric");
            for metric in &used {
                assert!(
                    exported.contains(metric),
                    "{alert} refers to {metric}, which /metrics does not export"
                );
            }
            alerts.insert(alert.to_owned(), used);
        }
    }
    let wanted = [
        ("CartWiseDeviceOfflineLong", "cartwise_devices_offline_long"),
        ("CartWiseSyncLag", "cartwise_sync_lag_seconds_max"),
        ("CartWiseHttpErrorRate", "cartwise_http_requests_total"),
    ];
    for (alert, metric) in wanted {
        assert!(
            alerts.get(alert).is_some_and(|used| used.contains(metric)),
            "{alert} must watch {metric}"
        );
    }
}
