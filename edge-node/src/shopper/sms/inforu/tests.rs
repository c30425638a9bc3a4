//! Tests of the Inforu sender against a fake Inforu on 127.0.0.1: the request it sends, and
//! how every kind of answer (and no answer) maps to `SmsError`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Form, Router};
use cartwise_schema::Phone;

use super::*;

/// The `InforuXML` fields the fake received.
type Received = Arc<Mutex<Vec<String>>>;

const ACCEPTED: &str = "<Result><Status>1</Status><Description>Message accepted successfully</Description>\
                        <NumberOfRecipients>1</NumberOfRecipients></Result>";

async fn record(State(received): State<Received>, Form(form): Form<HashMap<String, String>>) {
    let xml = form.get("InforuXML").cloned().unwrap_or_default();
    received.lock().unwrap().push(xml);
}

/// Starts the fake Inforu; returns its base URL and what it received.
async fn fake_inforu() -> (String, Received) {
    let received = Received::default();
    let router = Router::new()
        .route(
            "/SendMessageXml.ashx",
            post(|state, form| async move {
                record(state, form).await;
                ACCEPTED
            }),
        )
        .route(
            "/status/{status}",
            post(|Path(status): Path<i32>| async move {
                format!("<Result><Status>{status}</Status><Description>fake says {status}</Description></Result>")
            }),
        )
        .route("/http/{status}", post(|Path(status): Path<u16>| async move { StatusCode::from_u16(status).unwrap() }))
        .route("/garbage", post(|| async { "<html>not inforu</html>" }))
        .route("/huge", post(|| async { "x".repeat(INFORU_RESPONSE_BYTES_MAX + 1) }))
        .route("/hang", post(std::future::pending::<&'static str>))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{address}"), received)
}

fn config(endpoint_url: String) -> InforuConfig {
    InforuConfig {
        endpoint_url,
        username: "branch7".into(),
        api_token: "tok&en".into(),
        sender_name: "CartWise".into(),
        timeout_ms: 200,
    }
}

fn message() -> SmsMessage {
    SmsMessage {
        to: Phone::parse("+972501234567").unwrap(),
        text: "קוד האימות שלך: 1234 <CartWise>".into(),
        code: Some("1234".into()),
    }
}

async fn send_to(url: String) -> Result<(), SmsError> {
    InforuSender::new(config(url))
        .unwrap()
        .send(&message())
        .await
}

#[tokio::test]
async fn a_message_is_posted_as_inforu_xml_and_status_1_is_success() {
    let (base, received) = fake_inforu().await;
    let sender = InforuSender::new(config(format!("{base}/SendMessageXml.ashx"))).unwrap();
    assert_eq!(sender.name(), "inforu");
    sender.send(&message()).await.unwrap();
    let received = received.lock().unwrap().clone();
    assert_eq!(
        received,
        [
            "<Inforu><User><Username>branch7</Username><ApiToken>tok&amp;en</ApiToken></User>\
             <Content Type=\"sms\"><Message>קוד האימות שלך: 1234 &lt;CartWise&gt;</Message></Content>\
             <Recipients><PhoneNumber>0501234567</PhoneNumber></Recipients>\
             <Settings><Sender>CartWise</Sender></Settings></Inforu>"
        ]
    );
}

#[tokio::test]
async fn inforu_error_statuses_map_to_what_to_do() {
    let (base, _) = fake_inforu().await;
    let status = |code: i32| send_to(format!("{base}/status/{code}"));
    assert!(
        matches!(status(-2).await, Err(SmsError::Unauthorized { detail }) if detail == "fake says -2")
    );
    assert!(matches!(
        status(-13).await,
        Err(SmsError::QuotaExhausted { .. })
    ));
    assert!(matches!(
        status(-18).await,
        Err(SmsError::RecipientRefused { .. })
    ));
    assert!(matches!(
        status(-20).await,
        Err(SmsError::SenderRefused { .. })
    ));
    let other = status(-99).await.unwrap_err();
    assert!(
        matches!(&other, SmsError::Refused { status: -99, .. }),
        "{other:?}"
    );
    assert!(!other.is_unavailable());
}

#[tokio::test]
async fn http_failures_tell_outage_from_misconfiguration() {
    let (base, _) = fake_inforu().await;
    let outage = send_to(format!("{base}/http/503")).await.unwrap_err();
    assert!(outage.is_unavailable(), "{outage:?}");
    assert!(matches!(
        send_to(format!("{base}/http/401")).await,
        Err(SmsError::Unauthorized { .. })
    ));
    assert!(matches!(
        send_to(format!("{base}/http/404")).await,
        Err(SmsError::HttpStatus { status: 404 })
    ));
}

#[tokio::test]
async fn answers_that_are_not_inforu_results_are_bad_responses() {
    let (base, _) = fake_inforu().await;
    assert!(matches!(
        send_to(format!("{base}/garbage")).await,
        Err(SmsError::BadResponse { .. })
    ));
    assert!(matches!(
        send_to(format!("{base}/huge")).await,
        Err(SmsError::BadResponse { .. })
    ));
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_as_unavailable() {
    let (base, _) = fake_inforu().await;
    let error = send_to(format!("{base}/hang")).await.unwrap_err();
    assert!(
        matches!(error, SmsError::TimedOut { timeout_ms: 200 }),
        "{error:?}"
    );
    assert!(error.is_unavailable());
}

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let error = send_to(format!("http://{address}/SendMessageXml.ashx"))
        .await
        .unwrap_err();
    assert!(matches!(error, SmsError::Unavailable { .. }), "{error:?}");
}

#[test]
fn configuration_errors_name_the_field() {
    let invalid = |edit: fn(&mut InforuConfig)| {
        let mut config = config(INFORU_ENDPOINT_DEFAULT.into());
        edit(&mut config);
        InforuSender::new(config).unwrap_err().to_string()
    };
    assert!(invalid(|c| c.endpoint_url = "ftp://x".into()).contains("sms.endpoint_url"));
    assert!(invalid(|c| c.username = " ".into()).contains("sms.username"));
    assert!(invalid(|c| c.api_token = String::new()).contains("sms.api_token"));
    assert!(invalid(|c| c.sender_name = "a-very-long-sender".into()).contains("sms.sender_name"));
    assert!(invalid(|c| c.timeout_ms = 0).contains("sms.timeout_ms"));
}

#[test]
fn result_parsing_table() {
    assert!(check_result(ACCEPTED).is_ok());
    assert!(check_result("<Result><Status> 1 </Status></Result>").is_ok());
    let error = check_result("<Result><Status>abc</Status></Result>").unwrap_err();
    assert!(matches!(error, SmsError::BadResponse { .. }));
    let error = check_result("<Result><Status>-1</Status></Result>").unwrap_err();
    assert!(matches!(error, SmsError::Refused { status: -1, ref detail } if detail.is_empty()));
    assert_eq!(xml_escape("a&b<c>'\""), "a&amp;b&lt;c&gt;&apos;&quot;");
}
