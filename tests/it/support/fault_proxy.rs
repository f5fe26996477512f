//! A fault-injecting HTTP reverse proxy for the real test services.
//!
//! [`FaultProxy`] listens on a loopback port in front of an OpenBao or moto
//! server and forwards every request unchanged (method, path and query,
//! headers, body; only `Host`, the length and hop-by-hop headers are left
//! to the HTTP client), returning the upstream's answer, except while a
//! [`Rule`] is armed: a rule matches requests by method and path (Vault) or
//! by the `X-Amz-Target` header (AWS), and answers its next `n` matches
//! with a canned error instead of forwarding them, so the upstream never
//! sees those requests. Each rule counts what it intercepted.
//!
//! Nothing here records request or response bodies: they carry token
//! secrets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::Response;
use serde_json::json;

/// Which requests a rule applies to.
#[derive(Debug, Clone)]
pub enum Match {
    /// A Vault request with this method whose path (without the query)
    /// contains `path`.
    VaultContains { method: &'static str, path: String },
    /// A Vault request with this method and exactly this path. Needed for
    /// a secret's own path, which is a prefix of its `.pending` and `.lock`
    /// siblings.
    VaultExact { method: &'static str, path: String },
    /// An AWS JSON request whose `X-Amz-Target` is `secretsmanager.<op>`.
    Aws { op: &'static str },
}

impl Match {
    fn matches(&self, method: &str, path: &str, headers: &HeaderMap) -> bool {
        match self {
            Match::VaultContains { method: m, path: p } => method == *m && path.contains(p),
            Match::VaultExact { method: m, path: p } => method == *m && path == p,
            Match::Aws { op } => headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t == format!("secretsmanager.{op}")),
        }
    }
}

/// The canned answer of an armed rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Vault's answer while sealed or overloaded: `503 {"errors":[...]}`.
    VaultUnavailable,
    /// Secrets Manager throttling (awsJson1_1): `400`, the error code in
    /// both `x-amzn-ErrorType` and the body's `__type`.
    AwsThrottling,
    /// A Secrets Manager server error: `500 InternalServiceError`.
    AwsInternalError,
}

impl Answer {
    fn response(self) -> Response {
        let (status, body, aws_type) = match self {
            Answer::VaultUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"errors": ["Vault is temporarily unavailable (injected fault)"]}),
                None,
            ),
            Answer::AwsThrottling => (
                StatusCode::BAD_REQUEST,
                json!({"__type": "ThrottlingException", "message": "Rate exceeded"}),
                Some("ThrottlingException"),
            ),
            Answer::AwsInternalError => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"__type": "InternalServiceError", "message": "An internal error occurred (injected fault)"}),
                Some("InternalServiceError"),
            ),
        };
        let mut r = Response::builder().status(status);
        r = match aws_type {
            Some(t) => r
                .header(header::CONTENT_TYPE, "application/x-amz-json-1.1")
                .header("x-amzn-ErrorType", t)
                .header("x-amzn-RequestId", uuid::Uuid::new_v4().to_string()),
            None => r.header(header::CONTENT_TYPE, "application/json"),
        };
        r.body(Body::from(body.to_string()))
            .expect("valid response")
    }
}

/// An armed fault. Cheap to clone; all clones share the counters.
#[derive(Debug, Clone)]
pub struct Rule(Arc<RuleState>);

#[derive(Debug)]
struct RuleState {
    matcher: Match,
    answer: Answer,
    /// Matches still to intercept.
    remaining: AtomicUsize,
    /// Matches intercepted so far.
    intercepted: AtomicUsize,
}

impl Rule {
    /// Requests this rule answered instead of the upstream.
    pub fn intercepted(&self) -> usize {
        self.0.intercepted.load(Ordering::SeqCst)
    }

    /// Takes one interception if this rule applies and is armed.
    fn take(&self, method: &str, path: &str, headers: &HeaderMap) -> bool {
        if !self.0.matcher.matches(method, path, headers) {
            return false;
        }
        let took = self
            .0
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if took {
            self.0.intercepted.fetch_add(1, Ordering::SeqCst);
        }
        took
    }
}

#[derive(Clone)]
struct Shared {
    upstream: String,
    http: reqwest::Client,
    rules: Arc<Mutex<Vec<Rule>>>,
}

/// The proxy; stops when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`: give this to the store instead of the
    /// upstream's address.
    pub url: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Hop-by-hop headers, and the length, which the sending side recomputes.
fn skip_header(name: &HeaderName) -> bool {
    [
        header::HOST,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
    ]
    .contains(name)
        || name.as_str().eq_ignore_ascii_case("keep-alive")
}

impl FaultProxy {
    /// Starts a proxy for `upstream` (`http://127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> FaultProxy {
        let shared = Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("reqwest client"),
            rules: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultProxy { url, shared, task }
    }

    /// Answers the next `n` requests matching `matcher` with `answer`.
    /// Rules are tried in the order they were armed.
    pub fn arm(&self, matcher: Match, answer: Answer, n: usize) -> Rule {
        let rule = Rule(Arc::new(RuleState {
            matcher,
            answer,
            remaining: AtomicUsize::new(n),
            intercepted: AtomicUsize::new(0),
        }));
        self.shared.rules.lock().unwrap().push(rule.clone());
        rule
    }
}

async fn forward(State(s): State<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let hit = s
        .rules
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.take(parts.method.as_str(), parts.uri.path(), &parts.headers))
        .map(|r| r.0.answer);
    if let Some(answer) = hit {
        return answer.response();
    }

    let body = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(_) => return bad_gateway("cannot read the request body"),
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = s
        .http
        .request(parts.method, format!("{}{path_and_query}", s.upstream))
        .body(body);
    for (name, value) in &parts.headers {
        if !skip_header(name) {
            out = out.header(name, value);
        }
    }
    let upstream = match out.send().await {
        Ok(r) => r,
        Err(_) => return bad_gateway("the upstream did not answer"),
    };
    let mut resp = Response::builder().status(upstream.status());
    for (name, value) in upstream.headers() {
        if !skip_header(name) {
            resp = resp.header(name, value);
        }
    }
    match upstream.bytes().await {
        Ok(b) => resp.body(Body::from(b)).expect("valid response"),
        Err(_) => bad_gateway("the upstream's answer broke off"),
    }
}

fn bad_gateway(why: &'static str) -> Response {
    Response::builder()
        .status(StatusCode::BAD_GATEWAY)
        .body(Body::from(why))
        .expect("valid response")
}
