//! Permission denied, AppRole login with renewal, and logging in again.

use super::*;

/// AppRole login at `approle/` with `role_id` and `secret_id`.
fn approle(role_id: String, secret_id: String) -> VaultAuth {
    VaultAuth::AppRole {
        mount: "approle".into(),
        role_id: SecretString::from(role_id),
        secret_id: SecretString::from(secret_id),
    }
}

#[tokio::test]
async fn permission_denied_is_permanent_and_names_the_path() {
    let (bao, api) = start().await;
    let path = "motherduck/ro";
    api.policy(
        "read-only",
        r#"
path "secret/data/motherduck/ro*" { capabilities = ["read"] }
path "secret/metadata/motherduck/ro*" { capabilities = ["read"] }
"#,
    )
    .await;
    let limited = api.token(&["read-only"], "1h").await;
    let d = dest(
        &connect(&bao.addr, token_auth(&limited)),
        "secret",
        path,
        KvVersion::V2,
    );
    let s1 = secret("r1");
    d.load().await.unwrap();
    let e = d.stage(&record("r1", &s1, None)).await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Permanent, "{e}");
    assert!(!e.is_retryable());
    let msg = e.to_string();
    assert!(msg.contains("permission denied"), "{msg}");
    assert!(
        msg.contains("secret/metadata/motherduck/ro.pending"),
        "{msg}"
    );
    assert_clean(&e, &[&s1, &limited]);

    let e = d.check().await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Permanent, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("lacks capabilities"), "{msg}");
    assert!(
        msg.contains("`secret/data/motherduck/ro` needs create, update"),
        "{msg}"
    );

    // A token Vault does not know: the message says the token may be the
    // problem, not only the policy.
    let bogus = "s.thisTokenDoesNotExist0123";
    let d = dest(
        &connect(&bao.addr, token_auth(bogus)),
        "secret",
        path,
        KvVersion::V2,
    );
    let e = d.check().await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("token is not valid") || msg.contains("the token must be valid"),
        "{msg}"
    );
    assert_clean(&e, &[bogus]);

    // With AppRole, a 403 first causes a fresh login; denied again, it is
    // permanent.
    api.enable_approle().await;
    let (role_id, secret_id) = api
        .approle(
            "ro",
            json!({ "token_policies": ["read-only"], "token_ttl": "1h" }),
        )
        .await;
    let conn = connect(&bao.addr, approle(role_id.clone(), secret_id.clone()));
    let d = dest(&conn, "secret", path, KvVersion::V2);
    d.load().await.unwrap();
    let before = conn.token_status().accessor;
    let e = d.stage(&record("r1", &s1, None)).await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Permanent, "{e}");
    assert!(e.to_string().contains("ro.pending"), "{e}");
    assert_ne!(conn.token_status().accessor, before, "it logged in again");
    assert_clean(&e, &[&s1, &role_id, &secret_id]);
}

#[tokio::test]
async fn approle_login_renewal_and_login_after_revocation() {
    let (bao, api) = start().await;
    let path = "motherduck/approle";
    let probe = root_dest(&bao, path);
    api.policy("rotator", &probe.required_policy_hcl()).await;
    api.enable_approle().await;
    let (role_id, secret_id) = api
        .approle(
            "rotator",
            json!({ "token_policies": ["rotator"], "token_ttl": "3s", "token_max_ttl": "1h" }),
        )
        .await;
    let conn = connect(&bao.addr, approle(role_id.clone(), secret_id.clone()));
    let t0 = Instant::now();
    assert_eq!(conn.ensure_token(t0).await.unwrap(), TokenAction::LoggedIn);
    let status = conn.token_status();
    let lease = status.lease.unwrap();
    assert_eq!(lease.ttl, Some(Duration::from_secs(3)));
    assert!(lease.renewable);
    let accessor = status.accessor.unwrap();
    assert_eq!(
        conn.ensure_token(t0 + Duration::from_secs(1))
            .await
            .unwrap(),
        TokenAction::Kept
    );
    // Past two thirds of the 3 s TTL: renewed, same token.
    let later = t0 + Duration::from_millis(2100);
    assert_eq!(
        conn.ensure_token(later).await.unwrap(),
        TokenAction::Renewed
    );
    let status = conn.token_status();
    assert_eq!(status.accessor.as_deref(), Some(accessor.as_str()));
    assert_eq!(status.lease.unwrap().since, later);
    assert_eq!(
        conn.ensure_token(later + Duration::from_secs(1))
            .await
            .unwrap(),
        TokenAction::Kept
    );

    let d = dest(&conn, "secret", path, KvVersion::V2);
    d.check().await.unwrap();
    let s1 = secret("r1");
    rotate_fully(&d, &record("r1", &s1, None)).await;

    // The token is revoked behind the daemon's back: the next request gets
    // a 403, logs in again and succeeds.
    api.post(
        "auth/token/revoke-accessor",
        json!({ "accessor": accessor }),
    )
    .await;
    let v = d.load().await.unwrap();
    assert_eq!(v.current.unwrap().meta.rotation_id, "r1");
    assert_ne!(conn.token_status().accessor.unwrap(), accessor);

    // A batch token cannot be renewed: past two thirds, log in again.
    let (batch_role, batch_secret) = api
        .approle(
            "batch",
            json!({ "token_policies": ["rotator"], "token_type": "batch", "token_ttl": "3s" }),
        )
        .await;
    let batch = connect(&bao.addr, approle(batch_role, batch_secret));
    let t1 = Instant::now();
    assert_eq!(batch.ensure_token(t1).await.unwrap(), TokenAction::LoggedIn);
    assert!(!batch.token_status().lease.unwrap().renewable);
    assert_eq!(
        batch
            .ensure_token(t1 + Duration::from_millis(2500))
            .await
            .unwrap(),
        TokenAction::LoggedIn
    );
    dest(&batch, "secret", path, KvVersion::V2)
        .load()
        .await
        .unwrap();

    // A static token with a short TTL is looked up, then renewed.
    let short = api.token(&["rotator"], "3s").await;
    let st = connect(&bao.addr, token_auth(&short));
    let t2 = Instant::now();
    assert_eq!(st.ensure_token(t2).await.unwrap(), TokenAction::LookedUp);
    assert_eq!(
        st.ensure_token(t2 + Duration::from_millis(2500))
            .await
            .unwrap(),
        TokenAction::Renewed
    );

    // Wrong credentials: a permanent login error that shows none of them.
    let wrong = connect(
        &bao.addr,
        approle(
            role_id.clone(),
            "00000000-0000-0000-0000-000000000000".to_owned(),
        ),
    );
    let e = dest(&wrong, "secret", path, KvVersion::V2)
        .load()
        .await
        .unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Permanent, "{e}");
    assert!(e.to_string().contains("approle login failed"), "{e}");
    assert_clean(
        &e,
        &[
            &role_id,
            &secret_id,
            "00000000-0000-0000-0000-000000000000",
            &s1,
        ],
    );
    let printed = format!("{conn:?} {wrong:?} {d:?} {st:?}");
    for s in [&role_id, &secret_id, &short, &s1] {
        assert!(!printed.contains(s.as_str()), "{printed}");
    }
}

/// Regression: OpenBao answers the renewal of a token past its maximum TTL
/// with `500 past the max TTL, cannot renew`. A 5xx was taken for a passing
/// fault and failed the pass (a stall, readiness flipping, once a
/// rollback) instead of logging in again. Any refused renewal logs in again
/// when the method can. A wiremock stand-in answers exactly that way.
#[tokio::test]
async fn a_renewal_refused_past_the_max_ttl_logs_in_again() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    let login = |token: &str| {
        json!({
            "request_id": "r", "lease_id": "", "lease_duration": 0, "renewable": false,
            "data": null, "wrap_info": null, "warnings": null,
            "auth": {
                "client_token": token, "accessor": format!("acc-{token}"),
                "policies": ["rotator"], "token_policies": ["rotator"], "metadata": null,
                "lease_duration": 4, "renewable": true, "entity_id": "",
                "token_type": "service", "orphan": true
            }
        })
    };
    Mock::given(method("POST"))
        .and(path("/v1/auth/approle/login"))
        .respond_with(ResponseTemplate::new(200).set_body_json(login("hvs.first")))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/auth/approle/login"))
        .respond_with(ResponseTemplate::new(200).set_body_json(login("hvs.second")))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/auth/token/renew-self"))
        .respond_with(
            ResponseTemplate::new(500)
                .set_body_json(json!({ "errors": ["past the max TTL, cannot renew"] })),
        )
        .mount(&server)
        .await;
    let conn = connect(
        &server.uri(),
        approle("role".to_owned(), "secret".to_owned()),
    );
    let t0 = Instant::now();
    assert_eq!(conn.ensure_token(t0).await.unwrap(), TokenAction::LoggedIn);
    let first = conn.token_status().accessor;
    // Past two thirds of the 4 s TTL: the renewal is refused, so it logs in.
    let later = t0 + Duration::from_secs(3);
    assert_eq!(
        conn.ensure_token(later).await.unwrap(),
        TokenAction::LoggedIn
    );
    assert_ne!(conn.token_status().accessor, first);
    assert_eq!(
        conn.token_status().accessor.as_deref(),
        Some("acc-hvs.second")
    );
}
