//! The Kubernetes rollout restart against a stand-in API server. No API
//! server can be installed here, so wiremock plays one: it answers only
//! the exact request `kubectl rollout restart` sends (method, path,
//! `fieldManager`, content type, patch body, bearer token) and answers
//! 403, 404 and 409 with the API's `Status` bodies.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use motherduck_rotator::reload::{
    KubernetesAction, ReloadAction, ReloadCause, ReloadContext, Workload, WorkloadKind,
};

use crate::support::world;

const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.service-account-token.sig";
const NOW: &str = "2026-03-01T12:00:00Z";

/// A service-account directory with a token and a namespace file.
fn sa_dir() -> PathBuf {
    let dir = world::scratch_dir("k8s-sa");
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.join("namespace"), "shop\n").unwrap();
    dir
}

fn ctx() -> ReloadContext {
    ReloadContext {
        policy: "orders".into(),
        rotation_id: "r1".into(),
        service_account: "svc_orders".into(),
        token_id: "tok-1".into(),
        token: None,
        cause: ReloadCause::Promoted,
        now: NOW.parse().unwrap(),
    }
}

fn action(
    server: &MockServer,
    namespace: Option<&str>,
    workloads: &[(WorkloadKind, &str)],
) -> ReloadAction {
    ReloadAction::Kubernetes(
        KubernetesAction::new(
            namespace.map(str::to_owned),
            workloads
                .iter()
                .map(|(kind, name)| Workload {
                    kind: *kind,
                    name: (*name).to_owned(),
                })
                .collect(),
            Some(&server.uri()),
            Some(sa_dir()),
            Duration::from_secs(5),
        )
        .unwrap(),
    )
}

/// The request `kubectl rollout restart` sends for `plural/name` in `ns`.
fn restart_of(ns: &str, plural: &str, name: &str) -> wiremock::MockBuilder {
    Mock::given(method("PATCH"))
        .and(path(format!(
            "/apis/apps/v1/namespaces/{ns}/{plural}/{name}"
        )))
        .and(query_param("fieldManager", "kubectl-rollout"))
        .and(header(
            "content-type",
            "application/strategic-merge-patch+json",
        ))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(body_json(
            json!({"spec": {"template": {"metadata": {"annotations": {
                "kubectl.kubernetes.io/restartedAt": NOW
            }}}}}),
        ))
}

/// The API's `Status` body for an error.
fn status(code: u16, reason: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(code).set_body_json(json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code
    }))
}

#[tokio::test]
async fn restarts_each_workload_with_kubectls_patch() {
    let server = MockServer::start().await;
    for (plural, name) in [
        ("deployments", "orders-api"),
        ("statefulsets", "orders-db"),
        ("daemonsets", "log-agent"),
    ] {
        restart_of("shop", plural, name)
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"kind": "Deployment"})))
            .expect(1)
            .mount(&server)
            .await;
    }
    // The namespace comes from the pod's service-account directory.
    let a = action(
        &server,
        None,
        &[
            (WorkloadKind::Deployment, "orders-api"),
            (WorkloadKind::StatefulSet, "orders-db"),
            (WorkloadKind::DaemonSet, "log-agent"),
        ],
    );
    a.run(&ctx(), &[]).await.unwrap();
}

#[tokio::test]
async fn forbidden_not_found_and_conflict_are_errors_that_say_why() {
    let server = MockServer::start().await;
    restart_of("shop", "deployments", "denied")
        .respond_with(status(
            403,
            "Forbidden",
            r#"deployments.apps "denied" is forbidden: User "system:serviceaccount:shop:motherduck-rotator" cannot patch resource "deployments" in API group "apps" in the namespace "shop""#,
        ))
        .mount(&server)
        .await;
    restart_of("shop", "deployments", "missing")
        .respond_with(status(
            404,
            "NotFound",
            r#"deployments.apps "missing" not found"#,
        ))
        .mount(&server)
        .await;
    restart_of("shop", "deployments", "busy")
        .respond_with(status(
            409,
            "Conflict",
            r#"Operation cannot be fulfilled on deployments.apps "busy": the object has been modified"#,
        ))
        .expect(3)
        .mount(&server)
        .await;
    for (name, reason, says) in [
        (
            "denied",
            "forbidden",
            "403 Forbidden (the service account needs `get` and `patch` on it",
        ),
        (
            "missing",
            "not_found",
            "404 Not Found (no such object in the namespace): deployments.apps \"missing\" not found",
        ),
        (
            "busy",
            "conflict",
            "409 Conflict (it kept changing during the request)",
        ),
    ] {
        let e = action(&server, Some("shop"), &[(WorkloadKind::Deployment, name)])
            .run(&ctx(), &[])
            .await
            .unwrap_err();
        assert_eq!(e.reason, reason, "{e}");
        assert!(
            e.message
                .starts_with(&format!("restarting deployment shop/{name}: ")),
            "{e}"
        );
        assert!(e.message.contains(says), "{e}");
        assert!(!e.message.contains(TOKEN), "the token never shows: {e}");
    }
}

#[tokio::test]
async fn a_conflict_is_tried_again() {
    let server = MockServer::start().await;
    restart_of("shop", "deployments", "orders-api")
        .respond_with(status(409, "Conflict", "the object has been modified"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    restart_of("shop", "deployments", "orders-api")
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    action(
        &server,
        Some("shop"),
        &[(WorkloadKind::Deployment, "orders-api")],
    )
    .run(&ctx(), &[])
    .await
    .unwrap();
}

#[tokio::test]
async fn a_request_the_stand_in_does_not_expect_fails() {
    // A different token in the directory: the stand-in answers 401, as the
    // API does for a token it does not accept.
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .respond_with(status(401, "Unauthorized", "Unauthorized"))
        .mount(&server)
        .await;
    let a = action(
        &server,
        Some("shop"),
        &[(WorkloadKind::Deployment, "orders-api")],
    );
    let e = a.run(&ctx(), &[]).await.unwrap_err();
    assert_eq!(e.reason, "unauthorized", "{e}");
}
