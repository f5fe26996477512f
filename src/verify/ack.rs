//! Inbound acknowledgements: a consumer tells the daemon that it has picked
//! up the new token.
//!
//! The driver creates a one-time secret with [`AckRegistry::generate_secret`],
//! stores it in the destination record next to the token, and registers it
//! with [`AckRegistry::register`] before promoting, so that no consumer can
//! read the record before the daemon would accept its acknowledgement. A
//! consumer that has switched to the new token calls
//! `POST /v1/rotations/{rotation_id}/ack` with `Authorization: Bearer
//! <secret>` on the daemon's HTTP server ([`ack_router`]).
//!
//! One acknowledgement completes the rotation's [`AckHook`]; a repeat with
//! the same secret, while the rotation is still being verified, answers 200
//! again (the consumer may retry after a lost answer). The driver records
//! the acknowledgement in the rotation's journal, so it survives a restart. The registry keeps only a SHA-256
//! digest of each secret and compares digests in constant time, so neither
//! a memory dump of the registry nor response timing reveals a secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Failure, Reason, VerifyContext};
use crate::secret::{ExposeSecret, SecretString};

/// Waits for the rotation's acknowledgement.
#[derive(Debug, Clone)]
pub struct AckHook {
    deadline: Duration,
}

impl AckHook {
    /// # Errors
    /// A zero deadline, which could never be met.
    pub fn new(deadline: Duration) -> Result<AckHook, String> {
        if deadline.is_zero() {
            return Err("deadline `0s` must be greater than zero".to_owned());
        }
        Ok(AckHook { deadline })
    }

    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Waits for the acknowledgement registered for `ctx.rotation_id`.
    /// An acknowledgement that arrived before this call counts.
    pub(super) async fn wait(
        &self,
        ctx: &VerifyContext,
        registry: &AckRegistry,
        cancel: &CancellationToken,
    ) -> Result<u32, Failure> {
        let Some(mut acked) = registry.subscribe(&ctx.rotation_id) else {
            return Err(Failure::Definitive(Reason::AckNotRegistered {
                rotation_id: ctx.rotation_id.clone(),
            }));
        };
        let end = Instant::now() + self.deadline;
        let waited = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(Failure::Cancelled),
            waited = tokio::time::timeout_at(end, async {
                acked.wait_for(|a| *a).await.map(|_| ())
            }) => waited,
        };
        match waited {
            Ok(Ok(())) => Ok(1),
            Ok(Err(_closed)) => Err(Failure::Definitive(Reason::AckWithdrawn)),
            Err(_elapsed) => Err(Failure::Deadline {
                deadline: self.deadline,
                attempts: 1,
                last: Reason::AckNotReceived,
            }),
        }
    }
}

/// Pending acknowledgements by rotation id. Cheap to clone; clones share
/// state, so the HTTP handler and the driver see the same entries.
#[derive(Clone, Default)]
pub struct AckRegistry {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Tells registrations for the same rotation apart, so that dropping a
    /// replaced waiter does not remove its replacement.
    next_generation: u64,
}

struct Entry {
    /// SHA-256 of the secret; the secret itself is not kept.
    digest: [u8; 32],
    generation: u64,
    /// `true` once acknowledged; dropping it tells waiters the registration
    /// is gone.
    acked: watch::Sender<bool>,
}

impl std::fmt::Debug for AckRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckRegistry")
            .field("registered", &self.lock().entries.len())
            .finish()
    }
}

/// Why an acknowledgement was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckRejection {
    #[error("unknown rotation")]
    UnknownRotation,
    #[error("invalid acknowledgement secret")]
    WrongSecret,
    #[error("rotation already acknowledged")]
    AlreadyAcknowledged,
}

impl AckRejection {
    pub fn status(self) -> StatusCode {
        match self {
            AckRejection::UnknownRotation => StatusCode::NOT_FOUND,
            AckRejection::WrongSecret => StatusCode::UNAUTHORIZED,
            AckRejection::AlreadyAcknowledged => StatusCode::CONFLICT,
        }
    }
}

/// The registration ended before an acknowledgement arrived: the rotation
/// was registered again, replacing this waiter's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the acknowledgement registration was withdrawn")]
pub struct AckWithdrawn;

impl AckRegistry {
    /// A fresh random secret for one rotation: 244 random bits from the
    /// operating system's generator, as 64 hex characters that fit any
    /// header or store.
    pub fn generate_secret() -> SecretString {
        SecretString::from(format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        ))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the map consistent; keep serving
        // after a panic elsewhere.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Accepts acknowledgements for `rotation_id` with `secret` until the
    /// returned waiter is dropped. Registering the same rotation again
    /// replaces the earlier registration (and its secret).
    pub fn register(&self, rotation_id: impl Into<String>, secret: &SecretString) -> AckWaiter {
        let rotation_id = rotation_id.into();
        let (tx, rx) = watch::channel(false);
        let mut inner = self.lock();
        inner.next_generation += 1;
        let generation = inner.next_generation;
        inner.entries.insert(
            rotation_id.clone(),
            Entry {
                digest: digest(secret.expose_secret()),
                generation,
                acked: tx,
            },
        );
        AckWaiter {
            registry: self.clone(),
            rotation_id,
            generation,
            acked: rx,
        }
    }

    /// Records an acknowledgement presenting `secret`; what the HTTP
    /// handler calls.
    ///
    /// # Errors
    /// [`AckRejection::UnknownRotation`] when nothing is registered (the
    /// rotation is not being verified), [`AckRejection::WrongSecret`] when
    /// the secret differs. A repeated acknowledgement is accepted.
    pub fn acknowledge(&self, rotation_id: &str, secret: &str) -> Result<(), AckRejection> {
        let presented = digest(secret);
        let inner = self.lock();
        let entry = inner
            .entries
            .get(rotation_id)
            .ok_or(AckRejection::UnknownRotation)?;
        if !constant_time_eq(&entry.digest, &presented) {
            return Err(AckRejection::WrongSecret);
        }
        // A repeat (the consumer retried after a lost answer, or the daemon
        // restarted and counted a recorded one) is accepted as it was.
        if !*entry.acked.borrow() {
            entry.acked.send_replace(true);
        }
        Ok(())
    }

    /// A view of the registration's state, for the hook.
    fn subscribe(&self, rotation_id: &str) -> Option<watch::Receiver<bool>> {
        self.lock()
            .entries
            .get(rotation_id)
            .map(|e| e.acked.subscribe())
    }
}

/// Holds a rotation's registration open; dropping it deregisters.
#[derive(Debug)]
pub struct AckWaiter {
    registry: AckRegistry,
    rotation_id: String,
    generation: u64,
    acked: watch::Receiver<bool>,
}

impl AckWaiter {
    pub fn rotation_id(&self) -> &str {
        &self.rotation_id
    }

    pub fn is_acknowledged(&self) -> bool {
        *self.acked.borrow()
    }

    /// Resolves once the rotation is acknowledged (at once if it already
    /// is). Wrap it in a timeout for a deadline.
    ///
    /// # Errors
    /// [`AckWithdrawn`] when the rotation was registered again meanwhile.
    pub async fn acknowledged(&mut self) -> Result<(), AckWithdrawn> {
        self.acked
            .wait_for(|a| *a)
            .await
            .map(|_| ())
            .map_err(|_| AckWithdrawn)
    }
}

impl Drop for AckWaiter {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        if inner
            .entries
            .get(&self.rotation_id)
            .is_some_and(|e| e.generation == self.generation)
        {
            inner.entries.remove(&self.rotation_id);
        }
    }
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Compares without an early exit, so the time taken does not depend on
/// where the digests first differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// `POST /v1/rotations/{rotation_id}/ack`, for the daemon's HTTP server to
/// merge. Answers (all JSON):
/// - 200 `{"status": "acknowledged", "rotation_id": …}`;
/// - 401 `{"error": …}` without or with a wrong bearer secret;
/// - 200 again for a repeat while the rotation is being verified;
/// - 404 for a rotation that is not waiting for an acknowledgement (not
///   being verified, or verified already).
pub fn ack_router(registry: AckRegistry) -> Router {
    Router::new()
        .route("/v1/rotations/{rotation_id}/ack", post(ack_handler))
        .with_state(registry)
}

async fn ack_handler(
    State(registry): State<AckRegistry>,
    Path(rotation_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(secret) = bearer(&headers) else {
        let mut response = error_response(
            StatusCode::UNAUTHORIZED,
            "missing bearer secret in the Authorization header".to_owned(),
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    };
    match registry.acknowledge(&rotation_id, secret) {
        Ok(()) => {
            tracing::info!(rotation_id = %rotation_id, "rotation acknowledged by a consumer");
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({
                    "status": "acknowledged",
                    "rotation_id": rotation_id,
                })),
            )
                .into_response()
        }
        Err(rejection) => {
            // Debug-quoted: the id comes from an unauthenticated request.
            tracing::debug!(rotation_id = ?rotation_id, %rejection, "acknowledgement refused");
            let message = match rejection {
                AckRejection::UnknownRotation => {
                    format!("rotation `{rotation_id}` is not waiting for an acknowledgement")
                }
                AckRejection::WrongSecret => "invalid acknowledgement secret".to_owned(),
                AckRejection::AlreadyAcknowledged => {
                    format!("rotation `{rotation_id}` was already acknowledged")
                }
            };
            error_response(rejection.status(), message)
        }
    }
}

/// The credential of a `Bearer` authorization header (scheme
/// case-insensitive, as RFC 9110 says).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credential) = value.split_once(' ')?;
    let credential = credential.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty()).then_some(credential)
}

fn error_response(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ctx, deps};
    use super::super::{HookKind, HookSpec, VerifyDeps, run_all};
    use super::*;

    /// Serves the router on a loopback port; `tower` is not a direct
    /// dependency, so tests go through a real socket.
    async fn serve(registry: AckRegistry) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, ack_router(registry)).await.unwrap();
        });
        format!("http://{addr}")
    }

    async fn post(base: &str, rotation_id: &str, secret: Option<&str>) -> (u16, serde_json::Value) {
        let mut request =
            reqwest::Client::new().post(format!("{base}/v1/rotations/{rotation_id}/ack"));
        if let Some(secret) = secret {
            request = request.bearer_auth(secret);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    fn deps_with(acks: AckRegistry) -> VerifyDeps {
        VerifyDeps { acks, ..deps() }
    }

    #[tokio::test]
    async fn acknowledgement_over_http_completes_the_hook() {
        let ctx = ctx();
        let registry = AckRegistry::default();
        let secret = AckRegistry::generate_secret();
        let waiter = registry.register(&ctx.rotation_id, &secret);
        let base = serve(registry.clone()).await;
        let deps = deps_with(registry.clone());
        let hook = [HookSpec::Ack(
            AckHook::new(Duration::from_secs(10)).unwrap(),
        )];
        let cancel = CancellationToken::new();
        let verify = run_all(&hook, &ctx, &deps, &cancel);

        let consumer = async {
            let (status, body) = post(&base, &ctx.rotation_id, Some(secret.expose_secret())).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["status"], "acknowledged");
            assert_eq!(body["rotation_id"], ctx.rotation_id.as_str());
        };
        let (verified, ()) = tokio::join!(verify, consumer);
        verified.unwrap();
        assert!(waiter.is_acknowledged());

        // A repeat while the rotation is still registered (a consumer
        // retrying after a lost answer) is accepted again.
        let (status, body) = post(&base, &ctx.rotation_id, Some(secret.expose_secret())).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "acknowledged");

        // Once the driver is done, the rotation is unknown.
        drop(waiter);
        let (status, _) = post(&base, &ctx.rotation_id, Some(secret.expose_secret())).await;
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn wrong_missing_and_unknown_are_refused_with_json_errors() {
        let registry = AckRegistry::default();
        let secret = AckRegistry::generate_secret();
        let _waiter = registry.register("rot-1", &secret);
        let base = serve(registry.clone()).await;

        let (status, body) = post(&base, "rot-1", Some("not-the-secret")).await;
        assert_eq!(status, 401);
        assert_eq!(body["error"], "invalid acknowledgement secret");

        let response = reqwest::Client::new()
            .post(format!("{base}/v1/rotations/rot-1/ack"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            body["error"],
            "missing bearer secret in the Authorization header"
        );

        let (status, body) = post(&base, "rot-2", Some(secret.expose_secret())).await;
        assert_eq!(status, 404);
        assert_eq!(
            body["error"],
            "rotation `rot-2` is not waiting for an acknowledgement"
        );

        // None of the refusals consumed the registration.
        assert_eq!(
            registry.acknowledge("rot-1", secret.expose_secret()),
            Ok(())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_acknowledgement_fails_at_the_deadline() {
        let ctx = ctx();
        let registry = AckRegistry::default();
        let _waiter = registry.register(&ctx.rotation_id, &AckRegistry::generate_secret());
        let hook = [HookSpec::Ack(
            AckHook::new(Duration::from_secs(30)).unwrap(),
        )];
        let started = Instant::now();
        let err = run_all(&hook, &ctx, &deps_with(registry), &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert_eq!(err.kind, HookKind::Ack);
        assert_eq!(err.reason(), "ack_missing");
        assert_eq!(
            err.to_string(),
            format!(
                "ack hook `rotation {}` failed: not passed within 30s: no acknowledgement received",
                ctx.rotation_id
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn acknowledgement_before_the_hook_starts_counts() {
        let ctx = ctx();
        let registry = AckRegistry::default();
        let secret = AckRegistry::generate_secret();
        let _waiter = registry.register(&ctx.rotation_id, &secret);
        registry
            .acknowledge(&ctx.rotation_id, secret.expose_secret())
            .unwrap();
        let hook = [HookSpec::Ack(
            AckHook::new(Duration::from_secs(30)).unwrap(),
        )];
        let started = Instant::now();
        run_all(&hook, &ctx, &deps_with(registry), &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn unregistered_or_replaced_rotations_fail_at_once() {
        let ctx = ctx();
        let registry = AckRegistry::default();
        let hook = [HookSpec::Ack(
            AckHook::new(Duration::from_secs(30)).unwrap(),
        )];
        let deps = deps_with(registry.clone());
        let err = run_all(&hook, &ctx, &deps, &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            err.to_string().ends_with(&format!(
                "no acknowledgement is registered for rotation `{}`",
                ctx.rotation_id
            )),
            "{err}"
        );

        let first = AckRegistry::generate_secret();
        let second = AckRegistry::generate_secret();
        let mut old = registry.register(&ctx.rotation_id, &first);
        let cancel = CancellationToken::new();
        let verify = run_all(&hook, &ctx, &deps, &cancel);
        let replace = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            registry.register(&ctx.rotation_id, &second)
        };
        let (verified, new) = tokio::join!(verify, replace);
        assert_eq!(
            verified.unwrap_err().reason(),
            "ack_unregistered",
            "a replaced registration ends the wait"
        );
        assert_eq!(old.acknowledged().await, Err(AckWithdrawn));
        // Dropping the replaced waiter leaves the new registration alone.
        drop(old);
        assert_eq!(
            registry.acknowledge(&ctx.rotation_id, first.expose_secret()),
            Err(AckRejection::WrongSecret)
        );
        assert_eq!(
            registry.acknowledge(&ctx.rotation_id, second.expose_secret()),
            Ok(())
        );
        drop(new);
        assert_eq!(
            registry.acknowledge(&ctx.rotation_id, second.expose_secret()),
            Err(AckRejection::UnknownRotation)
        );
    }

    #[test]
    fn secrets_are_random_and_never_printed() {
        let a = AckRegistry::generate_secret();
        let b = AckRegistry::generate_secret();
        assert_eq!(a.expose_secret().len(), 64);
        assert_ne!(a.expose_secret(), b.expose_secret());
        let registry = AckRegistry::default();
        let waiter = registry.register("rot", &a);
        for printed in [
            format!("{registry:?}"),
            format!("{waiter:?}"),
            format!("{a:?}"),
        ] {
            assert!(!printed.contains(a.expose_secret()), "{printed}");
        }
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }
}
