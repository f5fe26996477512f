//! `[[policy.reload]]`: reload actions, each read by its `type` and built
//! into a [`ReloadSpec`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::raw::RawHeaderValue;
use super::span::FieldPath;
use super::validator::Validator;
use crate::reload::{
    KubernetesAction, OnActionFailure, ReloadAction, ReloadSpec, SignalAction, Workload,
    WorkloadKind,
};
use crate::verify::{CommandHook, HeaderValueSpec, HttpProbe};

/// The `type` values.
const KINDS: [&str; 4] = ["command", "signal", "http", "kubernetes"];

/// Settings every action takes.
struct RawCommon {
    on_failure: Option<String>,
    debounce: Option<String>,
    min_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommandReload {
    command: Vec<String>,
    timeout: Option<String>,
    #[serde(default)]
    pass_token: bool,
    #[serde(default)]
    inherit_env: Vec<String>,
    on_failure: Option<String>,
    debounce: Option<String>,
    min_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignalReload {
    signal: String,
    pid_file: Option<PathBuf>,
    systemd_unit: Option<String>,
    /// The `systemctl` program; default `systemctl` from `PATH`.
    systemctl: Option<PathBuf>,
    timeout: Option<String>,
    on_failure: Option<String>,
    debounce: Option<String>,
    min_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpReload {
    url: String,
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, RawHeaderValue>,
    expect_status: Option<Vec<u16>>,
    request_timeout: Option<String>,
    on_failure: Option<String>,
    debounce: Option<String>,
    min_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetesReload {
    namespace: Option<String>,
    #[serde(default)]
    deployments: Vec<String>,
    #[serde(default)]
    statefulsets: Vec<String>,
    #[serde(default)]
    daemonsets: Vec<String>,
    api_url: Option<String>,
    service_account_dir: Option<PathBuf>,
    request_timeout: Option<String>,
    on_failure: Option<String>,
    debounce: Option<String>,
    min_interval: Option<String>,
}

impl Validator<'_> {
    /// Builds the reload action at `path`; `None` when it has errors
    /// (reported).
    pub(super) fn reload_action(&mut self, path: &FieldPath) -> Option<ReloadSpec> {
        let (kind, table) = self.tagged_table(
            path,
            &KINDS,
            "reload action",
            "{ type = \"signal\", signal = \"HUP\", pid_file = \"/run/app.pid\" }",
        )?;
        let thirty = Duration::from_secs(30);
        let (common, built) = match kind {
            "command" => {
                let c: RawCommandReload = self.variant(table)?;
                let common = RawCommon {
                    on_failure: c.on_failure,
                    debounce: c.debounce,
                    min_interval: c.min_interval,
                };
                let (program, args) =
                    self.command_line(path, &c.command, &c.inherit_env, "reload")?;
                let timeout = self.duration(&c.timeout, &path.key("timeout"), thirty);
                let built = CommandHook::builder(program.clone())
                    .args(args.iter().cloned())
                    .pass_token(c.pass_token)
                    .inherit_env(c.inherit_env.iter().cloned())
                    .timeout(timeout)
                    .interval(timeout)
                    .deadline(timeout)
                    .build()
                    .map(ReloadAction::Command)
                    .map_err(|e| (field_of(&e), e));
                (common, built)
            }
            "signal" => {
                let s: RawSignalReload = self.variant(table)?;
                let common = RawCommon {
                    on_failure: s.on_failure,
                    debounce: s.debounce,
                    min_interval: s.min_interval,
                };
                let timeout = self.duration(&s.timeout, &path.key("timeout"), thirty);
                let built = match (&s.pid_file, &s.systemd_unit) {
                    (Some(p), None) => {
                        if s.systemctl.is_some() {
                            self.error(&path.key("systemctl"), "applies only with `systemd_unit`");
                        }
                        SignalAction::pid_file(&s.signal, self.base.join(p))
                            .map_err(|e| (field_of(&e), e))
                    }
                    (None, Some(u)) => SignalAction::systemd_unit(
                        &s.signal,
                        u,
                        s.systemctl.clone().unwrap_or_else(|| "systemctl".into()),
                        timeout,
                    )
                    .map_err(|e| (field_of(&e), e)),
                    _ => Err((
                        None,
                        "name exactly one of `pid_file` and `systemd_unit`".to_owned(),
                    )),
                };
                (common, built.map(ReloadAction::Signal))
            }
            "http" => {
                let h: RawHttpReload = self.variant(table)?;
                let common = RawCommon {
                    on_failure: h.on_failure,
                    debounce: h.debounce,
                    min_interval: h.min_interval,
                };
                let mut b = HttpProbe::builder(h.url.clone())
                    .method(h.method.clone().unwrap_or_else(|| "POST".to_owned()))
                    .expect_status(
                        h.expect_status
                            .clone()
                            .unwrap_or_else(|| vec![200, 201, 202, 204]),
                    );
                for (name, v) in &h.headers {
                    let value = match v {
                        RawHeaderValue::Literal(l) => HeaderValueSpec::Literal(l.clone()),
                        RawHeaderValue::Secret(r) => {
                            let (s, _) = self.secret_ref(r, &path.key("headers").key(name))?;
                            HeaderValueSpec::Secret(s)
                        }
                    };
                    b = b.header(name.clone(), value);
                }
                let t = self.duration(&h.request_timeout, &path.key("request_timeout"), thirty);
                let built = b
                    .request_timeout(t)
                    .deadline(t)
                    .interval(t)
                    .build()
                    .map(ReloadAction::Http)
                    .map_err(|e| {
                        let f = h
                            .headers
                            .keys()
                            .find(|n| e.contains(&format!("header `{n}`")))
                            .map(|n| format!("headers.{n}"))
                            .or_else(|| field_of(&e));
                        (f, e)
                    });
                (common, built)
            }
            _ => {
                let k: RawKubernetesReload = self.variant(table)?;
                let common = RawCommon {
                    on_failure: k.on_failure,
                    debounce: k.debounce,
                    min_interval: k.min_interval,
                };
                let t = self.duration(&k.request_timeout, &path.key("request_timeout"), thirty);
                let workloads = [
                    (WorkloadKind::Deployment, &k.deployments),
                    (WorkloadKind::StatefulSet, &k.statefulsets),
                    (WorkloadKind::DaemonSet, &k.daemonsets),
                ]
                .into_iter()
                .flat_map(|(kind, names)| {
                    names.iter().map(move |n| Workload {
                        kind,
                        name: n.clone(),
                    })
                })
                .collect();
                let built = KubernetesAction::new(
                    k.namespace.clone(),
                    workloads,
                    k.api_url.as_deref(),
                    k.service_account_dir.as_ref().map(|d| self.base.join(d)),
                    t,
                )
                .map(ReloadAction::Kubernetes)
                .map_err(|e| (field_of(&e), e));
                (common, built)
            }
        };
        let on_failure = match common.on_failure.as_deref().unwrap_or("fail") {
            "fail" => Some(OnActionFailure::Fail),
            "continue" => Some(OnActionFailure::Continue),
            other => {
                self.error(
                    &path.key("on_failure"),
                    format!("`{other}` is not one of fail, continue"),
                );
                None
            }
        };
        let debounce = self.duration(
            &common.debounce,
            &path.key("debounce"),
            Duration::from_secs(1),
        );
        let min_interval = self.duration(
            &common.min_interval,
            &path.key("min_interval"),
            Duration::from_secs(10),
        );
        let action = match built {
            Ok(a) => a,
            Err((field, e)) => {
                let at = match field {
                    Some(f) => f.split('.').fold(path.clone(), |p, k| p.key(k)),
                    None => path.clone(),
                };
                self.error(&at, e);
                return None;
            }
        };
        Some(ReloadSpec {
            action,
            on_failure: on_failure?,
            debounce,
            min_interval,
        })
    }
}

/// Which setting an action builder's error is about, from its wording;
/// `None` leaves the error on the action as a whole.
fn field_of(message: &str) -> Option<String> {
    if message.contains("inherit_env") {
        return Some("inherit_env".to_owned());
    }
    const PREFIXES: [(&str, &str); 15] = [
        ("signal", "signal"),
        ("pid_file", "pid_file"),
        ("systemd_unit", "systemd_unit"),
        ("namespace", "namespace"),
        ("deployments", "deployments"),
        ("statefulsets", "statefulsets"),
        ("daemonsets", "daemonsets"),
        ("api_url", "api_url"),
        ("request_timeout", "request_timeout"),
        ("timeout", "timeout"),
        ("the command program", "command"),
        ("invalid probe url", "url"),
        ("probe url", "url"),
        ("invalid http method", "method"),
        ("expected status", "expect_status"),
    ];
    PREFIXES
        .iter()
        .find(|(p, _)| message.starts_with(p))
        .map(|(_, f)| (*f).to_owned())
}
