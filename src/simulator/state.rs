//! The simulator's data: users, every token ever issued, the clock, knobs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::motherduck::{
    DucklingConfig, Endpoint, InstanceSize, ReadScalingConfig, ReadWriteConfig, TokenType,
};

/// Who a user is; decides what its tokens may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKind {
    /// A human with the Admin role: its read/write tokens may call the API.
    Admin,
    /// A human member: tokens valid, but 403 on the admin API, and an admin
    /// may not create tokens for it.
    Member,
    /// Created through `POST /v1/users`.
    ServiceAccount,
}

#[derive(Debug, Clone)]
pub struct User {
    pub username: String,
    pub user_id: uuid::Uuid,
    pub kind: UserKind,
    pub duckling: DucklingConfig,
}

/// A token as the simulator remembers it, revoked or not. Holds no secret:
/// only a hash of it is kept, for authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub id: String,
    pub username: String,
    pub name: String,
    pub created_ts: DateTime<Utc>,
    pub expire_at: Option<DateTime<Utc>>,
    pub token_type: TokenType,
    pub read_only: bool,
    pub description: Option<String>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl IssuedToken {
    /// Not revoked and not expired at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expire_at.is_none_or(|e| now < e)
    }
}

/// What a scripted fault does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status with an error body, doing nothing.
    Status(u16),
    /// Do the work (create the token, revoke it, ...), then answer this
    /// status anyway: the reply was lost, the outcome is ambiguous.
    StatusAfterCommit(u16),
    /// Never answer: the request hangs until the client gives up.
    Hang,
}

/// Failure and latency knobs. All default to off.
#[derive(Debug, Clone, Default)]
pub struct Knobs {
    /// Added to every API request (not to unknown routes).
    pub latency_fixed: Duration,
    /// Uniform random extra latency in `[0, latency_jitter]`.
    pub latency_jitter: Duration,
    /// Probability (0.0–1.0) that a request to the endpoint answers 500.
    pub error_rates: HashMap<Endpoint, f64>,
    /// The next `n` API requests answer 429 with this `Retry-After`.
    pub burst_429: Option<(u32, u64)>,
    /// Per endpoint, faults consumed one per request, in order.
    pub scripts: HashMap<Endpoint, VecDeque<Fault>>,
    /// Embed sessions need the Business plan; false answers 403.
    pub embed_forbidden: bool,
}

/// Counts requests per endpoint, for tests that assert on traffic.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub requests: HashMap<Endpoint, u64>,
    /// API requests being served now, and the most there ever were at once.
    pub in_flight: u64,
    pub max_in_flight: u64,
}

pub struct State {
    /// Keyed by lower-cased username: usernames compare case-insensitively.
    pub users: BTreeMap<String, User>,
    /// Every token ever issued, in issue order.
    pub tokens: Vec<IssuedToken>,
    /// SHA-256 of a secret → index into `tokens`.
    pub by_hash: HashMap<[u8; 32], usize>,
    pub knobs: Knobs,
    pub counters: Counters,
    /// Offset added to the base clock by `advance`.
    pub clock_offset: chrono::Duration,
    /// A frozen base time; `None` follows the system clock.
    pub frozen: Option<DateTime<Utc>>,
    pub rng: fastrand::Rng,
    signing_key: [u8; 32],
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("users", &self.users.len())
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

pub fn default_duckling() -> DucklingConfig {
    DucklingConfig {
        read_write: ReadWriteConfig {
            instance_size: InstanceSize::Standard,
            cooldown_seconds: None,
        },
        read_scaling: ReadScalingConfig {
            instance_size: InstanceSize::Standard,
            flock_size: 4,
            cooldown_seconds: None,
        },
    }
}

impl State {
    pub fn new(frozen: Option<DateTime<Utc>>, seed: Option<u64>) -> State {
        let mut signing_key = [0u8; 32];
        signing_key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        signing_key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        State {
            users: BTreeMap::new(),
            tokens: Vec::new(),
            by_hash: HashMap::new(),
            knobs: Knobs::default(),
            counters: Counters::default(),
            clock_offset: chrono::Duration::zero(),
            frozen,
            rng: seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed),
            signing_key,
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.frozen.unwrap_or_else(Utc::now) + self.clock_offset
    }

    pub fn user(&self, username: &str) -> Option<&User> {
        self.users.get(&username.to_lowercase())
    }

    pub fn add_user(&mut self, username: &str, kind: UserKind) -> &User {
        self.users
            .entry(username.to_lowercase())
            .or_insert_with(|| User {
                username: username.to_owned(),
                user_id: uuid::Uuid::new_v4(),
                kind,
                duckling: default_duckling(),
            })
    }

    /// Issues a token and returns its index and secret. The secret is a
    /// JWT (HS256) whose claims carry the token id, so every one is unique.
    pub fn issue(
        &mut self,
        username: &str,
        name: &str,
        ttl: Option<u64>,
        token_type: TokenType,
        description: Option<String>,
    ) -> (usize, String) {
        let now = self.now();
        let user = self.user(username).expect("caller checked the user exists");
        let id = uuid::Uuid::new_v4().to_string();
        let read_only = token_type == TokenType::ReadScaling;
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "userId": user.user_id.to_string(),
            "username": user.username,
            "tokenId": id,
            "tokenType": token_type.as_str(),
            "readOnly": read_only,
            "iat": now.timestamp(),
        });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string().as_bytes());
        let signing_input = format!("{header}.{claims}");
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.signing_key)
            .expect("HMAC takes keys of any length");
        mac.update(signing_input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        let secret = format!("{signing_input}.{sig}");
        let username = user.username.clone();
        self.tokens.push(IssuedToken {
            id,
            username,
            name: name.to_owned(),
            created_ts: now,
            expire_at: ttl.map(|s| now + chrono::Duration::seconds(s as i64)),
            token_type,
            read_only,
            description,
            revoked_at: None,
        });
        let idx = self.tokens.len() - 1;
        self.by_hash.insert(hash_secret(&secret), idx);
        (idx, secret)
    }

    /// Decides the scripted or random fault for one request, if any.
    pub fn take_fault(&mut self, endpoint: Endpoint) -> Option<FaultOutcome> {
        *self.counters.requests.entry(endpoint).or_default() += 1;
        if let Some((n, retry_after)) = self.knobs.burst_429 {
            self.knobs.burst_429 = (n > 1).then(|| (n - 1, retry_after));
            return Some(FaultOutcome::RateLimited { retry_after });
        }
        if let Some(f) = self
            .knobs
            .scripts
            .get_mut(&endpoint)
            .and_then(VecDeque::pop_front)
        {
            return Some(FaultOutcome::Scripted(f));
        }
        let rate = self
            .knobs
            .error_rates
            .get(&endpoint)
            .copied()
            .unwrap_or(0.0);
        if rate > 0.0 && self.rng.f64() < rate {
            return Some(FaultOutcome::Scripted(Fault::Status(500)));
        }
        None
    }

    pub fn latency(&mut self) -> Duration {
        let jitter = self.knobs.latency_jitter.as_micros() as u64;
        let extra = if jitter == 0 {
            0
        } else {
            self.rng.u64(0..=jitter)
        };
        self.knobs.latency_fixed + Duration::from_micros(extra)
    }
}

pub enum FaultOutcome {
    RateLimited { retry_after: u64 },
    Scripted(Fault),
}
