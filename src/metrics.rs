//! Every metric the daemon exports, defined in one place.
//!
//! Names follow `motherduck_rotator_<name>_<unit>[_total]`; label values
//! come from bounded sets (policy names from the configuration, step and
//! reason names from closed enums), never from free text or secrets.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

const NS: &str = "motherduck_rotator";

/// The daemon's metrics and the registry that exports them.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub rotations_total: IntCounterVec,
    pub rotation_duration_seconds: HistogramVec,
    pub rotation_step_failures_total: IntCounterVec,
    pub last_success_timestamp_seconds: GaugeVec,
    pub next_rotation_timestamp_seconds: GaugeVec,
    pub token_expiry_timestamp_seconds: GaugeVec,
    pub token_created_timestamp_seconds: GaugeVec,
    pub rotation_in_progress: IntGaugeVec,
    /// 1 while every readiness check passes; no labels.
    pub ready: IntGaugeVec,
    pub rollbacks_total: IntCounterVec,
    pub orphans_revoked_total: IntCounterVec,
    pub orphans_found_total: IntCounterVec,
    pub api_requests_total: IntCounterVec,
    pub api_request_duration_seconds: HistogramVec,
    pub store_operations_total: IntCounterVec,
    pub verification_duration_seconds: HistogramVec,
    pub config_reloads_total: IntCounterVec,
    pub alerts_total: IntCounterVec,
    pub build_info: IntGaugeVec,
}

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
                &["policy", "outcome"],
            ),
            rotation_duration_seconds: histogram(
                "rotation_duration_seconds",
                "Time from claim to verified (or rolled back) of a rotation.",
                &["policy"],
                slow.clone(),
            ),
            rotation_step_failures_total: counter(
                "rotation_step_failures_total",
                "Failed attempts at a rotation step, by step and reason.",
                &["policy", "step", "reason"],
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
            token_created_timestamp_seconds: gauge(
                "token_created_timestamp_seconds",
                "Unix time at which the current token was created.",
                &["policy"],
            ),
            rotation_in_progress: int_gauge(
                "rotation_in_progress",
                "1 while this replica is working on a rotation of the policy.",
                &["policy"],
            ),
            ready: int_gauge(
                "ready",
                "1 while every readiness check passes (admin token accepted, every store reachable), 0 otherwise; /readyz lists the checks.",
                &[],
            ),
            rollbacks_total: counter(
                "rollbacks_total",
                "Rotations rolled back: the old token made current again, the new one revoked.",
                &["policy"],
            ),
            orphans_revoked_total: counter(
                "orphans_revoked_total",
                "Tokens created by the rotator but referenced by no record, revoked by the sweep.",
                &["policy"],
            ),
            orphans_found_total: counter(
                "orphans_found_total",
                "Orphaned tokens found by the sweep (revoked or, in dry-run, listed).",
                &["policy"],
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
                &["policy", "outcome"],
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
            build_info: int_gauge(
                "build_info",
                "Always 1; the labels carry the version and the git commit (with -dirty when the sources differed from it).",
                &["version", "commit"],
            ),
            registry,
        };
        let build = crate::build_info::BUILD;
        m.build_info
            .with_label_values(&[build.version, &build.commit_label()])
            .set(1);
        for outcome in ["success", "failure"] {
            m.config_reloads_total.with_label_values(&[outcome]);
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

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Creates a policy's series at zero, so dashboards and `increase()`
    /// see them before the first event.
    pub fn init_policy(&self, policy: &str) {
        for outcome in ["success", "failed", "rolled_back"] {
            self.rotations_total.with_label_values(&[policy, outcome]);
        }
        self.rollbacks_total.with_label_values(&[policy]);
        self.orphans_revoked_total.with_label_values(&[policy]);
        self.orphans_found_total.with_label_values(&[policy]);
        self.rotation_in_progress
            .with_label_values(&[policy])
            .set(0);
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
