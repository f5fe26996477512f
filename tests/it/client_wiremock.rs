//! The MotherDuck client against scripted responses: retries, backoff,
//! `Retry-After`, timeouts, and the route-404 case.

use std::time::{Duration, SystemTime};

use motherduck_rotator::motherduck::{ApiError, Client, CreateTokenRequest, TokenType};
use motherduck_rotator::secret::SecretString;
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::{DelayLog, delays, fast_config};

const ADMIN: &str = "eyJhbGciOiJIUzI1NiJ9.admin.sig";

async fn setup(
    tune: impl FnOnce(&mut motherduck_rotator::motherduck::ClientConfig),
) -> (MockServer, Client, DelayLog) {
    let server = MockServer::start().await;
    let (mut cfg, log) = fast_config(&server.uri(), SecretString::from(ADMIN.to_owned()));
    tune(&mut cfg);
    (server, Client::new(cfg).unwrap(), log)
}

fn tokens_body() -> serde_json::Value {
    json!({"tokens": [{"id": "t1", "name": "a", "created_ts": "2026-01-01T00:00:00Z",
                       "read_only": false, "token_type": "read_write"}]})
}

fn error_body(status: u16, code: &str) -> serde_json::Value {
    json!({"message": "boom", "code": code, "data": {"code": code, "httpStatus": status, "path": "users.listTokens"}})
}

/// A 429 whose `Retry-After` is `value`.
fn retry_after(value: &str) -> ResponseTemplate {
    ResponseTemplate::new(429).insert_header("retry-after", value)
}

/// Answers every `m` request with `response`.
async fn answer_all(server: &MockServer, m: &str, response: ResponseTemplate) {
    Mock::given(method(m))
        .respond_with(response)
        .mount(server)
        .await;
}

/// Answers the first `m` request with `response`.
async fn answer_once(server: &MockServer, m: &str, response: ResponseTemplate) {
    Mock::given(method(m))
        .respond_with(response)
        .up_to_n_times(1)
        .mount(server)
        .await;
}

async fn received(server: &MockServer, m: &str) -> usize {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == m)
        .count()
}

#[tokio::test]
async fn sends_bearer_token_and_retries_gateway_errors_with_backoff() {
    let (server, c, log) = setup(|_| {}).await;
    Mock::given(method("GET"))
        .and(path("/v1/users/svc/tokens"))
        .respond_with(
            ResponseTemplate::new(503).set_body_json(error_body(503, "SERVICE_UNAVAILABLE")),
        )
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/users/svc/tokens"))
        .and(header("authorization", format!("Bearer {ADMIN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(tokens_body()))
        .mount(&server)
        .await;
    let tokens = c.list_tokens("svc").await.unwrap();
    assert_eq!(tokens[0].id, "t1");
    assert_eq!(received(&server, "GET").await, 3);
    let d = delays(&log);
    assert_eq!(d.len(), 2);
    // Exponential with full jitter: attempt n waits within (min*2^n) + jitter.
    assert!(d[0] <= Duration::from_millis(200), "{d:?}");
    assert!(d[1] <= Duration::from_millis(400), "{d:?}");
}

#[tokio::test]
async fn retry_budget_is_bounded() {
    let (server, c, log) = setup(|cfg| cfg.max_retries = 2).await;
    answer_all(&server, "GET", ResponseTemplate::new(502)).await;
    let e = c.list_tokens("svc").await.unwrap_err();
    assert_eq!(e.status(), Some(502));
    assert!(e.to_string().contains("non-JSON error body"), "{e}");
    assert_eq!(received(&server, "GET").await, 3);
    assert_eq!(delays(&log).len(), 2);
}

#[tokio::test]
async fn retry_after_in_seconds_is_honoured_and_capped() {
    let (server, c, log) = setup(|cfg| cfg.retry_after_cap = Duration::from_secs(30)).await;
    answer_once(&server, "GET", retry_after("3")).await;
    answer_once(&server, "GET", retry_after("120")).await;
    answer_all(
        &server,
        "GET",
        ResponseTemplate::new(200).set_body_json(tokens_body()),
    )
    .await;
    c.list_tokens("svc").await.unwrap();
    assert_eq!(
        delays(&log),
        vec![Duration::from_secs(3), Duration::from_secs(30)]
    );
}

#[tokio::test]
async fn retry_after_as_http_date_is_honoured() {
    let (server, c, log) = setup(|_| {}).await;
    let when = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(20));
    answer_once(&server, "DELETE", retry_after(when.as_str())).await;
    answer_all(
        &server,
        "DELETE",
        ResponseTemplate::new(200).set_body_json(json!({})),
    )
    .await;
    c.revoke_token("svc", "t1").await.unwrap();
    let d = delays(&log);
    assert_eq!(d.len(), 1);
    // An HTTP date has one-second resolution and the clock moved meanwhile.
    assert!(
        d[0] >= Duration::from_secs(18) && d[0] <= Duration::from_secs(20),
        "{d:?}"
    );
}

#[tokio::test]
async fn a_429_is_retried_even_for_posts() {
    let (server, c, _) = setup(|_| {}).await;
    answer_once(&server, "POST", retry_after("1")).await;
    answer_all(
        &server,
        "POST",
        ResponseTemplate::new(200).set_body_json(json!({"username": "svc_a"})),
    )
    .await;
    assert_eq!(
        c.create_service_account("svc_a").await.unwrap().username,
        "svc_a"
    );
    assert_eq!(received(&server, "POST").await, 2);
}

#[tokio::test]
async fn a_gateway_error_on_a_post_is_not_blindly_retried() {
    let (server, c, _) = setup(|_| {}).await;
    answer_all(&server, "POST", ResponseTemplate::new(503)).await;
    let e = c.create_service_account("svc_a").await.unwrap_err();
    assert_eq!(e.status(), Some(503));
    assert_eq!(received(&server, "POST").await, 1);
}

#[tokio::test]
async fn an_ambiguous_token_create_lists_before_repeating() {
    let (server, c, _) = setup(|_| {}).await;
    Mock::given(method("POST"))
        .and(path("/v1/users/svc/tokens"))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/users/svc/tokens"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token": "eyJnew.secret.sig", "id": "t9", "name": "rot-1",
            "created_ts": "2026-01-01T00:00:00Z", "read_only": false, "token_type": "read_write"})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/users/svc/tokens"))
        .respond_with(ResponseTemplate::new(200).set_body_json(tokens_body()))
        .mount(&server)
        .await;
    let req = CreateTokenRequest {
        name: "rot-1".into(),
        ttl: Some(600),
        token_type: TokenType::ReadWrite,
        description: None,
    };
    let t = c.create_token("svc", &req).await.unwrap();
    assert_eq!(t.info.id, "t9");
    let reqs = server.received_requests().await.unwrap();
    let order: Vec<&str> = reqs.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(order, vec!["POST", "GET", "POST"]);
    let body: serde_json::Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(
        body,
        json!({"name": "rot-1", "ttl": 600, "token_type": "read_write"})
    );
    assert_eq!(
        received(&server, "DELETE").await,
        0,
        "no token named rot-1 existed"
    );
}

#[tokio::test]
async fn a_slow_server_times_out() {
    let (server, c, _) = setup(|cfg| {
        cfg.request_timeout = Duration::from_millis(10);
        cfg.max_retries = 1;
    })
    .await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(tokens_body())
                .set_delay(Duration::from_millis(500)),
        )
        .mount(&server)
        .await;
    let e = c.list_tokens("svc").await.unwrap_err();
    assert!(matches!(e, ApiError::Timeout { .. }), "{e:?}");
    assert!(e.is_retryable());
    assert_eq!(e.to_string(), "list_tokens: no answer within 10ms");
}

#[tokio::test]
async fn plain_text_404_is_a_wrong_route_and_json_404_a_missing_entity() {
    let (server, c, _) = setup(|_| {}).await;
    Mock::given(method("GET"))
        .and(path("/v1/users/ghost/tokens"))
        .respond_with(ResponseTemplate::new(404).set_body_json(error_body(404, "NOT_FOUND")))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/active_accounts"))
        .respond_with(ResponseTemplate::new(404).set_body_string("Not Found"))
        .mount(&server)
        .await;
    let e = c.list_tokens("ghost").await.unwrap_err();
    assert!(e.is_entity_not_found());
    assert_eq!(e.code(), Some("NOT_FOUND"));
    let e = c.active_accounts().await.unwrap_err();
    assert!(matches!(e, ApiError::RouteNotFound { .. }), "{e:?}");
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn error_bodies_with_missing_or_extra_fields_are_tolerated() {
    let (server, c, _) = setup(|_| {}).await;
    Mock::given(method("GET"))
        .and(path("/v1/users/a/tokens"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"unexpected": true})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/users/b/tokens"))
        .respond_with(ResponseTemplate::new(403).set_body_json(json!({
            "message": "nope", "code": "FORBIDDEN", "issues": [{"message": "x"}], "trace": "abc"})))
        .mount(&server)
        .await;
    let e = c.list_tokens("a").await.unwrap_err();
    assert_eq!(e.status(), Some(400));
    assert_eq!(e.code(), None);
    let e = c.list_tokens("b").await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(403), Some("FORBIDDEN")));
    assert_eq!(e.issues()[0].message, "x");
}

#[tokio::test]
async fn a_malformed_success_body_is_a_decode_error_that_quotes_nothing() {
    let (server, c, _) = setup(|_| {}).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token": "eyJleaked.secret.sig", "id": 5})))
        .mount(&server)
        .await;
    let req = CreateTokenRequest {
        name: "n".into(),
        ttl: None,
        token_type: TokenType::ReadWrite,
        description: None,
    };
    let e = c.create_token("svc", &req).await.unwrap_err();
    assert!(matches!(e, ApiError::Decode { .. }), "{e:?}");
    assert!(!e.to_string().contains("eyJleaked"), "{e}");
    assert!(!format!("{e:?}").contains("eyJleaked"));
}

#[tokio::test]
async fn connection_refused_is_a_transport_error() {
    // Bind then drop, so nothing listens on the port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (cfg, log) = fast_config(
        &format!("http://127.0.0.1:{port}"),
        SecretString::from(ADMIN.to_owned()),
    );
    let c = Client::new(cfg).unwrap();
    let e = c.create_service_account("svc").await.unwrap_err();
    assert!(
        matches!(e, ApiError::Transport { not_sent: true, .. }),
        "{e:?}"
    );
    assert_eq!(
        delays(&log).len(),
        4,
        "a refused connection is safe to repeat"
    );
    assert!(!e.to_string().contains(ADMIN));
}
