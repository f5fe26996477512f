//! An in-process MotherDuck REST API for tests, benchmarks and the demo.
//!
//! It serves the routes of the real API with the documented validation
//! rules, error bodies and authentication (401 for unknown, revoked or
//! expired tokens; 403 for valid tokens without the Admin role), issues
//! JWT-shaped, unique token secrets, and expires tokens against its own clock,
//! which tests can freeze and advance. Knobs add latency, random errors per
//! endpoint, 429 bursts and scripted faults. It remembers every token it
//! ever issued, so tests can assert exactly what is live.
//!
//! Only a SHA-256 hash of each secret is kept; the secret itself leaves the
//! simulator once, in the create response, as with the real service.
//!
//! Behaviour the documentation leaves open, chosen here: a duplicate
//! username answers 409 `CONFLICT`; token lists omit revoked and expired
//! tokens; `ttl` may be a number or a numeric string; an account counts as
//! active while it holds a live token.

mod routes;
mod state;
pub mod validate;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::net::TcpListener;

use crate::motherduck::{Endpoint, TokenType};
use crate::secret::SecretString;

pub use state::{Fault, IssuedToken, UserKind};

/// The name of the admin user that owns the admin token.
pub const ADMIN_USERNAME: &str = "admin";

/// A simulated MotherDuck organisation. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Simulator {
    state: Arc<Mutex<state::State>>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").finish_non_exhaustive()
    }
}

/// How to set up a [`Simulator`].
#[derive(Debug, Default, Clone)]
pub struct SimulatorOptions {
    /// Freeze the clock at this instant (then move it with `advance`);
    /// `None` follows the system clock.
    pub frozen_at: Option<DateTime<Utc>>,
    /// Seed for latency jitter and random errors, for repeatable runs.
    pub seed: Option<u64>,
}

/// A simulator serving on a loopback socket.
#[derive(Debug)]
pub struct RunningSimulator {
    pub sim: Simulator,
    pub addr: SocketAddr,
    /// The admin token, to configure clients with.
    pub admin_token: SecretString,
    task: tokio::task::JoinHandle<()>,
}

impl RunningSimulator {
    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningSimulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Simulator {
    /// An organisation with one human admin and no service accounts.
    pub fn new(opts: SimulatorOptions) -> Simulator {
        let mut st = state::State::new(opts.frozen_at, opts.seed);
        st.add_user(ADMIN_USERNAME, UserKind::Admin);
        Simulator {
            state: Arc::new(Mutex::new(st)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, state::State> {
        // A panic while holding the lock cannot leave the maps half-written
        // in a way that matters for a test double; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Issues a new non-expiring read/write token for the admin user.
    pub fn issue_admin_token(&self) -> SecretString {
        let (_, secret) =
            self.lock()
                .issue(ADMIN_USERNAME, "admin", None, TokenType::ReadWrite, None);
        SecretString::from(secret)
    }

    /// Accepts `secret` as a token of the admin user (for a standalone
    /// simulator given a token file). The secret must be unique.
    pub fn register_admin_token(&self, secret: &SecretString) {
        use crate::secret::ExposeSecret;
        let mut st = self.lock();
        let now = st.now();
        st.tokens.push(IssuedToken {
            id: uuid::Uuid::new_v4().to_string(),
            username: ADMIN_USERNAME.to_owned(),
            name: "admin".to_owned(),
            created_ts: now,
            expire_at: None,
            token_type: TokenType::ReadWrite,
            read_only: false,
            description: None,
            revoked_at: None,
        });
        let idx = st.tokens.len() - 1;
        st.by_hash
            .insert(state::hash_secret(secret.expose_secret()), idx);
    }

    /// Adds a human member (tokens valid, but 403 on the admin API) and
    /// returns one of its tokens.
    pub fn add_member(&self, username: &str) -> SecretString {
        let mut st = self.lock();
        st.add_user(username, UserKind::Member);
        let (_, secret) = st.issue(username, "member", None, TokenType::ReadWrite, None);
        SecretString::from(secret)
    }

    /// Creates a service account directly, as if through the API.
    pub fn add_service_account(&self, username: &str) {
        self.lock().add_user(username, UserKind::ServiceAccount);
    }

    /// Every token ever issued (admin tokens included), in issue order.
    pub fn issued_tokens(&self) -> Vec<IssuedToken> {
        self.lock().tokens.clone()
    }

    /// Tokens of `username` that are neither revoked nor expired now.
    pub fn live_tokens(&self, username: &str) -> Vec<IssuedToken> {
        let st = self.lock();
        let now = st.now();
        st.tokens
            .iter()
            .filter(|t| t.username.eq_ignore_ascii_case(username) && t.is_live(now))
            .cloned()
            .collect()
    }

    /// Whether `candidate` is the secret of any token ever issued (revoked
    /// and expired ones included). Leak tests scan output with it.
    pub fn is_issued_secret(&self, candidate: &str) -> bool {
        self.lock()
            .by_hash
            .contains_key(&state::hash_secret(candidate))
    }

    /// The token whose secret is `candidate`, revoked and expired ones
    /// included; `None` if no token has that secret. Consumers in tests use
    /// it to tell whether what they read was live at the time.
    pub fn token_by_secret(&self, candidate: &str) -> Option<IssuedToken> {
        let st = self.lock();
        let idx = *st.by_hash.get(&state::hash_secret(candidate))?;
        st.tokens.get(idx).cloned()
    }

    pub fn user_exists(&self, username: &str) -> bool {
        self.lock().user(username).is_some()
    }

    /// The simulator's current time.
    pub fn now(&self) -> DateTime<Utc> {
        self.lock().now()
    }

    /// Moves the clock forward (tokens expire against it).
    pub fn advance(&self, by: Duration) {
        let mut st = self.lock();
        st.clock_offset += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
    }

    /// Latency added to every API request: `fixed` plus uniform jitter.
    pub fn set_latency(&self, fixed: Duration, jitter: Duration) {
        let mut st = self.lock();
        st.knobs.latency_fixed = fixed;
        st.knobs.latency_jitter = jitter;
    }

    /// Probability (clamped to 0.0–1.0) that a request to `endpoint`
    /// answers 500.
    pub fn set_error_rate(&self, endpoint: Endpoint, rate: f64) {
        let rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        self.lock().knobs.error_rates.insert(endpoint, rate);
    }

    /// The next `n` API requests answer 429 with `Retry-After: secs`.
    pub fn burst_429(&self, n: u32, retry_after_secs: u64) {
        self.lock().knobs.burst_429 = (n > 0).then_some((n, retry_after_secs));
    }

    /// The next `n` requests to `endpoint` get `fault`, e.g. "fail the next
    /// 3 token creates with 500".
    pub fn fail_next(&self, endpoint: Endpoint, n: usize, fault: Fault) {
        let mut st = self.lock();
        let q = st.knobs.scripts.entry(endpoint).or_default();
        q.extend(std::iter::repeat_n(fault, n));
    }

    /// Drops all scripted faults, error rates, bursts and latency.
    pub fn clear_faults(&self) {
        let mut st = self.lock();
        let embed_forbidden = st.knobs.embed_forbidden;
        st.knobs = state::Knobs {
            embed_forbidden,
            ..Default::default()
        };
    }

    /// Whether embed sessions answer 403 (no Business plan).
    pub fn set_embed_forbidden(&self, forbidden: bool) {
        self.lock().knobs.embed_forbidden = forbidden;
    }

    /// Requests received per endpoint (faulted ones included).
    pub fn request_count(&self, endpoint: Endpoint) -> u64 {
        self.lock()
            .counters
            .requests
            .get(&endpoint)
            .copied()
            .unwrap_or(0)
    }

    /// The most API requests that were ever being served at once (since
    /// [`Simulator::reset_max_in_flight`]).
    pub fn max_in_flight(&self) -> u64 {
        self.lock().counters.max_in_flight
    }

    /// Starts counting [`Simulator::max_in_flight`] afresh.
    pub fn reset_max_in_flight(&self) {
        let mut st = self.lock();
        st.counters.max_in_flight = st.counters.in_flight;
    }

    /// The axum router serving the API.
    pub fn router(&self) -> axum::Router {
        routes::router(self.clone())
    }

    /// Serves on `listener` until `shutdown` completes.
    ///
    /// # Errors
    /// Returns the server's IO error.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Starts a simulator on `127.0.0.1:0` with a fresh admin token.
    ///
    /// # Errors
    /// Fails when no loopback port can be bound.
    pub async fn spawn(opts: SimulatorOptions) -> std::io::Result<RunningSimulator> {
        let sim = Simulator::new(opts);
        let admin_token = sim.issue_admin_token();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let router = sim.router();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "simulator stopped");
            }
        });
        Ok(RunningSimulator {
            sim,
            addr,
            admin_token,
            task,
        })
    }
}
