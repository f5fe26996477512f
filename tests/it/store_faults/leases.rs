//! Lock leases whose release fails.

use motherduck_rotator::stores::vault::{
    KvVersion, VaultAuth, VaultConnection, VaultDestination, VaultSettings,
};

use crate::support::daemon;

use super::*;

/// OpenBao and moto, each behind a fault proxy.
struct Proxied {
    bao: OpenBao,
    vault_proxy: FaultProxy,
    aws_proxy: FaultProxy,
    _moto: Moto,
}

impl Proxied {
    async fn start() -> Proxied {
        let bao = OpenBao::start().await;
        let moto = Moto::start().await;
        Proxied {
            vault_proxy: FaultProxy::start(&bao.addr).await,
            aws_proxy: FaultProxy::start(&moto.endpoint).await,
            bao,
            _moto: moto,
        }
    }

    /// A KV v2 destination at `secret/<path>` through the proxy, with
    /// leases of `ttl`.
    fn vault(&self, path: &str, ttl: Duration) -> VaultDestination {
        VaultDestination::new(
            VaultConnection::new(VaultSettings::new(
                &self.vault_proxy.url,
                VaultAuth::Token(SecretString::from(self.bao.root_token.clone())),
            ))
            .unwrap(),
            "vault",
            "secret",
            path,
            KvVersion::V2,
        )
        .unwrap()
        .with_lease_ttl(ttl)
    }

    /// A Secrets Manager destination `name` through the proxy, created if
    /// missing, with static credentials and no SDK retries.
    fn aws(&self, name: &str) -> AwsDestination {
        let settings = AwsConnectionSettings {
            endpoint_url: Some(self.aws_proxy.url.clone()),
            max_attempts: 1,
            ..AwsConnectionSettings::new("us-east-1")
        };
        let creds = Credentials::new("AKIDFAULTS", "faults-secret-key", None, None, "faults");
        AwsDestination::new(
            "aws",
            AwsConnection::with_credentials(settings, creds).unwrap(),
            name,
        )
        .unwrap()
        .create_if_missing(true, None)
    }
}

/// A lease dropped while its store answers 503 or throttles is released
/// once the store recovers (the release is retried in the background), so
/// the lock is free long before the lease would expire and the next pass
/// of any replica, this one included, can take it.
#[tokio::test]
async fn a_lease_release_that_fails_transiently_is_retried() {
    let p = Proxied::start().await;
    let (vault_proxy, aws_proxy) = (&p.vault_proxy, &p.aws_proxy);
    let vault = p.vault("motherduck/release", Duration::from_secs(600));
    let aws = p.aws("prod/motherduck/release");
    let vault = Destination::Vault(vault);
    let aws = Destination::Aws(aws);

    for (d, matcher, answer) in [
        (
            &vault,
            Match::VaultContains {
                method: "POST",
                path: "/v1/secret/delete/motherduck/release.lock".into(),
            },
            Answer::VaultUnavailable,
        ),
        (
            &aws,
            Match::Aws {
                op: "UpdateSecretVersionStage",
            },
            Answer::AwsThrottling,
        ),
    ] {
        let lease = d
            .try_lock("replica-a")
            .await
            .unwrap()
            .expect("the lock is free");
        let rule = vault_proxy.arm(matcher.clone(), answer, 2);
        let rule_aws = aws_proxy.arm(matcher, answer, 2);
        drop(lease);
        let what = format!("{}: the dropped lease was never released", d.label());
        let taken = daemon::eventually(
            Duration::from_secs(20),
            Duration::from_millis(20),
            &what,
            String::new,
            async || d.try_lock("replica-b").await.unwrap(),
        )
        .await;
        assert_eq!(
            rule.intercepted() + rule_aws.intercepted(),
            2,
            "{}: both failed releases were answered by the fault",
            d.label()
        );
        drop(taken);
    }
}

/// Takes `$d`'s lock as `replica-a` and has its release refused once by
/// `$proxy` (`$fault` answered with `$answer`): the abandoned `$what` is
/// taken back by the same replica, then held against `replica-b`; its
/// release is refused once more. Leaves the lock abandoned.
macro_rules! release_refused_then_taken_back {
    ($d:expr, $proxy:expr, $fault:expr, $answer:ident, $what:literal) => {{
        let lease = $d.try_lock("replica-a").await.unwrap().expect("free");
        let rule = $proxy.arm($fault, Answer::$answer, 1);
        let e = lease.release().await.expect_err("the release is refused");
        assert_eq!(rule.intercepted(), 1, "{e}");
        let again = $d.try_lock("replica-a").await.unwrap().expect(concat!(
            "the abandoned ",
            $what,
            " is taken back before it expires"
        ));
        assert!(
            $d.try_lock("replica-b").await.unwrap().is_none(),
            concat!("taken back, the ", $what, " is held again")
        );
        let rule = $proxy.arm($fault, Answer::$answer, 1);
        again.release().await.expect_err("the release is refused");
        assert_eq!(rule.intercepted(), 1);
    }};
}

/// `$take_over`, another replica taking `$d`'s expired `$what` over, must
/// succeed; then `replica-a` may not take back the one it abandoned. The
/// other replica releases its lease.
macro_rules! taken_over_not_taken_back {
    ($d:expr, $take_over:expr, $what:literal) => {{
        let other =
            $take_over
                .await
                .unwrap()
                .expect(concat!("an expired ", $what, " is taken over"));
        assert!(
            $d.try_lock("replica-a").await.unwrap().is_none(),
            concat!("the ", $what, " another holder wrote is not taken back")
        );
        other.release().await.unwrap();
    }};
}

/// A lease whose release failed (the store answered 503 or throttled) is
/// still recorded as held, so other replicas wait for it to expire; the
/// process that dropped it knows nobody holds it and takes it back at once
/// on its next attempt, but only while the record is still the version it
/// wrote: once another holder has written the lock (here after the lease
/// expired), the abandoned lease is no longer this process's to take.
#[tokio::test]
async fn a_lease_this_process_could_not_release_is_taken_back_only_by_it() {
    let p = Proxied::start().await;
    let (vault_proxy, aws_proxy) = (&p.vault_proxy, &p.aws_proxy);
    let ttl = Duration::from_secs(600);
    let vault = p.vault("motherduck/abandoned", ttl);
    let clock = Clock::manual(Utc::now());
    let aws = p
        .aws("prod/motherduck/abandoned")
        .with_lock_ttl(ttl)
        .unwrap()
        .with_clock(clock.clone());

    // Vault: the delete of our lease version is refused once.
    let vault_release = || Match::VaultContains {
        method: "POST",
        path: "/v1/secret/delete/motherduck/abandoned.lock".into(),
    };
    release_refused_then_taken_back!(
        vault,
        vault_proxy,
        vault_release(),
        VaultUnavailable,
        "lease"
    );
    // Another replica takes the lease over once it has expired; the
    // version this process abandoned is gone, so it must wait.
    let later =
        Utc::now() + chrono::Duration::from_std(ttl).unwrap() + chrono::Duration::seconds(1);
    taken_over_not_taken_back!(vault, vault.try_lock_at("replica-b", later), "lease");

    // AWS: swapping AWSCURRENT to the released version is throttled once.
    let aws_release = || Match::Aws {
        op: "UpdateSecretVersionStage",
    };
    release_refused_then_taken_back!(aws, aws_proxy, aws_release(), AwsThrottling, "lock");
    clock.advance(chrono::Duration::from_std(ttl).unwrap() + chrono::Duration::seconds(1));
    taken_over_not_taken_back!(aws, aws.try_lock("replica-b"), "lock");
}
