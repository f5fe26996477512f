//! Alerts the daemon sends itself: rotation failures, rollbacks, orphans,
//! tokens near expiry, and their recovery.
//!
//! The driver calls [`Alerter::fire`] and [`Alerter::resolve`]; neither ever
//! blocks or fails. They hand the alert to a bounded queue that one delivery
//! task drains, so a slow or broken sink cannot hold up a rotation. The
//! alerter keeps the set of firing alerts, which makes both calls idempotent:
//! firing an alert that is already firing is suppressed until
//! `repeat_interval` has passed (deduplication), and resolving one that is
//! not firing does nothing. A global limit on notifications per minute keeps
//! a flapping policy from flooding a channel.
//!
//! Sinks (a closed set): Alertmanager API v2, a generic JSON webhook with an
//! HMAC-SHA256-signed body, and a Slack incoming webhook.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::secret::{ExposeSecret, SecretString};

/// The alerts the daemon raises. A closed set: each has a fixed name,
/// severity and runbook text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// A rotation failed at some step and was rolled back or abandoned.
    RotationFailed,
    /// Verification failed; the old token was made current again.
    RollbackHappened,
    /// The sweep found tokens the rotator created that nothing references.
    OrphanFound,
    /// The current token expires soon and no rotation has replaced it.
    TokenExpiringSoon,
    /// A replaced token outlived its overlap by more than
    /// `old_token_limit`: revoking it keeps failing.
    OldTokenNotRevoked,
}

impl AlertKind {
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::RotationFailed => "MotherDuckRotationFailed",
            AlertKind::RollbackHappened => "MotherDuckRotationRolledBack",
            AlertKind::OrphanFound => "MotherDuckOrphanTokenFound",
            AlertKind::TokenExpiringSoon => "MotherDuckTokenExpiringSoon",
            AlertKind::OldTokenNotRevoked => "MotherDuckRotatorOldTokenNotRevoked",
        }
    }

    pub fn severity(self) -> &'static str {
        match self {
            AlertKind::RotationFailed | AlertKind::TokenExpiringSoon => "critical",
            AlertKind::RollbackHappened
            | AlertKind::OrphanFound
            | AlertKind::OldTokenNotRevoked => "warning",
        }
    }
}

/// One alert as sent: who, what, since when, and (when resolved) until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub kind: AlertKind,
    pub policy: String,
    /// A one-line description; never holds a secret (it is built from error
    /// messages, which never do).
    pub summary: String,
    pub starts_at: DateTime<Utc>,
    /// `Some` when the alert is resolved.
    pub ends_at: Option<DateTime<Utc>>,
}

/// Where alerts go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// `POST <url>/api/v2/alerts`.
    Alertmanager { url: reqwest::Url },
    /// A JSON body, signed with HMAC-SHA256 in `X-Rotator-Signature`.
    Webhook {
        url: reqwest::Url,
        hmac_secret: SecretString,
    },
    /// A Slack incoming webhook; its URL is a secret.
    Slack { webhook_url: SecretString },
}

impl Sink {
    pub fn kind(&self) -> &'static str {
        match self {
            Sink::Alertmanager { .. } => "alertmanager",
            Sink::Webhook { .. } => "webhook",
            Sink::Slack { .. } => "slack",
        }
    }
}

/// Alerting settings.
#[derive(Debug, Clone)]
pub struct AlertSettings {
    pub sinks: Vec<Sink>,
    /// A still-firing alert is sent again after this long.
    pub repeat_interval: Duration,
    /// At most this many notifications per minute across all sinks.
    pub max_per_minute: NonZeroU32,
    /// Attempts per notification and sink before it is dropped (counted).
    pub max_attempts: u32,
    /// Link in every alert (e.g. the runbook or dashboard).
    pub runbook_url: Option<String>,
    /// Fire `TokenExpiringSoon` when the current token expires within this.
    pub expiry_warning: Duration,
    /// Fire `OldTokenNotRevoked` when a replaced token outlives its
    /// overlap by more than this.
    pub old_token_limit: Duration,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            sinks: Vec::new(),
            repeat_interval: Duration::from_secs(3600),
            max_per_minute: NonZeroU32::new(30).expect("non-zero"),
            max_attempts: 5,
            runbook_url: None,
            expiry_warning: Duration::from_secs(24 * 3600),
            old_token_limit: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug)]
struct Firing {
    alert: Alert,
    last_sent: DateTime<Utc>,
}

#[derive(Debug)]
struct State {
    firing: HashMap<(AlertKind, String), Firing>,
    /// Notifications sent in the current minute, for the rate limit.
    window_start: DateTime<Utc>,
    sent_in_window: u32,
}

/// Raises and resolves alerts. Cheap to clone; a default one has no sinks
/// and only tracks state.
#[derive(Clone)]
pub struct Alerter {
    settings: Arc<AlertSettings>,
    state: Arc<Mutex<State>>,
    queue: Option<mpsc::Sender<Queued>>,
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Alerter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerter")
            .field("sinks", &self.settings.sinks.len())
            .finish_non_exhaustive()
    }
}

/// An alert on its way, and whether it goes to Alertmanager only (a
/// refresh of a still-firing alert).
#[derive(Debug)]
pub struct Queued {
    alert: Alert,
    alertmanager_only: bool,
}

/// How often still-firing alerts are posted to Alertmanager again, which
/// otherwise resolves an alert it has not heard of for `resolve_timeout`
/// (5 minutes by default).
pub const ALERTMANAGER_REFRESH: Duration = Duration::from_secs(60);

/// Capacity of the delivery queue; when full, new notifications are
/// dropped and counted rather than waited for.
const QUEUE: usize = 256;

impl Alerter {
    /// An alerter without sinks: state only (one-shot commands).
    pub fn disabled(clock: Clock, metrics: Arc<Metrics>) -> Alerter {
        Alerter::new(AlertSettings::default(), clock, metrics).0
    }

    /// The alerter and its delivery task's input; call
    /// [`deliver`] with the receiver in a task.
    pub fn new(
        settings: AlertSettings,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> (Alerter, Option<mpsc::Receiver<Queued>>) {
        let now = clock.now();
        let (queue, rx) = if settings.sinks.is_empty() {
            (None, None)
        } else {
            let (tx, rx) = mpsc::channel(QUEUE);
            (Some(tx), Some(rx))
        };
        (
            Alerter {
                settings: Arc::new(settings),
                state: Arc::new(Mutex::new(State {
                    firing: HashMap::new(),
                    window_start: now,
                    sent_in_window: 0,
                })),
                queue,
                clock,
                metrics,
            },
            rx,
        )
    }

    pub fn settings(&self) -> &AlertSettings {
        &self.settings
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `(kind, policy)` is firing.
    pub fn is_firing(&self, kind: AlertKind, policy: &str) -> bool {
        self.lock().firing.contains_key(&(kind, policy.to_owned()))
    }

    /// Raises an alert, or refreshes one that is already firing (sent again
    /// only after `repeat_interval`).
    pub fn fire(&self, kind: AlertKind, policy: &str, summary: impl Into<String>) {
        let now = self.clock.now();
        let summary = summary.into();
        let to_send = {
            let mut st = self.lock();
            let key = (kind, policy.to_owned());
            let repeat =
                chrono::Duration::from_std(self.settings.repeat_interval).unwrap_or_default();
            match st.firing.get_mut(&key) {
                Some(f) if now - f.last_sent < repeat => {
                    f.alert.summary = summary;
                    None
                }
                Some(f) => {
                    f.alert.summary = summary;
                    f.last_sent = now;
                    Some(f.alert.clone())
                }
                None => {
                    let alert = Alert {
                        kind,
                        policy: policy.to_owned(),
                        summary,
                        starts_at: now,
                        ends_at: None,
                    };
                    st.firing.insert(
                        key,
                        Firing {
                            alert: alert.clone(),
                            last_sent: now,
                        },
                    );
                    tracing::warn!(alert = kind.name(), policy, summary = %alert.summary, "alert firing");
                    Some(alert)
                }
            }
        };
        if let Some(a) = to_send {
            self.enqueue(a);
        }
    }

    /// Resolves an alert if it is firing.
    pub fn resolve(&self, kind: AlertKind, policy: &str) {
        let now = self.clock.now();
        let removed = self.lock().firing.remove(&(kind, policy.to_owned()));
        if let Some(f) = removed {
            tracing::info!(alert = kind.name(), policy, "alert resolved");
            self.enqueue(Alert {
                ends_at: Some(now),
                ..f.alert
            });
        }
    }

    /// Posts every firing alert to the Alertmanager sinks again (the
    /// daemon calls this every [`ALERTMANAGER_REFRESH`]); other sinks are
    /// not notified again before `repeat_interval`.
    pub fn refresh_alertmanager(&self) {
        let Some(q) = &self.queue else { return };
        if !self
            .settings
            .sinks
            .iter()
            .any(|s| matches!(s, Sink::Alertmanager { .. }))
        {
            return;
        }
        let firing: Vec<Alert> = self
            .lock()
            .firing
            .values()
            .map(|f| f.alert.clone())
            .collect();
        for alert in firing {
            if q.try_send(Queued {
                alert,
                alertmanager_only: true,
            })
            .is_err()
            {
                self.metrics
                    .alerts_total
                    .with_label_values(&["alertmanager", "queue_full"])
                    .inc();
            }
        }
    }

    fn enqueue(&self, alert: Alert) {
        let Some(q) = &self.queue else { return };
        let now = self.clock.now();
        {
            let mut st = self.lock();
            if now - st.window_start >= chrono::Duration::minutes(1) {
                st.window_start = now;
                st.sent_in_window = 0;
            }
            // Resolutions always pass: dropping one would leave an alert
            // firing forever at the receiver.
            if alert.ends_at.is_none() && st.sent_in_window >= self.settings.max_per_minute.get() {
                self.metrics
                    .alerts_total
                    .with_label_values(&["all", "rate_limited"])
                    .inc();
                return;
            }
            st.sent_in_window += 1;
        }
        if q.try_send(Queued {
            alert,
            alertmanager_only: false,
        })
        .is_err()
        {
            self.metrics
                .alerts_total
                .with_label_values(&["all", "queue_full"])
                .inc();
        }
    }
}

/// The Alertmanager API v2 alert shape.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AmAlert<'a> {
    labels: HashMap<&'static str, &'a str>,
    annotations: HashMap<&'static str, String>,
    starts_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ends_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generator_url: Option<&'a str>,
}

/// The generic webhook body.
#[derive(Debug, Serialize)]
struct WebhookBody<'a> {
    status: &'static str,
    alertname: &'static str,
    severity: &'static str,
    policy: &'a str,
    summary: &'a str,
    starts_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ends_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    runbook_url: Option<&'a str>,
}

/// The webhook signature header: `sha256=<hex HMAC of the body>`.
pub const SIGNATURE_HEADER: &str = "x-rotator-signature";

/// HMAC-SHA256 of `body` under `secret`, as `sha256=<hex>`.
pub fn sign(secret: &SecretString, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The request for one sink: URL, body, extra headers.
fn request_for(
    sink: &Sink,
    alert: &Alert,
    settings: &AlertSettings,
) -> (String, Vec<u8>, Vec<(&'static str, String)>) {
    let status = if alert.ends_at.is_some() {
        "resolved"
    } else {
        "firing"
    };
    match sink {
        Sink::Alertmanager { url } => {
            let mut labels = HashMap::new();
            labels.insert("alertname", alert.kind.name());
            labels.insert("policy", alert.policy.as_str());
            labels.insert("severity", alert.kind.severity());
            labels.insert("source", "motherduck-rotator");
            let mut annotations = HashMap::new();
            annotations.insert("summary", alert.summary.clone());
            if let Some(r) = &settings.runbook_url {
                annotations.insert("runbook_url", r.clone());
            }
            let body = [AmAlert {
                labels,
                annotations,
                starts_at: ts(alert.starts_at),
                ends_at: alert.ends_at.map(ts),
                generator_url: settings.runbook_url.as_deref(),
            }];
            let mut u = url.clone();
            if let Ok(mut p) = u.path_segments_mut() {
                p.pop_if_empty().extend(["api", "v2", "alerts"]);
            }
            (
                u.to_string(),
                serde_json::to_vec(&body).unwrap_or_default(),
                vec![],
            )
        }
        Sink::Webhook { url, hmac_secret } => {
            let body = serde_json::to_vec(&WebhookBody {
                status,
                alertname: alert.kind.name(),
                severity: alert.kind.severity(),
                policy: &alert.policy,
                summary: &alert.summary,
                starts_at: ts(alert.starts_at),
                ends_at: alert.ends_at.map(ts),
                runbook_url: settings.runbook_url.as_deref(),
            })
            .unwrap_or_default();
            let sig = sign(hmac_secret, &body);
            (url.to_string(), body, vec![(SIGNATURE_HEADER, sig)])
        }
        Sink::Slack { webhook_url } => {
            let icon = if alert.ends_at.is_some() {
                "✅"
            } else {
                "🚨"
            };
            let text = format!(
                "{icon} *{}* [{}] policy `{}`: {}",
                alert.kind.name(),
                status,
                alert.policy,
                alert.summary
            );
            let body = serde_json::to_vec(&serde_json::json!({ "text": text })).unwrap_or_default();
            (webhook_url.expose_secret().to_owned(), body, vec![])
        }
    }
}

/// Drains the queue until `cancel`, sending each alert to every sink with
/// retries. Failures are counted and logged (without the URL of a Slack
/// webhook, which is a secret), never propagated.
pub async fn deliver(alerter: Alerter, mut rx: mpsc::Receiver<Queued>, cancel: CancellationToken) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the alert HTTP client; alerts are disabled");
            return;
        }
    };
    loop {
        let Queued {
            alert,
            alertmanager_only,
        } = tokio::select! {
            a = rx.recv() => match a { Some(a) => a, None => return },
            () = cancel.cancelled() => return,
        };
        for sink in &alerter.settings.sinks {
            if alertmanager_only && !matches!(sink, Sink::Alertmanager { .. }) {
                continue;
            }
            let (url, body, headers) = request_for(sink, &alert, &alerter.settings);
            let mut attempt = 0;
            let outcome = loop {
                attempt += 1;
                let mut req = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone());
                for (k, v) in &headers {
                    req = req.header(*k, v);
                }
                let err = match req.send().await {
                    Ok(r) if r.status().is_success() => break "success",
                    Ok(r) => format!("status {}", r.status().as_u16()),
                    Err(e) => e.without_url().to_string(),
                };
                tracing::warn!(sink = sink.kind(), attempt, error = %err, alert = alert.kind.name(), "alert delivery failed");
                if attempt >= alerter.settings.max_attempts {
                    break "failure";
                }
                let backoff = Duration::from_millis(200u64.saturating_mul(1 << attempt.min(8)));
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = cancel.cancelled() => return,
                }
            };
            alerter
                .metrics
                .alerts_total
                .with_label_values(&[sink.kind(), outcome])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alerter(sinks: Vec<Sink>, clock: Clock) -> (Alerter, Option<mpsc::Receiver<Queued>>) {
        Alerter::new(
            AlertSettings {
                sinks,
                repeat_interval: Duration::from_secs(600),
                max_per_minute: NonZeroU32::new(3).unwrap(),
                ..AlertSettings::default()
            },
            clock,
            Arc::new(Metrics::new()),
        )
    }

    fn webhook() -> Sink {
        Sink::Webhook {
            url: "http://127.0.0.1:1/hook".parse().unwrap(),
            hmac_secret: SecretString::from("k".to_owned()),
        }
    }

    #[test]
    fn deduplicates_repeats_and_resolves_once() {
        let clock = Clock::manual("2026-01-01T00:00:00Z".parse().unwrap());
        let (a, rx) = alerter(vec![webhook()], clock.clone());
        let mut rx = rx.unwrap();
        a.fire(AlertKind::RotationFailed, "p", "boom");
        a.fire(AlertKind::RotationFailed, "p", "boom again");
        assert!(a.is_firing(AlertKind::RotationFailed, "p"));
        clock.advance(chrono::Duration::minutes(11));
        a.fire(AlertKind::RotationFailed, "p", "still broken");
        a.resolve(AlertKind::RotationFailed, "p");
        a.resolve(AlertKind::RotationFailed, "p");
        let mut got = Vec::new();
        while let Ok(x) = rx.try_recv() {
            got.push((x.alert.summary, x.alert.ends_at.is_some()));
        }
        assert_eq!(
            got,
            vec![
                ("boom".to_owned(), false),
                ("still broken".to_owned(), false),
                ("still broken".to_owned(), true),
            ]
        );
    }

    #[test]
    fn rate_limit_spares_resolutions() {
        let clock = Clock::manual("2026-01-01T00:00:00Z".parse().unwrap());
        let (a, rx) = alerter(vec![webhook()], clock.clone());
        let mut rx = rx.unwrap();
        for p in ["a", "b", "c", "d", "e"] {
            a.fire(AlertKind::OrphanFound, p, "x");
        }
        a.resolve(AlertKind::OrphanFound, "e");
        let mut n = 0;
        let mut resolved = 0;
        while let Ok(x) = rx.try_recv() {
            n += 1;
            resolved += usize::from(x.alert.ends_at.is_some());
        }
        assert_eq!(
            (n, resolved),
            (4, 1),
            "3 firing within the limit, plus the resolution"
        );
        clock.advance(chrono::Duration::minutes(1));
        a.fire(AlertKind::OrphanFound, "f", "x");
        assert!(rx.try_recv().is_ok(), "a new minute, a new budget");
    }

    #[test]
    fn firing_alerts_are_refreshed_to_alertmanager_only() {
        let clock = Clock::manual("2026-01-01T00:00:00Z".parse().unwrap());
        let am = Sink::Alertmanager {
            url: "http://127.0.0.1:1".parse().unwrap(),
        };
        let (a, rx) = alerter(vec![am, webhook()], clock);
        let mut rx = rx.unwrap();
        a.fire(AlertKind::RotationFailed, "p", "boom");
        assert!(!rx.try_recv().unwrap().alertmanager_only);
        a.refresh_alertmanager();
        let refreshed = rx.try_recv().unwrap();
        assert!(refreshed.alertmanager_only);
        assert_eq!(refreshed.alert.summary, "boom");
        a.resolve(AlertKind::RotationFailed, "p");
        let _ = rx.try_recv();
        a.refresh_alertmanager();
        assert!(rx.try_recv().is_err(), "nothing firing, nothing refreshed");
    }

    #[test]
    fn webhook_body_is_signed() {
        let alert = Alert {
            kind: AlertKind::RollbackHappened,
            policy: "p".into(),
            summary: "verify failed".into(),
            starts_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            ends_at: None,
        };
        let (url, body, headers) = request_for(&webhook(), &alert, &AlertSettings::default());
        assert_eq!(url, "http://127.0.0.1:1/hook");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], "firing");
        assert_eq!(v["alertname"], "MotherDuckRotationRolledBack");
        assert_eq!(headers[0].0, SIGNATURE_HEADER);
        assert_eq!(
            headers[0].1,
            sign(&SecretString::from("k".to_owned()), &body)
        );
        assert!(headers[0].1.starts_with("sha256=") && headers[0].1.len() == 7 + 64);
    }

    #[test]
    fn alertmanager_shape() {
        let alert = Alert {
            kind: AlertKind::RotationFailed,
            policy: "etl".into(),
            summary: "create failed".into(),
            starts_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            ends_at: Some("2026-01-01T01:00:00Z".parse().unwrap()),
        };
        let sink = Sink::Alertmanager {
            url: "http://127.0.0.1:9093".parse().unwrap(),
        };
        let (url, body, _) = request_for(&sink, &alert, &AlertSettings::default());
        assert_eq!(url, "http://127.0.0.1:9093/api/v2/alerts");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v[0]["labels"]["alertname"], "MotherDuckRotationFailed");
        assert_eq!(v[0]["labels"]["policy"], "etl");
        assert_eq!(v[0]["startsAt"], "2026-01-01T00:00:00.000Z");
        assert_eq!(v[0]["endsAt"], "2026-01-01T01:00:00.000Z");
    }
}
