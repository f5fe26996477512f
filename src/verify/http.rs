//! The HTTP probe: a request to a consumer that answers as expected once it
//! works with the new token.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};

use super::{Reason, VerifyContext, check_attempt_timeout, check_timing};
use crate::secret::{ExposeSecret, SecretString};

/// The largest body read when `json_field` is set. A health endpoint
/// answers a few hundred bytes; anything far larger is not one, and reading
/// it unbounded would let a broken consumer exhaust the daemon's memory.
const BODY_LIMIT: usize = 64 * 1024;

/// Headers whose values are credentials. A literal value in the
/// configuration would be an inline secret, which the design forbids, so
/// these must come as [`HeaderValueSpec::Secret`].
const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

/// The value of a probe header. The configuration layer resolves file and
/// environment references into `Secret` before building the probe.
#[derive(Clone)]
pub enum HeaderValueSpec {
    Literal(String),
    Secret(SecretString),
}

impl fmt::Debug for HeaderValueSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderValueSpec::Literal(v) => f.debug_tuple("Literal").field(v).finish(),
            HeaderValueSpec::Secret(_) => f.debug_tuple("Secret").field(&"[REDACTED]").finish(),
        }
    }
}

/// A validated HTTP probe. Built through [`HttpProbe::builder`], so an
/// invalid URL, method, header or status cannot reach the polling loop.
/// The settings sit behind an `Arc`, which keeps [`HookSpec`](super::HookSpec)
/// small and clones cheap.
#[derive(Clone)]
pub struct HttpProbe(Arc<Probe>);

struct Probe {
    method: Method,
    url: Url,
    /// The URL without query and fragment: what errors and logs show, since
    /// a query string is the one part of a URL that may carry a key.
    label: String,
    /// Prebuilt headers; secret values are marked sensitive, so hyper and
    /// reqwest never print them either.
    headers: HeaderMap,
    expect_status: Vec<u16>,
    json_field: Option<String>,
    interval: Duration,
    deadline: Duration,
    request_timeout: Duration,
    /// One client per probe, built once: it carries the no-redirect policy.
    client: reqwest::Client,
}

impl fmt::Debug for HttpProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .0
            .headers
            .iter()
            .map(|(name, value)| {
                let shown = if value.is_sensitive() {
                    "[REDACTED]"
                } else {
                    value.to_str().unwrap_or("[NOT UTF-8]")
                };
                (name.as_str(), shown)
            })
            .collect();
        f.debug_struct("HttpProbe")
            .field("method", &self.0.method.as_str())
            .field("url", &self.0.label)
            .field("headers", &headers)
            .field("expect_status", &self.0.expect_status)
            .field("json_field", &self.0.json_field)
            .field("interval", &self.0.interval)
            .field("deadline", &self.0.deadline)
            .field("request_timeout", &self.0.request_timeout)
            .finish()
    }
}

/// Collects the settings of an [`HttpProbe`]; [`HttpProbeBuilder::build`]
/// validates them all at once.
#[derive(Debug, Clone)]
pub struct HttpProbeBuilder {
    method: String,
    url: String,
    headers: Vec<(String, HeaderValueSpec)>,
    expect_status: Vec<u16>,
    json_field: Option<String>,
    interval: Duration,
    deadline: Duration,
    request_timeout: Duration,
}

impl HttpProbe {
    /// Starts a probe of `url` with the defaults: `GET`, expect 200, no JSON
    /// field, every 2 s for up to 2 min, 10 s per request.
    pub fn builder(url: impl Into<String>) -> HttpProbeBuilder {
        HttpProbeBuilder {
            method: "GET".to_owned(),
            url: url.into(),
            headers: Vec::new(),
            expect_status: vec![200],
            json_field: None,
            interval: Duration::from_secs(2),
            deadline: Duration::from_secs(120),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// The URL without query or fragment.
    pub fn label(&self) -> &str {
        &self.0.label
    }

    pub fn method(&self) -> &Method {
        &self.0.method
    }

    pub fn expect_status(&self) -> &[u16] {
        &self.0.expect_status
    }

    pub fn json_field(&self) -> Option<&str> {
        self.0.json_field.as_deref()
    }

    pub fn interval(&self) -> Duration {
        self.0.interval
    }

    pub fn deadline(&self) -> Duration {
        self.0.deadline
    }

    pub fn request_timeout(&self) -> Duration {
        self.0.request_timeout
    }

    /// One request: passes when the status is expected and, if configured,
    /// the JSON field reports the new token id.
    pub(crate) async fn attempt(&self, ctx: &VerifyContext) -> Result<(), Reason> {
        let mut response = self
            .0
            .client
            .request(self.0.method.clone(), self.0.url.clone())
            .headers(self.0.headers.clone())
            .timeout(self.0.request_timeout)
            .send()
            .await
            .map_err(|e| self.request_error(e))?;
        let actual = response.status().as_u16();
        if !self.0.expect_status.contains(&actual) {
            return Err(Reason::Status {
                expected: self.0.expect_status.clone(),
                actual,
            });
        }
        let Some(pointer) = &self.0.json_field else {
            return Ok(());
        };
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.request_error(e))? {
            if body.len() + chunk.len() > BODY_LIMIT {
                return Err(Reason::BodyTooLarge { limit: BODY_LIMIT });
            }
            body.extend_from_slice(&chunk);
        }
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| Reason::NotJson {
                message: e.to_string(),
            })?;
        check_reported_id(&json, pointer, ctx)
    }

    fn request_error(&self, e: reqwest::Error) -> Reason {
        if e.is_timeout() {
            return Reason::RequestTimeout {
                after: self.0.request_timeout,
            };
        }
        // The URL is already in the error's label; `without_url` also keeps
        // a query string out of the message.
        let e = e.without_url();
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Reason::Request { message }
    }
}

/// Compares the value at `pointer` with the new token id. A differing value
/// is repeated in the error only when it looks like a token id: a consumer
/// (or a mistaken pointer) could report a secret there.
fn check_reported_id(
    json: &serde_json::Value,
    pointer: &str,
    ctx: &VerifyContext,
) -> Result<(), Reason> {
    let found = match json.pointer(pointer) {
        None => {
            return Err(Reason::JsonFieldMissing {
                pointer: pointer.to_owned(),
            });
        }
        Some(serde_json::Value::String(s)) => s,
        Some(other) => {
            return Err(Reason::JsonFieldNotString {
                pointer: pointer.to_owned(),
                found: json_kind(other),
            });
        }
    };
    if *found == ctx.token_id {
        return Ok(());
    }
    if found.as_str() == ctx.token.expose_secret() {
        return Err(Reason::JsonFieldIsSecret {
            pointer: pointer.to_owned(),
            expected: ctx.token_id.clone(),
        });
    }
    Err(Reason::JsonFieldMismatch {
        pointer: pointer.to_owned(),
        expected: ctx.token_id.clone(),
        actual: looks_like_id(found).then(|| found.clone()),
    })
}

/// Token ids are UUIDs; allow any short run of letters, digits, `-` and `_`
/// so other id styles still show. A JWT (with its dots) never qualifies.
fn looks_like_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl HttpProbeBuilder {
    /// The HTTP method; case-insensitive (`get` is `GET`).
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = method.into();
        self
    }

    /// Adds a request header; may be called repeatedly.
    pub fn header(mut self, name: impl Into<String>, value: HeaderValueSpec) -> Self {
        self.headers.push((name.into(), value));
        self
    }

    /// The statuses that count as success.
    pub fn expect_status(mut self, statuses: impl Into<Vec<u16>>) -> Self {
        self.expect_status = statuses.into();
        self
    }

    /// A JSON pointer (RFC 6901, e.g. `/token_id`) whose string value must
    /// be the new token id: the consumer reports which token it uses.
    pub fn json_field(mut self, pointer: impl Into<String>) -> Self {
        self.json_field = Some(pointer.into());
        self
    }

    /// The pause between the end of one request and the next.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// How long the probe may keep trying in all.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The bound on one request, from connecting to the last body byte.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Validates every setting.
    ///
    /// # Errors
    /// A lowercase message quoting the offending value (never a secret
    /// header value): a URL that is not absolute http(s), plain http to a
    /// non-loopback host, credentials in the URL, an invalid method, header
    /// name or value, a literal value for a credential header, no or an
    /// impossible expected status, a `json_field` that is not a JSON
    /// pointer, zero durations, or a request timeout above the deadline.
    pub fn build(self) -> Result<HttpProbe, String> {
        let url =
            Url::parse(&self.url).map_err(|e| format!("invalid probe url `{}`: {e}", self.url))?;
        if !url.username().is_empty() || url.password().is_some() {
            // Not quoted: the URL holds a credential.
            return Err(
                "probe url must not contain credentials; send them in a secret header".to_owned(),
            );
        }
        match url.scheme() {
            "https" => {}
            "http" if crate::motherduck::is_loopback(&url) => {}
            "http" => {
                return Err(format!(
                    "probe url `{}` must use https (plain http is allowed only for loopback addresses)",
                    self.url
                ));
            }
            other => {
                return Err(format!(
                    "invalid probe url `{}`: unsupported scheme `{other}`",
                    self.url
                ));
            }
        }
        if url.host().is_none() {
            return Err(format!("invalid probe url `{}`: no host", self.url));
        }
        let mut label = url.clone();
        label.set_query(None);
        label.set_fragment(None);

        let method = Method::from_bytes(self.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("invalid http method `{}`", self.method))?;

        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("invalid header name `{name}`"))?;
            let header_value = match value {
                HeaderValueSpec::Literal(v) => {
                    if CREDENTIAL_HEADERS.contains(&header_name.as_str()) {
                        return Err(format!(
                            "header `{name}` carries a credential; give its value as a secret reference, not a literal"
                        ));
                    }
                    HeaderValue::from_str(v)
                        .map_err(|_| format!("invalid value `{v}` for header `{name}`"))?
                }
                HeaderValueSpec::Secret(s) => {
                    let mut v = HeaderValue::from_str(s.expose_secret()).map_err(|_| {
                        format!(
                            "the secret value of header `{name}` contains characters not allowed in an HTTP header"
                        )
                    })?;
                    v.set_sensitive(true);
                    v
                }
            };
            headers.append(header_name, header_value);
        }

        if self.expect_status.is_empty() {
            return Err("expect_status must list at least one status".to_owned());
        }
        if let Some(bad) = self
            .expect_status
            .iter()
            .find(|s| !(100..=599).contains(*s))
        {
            return Err(format!(
                "expected status `{bad}` is not an HTTP status (100-599)"
            ));
        }
        if let Some(pointer) = &self.json_field {
            if !pointer.starts_with('/') {
                return Err(format!(
                    "json_field `{pointer}` is not a JSON pointer (it must start with `/`, like `/token_id`)"
                ));
            }
            if method == Method::HEAD {
                return Err(format!(
                    "json_field `{pointer}` needs a response body, which method `HEAD` never has"
                ));
            }
        }
        check_timing(self.interval, self.deadline)?;
        check_attempt_timeout("request_timeout", self.request_timeout, self.deadline)?;

        let client = reqwest::Client::builder()
            .user_agent(concat!(
                "motherduck-rotator/",
                env!("CARGO_PKG_VERSION"),
                " (verification probe)"
            ))
            // A redirect would carry the secret headers to wherever it
            // points; a 3xx is judged like any other status instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("failed to build the http client for the probe: {e}"))?;

        Ok(HttpProbe(Arc::new(Probe {
            method,
            url,
            label: label.to_string(),
            headers,
            expect_status: self.expect_status,
            json_field: self.json_field,
            interval: self.interval,
            deadline: self.deadline,
            request_timeout: self.request_timeout,
            client,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ctx, deps};
    use super::super::{Failure, HookKind, HookSpec, run_all};
    use super::*;
    use tokio_util::sync::CancellationToken;
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const HEADER_SECRET: &str = "hdr-s3cr3t-value-0042";

    /// A probe with test-sized timing.
    fn fast(url: String) -> HttpProbeBuilder {
        HttpProbe::builder(url)
            .interval(Duration::from_millis(5))
            .deadline(Duration::from_millis(300))
            .request_timeout(Duration::from_millis(200))
    }

    /// Settings for exactly one attempt that may take its time: with the
    /// interval as long as the deadline no second attempt fits, so a failure
    /// is reported as soon as the first answer is in, and a slow machine
    /// cannot turn it into "still running at the deadline".
    trait Once {
        fn once(self) -> Self;
    }

    impl Once for HttpProbeBuilder {
        fn once(self) -> Self {
            self.interval(Duration::from_secs(2))
                .deadline(Duration::from_secs(2))
                .request_timeout(Duration::from_secs(2))
        }
    }

    async fn run(probe: HttpProbe) -> Result<(), super::super::VerifyError> {
        run_all(
            &[HookSpec::Http(probe)],
            &ctx(),
            &deps(),
            &CancellationToken::new(),
        )
        .await
    }

    #[tokio::test]
    async fn passes_on_expected_status() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/healthz"))
            .respond_with(ResponseTemplate::new(204))
            .expect(1)
            .mount(&server)
            .await;
        let probe = fast(format!("{}/healthz?verbose=1", server.uri()))
            .expect_status([200, 204])
            .build()
            .unwrap();
        run(probe).await.unwrap();
    }

    #[tokio::test]
    async fn wrong_status_then_success_within_the_deadline() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(2)
            .expect(2)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&server)
            .await;
        run(fast(server.uri()).build().unwrap()).await.unwrap();
    }

    #[tokio::test]
    async fn deadline_exceeded_names_the_url_and_the_statuses() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(503))
            .mount(&server)
            .await;
        let probe = fast(format!("{}/ready?key=abc", server.uri()))
            .interval(Duration::from_millis(20))
            .deadline(Duration::from_millis(200))
            .request_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let err = run(probe).await.unwrap_err();
        assert_eq!(err.kind, HookKind::Http);
        let msg = err.to_string();
        let prefix = format!(
            "http hook `{}/ready` failed: not passed within 200ms after ",
            server.uri()
        );
        assert!(msg.starts_with(&prefix), "{msg}");
        assert!(
            msg.ends_with("; last: expected status 200, got 503"),
            "{msg}"
        );
        assert!(!msg.contains("key=abc"), "{msg}");
        assert_eq!(err.reason(), "status");
    }

    #[tokio::test]
    async fn slow_answer_is_a_request_timeout() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(500)))
            .mount(&server)
            .await;
        let probe = fast(server.uri())
            .interval(Duration::from_millis(100))
            .deadline(Duration::from_millis(100))
            .request_timeout(Duration::from_millis(20))
            .build()
            .unwrap();
        let err = run(probe).await.unwrap_err();
        assert!(err.to_string().ends_with("no answer within 20ms"), "{err}");
    }

    #[tokio::test]
    async fn json_field_must_report_the_new_token_id() {
        let ctx = ctx();
        let server = MockServer::start().await;
        Mock::given(path("/match"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"auth": {"token_id": ctx.token_id}})),
            )
            .mount(&server)
            .await;
        Mock::given(path("/old"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"auth": {"token_id": "old-token-id"}})),
            )
            .mount(&server)
            .await;
        Mock::given(path("/leaky"))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"auth": {"token_id": ctx.token.expose_secret()}}),
            ))
            .mount(&server)
            .await;
        Mock::given(path("/number"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"auth": {"token_id": 7}})),
            )
            .mount(&server)
            .await;

        let probe = |p: &str| {
            fast(format!("{}{p}", server.uri()))
                .once()
                .json_field("/auth/token_id")
                .build()
                .unwrap()
        };
        run(probe("/match")).await.unwrap();

        let msg = run(probe("/old")).await.unwrap_err().to_string();
        assert!(
            msg.ends_with(&format!(
                "json field `/auth/token_id` is `old-token-id`, expected `{}`",
                ctx.token_id
            )),
            "{msg}"
        );

        let msg = run(probe("/leaky")).await.unwrap_err().to_string();
        assert!(msg.contains("holds the token secret itself"), "{msg}");
        assert!(!msg.contains(ctx.token.expose_secret()), "{msg}");

        let msg = run(probe("/number")).await.unwrap_err().to_string();
        assert!(
            msg.ends_with("json field `/auth/token_id` is a number, not a string"),
            "{msg}"
        );

        let missing = fast(format!("{}/match", server.uri()))
            .once()
            .json_field("/token_id")
            .build()
            .unwrap();
        let msg = run(missing).await.unwrap_err().to_string();
        assert!(msg.ends_with("json field `/token_id` is missing"), "{msg}");
    }

    #[test]
    fn reported_values_that_are_not_ids_are_not_repeated() {
        let ctx = ctx();
        let json = serde_json::json!({"t": "some.other.jwt-looking-value"});
        let err = check_reported_id(&json, "/t", &ctx).unwrap_err();
        assert!(
            matches!(&err, Reason::JsonFieldMismatch { actual: None, .. }),
            "{err:?}"
        );
        assert!(!err.to_string().contains("jwt-looking"), "{err}");
    }

    #[tokio::test]
    async fn secret_header_is_sent_but_never_shown() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(header("x-api-key", HEADER_SECRET))
            .and(header("x-env", "staging"))
            .respond_with(ResponseTemplate::new(500))
            .expect(1..)
            .mount(&server)
            .await;
        let probe = fast(server.uri())
            .once()
            .header(
                "X-Api-Key",
                HeaderValueSpec::Secret(SecretString::from(HEADER_SECRET.to_owned())),
            )
            .header("x-env", HeaderValueSpec::Literal("staging".into()))
            .build()
            .unwrap();
        let debug = format!("{probe:?}");
        assert!(!debug.contains(HEADER_SECRET), "{debug}");
        assert!(
            debug.contains("[REDACTED]") && debug.contains("staging"),
            "{debug}"
        );
        let spec_debug = format!("{:?}", HookSpec::Http(probe.clone()));
        assert!(!spec_debug.contains(HEADER_SECRET), "{spec_debug}");

        let err = run(probe).await.unwrap_err();
        // The 500 proves the mock matched, so the header was sent.
        assert!(
            err.to_string().ends_with("expected status 200, got 500"),
            "{err}"
        );
        assert!(!err.to_string().contains(HEADER_SECRET), "{err}");
        assert!(!format!("{err:?}").contains(HEADER_SECRET), "{err:?}");

        let builder_debug = format!(
            "{:?}",
            HttpProbe::builder("https://x.example").header(
                "authorization",
                HeaderValueSpec::Secret(SecretString::from(HEADER_SECRET.to_owned()))
            )
        );
        assert!(!builder_debug.contains(HEADER_SECRET), "{builder_debug}");
    }

    #[tokio::test]
    async fn cancellation_stops_the_probe() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(503))
            .mount(&server)
            .await;
        let cancel = CancellationToken::new();
        cancel.cancel();
        let err = run_all(
            &[HookSpec::Http(fast(server.uri()).build().unwrap())],
            &ctx(),
            &deps(),
            &cancel,
        )
        .await
        .unwrap_err();
        assert!(matches!(err.failure, Failure::Cancelled), "{err}");
        assert!(err.is_cancelled());
    }

    #[test]
    fn builder_rejects_bad_settings_with_quoted_values() {
        let err = |b: HttpProbeBuilder| b.build().unwrap_err();
        assert_eq!(
            err(HttpProbe::builder("http://app.internal/healthz")),
            "probe url `http://app.internal/healthz` must use https (plain http is allowed only for loopback addresses)"
        );
        assert_eq!(
            err(HttpProbe::builder("ftp://app.internal/x")),
            "invalid probe url `ftp://app.internal/x`: unsupported scheme `ftp`"
        );
        assert!(err(HttpProbe::builder("not a url")).starts_with("invalid probe url `not a url`"));
        let creds = err(HttpProbe::builder("https://user:pw@app.internal/"));
        assert!(!creds.contains("pw"), "{creds}");
        assert_eq!(
            err(HttpProbe::builder("https://a.example").method("GE T")),
            "invalid http method `GE T`"
        );
        assert_eq!(
            err(HttpProbe::builder("https://a.example").expect_status([700])),
            "expected status `700` is not an HTTP status (100-599)"
        );
        assert_eq!(
            err(HttpProbe::builder("https://a.example").expect_status([])),
            "expect_status must list at least one status"
        );
        assert_eq!(
            err(HttpProbe::builder("https://a.example").json_field("token_id")),
            "json_field `token_id` is not a JSON pointer (it must start with `/`, like `/token_id`)"
        );
        assert_eq!(
            err(HttpProbe::builder("https://a.example")
                .header("Authorization", HeaderValueSpec::Literal("Bearer x".into()))),
            "header `Authorization` carries a credential; give its value as a secret reference, not a literal"
        );
        assert_eq!(
            err(HttpProbe::builder("https://a.example")
                .header("bad header", HeaderValueSpec::Literal("x".into()))),
            "invalid header name `bad header`"
        );
        let bad_secret = err(HttpProbe::builder("https://a.example").header(
            "x-key",
            HeaderValueSpec::Secret(SecretString::from("line\nbreak".to_owned())),
        ));
        assert!(!bad_secret.contains("break"), "{bad_secret}");
        assert_eq!(
            err(HttpProbe::builder("https://a.example")
                .deadline(Duration::from_secs(5))
                .request_timeout(Duration::from_secs(10))),
            "request_timeout `10s` must not exceed the deadline `5s`"
        );
        let ok = HttpProbe::builder("http://localhost:8080/healthz")
            .method("head")
            .build()
            .unwrap();
        assert_eq!(ok.method(), Method::HEAD);
        assert_eq!(ok.label(), "http://localhost:8080/healthz");
    }
}
