//! The `kubernetes` action: a rollout restart of Deployments,
//! StatefulSets and DaemonSets, the request `kubectl rollout restart`
//! sends: a strategic merge patch setting the pod template's
//! `kubectl.kubernetes.io/restartedAt` annotation to the current time,
//!
//! ```text
//! PATCH /apis/apps/v1/namespaces/{ns}/{deployments|statefulsets|daemonsets}/{name}?fieldManager=kubectl-rollout
//! Content-Type: application/strategic-merge-patch+json
//! Authorization: Bearer <the pod's service-account token>
//!
//! {"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":"2026-05-01T10:00:00Z"}}}}}
//! ```
//!
//! In-cluster authentication, as client-go's `rest.InClusterConfig`: the
//! API server from `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`,
//! the bearer token and CA from the service-account directory
//! (`/var/run/secrets/kubernetes.io/serviceaccount`), read at each run
//! because the kubelet rotates the token. The namespace defaults to the
//! pod's own (the directory's `namespace` file). The ServiceAccount needs
//! `get` and `patch` on the named resources (see `deploy/kubernetes`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{StatusCode, Url};

use super::{ActionError, ReloadContext};
use crate::secret::{ExposeSecret, SecretString};

/// Where a pod's service-account credentials are mounted.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The annotation `kubectl rollout restart` sets.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
const PATCH_TYPE: &str = "application/strategic-merge-patch+json";
/// How much of an API error's `message` is quoted.
const MESSAGE_LIMIT: usize = 300;
/// Attempts of one patch that meets a conflict (409), which the API
/// answers when the object changed during the request.
const CONFLICT_ATTEMPTS: u32 = 3;

/// The workload kinds a rollout restart applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl WorkloadKind {
    /// The resource name in API paths.
    pub fn plural(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployments",
            WorkloadKind::StatefulSet => "statefulsets",
            WorkloadKind::DaemonSet => "daemonsets",
        }
    }

    fn singular(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
            WorkloadKind::DaemonSet => "daemonset",
        }
    }
}

/// One object to restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
}

/// A validated rollout-restart action. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KubernetesAction(Arc<Settings>);

#[derive(Debug)]
struct Settings {
    /// `None`: the pod's own, read from the service-account directory.
    namespace: Option<String>,
    workloads: Vec<Workload>,
    /// `None`: from `KUBERNETES_SERVICE_HOST`/`_PORT` at each run.
    api_url: Option<Url>,
    service_account_dir: PathBuf,
    request_timeout: Duration,
}

/// Whether `s` is a DNS-1123 subdomain (object names) or, with
/// `label_only`, a DNS-1123 label (namespaces).
fn dns_name(s: &str, label_only: bool) -> bool {
    let max = if label_only { 63 } else { 253 };
    let ok_char = |c: char| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (!label_only && c == '.')
    };
    !s.is_empty()
        && s.len() <= max
        && s.chars().all(ok_char)
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

impl KubernetesAction {
    /// # Errors
    /// No workload; a namespace or name that is not a valid Kubernetes
    /// name; an API URL that is not https (plain http only to loopback);
    /// a zero timeout. Messages name the setting first.
    pub fn new(
        namespace: Option<String>,
        workloads: Vec<Workload>,
        api_url: Option<&str>,
        service_account_dir: Option<PathBuf>,
        request_timeout: Duration,
    ) -> Result<KubernetesAction, String> {
        if let Some(ns) = &namespace
            && !dns_name(ns, true)
        {
            return Err(format!(
                "namespace `{ns}` is not a valid namespace name (lowercase letters, digits and `-`, at most 63)"
            ));
        }
        if workloads.is_empty() {
            return Err(
                "no workload to restart: name at least one in `deployments`, `statefulsets` or `daemonsets`"
                    .to_owned(),
            );
        }
        for w in &workloads {
            if !dns_name(&w.name, false) {
                return Err(format!(
                    "{} `{}` is not a valid object name (lowercase letters, digits, `-` and `.`)",
                    w.kind.plural(),
                    w.name
                ));
            }
        }
        let api_url = match api_url {
            None => None,
            Some(u) => {
                let url = Url::parse(u).map_err(|e| format!("api_url `{u}` is invalid: {e}"))?;
                match url.scheme() {
                    "https" => {}
                    "http" if crate::motherduck::is_loopback(&url) => {}
                    _ => {
                        return Err(format!(
                            "api_url `{u}` must use https (plain http only for loopback addresses)"
                        ));
                    }
                }
                if url.query().is_some() || !url.username().is_empty() {
                    return Err(format!("api_url `{u}` must have no query or credentials"));
                }
                Some(url)
            }
        };
        if request_timeout.is_zero() {
            return Err("request_timeout `0s` must be greater than zero".to_owned());
        }
        Ok(KubernetesAction(Arc::new(Settings {
            namespace,
            workloads,
            api_url,
            service_account_dir: service_account_dir.unwrap_or_else(|| SERVICE_ACCOUNT_DIR.into()),
            request_timeout,
        })))
    }

    pub fn namespace(&self) -> Option<&str> {
        self.0.namespace.as_deref()
    }

    pub fn workloads(&self) -> &[Workload] {
        &self.0.workloads
    }

    pub(super) fn label(&self) -> String {
        let names: Vec<String> = self
            .0
            .workloads
            .iter()
            .map(|w| format!("{}/{}", w.kind.singular(), w.name))
            .collect();
        format!(
            "rollout restart of {} in namespace {}",
            names.join(", "),
            self.0.namespace.as_deref().unwrap_or("(the pod's)")
        )
    }

    /// Restarts every workload in turn; the first failure ends the run.
    pub(super) async fn run(&self, ctx: &ReloadContext) -> Result<(), ActionError> {
        let s = &self.0;
        let dir = &s.service_account_dir;
        let api = match &s.api_url {
            Some(u) => u.clone(),
            None => in_cluster_api(
                std::env::var("KUBERNETES_SERVICE_HOST").ok().as_deref(),
                std::env::var("KUBERNETES_SERVICE_PORT").ok().as_deref(),
            )?,
        };
        let namespace = match &s.namespace {
            Some(ns) => ns.clone(),
            None => {
                let ns = read_small(&dir.join("namespace")).await?;
                let ns = ns.trim().to_owned();
                if !dns_name(&ns, true) {
                    return Err(ActionError::new(
                        "kubernetes_config",
                        format!(
                            "`{}` does not hold a namespace name",
                            dir.join("namespace").display()
                        ),
                    ));
                }
                ns
            }
        };
        let token = SecretString::from(read_small(&dir.join("token")).await?.trim().to_owned());
        let client = client(&api, dir, s.request_timeout).await?;
        let body = rollout_restart_patch(ctx.now);
        for w in &s.workloads {
            let mut url = api.clone();
            url.set_path(&format!(
                "{}/apis/apps/v1/namespaces/{namespace}/{}/{}",
                api.path().trim_end_matches('/'),
                w.kind.plural(),
                w.name
            ));
            url.set_query(Some("fieldManager=kubectl-rollout"));
            let what = format!("{} {namespace}/{}", w.kind.singular(), w.name);
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut bearer =
                    HeaderValue::from_str(&format!("Bearer {}", token.expose_secret())).map_err(
                        |_| {
                            ActionError::new(
                                "kubernetes_config",
                                format!(
                                    "the service-account token in `{}` is not a valid header value",
                                    dir.display()
                                ),
                            )
                        },
                    )?;
                bearer.set_sensitive(true);
                let r = client
                    .patch(url.clone())
                    .header(CONTENT_TYPE, PATCH_TYPE)
                    .header(AUTHORIZATION, bearer)
                    .body(body.clone())
                    .send()
                    .await
                    .map_err(|e| {
                        let reason = if e.is_timeout() {
                            "request_timeout"
                        } else {
                            "request"
                        };
                        ActionError::new(
                            reason,
                            format!("restarting {what}: {}", error_chain(&e.without_url())),
                        )
                    })?;
                let status = r.status();
                if status.is_success() {
                    tracing::info!(workload = %what, "rollout restart requested");
                    break;
                }
                let message = api_message(r).await;
                if status == StatusCode::CONFLICT && attempt < CONFLICT_ATTEMPTS {
                    continue;
                }
                return Err(status_error(status, &what, &message));
            }
        }
        Ok(())
    }
}

/// The patch body: the pod template's `restartedAt` annotation set to
/// `now` in RFC 3339, as `kubectl rollout restart` sets it.
pub fn rollout_restart_patch(now: chrono::DateTime<chrono::Utc>) -> String {
    serde_json::json!({
        "spec": {"template": {"metadata": {"annotations": {
            RESTARTED_AT: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        }}}}
    })
    .to_string()
}

/// The API server's URL inside a pod, as client-go builds it.
fn in_cluster_api(host: Option<&str>, port: Option<&str>) -> Result<Url, ActionError> {
    let (Some(host), Some(port)) = (
        host.filter(|h| !h.is_empty()),
        port.filter(|p| !p.is_empty()),
    ) else {
        return Err(ActionError::new(
            "kubernetes_config",
            "not running in a Kubernetes pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set (or set `api_url`)",
        ));
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    Url::parse(&format!("https://{host}:{port}")).map_err(|e| {
        ActionError::new(
            "kubernetes_config",
            format!("KUBERNETES_SERVICE_HOST/PORT `{host}:{port}` do not form a URL: {e}"),
        )
    })
}

/// Reads a small file of the service-account directory.
async fn read_small(path: &Path) -> Result<String, ActionError> {
    let bytes = tokio::fs::read(path).await.map_err(|e| {
        ActionError::new(
            "kubernetes_config",
            format!("cannot read `{}`: {e}", path.display()),
        )
    })?;
    String::from_utf8(bytes).map_err(|_| {
        ActionError::new(
            "kubernetes_config",
            format!("`{}` is not UTF-8", path.display()),
        )
    })
}

/// A client trusting only the cluster's CA (`ca.crt`) for https; no
/// proxy from the environment, no redirects.
async fn client(api: &Url, dir: &Path, timeout: Duration) -> Result<reqwest::Client, ActionError> {
    let mut b = reqwest::Client::builder()
        .tls_backend_rustls()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout);
    if api.scheme() == "https" {
        let ca = dir.join("ca.crt");
        let pem = tokio::fs::read(&ca).await.map_err(|e| {
            ActionError::new(
                "kubernetes_config",
                format!("cannot read the cluster CA `{}`: {e}", ca.display()),
            )
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                ActionError::new(
                    "kubernetes_config",
                    format!("the cluster CA `{}` holds no PEM certificate", ca.display()),
                )
            })?;
        b = b.tls_certs_only(certs);
    }
    b.build().map_err(|e| {
        ActionError::new(
            "kubernetes_config",
            format!("cannot set up the Kubernetes client: {}", error_chain(&e)),
        )
    })
}

/// The `message` of the API's `Status` answer, cut short; empty when the
/// body is not one.
async fn api_message(r: reqwest::Response) -> String {
    let Ok(bytes) = r.bytes().await else {
        return String::new();
    };
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    message.chars().take(MESSAGE_LIMIT).collect()
}

fn status_error(status: StatusCode, what: &str, message: &str) -> ActionError {
    let (reason, hint) = match status.as_u16() {
        401 => ("unauthorized", "the service-account token was not accepted"),
        403 => (
            "forbidden",
            "the service account needs `get` and `patch` on it (see deploy/kubernetes)",
        ),
        404 => ("not_found", "no such object in the namespace"),
        409 => ("conflict", "it kept changing during the request"),
        422 => ("invalid", "the API refused the patch"),
        _ if status.is_server_error() => ("server_error", "the API server failed"),
        _ => ("status", "unexpected answer"),
    };
    let detail = if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    };
    ActionError::new(
        reason,
        format!("restarting {what}: {status} ({hint}){detail}"),
    )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_is_kubectls() {
        let now = "2026-05-01T10:00:00.123Z".parse().unwrap();
        assert_eq!(
            rollout_restart_patch(now),
            r#"{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":"2026-05-01T10:00:00Z"}}}}}"#
        );
    }

    #[test]
    fn the_api_server_comes_from_the_service_environment() {
        assert_eq!(
            in_cluster_api(Some("10.0.0.1"), Some("443"))
                .unwrap()
                .as_str(),
            "https://10.0.0.1/"
        );
        assert_eq!(
            in_cluster_api(Some("fd00::1"), Some("6443"))
                .unwrap()
                .as_str(),
            "https://[fd00::1]:6443/"
        );
        let e = in_cluster_api(None, Some("443")).unwrap_err();
        assert_eq!(e.reason, "kubernetes_config");
        assert!(
            e.message.contains("KUBERNETES_SERVICE_HOST"),
            "{}",
            e.message
        );
    }

    #[test]
    fn names_are_checked() {
        let w = |name: &str| {
            vec![Workload {
                kind: WorkloadKind::Deployment,
                name: name.to_owned(),
            }]
        };
        let t = Duration::from_secs(10);
        assert!(KubernetesAction::new(Some("prod".into()), w("orders-api"), None, None, t).is_ok());
        for bad in ["", "Orders", "a/b", "-a", "../x"] {
            assert!(
                KubernetesAction::new(None, w(bad), None, None, t).is_err(),
                "{bad}"
            );
        }
        assert!(KubernetesAction::new(Some("a.b".into()), w("x"), None, None, t).is_err());
        assert!(KubernetesAction::new(None, Vec::new(), None, None, t).is_err());
        assert!(
            KubernetesAction::new(None, w("x"), Some("http://k8s.example.com"), None, t).is_err()
        );
        assert!(KubernetesAction::new(None, w("x"), Some("http://127.0.0.1:1"), None, t).is_ok());
    }

    #[tokio::test]
    async fn a_missing_or_empty_ca_is_named() {
        let dir = std::env::temp_dir().join(format!("mdr-sa-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let api = Url::parse("https://10.0.0.1/").unwrap();
        let e = client(&api, &dir, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            e.message.contains("cannot read the cluster CA"),
            "{}",
            e.message
        );
        std::fs::write(dir.join("ca.crt"), "not a certificate").unwrap();
        let e = client(&api, &dir, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            e.message.contains("holds no PEM certificate"),
            "{}",
            e.message
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
