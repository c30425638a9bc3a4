//! `POST /api/devices/{id}/heartbeat` with an enrolled device's certificate and signature.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_support;

use api_support::{app, assert_error_shape, call, raw, world};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use cartwise_cloud_hub::api::devices::heartbeat_message;
use cartwise_cloud_hub::users::Role;
use cartwise_sync_core::identity::{certs_from_pem, device_csr_params};
use rcgen::SigningKey;
use sqlx::PgPool;
use uuid::Uuid;

struct Device {
    id: Uuid,
    key: rcgen::KeyPair,
    cert_der: Vec<u8>,
}

async fn enrolled(pool: &PgPool, name: &str) -> Device {
    let new = cartwise_cloud_hub::enroll::add_device(
        pool,
        "A1",
        name,
        cartwise_cloud_hub::enroll::CODE_TTL_DEFAULT,
    )
    .await
    .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = device_csr_params()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let enrolled = cartwise_cloud_hub::enroll::enroll(pool, &new.code.grouped(), &csr)
        .await
        .unwrap();
    let cert = certs_from_pem(&enrolled.issued.cert_chain_pem)
        .unwrap()
        .remove(0);
    Device {
        id: *new.device.as_uuid(),
        key,
        cert_der: cert.to_vec(),
    }
}

fn signed(
    device: &Device,
    path_device: Uuid,
    body: &str,
    skew_ms: i64,
    signer: &rcgen::KeyPair,
) -> Request<Body> {
    let timestamp = chrono::Utc::now().timestamp_millis() + skew_ms;
    let signature = signer
        .sign(&heartbeat_message(path_device, timestamp, body.as_bytes()))
        .unwrap();
    Request::post(format!("/api/devices/{path_device}/heartbeat"))
        .header("content-type", "application/json")
        .header("x-cartwise-device-cert", BASE64.encode(&device.cert_der))
        .header("x-cartwise-device-signature", BASE64.encode(signature))
        .header("x-cartwise-timestamp", timestamp.to_string())
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_signed_heartbeat_marks_the_device_online_and_forgeries_are_refused(pool: PgPool) {
    let w = world(&pool).await;
    let app = app(&pool);
    let device = enrolled(&pool, "pi-http").await;
    let other = enrolled(&pool, "pi-other").await;
    let body = r#"{"firmware_version":"1.4.2"}"#;

    let (status, answer) = raw(&app, signed(&device, device.id, body, 0, &device.key)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["data"]["status"], "online");
    let admin = Some(w.token(Role::PlatformAdmin));
    let (_, status_body) = call(
        &app,
        "GET",
        &format!("/api/devices/{}/status", device.id),
        admin,
        None,
    )
    .await;
    assert_eq!(status_body["data"]["status"], "online", "{status_body}");
    assert_eq!(status_body["data"]["firmware_version"], "1.4.2");

    // Signed by another key, for another device's path, too old, or a body changed after
    // signing: all refused.
    let forgeries = [
        signed(&device, device.id, body, 0, &other.key),
        signed(&device, other.id, body, 0, &device.key),
        signed(&device, device.id, body, -10 * 60 * 1000, &device.key),
    ];
    for request in forgeries {
        let (status, answer) = raw(&app, request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
        assert_eq!(
            assert_error_shape(status, &answer),
            "device_unauthenticated"
        );
    }
    let mut tampered = signed(&device, device.id, body, 0, &device.key);
    *tampered.body_mut() = Body::from(r#"{"firmware_version":"6.6.6"}"#);
    let (status, _) = raw(&app, tampered).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A revoked device is refused even with a good signature.
    cartwise_cloud_hub::pki::revoke_device(&pool, cartwise_schema::DeviceId::from_uuid(device.id))
        .await
        .unwrap();
    let (status, answer) = raw(&app, signed(&device, device.id, body, 0, &device.key)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_error_shape(status, &answer);
}
