//! Every metric the daemon exports, defined in one place.
//!
//! Names follow `motherduck_rotator_<name>_<unit>[_total]`; label values
//! come from bounded sets (policy names from the configuration, step and
//! reason names from closed enums), never from free text or secrets.
//!
//! Cardinality follows cert-manager's per-certificate model: a policy has
//! series only for what an operator graphs or alerts on per policy
//! ([`PER_POLICY`]: at most five); everything else (outcomes, durations,
//! step failures, store and API calls) is counted by a small fixed label
//! set, not by policy, so `/metrics` grows by a few lines per policy.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

const NS: &str = "motherduck_rotator";

/// The daemon's metrics and the registry that exports them.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub rotations_total: IntCounterVec,
    pub rotation_duration_seconds: Histogram,
    pub rotation_step_failures_total: IntCounterVec,
    pub last_success_timestamp_seconds: GaugeVec,
    pub next_rotation_timestamp_seconds: GaugeVec,
    pub token_expiry_timestamp_seconds: GaugeVec,
    pub rotation_in_progress: IntGaugeVec,
    pub consecutive_failures: IntGaugeVec,
    /// Replaced tokens past their overlap and not yet revoked.
    pub superseded_tokens: IntGaugeVec,
    /// Seconds since the oldest of them should have been revoked.
    pub superseded_token_oldest_age_seconds: GaugeVec,
    /// 1 while every readiness check passes; no labels.
    pub ready: IntGaugeVec,
    pub rollbacks_total: IntCounter,
    pub orphans_revoked_total: IntCounter,
    pub orphans_found_total: IntCounter,
    pub api_requests_total: IntCounterVec,
    pub api_request_duration_seconds: HistogramVec,
    pub store_operations_total: IntCounterVec,
    pub verification_duration_seconds: HistogramVec,
    pub config_reloads_total: IntCounterVec,
    pub alerts_total: IntCounterVec,
    /// Reload action runs by kind and outcome; no policy label (a
    /// debounced run serves several policies; `status` has the
    /// per-policy view).
    pub reload_actions_total: IntCounterVec,
    pub build_info: IntGaugeVec,
    /// 1 while the dependency's last request or probe succeeded.
    pub dependency_up: IntGaugeVec,
    pub dependency_request_duration_seconds: HistogramVec,
    pub dependency_failures_total: IntCounterVec,
    /// The policies that have per-policy series, so that a policy removed
    /// by a reload loses them.
    policies: Arc<Mutex<BTreeSet<String>>>,
    /// When each policy's replaced token should have been revoked, for the
    /// policies whose old token outlives its overlap.
    superseded: Arc<Mutex<std::collections::HashMap<String, chrono::DateTime<chrono::Utc>>>>,
}

/// The metrics that carry a `policy` label; every other metric has none.
pub const PER_POLICY: [&str; 5] = [
    "last_success_timestamp_seconds",
    "next_rotation_timestamp_seconds",
    "token_expiry_timestamp_seconds",
    "rotation_in_progress",
    "consecutive_failures",
];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NS)
}

impl Metrics {
    /// Creates and registers every metric.
    ///
    /// # Panics
    /// Never in practice: names are static and registered once per registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(opts(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let plain_counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(opts(name, help)).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(opts(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let int_gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(opts(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help)
                    .namespace(NS)
                    .buckets(buckets),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        let plain_histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .namespace(NS)
                    .buckets(buckets),
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        let slow = vec![
            0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
        ];
        let fast = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let m = Metrics {
            rotations_total: counter(
                "rotations_total",
                "Rotations finished, by outcome (success, rolled_back, failed).",
                &["outcome"],
            ),
            rotation_duration_seconds: plain_histogram(
                "rotation_duration_seconds",
                "Time from claim to verified (or rolled back) of a rotation.",
                slow.clone(),
            ),
            rotation_step_failures_total: counter(
                "rotation_step_failures_total",
                "Failed attempts at a rotation step, by step and reason.",
                &["step", "reason"],
            ),
            last_success_timestamp_seconds: gauge(
                "last_success_timestamp_seconds",
                "Unix time of the last successful rotation of the policy.",
                &["policy"],
            ),
            next_rotation_timestamp_seconds: gauge(
                "next_rotation_timestamp_seconds",
                "Unix time at which the policy is next due.",
                &["policy"],
            ),
            token_expiry_timestamp_seconds: gauge(
                "token_expiry_timestamp_seconds",
                "Unix time at which the current token expires (absent when it never expires).",
                &["policy"],
            ),
            rotation_in_progress: int_gauge(
                "rotation_in_progress",
                "1 while this replica is working on a rotation of the policy.",
                &["policy"],
            ),
            dependency_up: int_gauge(
                "dependency_up",
                "1 while the dependency (motherduck, store:<name>) answered its last request or probe, 0 after a failure or a probe without an answer in time.",
                &["dependency"],
            ),
            dependency_request_duration_seconds: histogram(
                "dependency_request_duration_seconds",
                "Requests and probes to a dependency, by operation (MotherDuck endpoint, or store load, lock, stage, promote, check, ...).",
                &["dependency", "operation"],
                fast.clone(),
            ),
            dependency_failures_total: counter(
                "dependency_failures_total",
                "Failed requests and probes to a dependency, by operation and reason (timeout, unavailable, denied, corrupt, conflict, or the MotherDuck error reason).",
                &["dependency", "operation", "reason"],
            ),
            superseded_tokens: int_gauge(
                "superseded_tokens",
                "Replaced tokens whose overlap is over and that are not revoked yet (revoking them keeps failing).",
                &[],
            ),
            superseded_token_oldest_age_seconds: gauge(
                "superseded_token_oldest_age_seconds",
                "Seconds since the oldest replaced token should have been revoked; 0 when there is none.",
                &[],
            ),
            consecutive_failures: int_gauge(
                "consecutive_failures",
                "Failed rotations of the policy since its last success (the first token included); 0 after a success.",
                &["policy"],
            ),
            ready: int_gauge(
                "ready",
                "1 while every readiness check passes (admin token accepted, every store reachable), 0 otherwise; /readyz lists the checks.",
                &[],
            ),
            rollbacks_total: plain_counter(
                "rollbacks_total",
                "Rotations rolled back: the old token made current again, the new one revoked.",
            ),
            orphans_revoked_total: plain_counter(
                "orphans_revoked_total",
                "Tokens created by the rotator but referenced by no record, revoked by the sweep.",
            ),
            orphans_found_total: plain_counter(
                "orphans_found_total",
                "Orphaned tokens found by the sweep (revoked or, in dry-run, listed).",
            ),
            api_requests_total: counter(
                "api_requests_total",
                "MotherDuck API requests, by endpoint and status class (2xx, 4xx, 5xx, error).",
                &["endpoint", "status_class"],
            ),
            api_request_duration_seconds: histogram(
                "api_request_duration_seconds",
                "MotherDuck API request latency, by endpoint.",
                &["endpoint"],
                fast,
            ),
            store_operations_total: counter(
                "store_operations_total",
                "Secret store operations, by store kind, operation and outcome.",
                &["store", "op", "outcome"],
            ),
            verification_duration_seconds: histogram(
                "verification_duration_seconds",
                "Time the verification hooks of a rotation took, by outcome.",
                &["outcome"],
                slow,
            ),
            config_reloads_total: counter(
                "config_reloads_total",
                "Configuration reloads, by outcome (success, failure).",
                &["outcome"],
            ),
            alerts_total: counter(
                "alerts_total",
                "Alert notifications, by sink and outcome (success, failure, rate_limited, queue_full).",
                &["sink", "outcome"],
            ),
            reload_actions_total: counter(
                "reload_actions_total",
                "Reload action runs, by kind (command, signal, http, kubernetes) and outcome (success, failure, coalesced: a request served by a run another request scheduled).",
                &["kind", "outcome"],
            ),
            build_info: int_gauge(
                "build_info",
                "Always 1; the labels carry the version and the git commit (with -dirty when the sources differed from it).",
                &["version", "commit"],
            ),
            registry,
            policies: Arc::default(),
            superseded: Arc::default(),
        };
        m.superseded_tokens.with_label_values::<&str>(&[]).set(0);
        m.superseded_token_oldest_age_seconds
            .with_label_values::<&str>(&[])
            .set(0.0);
        let build = crate::build_info::BUILD;
        m.build_info
            .with_label_values(&[build.version, &build.commit_label()])
            .set(1);
        for outcome in ["success", "failure"] {
            m.config_reloads_total.with_label_values(&[outcome]);
            m.verification_duration_seconds
                .with_label_values(&[outcome]);
        }
        for outcome in ["success", "failed", "rolled_back"] {
            m.rotations_total.with_label_values(&[outcome]);
        }

        // CPU, memory, open files and start time of this process, as
        // process_* metrics (Linux only).
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = m.registry.register(Box::new(pc));
        }
        m
    }

    /// Records since when `policy`'s replaced token should have been
    /// revoked (`None`: it has been, or there is none).
    pub fn set_superseded(&self, policy: &str, since: Option<chrono::DateTime<chrono::Utc>>) {
        let mut map = self
            .superseded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match since {
            Some(t) => {
                map.insert(policy.to_owned(), t);
            }
            None => {
                map.remove(policy);
            }
        }
    }

    /// Sets the superseded-token gauges as of `now`.
    pub fn refresh_superseded(&self, now: chrono::DateTime<chrono::Utc>) {
        let map = self
            .superseded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.superseded_tokens
            .with_label_values::<&str>(&[])
            .set(i64::try_from(map.len()).unwrap_or(i64::MAX));
        let oldest = map.values().min().map_or(0.0, |t| {
            (now - *t).num_milliseconds().max(0) as f64 / 1000.0
        });
        self.superseded_token_oldest_age_seconds
            .with_label_values::<&str>(&[])
            .set(oldest);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        self.refresh_superseded(chrono::Utc::now());
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Gives the policies of a (new) configuration their series at zero,
    /// so dashboards see them before the first event, and drops the series
    /// of policies no longer configured.
    pub fn set_policies<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let wanted: BTreeSet<String> = names.into_iter().map(str::to_owned).collect();
        let mut known = self
            .policies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for gone in known.difference(&wanted) {
            let l = [gone.as_str()];
            let _ = self.last_success_timestamp_seconds.remove_label_values(&l);
            let _ = self.next_rotation_timestamp_seconds.remove_label_values(&l);
            let _ = self.token_expiry_timestamp_seconds.remove_label_values(&l);
            let _ = self.rotation_in_progress.remove_label_values(&l);
            let _ = self.consecutive_failures.remove_label_values(&l);
            self.set_superseded(gone, None);
        }
        for p in wanted.difference(&known) {
            self.rotation_in_progress.with_label_values(&[p]).set(0);
            self.consecutive_failures.with_label_values(&[p]).set(0);
        }
        *known = wanted;
    }

    /// Records a finished rotation of `policy`: its outcome (`success`,
    /// `failed` or `rolled_back`) and the policy's failures in a row.
    pub fn rotation_finished(&self, policy: &str, outcome: &str, consecutive_failures: u32) {
        self.rotations_total.with_label_values(&[outcome]).inc();
        self.consecutive_failures
            .with_label_values(&[policy])
            .set(i64::from(consecutive_failures));
    }

    /// Counts one failed attempt at a rotation step.
    pub fn step_failed(&self, step: &str, reason: &str) {
        self.rotation_step_failures_total
            .with_label_values(&[step, reason])
            .inc();
    }

    /// Records one request or probe to a dependency: its duration, and
    /// its failure reason if it failed. `dependency_up` follows the latest.
    pub fn dependency_call(
        &self,
        dependency: &str,
        operation: &str,
        elapsed: std::time::Duration,
        failure: Option<&str>,
    ) {
        self.dependency_request_duration_seconds
            .with_label_values(&[dependency, operation])
            .observe(elapsed.as_secs_f64());
        if let Some(reason) = failure {
            self.dependency_failures_total
                .with_label_values(&[dependency, operation, reason])
                .inc();
        }
        self.dependency_up
            .with_label_values(&[dependency])
            .set(i64::from(failure.is_none()));
    }

    /// Counts one store operation.
    pub fn store_op(&self, store: &str, op: crate::stores::StoreOp, ok: bool) {
        self.store_operations_total
            .with_label_values(&[store, op.as_str(), if ok { "success" } else { "failure" }])
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exposition lines (samples) that carry `policy="<name>"`.
    fn series_of(text: &str, policy: &str) -> Vec<String> {
        let needle = format!("policy=\"{policy}\"");
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&needle))
            .map(str::to_owned)
            .collect()
    }

    /// Drives every per-policy metric of one policy as a busy day would
    /// (success, failures, rollback, orphans, verification, step failures)
    /// and counts its series.
    fn exercise(m: &Metrics, p: &str) {
        m.rotation_finished(p, "success", 0);
        m.rotation_finished(p, "rolled_back", 1);
        m.rotation_finished(p, "failed", 2);
        m.step_failed("verify", "hook_failed");
        m.step_failed("promote", "store_unavailable");
        m.rollbacks_total.inc();
        m.orphans_found_total.inc();
        m.orphans_revoked_total.inc();
        m.rotation_duration_seconds.observe(1.0);
        m.verification_duration_seconds
            .with_label_values(&["success"])
            .observe(0.5);
        m.last_success_timestamp_seconds
            .with_label_values(&[p])
            .set(1.0);
        m.next_rotation_timestamp_seconds
            .with_label_values(&[p])
            .set(2.0);
        m.token_expiry_timestamp_seconds
            .with_label_values(&[p])
            .set(3.0);
        m.rotation_in_progress.with_label_values(&[p]).set(1);
    }

    #[test]
    fn a_policy_costs_at_most_the_per_policy_series() {
        let m = Metrics::new();
        m.set_policies(["a", "b"]);
        exercise(&m, "a");
        exercise(&m, "b");
        let text = m.render();
        let a = series_of(&text, "a");
        assert_eq!(a.len(), PER_POLICY.len(), "{a:#?}");
        for name in PER_POLICY {
            assert!(
                a.iter().any(|l| l.starts_with(&format!("{NS}_{name}{{"))),
                "{name} missing: {a:#?}"
            );
        }
        // Nothing else is labelled by policy.
        for l in text.lines().filter(|l| l.contains("policy=")) {
            assert!(
                PER_POLICY
                    .iter()
                    .any(|n| l.starts_with(&format!("{NS}_{n}{{"))),
                "unexpected per-policy series: {l}"
            );
        }
        // Adding a thousand policies adds at most PER_POLICY lines each.
        let before = text.lines().filter(|l| !l.starts_with('#')).count();
        let names: Vec<String> = (0..1000).map(|i| format!("p{i}")).collect();
        m.set_policies(names.iter().map(String::as_str).chain(["a", "b"]));
        for n in &names {
            exercise(&m, n);
        }
        let after = m.render().lines().filter(|l| !l.starts_with('#')).count();
        assert!(
            after - before <= 1000 * PER_POLICY.len(),
            "{before} -> {after} lines"
        );
    }

    #[test]
    fn a_removed_policy_loses_its_series_and_a_new_one_starts_at_zero() {
        let m = Metrics::new();
        m.set_policies(["old", "kept"]);
        exercise(&m, "old");
        exercise(&m, "kept");
        m.set_policies(["kept", "new"]);
        let text = m.render();
        assert_eq!(series_of(&text, "old"), Vec::<String>::new());
        assert_eq!(series_of(&text, "kept").len(), PER_POLICY.len());
        let new = series_of(&text, "new");
        assert!(
            new.contains(&format!("{NS}_consecutive_failures{{policy=\"new\"}} 0"))
                && new.contains(&format!("{NS}_rotation_in_progress{{policy=\"new\"}} 0")),
            "{new:#?}"
        );
    }

    #[test]
    fn outcome_counters_exist_before_the_first_event() {
        let text = Metrics::new().render();
        for outcome in ["success", "failed", "rolled_back"] {
            let line = format!("{NS}_rotations_total{{outcome=\"{outcome}\"}} 0");
            assert!(text.contains(&line), "{line} missing");
        }
        assert!(text.contains(&format!("{NS}_rollbacks_total 0")));
    }
}
