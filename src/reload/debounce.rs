//! One run per target for requests that arrive together, and at most one
//! run per target per `min_interval`.
//!
//! A request for a target joins the target's next run if that run has not
//! started yet; otherwise it schedules one, `debounce` from now (and no
//! sooner than `min_interval` after the previous run started). A run that
//! already started is never joined: it may have read the consumer's
//! configuration before this request's token became current. Time is
//! tokio's clock, so tests pause it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use tokio::time::Instant;

use super::{ActionError, ReloadContext, ReloadSpec};
use crate::metrics::Metrics;

type Shared = watch::Receiver<Option<Result<(), ActionError>>>;

/// Runs reload actions, debounced per target. Cheap to clone; one per
/// process, shared by every policy.
#[derive(Clone)]
pub struct Reloader {
    targets: Arc<Mutex<HashMap<String, Target>>>,
    metrics: Arc<Metrics>,
    /// Environment variables no command may inherit (the command hook's
    /// rule).
    scrub_env: Arc<Vec<String>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Target {
    /// The next run, not started yet: requests join it.
    next: Option<Shared>,
    /// When the latest run started.
    last_start: Option<Instant>,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    /// Whether the request joined a run another request scheduled.
    pub joined: bool,
    pub result: Result<(), ActionError>,
}

impl Reloader {
    pub fn new(metrics: Arc<Metrics>, scrub_env: Vec<String>) -> Reloader {
        Reloader {
            targets: Arc::default(),
            metrics,
            scrub_env: Arc::new(scrub_env),
        }
    }

    /// Runs `spec`'s action for `ctx`'s policy, debounced, and waits for
    /// the run's result.
    pub async fn request(&self, spec: &ReloadSpec, ctx: ReloadContext) -> Requested {
        let key = spec.action.target_key(&ctx.policy);
        let (mut rx, joined) = {
            let mut targets = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
            let t = targets.entry(key.clone()).or_default();
            match &t.next {
                Some(rx) => (rx.clone(), true),
                None => {
                    let (tx, rx) = watch::channel(None);
                    t.next = Some(rx.clone());
                    let mut at = Instant::now() + spec.debounce;
                    if let Some(last) = t.last_start {
                        at = at.max(last + spec.min_interval);
                    }
                    let this = self.clone();
                    let action = spec.action.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep_until(at).await;
                        {
                            let mut targets =
                                this.targets.lock().unwrap_or_else(PoisonError::into_inner);
                            let t = targets.entry(key).or_default();
                            t.next = None;
                            t.last_start = Some(Instant::now());
                        }
                        let result = action.run(&ctx, &this.scrub_env).await;
                        let outcome = if result.is_ok() { "success" } else { "failure" };
                        this.metrics
                            .reload_actions_total
                            .with_label_values(&[action.kind(), outcome])
                            .inc();
                        let _ = tx.send(Some(result));
                    });
                    (rx, false)
                }
            }
        };
        if joined {
            self.metrics
                .reload_actions_total
                .with_label_values(&[spec.action.kind(), "coalesced"])
                .inc();
        }
        let result = match rx.wait_for(Option::is_some).await {
            Ok(r) => (*r).clone().unwrap_or(Ok(())),
            Err(_) => Err(ActionError::new(
                "abandoned",
                format!(
                    "the run of `{}` ended without a result",
                    spec.action.label()
                ),
            )),
        };
        Requested { joined, result }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::reload::{OnActionFailure, ReloadAction, ReloadCause, SignalAction};

    /// A process to signal (SIGCONT does nothing to a running process)
    /// and the pid file naming it; the process is killed on drop.
    struct Target {
        child: std::process::Child,
        pid_file: std::path::PathBuf,
    }

    impl Target {
        fn start() -> Target {
            let child = std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap();
            let dir = std::env::temp_dir().join(format!("mdr-debounce-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            let pid_file = dir.join("app.pid");
            std::fs::write(&pid_file, format!("{}\n", child.id())).unwrap();
            Target { child, pid_file }
        }

        fn spec(&self, debounce: u64, min_interval: u64) -> ReloadSpec {
            ReloadSpec {
                action: ReloadAction::Signal(
                    SignalAction::pid_file("CONT", self.pid_file.clone()).unwrap(),
                ),
                on_failure: OnActionFailure::Fail,
                debounce: Duration::from_secs(debounce),
                min_interval: Duration::from_secs(min_interval),
            }
        }
    }

    impl Drop for Target {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(self.pid_file.parent().unwrap());
        }
    }

    fn ctx(policy: &str) -> ReloadContext {
        ReloadContext {
            policy: policy.to_owned(),
            rotation_id: format!("r-{policy}"),
            service_account: "svc".to_owned(),
            token_id: format!("tok-{policy}"),
            token: None,
            cause: ReloadCause::Promoted,
            now: "2026-03-01T12:00:00Z".parse().unwrap(),
        }
    }

    fn runs(r: &Reloader, outcome: &str) -> u64 {
        r.metrics
            .reload_actions_total
            .with_label_values(&["signal", outcome])
            .get()
    }

    #[tokio::test(start_paused = true)]
    async fn requests_within_the_window_run_the_target_once() {
        let target = Target::start();
        let r = Reloader::new(Arc::new(Metrics::new()), Vec::new());
        let spec = target.spec(2, 0);
        let started = Instant::now();
        let (a, b, c) = tokio::join!(
            r.request(&spec, ctx("a")),
            async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                r.request(&spec, ctx("b")).await
            },
            async {
                tokio::time::sleep(Duration::from_millis(1900)).await;
                r.request(&spec, ctx("c")).await
            },
        );
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(2),
            "one debounce window"
        );
        assert_eq!((a.joined, b.joined, c.joined), (false, true, true));
        assert!(a.result.is_ok() && b.result.is_ok() && c.result.is_ok());
        assert_eq!((runs(&r, "success"), runs(&r, "coalesced")), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_already_started_is_not_joined_and_runs_are_spaced_by_the_minimum_interval() {
        let target = Target::start();
        let r = Reloader::new(Arc::new(Metrics::new()), Vec::new());
        let spec = target.spec(1, 60);
        let started = Instant::now();
        let first = r.request(&spec, ctx("a")).await;
        assert!(!first.joined);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        // The first run has started (and finished): a new request needs a
        // run of its own, no sooner than a minute after the first began.
        let second = r.request(&spec, ctx("b")).await;
        assert!(!second.joined && second.result.is_ok());
        assert_eq!(started.elapsed(), Duration::from_secs(61));
        assert_eq!(runs(&r, "success"), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn every_request_a_failed_run_served_gets_its_error() {
        let target = Target::start();
        let r = Reloader::new(Arc::new(Metrics::new()), Vec::new());
        let spec = target.spec(1, 0);
        std::fs::write(&target.pid_file, "not a pid").unwrap();
        let (a, b) = tokio::join!(r.request(&spec, ctx("a")), r.request(&spec, ctx("b")));
        let (a, b) = (a.result.unwrap_err(), b.result.unwrap_err());
        assert_eq!(a, b);
        assert_eq!(a.reason, "pid_file");
        assert_eq!((runs(&r, "failure"), runs(&r, "coalesced")), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn different_targets_run_apart() {
        let (t1, t2) = (Target::start(), Target::start());
        let r = Reloader::new(Arc::new(Metrics::new()), Vec::new());
        let (s1, s2) = (t1.spec(1, 0), t2.spec(1, 0));
        let (a, b) = tokio::join!(r.request(&s1, ctx("a")), r.request(&s2, ctx("a")));
        assert!(!a.joined && !b.joined);
        assert_eq!(runs(&r, "success"), 2);
    }
}
