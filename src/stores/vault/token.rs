//! The Vault token's lifetime: when to look it up, renew it or log in again
//! ([`token_decision`], pure), and the connection doing so.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zeroize::Zeroize;

use crate::secret::{ExposeSecret, SecretString};
use crate::stores::StoreErrorKind;

use super::connection::{
    Failure, TokenState, VaultConnection, build_client, clean_errors, is_transient_status, secs,
};
use super::settings::{VaultAuth, VaultAuthError};

/// What is known of the token in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLease {
    /// When `ttl` was learned (login, renewal or lookup).
    pub since: Instant,
    /// Remaining lifetime at `since`; `None` for a token that never
    /// expires (or whose TTL cannot be seen).
    pub ttl: Option<Duration>,
    pub renewable: bool,
}

/// What [`VaultConnection::ensure_token`] must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenDecision {
    /// The token is fine.
    Keep,
    /// A static token not looked up yet: learn its TTL.
    Lookup,
    /// Past two thirds of its TTL and renewable: `renew-self`.
    Renew,
    /// No token yet, or one that cannot be renewed: log in.
    Login,
}

/// What [`VaultConnection::ensure_token`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAction {
    Kept,
    LookedUp,
    Renewed,
    LoggedIn,
}

/// Decides whether the token needs attention at `now`: renew once two
/// thirds of its TTL have passed, log in again when it cannot be renewed
/// (and the method can log in). A static token that cannot be renewed is
/// kept until Vault refuses it.
pub fn token_decision(lease: Option<&TokenLease>, now: Instant, can_login: bool) -> TokenDecision {
    let Some(lease) = lease else {
        return if can_login {
            TokenDecision::Login
        } else {
            TokenDecision::Lookup
        };
    };
    let Some(ttl) = lease.ttl else {
        return TokenDecision::Keep;
    };
    let age = now.saturating_duration_since(lease.since);
    if age < ttl * 2 / 3 {
        TokenDecision::Keep
    } else if lease.renewable {
        TokenDecision::Renew
    } else if can_login {
        TokenDecision::Login
    } else {
        TokenDecision::Keep
    }
}

/// Whether a renewal that granted `granted` (after `before` was granted
/// last time) shows the token nearing its maximum TTL, so a fresh login
/// is better than renewing ever more often.
fn renewal_shrank(before: Option<Duration>, granted: Option<Duration>) -> bool {
    matches!((before, granted), (Some(b), Some(g)) if g < b / 2)
}

/// Public view of the token in use, for `status`; never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenStatus {
    pub method: &'static str,
    /// The token's accessor (not a secret: it cannot authenticate).
    pub accessor: Option<String>,
    pub lease: Option<TokenLease>,
}

impl VaultConnection {
    /// What is known of the token in use.
    pub fn token_status(&self) -> TokenStatus {
        let st = self.state();
        TokenStatus {
            method: self.inner.auth.method(),
            accessor: st.accessor.clone(),
            lease: st.lease,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TokenState> {
        self.inner.token.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lease(&self) -> Option<TokenLease> {
        self.state().lease
    }

    /// Makes sure the token is usable at `now`: looks a static token up on
    /// first use, renews past two thirds of its TTL, logs in when there is
    /// no token or it cannot be renewed (see [`token_decision`]). Cheap
    /// when nothing is due. `now` is a parameter so tests can step time.
    ///
    /// # Errors
    /// A login or renewal Vault refused (permanent), or could not be asked
    /// (transient).
    pub async fn ensure_token(&self, now: Instant) -> Result<TokenAction, VaultAuthError> {
        self.reload_tls_if_changed();
        let can_login = self.inner.auth.can_login();
        if token_decision(self.lease().as_ref(), now, can_login) == TokenDecision::Keep {
            return Ok(TokenAction::Kept);
        }
        let _one_at_a_time = self.inner.refresh.lock().await;
        // Decide again: another task may have refreshed while this waited.
        let lease = self.lease();
        match (token_decision(lease.as_ref(), now, can_login), lease) {
            (TokenDecision::Keep, _) => Ok(TokenAction::Kept),
            (TokenDecision::Lookup, _) => self.lookup(now).await,
            (TokenDecision::Login, _) | (TokenDecision::Renew, None) => {
                self.login(now).await.map(|()| TokenAction::LoggedIn)
            }
            (TokenDecision::Renew, Some(lease)) => self.renew(now, lease).await,
        }
    }

    async fn lookup(&self, now: Instant) -> Result<TokenAction, VaultAuthError> {
        let r = {
            let c = self.client();
            vaultrs::token::lookup_self(&c.0).await
        };
        match r.map_err(Failure::from) {
            Ok(mut info) => {
                // The lookup echoes the token itself; wipe that copy.
                info.id.zeroize();
                let lease = TokenLease {
                    since: now,
                    ttl: secs(info.ttl),
                    renewable: info.renewable.unwrap_or(false),
                };
                debug!(vault = %self.inner.address, ttl_seconds = info.ttl, renewable = lease.renewable, "looked up the Vault token");
                let mut st = self.state();
                st.lease = Some(lease);
                st.accessor = Some(info.accessor);
                Ok(TokenAction::LookedUp)
            }
            Err(Failure::Status { code, errors }) if !is_transient_status(code) => {
                // Without `auth/token/lookup-self` (the `default` policy)
                // the TTL is unknown: use the token as it is. If it is bad,
                // every request says so with its path.
                warn!(vault = %self.inner.address, status = code, error = %self.redact(clean_errors(&errors)), "cannot look up the Vault token; it will not be renewed");
                let mut st = self.state();
                st.lease = Some(TokenLease {
                    since: now,
                    ttl: None,
                    renewable: false,
                });
                Ok(TokenAction::LookedUp)
            }
            Err(f) => Err(self.failure_as_auth("token lookup", f)),
        }
    }

    async fn renew(&self, now: Instant, before: TokenLease) -> Result<TokenAction, VaultAuthError> {
        let r = {
            let c = self.client();
            vaultrs::token::renew_self(&c.0, None).await
        };
        let can_login = self.inner.auth.can_login();
        match r.map_err(Failure::from) {
            Ok(mut auth) => {
                auth.client_token.zeroize();
                let granted = secs(auth.lease_duration);
                if can_login && renewal_shrank(before.ttl, granted) {
                    info!(vault = %self.inner.address, ttl_seconds = auth.lease_duration, "the Vault token is near its maximum TTL; logging in again");
                    return self.login(now).await.map(|()| TokenAction::LoggedIn);
                }
                debug!(vault = %self.inner.address, ttl_seconds = auth.lease_duration, "renewed the Vault token");
                self.state().lease = Some(TokenLease {
                    since: now,
                    ttl: granted,
                    renewable: auth.renewable,
                });
                Ok(TokenAction::Renewed)
            }
            Err(f @ (Failure::Transport(_) | Failure::BadResponse(_) | Failure::Unexplained)) => {
                Err(self.failure_as_auth("token renewal", f))
            }
            // Vault answered, and refused: OpenBao says `500 past the max
            // TTL, cannot renew` for a token at its maximum TTL. Whatever
            // the status, a fresh login is the way on when there is one.
            Err(Failure::Status { code, errors }) if is_transient_status(code) && can_login => {
                info!(vault = %self.inner.address, status = code, error = %self.redact(clean_errors(&errors)), "Vault refused to renew the token; logging in again");
                self.login(now).await.map(|()| TokenAction::LoggedIn)
            }
            Err(Failure::Status { code, errors }) if is_transient_status(code) => {
                Err(self.failure_as_auth("token renewal", Failure::Status { code, errors }))
            }
            Err(f) => {
                if can_login {
                    info!(vault = %self.inner.address, "renewing the Vault token failed; logging in again");
                    return self.login(now).await.map(|()| TokenAction::LoggedIn);
                }
                let e = self.failure_as_auth("token renewal", f);
                warn!(vault = %self.inner.address, error = %e.message, "cannot renew the static Vault token; it will expire");
                if let Some(l) = self.state().lease.as_mut() {
                    l.renewable = false;
                }
                Ok(TokenAction::Kept)
            }
        }
    }

    async fn login(&self, now: Instant) -> Result<(), VaultAuthError> {
        let method = self.inner.auth.method();
        let r = match &self.inner.auth {
            VaultAuth::Token(_) => {
                return Err(self.auth_error(
                    StoreErrorKind::Permanent,
                    "a static token cannot log in again; provide a valid token".to_owned(),
                ));
            }
            VaultAuth::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                vaultrs::auth::approle::login(
                    &self.login_client().0,
                    mount,
                    role_id.expose_secret(),
                    secret_id.expose_secret(),
                )
                .await
            }
            VaultAuth::Kubernetes {
                mount,
                role,
                jwt_path,
            } => {
                let jwt = crate::secret::read_secret_file(jwt_path).map_err(|e| {
                    self.auth_error(StoreErrorKind::Permanent, format!("kubernetes login: {e}"))
                })?;
                vaultrs::auth::kubernetes::login(
                    &self.login_client().0,
                    mount,
                    role,
                    jwt.expose_secret(),
                )
                .await
            }
        };
        let auth =
            r.map_err(|e| self.failure_as_auth(&format!("{method} login"), Failure::from(e)))?;
        // Moved, not copied, into a zeroizing string.
        let token = SecretString::from(auth.client_token);
        let template = self
            .inner
            .template
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let client = build_client(&template, token.expose_secret()).map_err(|e| {
            self.auth_error(
                StoreErrorKind::Permanent,
                format!("{method} login: cannot set up the client: {e}"),
            )
        })?;
        *self.inner.client.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(client);
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        {
            let mut st = self.state();
            st.lease = Some(TokenLease {
                since: now,
                ttl: secs(auth.lease_duration),
                renewable: auth.renewable,
            });
            st.accessor = Some(auth.accessor);
        }
        info!(vault = %self.inner.address, method, ttl_seconds = auth.lease_duration, renewable = auth.renewable, "logged in to Vault");
        Ok(())
    }

    /// Logs in again after a 403, unless another task already did since
    /// `generation` was read.
    pub(super) async fn relogin(&self, generation: u64) -> Result<(), VaultAuthError> {
        let _one_at_a_time = self.inner.refresh.lock().await;
        if self.inner.generation.load(Ordering::SeqCst) != generation {
            return Ok(());
        }
        self.login(Instant::now()).await
    }

    /// When the token next needs attention, from now; `None` when it never
    /// does (a token without expiry, or a static token that cannot be
    /// renewed).
    fn next_refresh_in(&self, now: Instant) -> Option<Duration> {
        let can_login = self.inner.auth.can_login();
        let Some(lease) = self.lease() else {
            return Some(Duration::ZERO);
        };
        let ttl = lease.ttl?;
        if !lease.renewable && !can_login {
            return None;
        }
        let due = lease.since + ttl * 2 / 3;
        Some(
            due.saturating_duration_since(now)
                .max(Duration::from_secs(1)),
        )
    }

    /// Keeps the token alive while the daemon is idle between rotations:
    /// wakes when [`token_decision`] says renew or log in, until `shutdown`.
    /// Failures are logged and retried after 30 s; requests also refresh
    /// the token themselves, so this is a convenience, not a requirement.
    pub fn spawn_token_renewal(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let conn = self.clone();
        tokio::spawn(async move {
            loop {
                let Some(wait) = conn.next_refresh_in(Instant::now()) else {
                    debug!(vault = %conn.inner.address, "the Vault token needs no renewal");
                    return;
                };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                if let Err(e) = conn.ensure_token(Instant::now()).await {
                    warn!(vault = %conn.inner.address, error = %e, "keeping the Vault token alive failed; retrying in 30 s");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(30)) => {}
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_decision_renews_after_two_thirds_and_logs_in_when_it_cannot() {
        let t0 = Instant::now();
        let lease = |ttl: Option<u64>, renewable| TokenLease {
            since: t0,
            ttl: ttl.map(Duration::from_secs),
            renewable,
        };
        let at = |s: u64| t0 + Duration::from_secs(s);
        use TokenDecision::*;
        // (lease, now, can_login, want)
        let cases = [
            (None, at(0), true, Login),
            (None, at(0), false, Lookup),
            (Some(lease(None, false)), at(99_999), false, Keep),
            (Some(lease(Some(30), true)), at(19), true, Keep),
            (Some(lease(Some(30), true)), at(20), true, Renew),
            (Some(lease(Some(30), true)), at(20), false, Renew),
            (Some(lease(Some(30), false)), at(20), true, Login),
            (Some(lease(Some(30), false)), at(20), false, Keep),
            (Some(lease(Some(30), false)), at(40), true, Login),
            (Some(lease(Some(3), true)), at(2), true, Renew),
        ];
        for (i, (l, now, can, want)) in cases.into_iter().enumerate() {
            assert_eq!(token_decision(l.as_ref(), now, can), want, "case {i}");
        }
        assert!(renewal_shrank(
            Some(Duration::from_secs(30)),
            Some(Duration::from_secs(10))
        ));
        assert!(!renewal_shrank(
            Some(Duration::from_secs(30)),
            Some(Duration::from_secs(30))
        ));
        assert!(!renewal_shrank(None, Some(Duration::from_secs(1))));
    }
}
