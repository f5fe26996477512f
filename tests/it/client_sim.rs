//! The MotherDuck client against the simulator: every endpoint and every
//! documented error.

use std::time::Duration;

use motherduck_rotator::motherduck::{
    ApiError, Client, CreateTokenRequest, CreatedToken, DucklingConfig, EmbedSessionRequest,
    Endpoint, InstanceSize, ReadScalingConfig, ReadWriteConfig, Removal, TokenCheck, TokenType,
};
use motherduck_rotator::secret::{ExposeSecret, SecretString};
use motherduck_rotator::simulator::Fault;

use crate::harness::{client_with_token, delays, sim};

fn token_req(name: &str, ttl: Option<u64>) -> CreateTokenRequest {
    CreateTokenRequest {
        name: name.to_owned(),
        ttl,
        token_type: TokenType::ReadWrite,
        description: None,
    }
}

/// A token named `name` of `sa`, without a TTL.
async fn token(c: &Client, sa: &str, name: &str) -> CreatedToken {
    c.create_token(sa, &token_req(name, None)).await.unwrap()
}

fn status_of(e: &ApiError) -> (Option<u16>, Option<&str>) {
    (e.status(), e.code())
}

#[tokio::test]
async fn service_account_lifecycle() {
    let (s, c, _) = sim().await;
    assert_eq!(
        c.create_service_account("svc_app").await.unwrap().username,
        "svc_app"
    );
    assert!(c.user_exists("svc_app").await.unwrap());
    assert!(c.user_exists("SVC_APP").await.unwrap(), "case-insensitive");

    let dup = c.create_service_account("Svc_App").await.unwrap_err();
    assert_eq!(status_of(&dup), (Some(409), Some("CONFLICT")));
    assert!(!dup.is_retryable());

    assert_eq!(
        c.delete_service_account("svc_app").await.unwrap(),
        Removal::Removed
    );
    assert_eq!(
        c.delete_service_account("svc_app").await.unwrap(),
        Removal::AlreadyGone
    );
    assert!(!c.user_exists("svc_app").await.unwrap());
    assert!(!s.sim.user_exists("svc_app"));
}

#[tokio::test]
async fn token_create_list_check_revoke() {
    let (s, c, _) = sim().await;
    c.create_service_account("svc_etl").await.unwrap();
    let req = CreateTokenRequest {
        name: "rot-etl-r1".into(),
        ttl: Some(3600),
        token_type: TokenType::ReadWrite,
        description: Some("rotated".into()),
    };
    let a = c.create_token("svc_etl", &req).await.unwrap();
    let b = token(&c, "svc_etl", "rot-etl-r2").await;

    // Secrets look like JWTs and are unique.
    let secret = a.token.expose_secret();
    assert!(secret.starts_with("eyJ"), "JWT-shaped");
    assert_eq!(secret.split('.').count(), 3);
    assert_ne!(secret, b.token.expose_secret());
    assert_eq!(a.info.name.as_deref(), Some("rot-etl-r1"));
    assert_eq!(a.info.description.as_deref(), Some("rotated"));
    assert_eq!(a.info.token_type, TokenType::ReadWrite);
    assert!(!a.info.read_only);
    assert_eq!(
        a.info.expire_at.unwrap() - a.info.created_ts,
        chrono::Duration::seconds(3600)
    );
    assert_eq!(b.info.expire_at, None, "no ttl: never expires");

    let listed = c.list_tokens("svc_etl").await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, vec![a.info.id.as_str(), b.info.id.as_str()]);
    assert_eq!(listed[0], a.info, "list metadata equals create metadata");

    // The new token authenticates but is not an admin token.
    assert_eq!(
        c.check_token(&a.token).await.unwrap(),
        TokenCheck::ValidNonAdmin
    );
    assert_eq!(
        c.check_token(&s.admin_token).await.unwrap(),
        TokenCheck::ValidAdmin
    );

    assert_eq!(
        c.revoke_token("svc_etl", &a.info.id).await.unwrap(),
        Removal::Removed
    );
    assert_eq!(
        c.revoke_token("svc_etl", &a.info.id).await.unwrap(),
        Removal::AlreadyGone,
        "a repeated revoke is done, not an error"
    );
    assert_eq!(c.check_token(&a.token).await.unwrap(), TokenCheck::Rejected);
    let live: Vec<String> = s
        .sim
        .live_tokens("svc_etl")
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(live, vec![b.info.id.clone()]);
    // The simulator still remembers the revoked one.
    let all = s.sim.issued_tokens();
    let revoked = all.iter().find(|t| t.id == a.info.id).unwrap();
    assert!(revoked.revoked_at.is_some());
}

#[tokio::test]
async fn read_scaling_tokens_are_read_only() {
    let (_s, c, _) = sim().await;
    c.create_service_account("svc_bi").await.unwrap();
    let mut req = token_req("bi", None);
    req.token_type = TokenType::ReadScaling;
    let t = c.create_token("svc_bi", &req).await.unwrap();
    assert_eq!(t.info.token_type, TokenType::ReadScaling);
    assert!(t.info.read_only);
}

#[tokio::test]
async fn tokens_expire_against_the_simulator_clock() {
    let (s, c, _) = sim().await;
    c.create_service_account("svc_ttl").await.unwrap();
    let t = c
        .create_token("svc_ttl", &token_req("short", Some(300)))
        .await
        .unwrap();
    s.sim.advance(Duration::from_secs(299));
    assert_eq!(
        c.check_token(&t.token).await.unwrap(),
        TokenCheck::ValidNonAdmin
    );
    s.sim.advance(Duration::from_secs(1));
    assert_eq!(c.check_token(&t.token).await.unwrap(), TokenCheck::Rejected);
    assert!(c.list_tokens("svc_ttl").await.unwrap().is_empty());
    // Revoking an expired token is "already gone".
    assert_eq!(
        c.revoke_token("svc_ttl", &t.info.id).await.unwrap(),
        Removal::AlreadyGone
    );
}

#[tokio::test]
async fn unauthorized_and_forbidden() {
    let (s, _c, _) = sim().await;
    let base = s.base_url();

    let unknown = client_with_token(&base, SecretString::from("eyJnot.a.token".to_owned()));
    let e = unknown.list_tokens("admin").await.unwrap_err();
    assert_eq!(status_of(&e), (Some(401), Some("UNAUTHORIZED")));
    assert!(!e.is_retryable());
    assert!(!e.to_string().contains("eyJnot"), "{e}");

    let member = client_with_token(&base, s.sim.add_member("alice"));
    let e = member.active_accounts().await.unwrap_err();
    assert_eq!(status_of(&e), (Some(403), Some("FORBIDDEN")));

    // A service account's own token is valid but not an admin token.
    let admin = client_with_token(&base, s.admin_token.clone());
    admin.create_service_account("svc_x").await.unwrap();
    let sa_token = token(&admin, "svc_x", "x").await.token;
    let sa = client_with_token(&base, sa_token);
    let e = sa.create_service_account("svc_y").await.unwrap_err();
    assert_eq!(status_of(&e), (Some(403), Some("FORBIDDEN")));

    // A revoked admin token is rejected.
    let second_admin = s.sim.issue_admin_token();
    let c2 = client_with_token(&base, second_admin);
    let mine = c2
        .list_tokens("admin")
        .await
        .unwrap()
        .into_iter()
        .last()
        .unwrap();
    c2.revoke_token("admin", &mine.id).await.unwrap();
    let e = c2.active_accounts().await.unwrap_err();
    assert_eq!(status_of(&e), (Some(401), Some("UNAUTHORIZED")));
}

#[tokio::test]
async fn validation_errors_carry_issues() {
    let (s, c, _) = sim().await;
    let e = c.create_service_account("1abc").await.unwrap_err();
    assert_eq!(status_of(&e), (Some(400), Some("BAD_REQUEST")));
    assert_eq!(e.issues().len(), 1);
    assert_eq!(e.issues()[0].code, "invalid_string");
    assert_eq!(e.issues()[0].path, vec![serde_json::json!("username")]);
    assert_eq!(
        e.to_string(),
        "create_service_account: motherduck answered 400 BAD_REQUEST: Username must start with an alphabetic character (`username`: Username must start with an alphabetic character)"
    );

    c.create_service_account("svc_v").await.unwrap();
    let e = c
        .create_token("svc_v", &token_req("short", Some(299)))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400));
    assert_eq!(e.issues()[0].path, vec![serde_json::json!("ttl")]);
    assert_eq!(e.issues()[0].code, "too_small");

    let e = c
        .create_token("svc_v", &token_req("MotherDuck Extension", None))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400));
    assert!(e.to_string().contains("reserved"), "{e}");
    assert_eq!(
        s.sim.request_count(Endpoint::CreateToken),
        2,
        "a 400 is not retried"
    );
}

#[tokio::test]
async fn entity_not_found_and_forbidden_targets() {
    let (s, c, _) = sim().await;
    let e = c.list_tokens("svc_missing").await.unwrap_err();
    assert_eq!(status_of(&e), (Some(404), Some("NOT_FOUND")));
    assert!(e.is_entity_not_found());
    let e = c
        .create_token("svc_missing", &token_req("t", None))
        .await
        .unwrap_err();
    assert!(e.is_entity_not_found());

    // An admin may not mint tokens for another human member.
    s.sim.add_member("bob");
    let e = c
        .create_token("bob", &token_req("t", None))
        .await
        .unwrap_err();
    assert_eq!(status_of(&e), (Some(403), Some("FORBIDDEN")));
    // ...but may for itself.
    token(&c, "admin", "mine").await;
}

#[tokio::test]
async fn deleting_an_account_revokes_its_tokens() {
    let (_s, c, _) = sim().await;
    c.create_service_account("svc_gone").await.unwrap();
    let t = token(&c, "svc_gone", "t").await;
    c.delete_service_account("svc_gone").await.unwrap();
    assert_eq!(c.check_token(&t.token).await.unwrap(), TokenCheck::Rejected);
}

#[tokio::test]
async fn duckling_configuration() {
    let (_s, c, _) = sim().await;
    c.create_service_account("svc_duck").await.unwrap();
    let cfg = c.get_duckling_config("svc_duck").await.unwrap();
    assert_eq!(cfg.read_write.instance_size, InstanceSize::Standard);
    assert_eq!(cfg.read_scaling.flock_size, 4);

    let want = DucklingConfig {
        read_write: ReadWriteConfig {
            instance_size: InstanceSize::Jumbo,
            cooldown_seconds: Some(600),
        },
        read_scaling: ReadScalingConfig {
            instance_size: InstanceSize::Pulse,
            flock_size: 16,
            cooldown_seconds: None,
        },
    };
    assert_eq!(
        c.set_duckling_config("svc_duck", &want).await.unwrap(),
        want
    );
    assert_eq!(c.get_duckling_config("svc_duck").await.unwrap(), want);

    let mut bad = want.clone();
    bad.read_scaling.flock_size = 65;
    bad.read_scaling.cooldown_seconds = Some(120);
    let e = c.set_duckling_config("svc_duck", &bad).await.unwrap_err();
    assert_eq!(e.status(), Some(400));
    let paths: Vec<String> = e
        .issues()
        .iter()
        .map(|i| serde_json::to_string(&i.path).unwrap())
        .collect();
    assert_eq!(
        paths,
        vec![
            r#"["config","read_scaling","flock_size"]"#,
            r#"["config","read_scaling","cooldown_seconds"]"#,
        ],
        "flock over 64, and a cooldown on pulse"
    );
    assert_eq!(
        c.get_duckling_config("svc_duck").await.unwrap(),
        want,
        "a rejected PUT changes nothing"
    );
    let e = c.get_duckling_config("svc_nobody").await.unwrap_err();
    assert!(e.is_entity_not_found());
}

#[tokio::test]
async fn active_accounts_and_embed_sessions() {
    let (s, c, _) = sim().await;
    c.create_service_account("svc_active").await.unwrap();
    c.create_service_account("svc_idle").await.unwrap();
    token(&c, "svc_active", "t").await;
    let accounts = c.active_accounts().await.unwrap().accounts;
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].username, "svc_active");
    assert_eq!(accounts[0].ducklings[0].id, "rw");

    let req = EmbedSessionRequest {
        username: "svc_active".into(),
        session_hint: Some("customer-42".into()),
    };
    let session = c.create_embed_session("dive-1", &req).await.unwrap();
    assert!(!session.session.expose_secret().is_empty());
    assert!(!format!("{session:?}").contains(session.session.expose_secret()));

    let e = c
        .create_embed_session(
            "dive-1",
            &EmbedSessionRequest {
                username: "admin".into(),
                session_hint: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "only service accounts");

    s.sim.set_embed_forbidden(true);
    let e = c.create_embed_session("dive-1", &req).await.unwrap_err();
    assert_eq!(status_of(&e), (Some(403), Some("FORBIDDEN")));
}

#[tokio::test]
async fn wrong_base_url_is_a_route_404() {
    let (s, _c, _) = sim().await;
    let c = client_with_token(&format!("{}/api", s.base_url()), s.admin_token.clone());
    let e = c.list_tokens("admin").await.unwrap_err();
    assert!(matches!(e, ApiError::RouteNotFound { .. }), "{e:?}");
    assert!(!e.is_entity_not_found());
    assert!(
        e.to_string().contains("check the configured API base URL"),
        "{e}"
    );
}

#[tokio::test]
async fn internal_error_is_reported_with_code() {
    let (s, c, _) = sim().await;
    s.sim
        .fail_next(Endpoint::ActiveAccounts, 1, Fault::Status(500));
    let e = c.active_accounts().await.unwrap_err();
    assert_eq!(status_of(&e), (Some(500), Some("INTERNAL_SERVER_ERROR")));
    assert!(e.is_retryable(), "worth retrying later");
    assert_eq!(
        s.sim.request_count(Endpoint::ActiveAccounts),
        1,
        "the client itself retries only 502/503/504, like the official one"
    );
}

#[tokio::test]
async fn rate_limit_bursts_honour_retry_after() {
    let (s, c, log) = sim().await;
    s.sim.burst_429(2, 7);
    c.active_accounts().await.unwrap();
    assert_eq!(
        delays(&log),
        vec![Duration::from_secs(7), Duration::from_secs(7)]
    );
}

/// The configured rate is a ceiling: the client starts at ten a second and
/// halves its rate when the server answers 429.
#[tokio::test]
async fn a_429_halves_the_client_rate() {
    let (s, c, _) = sim().await;
    assert_eq!(c.current_rate(), 10);
    s.sim.burst_429(1, 0);
    c.active_accounts().await.unwrap();
    assert_eq!(c.current_rate(), 5);
}

/// An ambiguous create (the server made the token, the answer was lost)
/// must not leave two live tokens.
#[tokio::test]
async fn lost_create_answer_leaves_exactly_one_live_token() {
    let (s, c, _) = sim().await;
    c.create_service_account("svc_amb").await.unwrap();
    s.sim
        .fail_next(Endpoint::CreateToken, 1, Fault::StatusAfterCommit(502));
    let created = token(&c, "svc_amb", "rot-amb-r1").await;
    let live = s.sim.live_tokens("svc_amb");
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].id, created.info.id);
    let issued: Vec<_> = s
        .sim
        .issued_tokens()
        .into_iter()
        .filter(|t| t.name == "rot-amb-r1")
        .collect();
    assert_eq!(issued.len(), 2, "the lost one was made, then revoked");
    assert!(issued[0].revoked_at.is_some());
    assert_eq!(
        c.check_token(&created.token).await.unwrap(),
        TokenCheck::ValidNonAdmin
    );
}

#[tokio::test]
async fn create_retried_after_clean_failures_makes_one_token() {
    let (s, c, log) = sim().await;
    c.create_service_account("svc_retry").await.unwrap();
    s.sim
        .fail_next(Endpoint::CreateToken, 2, Fault::Status(503));
    token(&c, "svc_retry", "rot-r").await;
    assert_eq!(s.sim.live_tokens("svc_retry").len(), 1);
    assert_eq!(s.sim.request_count(Endpoint::CreateToken), 3);
    assert_eq!(
        s.sim.request_count(Endpoint::ListTokens),
        2,
        "each ambiguous failure is checked by listing before the repeat"
    );
    assert_eq!(delays(&log).len(), 2);
}

#[tokio::test]
async fn create_that_keeps_failing_leaves_no_live_token() {
    let (s, c, _) = sim().await;
    c.create_service_account("svc_down").await.unwrap();
    s.sim
        .fail_next(Endpoint::CreateToken, 10, Fault::Status(500));
    let e = c
        .create_token("svc_down", &token_req("rot-down", None))
        .await
        .unwrap_err();
    assert_eq!(status_of(&e), (Some(500), Some("INTERNAL_SERVER_ERROR")));
    assert!(e.is_retryable());
    assert_eq!(s.sim.request_count(Endpoint::CreateToken), 5);
    assert_eq!(
        s.sim.request_count(Endpoint::ListTokens),
        5,
        "every failed attempt, the last one too, was checked by listing"
    );
    assert!(s.sim.live_tokens("svc_down").is_empty());
}

#[tokio::test]
async fn create_whose_outcome_cannot_be_checked_says_so() {
    let (s, c, _) = sim().await;
    c.create_service_account("svc_blind").await.unwrap();
    s.sim
        .fail_next(Endpoint::CreateToken, 1, Fault::StatusAfterCommit(504));
    s.sim.fail_next(Endpoint::ListTokens, 1, Fault::Status(500));
    let e = c
        .create_token("svc_blind", &token_req("rot-blind", None))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ApiError::CreateOutcomeUnknown { attempts: 1, name, .. } if name == "rot-blind"),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("outcome of creating token `rot-blind`"),
        "{e}"
    );
    // The token does exist: this is what the orphan sweep is for.
    assert_eq!(s.sim.live_tokens("svc_blind").len(), 1);
}
