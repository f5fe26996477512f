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
