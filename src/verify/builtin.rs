//! The built-in check: MotherDuck itself accepts the new token.
//!
//! It proves the token was created and stored intact (a truncated or
//! mangled secret is rejected), not that any consumer uses it; pair it with
//! another hook for that. A freshly created token may take a moment to be
//! accepted everywhere, so a rejection is retried until the deadline rather
//! than failing at once.

use std::time::Duration;

use super::{Reason, VerifyContext, check_timing};
use crate::motherduck::{Client, TokenCheck};

/// Polls [`Client::check_token`] with the new token.
#[derive(Debug, Clone)]
pub struct BuiltinCheck {
    interval: Duration,
    deadline: Duration,
}

impl BuiltinCheck {
    /// # Errors
    /// A zero interval or deadline, quoted.
    pub fn new(interval: Duration, deadline: Duration) -> Result<BuiltinCheck, String> {
        check_timing(interval, deadline)?;
        Ok(BuiltinCheck { interval, deadline })
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// One check. A valid token passes whether or not it has the Admin
    /// role: the API answers 403 for a service account's token, which still
    /// proves it authenticates.
    pub(super) async fn attempt(&self, ctx: &VerifyContext, client: &Client) -> Result<(), Reason> {
        match client.check_token(&ctx.token).await {
            Ok(TokenCheck::ValidNonAdmin | TokenCheck::ValidAdmin) => Ok(()),
            Ok(TokenCheck::Rejected) => Err(Reason::Rejected),
            Err(e) => Err(Reason::MotherDuck(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ctx, deps};
    use super::super::{HookKind, HookSpec, VerifyContext, VerifyDeps, run_all};
    use super::*;
    use crate::motherduck::{ClientConfig, CreateTokenRequest, RetrySleep, TokenType};
    use crate::secret::SecretString;
    use crate::simulator::Simulator;
    use tokio_util::sync::CancellationToken;

    /// A client that records its backoff delays instead of sleeping.
    fn client(base_url: &str, admin_token: SecretString) -> Client {
        let mut cfg = ClientConfig::new(base_url, admin_token);
        cfg.request_timeout = Duration::from_secs(5);
        cfg.rate_limit_per_second = std::num::NonZeroU32::new(10_000).unwrap();
        cfg.sleep = RetrySleep::Record(Default::default());
        Client::new(cfg).unwrap()
    }

    fn check(deadline_ms: u64) -> [HookSpec; 1] {
        [HookSpec::MotherDuck(
            BuiltinCheck::new(
                Duration::from_millis(10),
                Duration::from_millis(deadline_ms),
            )
            .unwrap(),
        )]
    }

    #[tokio::test]
    async fn a_live_token_passes_and_a_revoked_one_fails() {
        let running = Simulator::spawn(Default::default()).await.unwrap();
        let admin = client(&running.base_url(), running.admin_token.clone());
        admin.create_service_account("svc_verify").await.unwrap();
        let created = admin
            .create_token(
                "svc_verify",
                &CreateTokenRequest {
                    name: "verify-test".into(),
                    ttl: None,
                    token_type: TokenType::ReadWrite,
                    description: None,
                },
            )
            .await
            .unwrap();
        let ctx = VerifyContext {
            service_account: "svc_verify".into(),
            token_id: created.info.id.clone(),
            token: created.token,
            ..ctx()
        };
        let deps = VerifyDeps {
            motherduck: admin.clone(),
            ..deps()
        };
        run_all(&check(2_000), &ctx, &deps, &CancellationToken::new())
            .await
            .unwrap();

        admin
            .revoke_token("svc_verify", &created.info.id)
            .await
            .unwrap();
        let err = run_all(&check(100), &ctx, &deps, &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind, HookKind::MotherDuck);
        assert_eq!(err.reason(), "rejected");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "motherduck hook `token {}` failed: not passed within 100ms",
                created.info.id
            )),
            "{msg}"
        );
        assert!(msg.ends_with("token rejected by MotherDuck (401)"), "{msg}");
    }

    #[tokio::test]
    async fn an_unreachable_api_fails_with_the_error() {
        // A port just released: connection refused.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let deps = VerifyDeps {
            motherduck: client(
                &format!("http://{closed}"),
                SecretString::from("admin".to_owned()),
            ),
            ..deps()
        };
        let err = run_all(&check(30), &ctx(), &deps, &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "motherduck");
        assert!(err.to_string().contains("request failed"), "{err}");
    }

    #[test]
    fn zero_durations_are_refused() {
        assert_eq!(
            BuiltinCheck::new(Duration::from_secs(1), Duration::ZERO).unwrap_err(),
            "deadline `0s` must be greater than zero"
        );
    }
}
