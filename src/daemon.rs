//! The long-running daemon: one task per policy driving its rotations, the
//! orphan sweep, readiness checks and the HTTP server, all stopped through
//! one cancellation token.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::clock::Clock;
use crate::config::{Config, Policy};
use crate::http::{Check, HttpState, Readiness};
use crate::metrics::Metrics;
use crate::motherduck::{Client, TokenCheck};
use crate::rotation::driver::{Driver, Tick};
use crate::schedule::sleep_until_wall;
use crate::verify::{AckRegistry, VerifyDeps};

/// The wall clock is re-read at least this often while waiting, so suspend,
/// resume and clock jumps are noticed.
pub const WALL_CHECK: Duration = Duration::from_secs(30);

/// Builds the driver for a configuration.
///
/// # Errors
/// The MotherDuck client cannot be built (bad URL or token bytes).
pub fn driver_for(
    config: &Config,
    clock: Clock,
    metrics: Arc<Metrics>,
    acks: AckRegistry,
) -> anyhow::Result<Driver> {
    let mut client_config = config.motherduck.client_config();
    client_config.metrics = Some(metrics.clone());
    let client = Client::new(client_config).context("failed to set up the MotherDuck client")?;
    let scrub_env = config.motherduck.admin_token_env.iter().cloned().collect();
    Ok(Driver {
        client: client.clone(),
        clock,
        verify: VerifyDeps {
            motherduck: client,
            acks,
            scrub_env,
        },
        metrics,
        instance_id: config.daemon.instance_id.clone(),
        lock_retry_interval: config.daemon.lock_retry_interval,
        orphan_min_age: config.daemon.orphan_min_age,
    })
}

/// Checks what readiness needs: the admin token is accepted and every
/// destination is reachable.
pub async fn readiness(driver: &Driver, config: &Config) -> Readiness {
    let mut checks = vec![Check {
        name: "config".into(),
        ok: true,
        reason: None,
    }];
    let admin = match driver
        .client
        .check_token(&config.motherduck.admin_token)
        .await
    {
        Ok(TokenCheck::ValidAdmin) => Check {
            name: "motherduck".into(),
            ok: true,
            reason: None,
        },
        Ok(TokenCheck::ValidNonAdmin) => Check {
            name: "motherduck".into(),
            ok: false,
            reason: Some("the admin token is valid but lacks the Admin role".into()),
        },
        Ok(TokenCheck::Rejected) => Check {
            name: "motherduck".into(),
            ok: false,
            reason: Some("the admin token is rejected (401)".into()),
        },
        Err(e) => Check {
            name: "motherduck".into(),
            ok: false,
            reason: Some(e.to_string()),
        },
    };
    checks.push(admin);
    for p in &config.policies {
        for d in &p.destinations {
            let r = d.check().await;
            driver
                .metrics
                .store_op(d.kind(), crate::stores::StoreOp::Check, r.is_ok());
            checks.push(Check {
                name: format!("store {} ({})", d.label(), p.name),
                ok: r.is_ok(),
                reason: r.err().map(|e| e.to_string()),
            });
        }
    }
    Readiness::from_checks(checks)
}

/// Drives one policy until shutdown.
async fn policy_loop(
    driver: Driver,
    policy: Arc<Policy>,
    permits: Arc<Semaphore>,
    cancel: CancellationToken,
) {
    let mut errors = 0u32;
    loop {
        let tick = {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            driver.reconcile(&policy, false, &cancel).await
        };
        let now = driver.clock.now();
        let next = match tick {
            Ok(Tick::Wait { until, why }) => {
                errors = 0;
                debug!(policy = %policy.name, next = %until, reason = %why, "waiting");
                until
            }
            Ok(Tick::Busy { until }) => until,
            Ok(Tick::Stopped) => return,
            Err(e) => {
                errors += 1;
                let delay = policy.retry.backoff(errors);
                error!(policy = %policy.name, error = %e, retry_in = %humantime::format_duration(delay), "policy pass failed");
                now + chrono::Duration::from_std(delay).unwrap_or_default()
            }
        };
        let clock = driver.clock.clone();
        if !sleep_until_wall(next, move || clock.now(), WALL_CHECK, &cancel).await {
            return;
        }
    }
}

/// Sweeps orphans of every policy at start and then periodically.
async fn sweep_loop(
    driver: Driver,
    policies: Vec<Arc<Policy>>,
    every: Duration,
    cancel: CancellationToken,
) {
    loop {
        for p in &policies {
            if cancel.is_cancelled() {
                return;
            }
            match driver.sweep(p, false).await {
                Ok(Some(found)) if !found.is_empty() => {
                    warn!(policy = %p.name, revoked = found.len(), "orphan sweep revoked tokens");
                }
                Ok(_) => {}
                Err(e) => warn!(policy = %p.name, error = %e, "orphan sweep failed"),
            }
        }
        let clock = driver.clock.clone();
        let next = clock.now() + chrono::Duration::from_std(every).unwrap_or_default();
        if !sleep_until_wall(next, move || clock.now(), WALL_CHECK, &cancel).await {
            return;
        }
    }
}

/// Options of [`run`] that are not configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub clock: Clock,
}

/// Runs the daemon until `shutdown` is cancelled; in-flight rotations then
/// get `shutdown_timeout` to reach a safe point.
///
/// # Errors
/// The HTTP listener cannot be bound, or the client cannot be built.
pub async fn run(
    config: Config,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let acks = AckRegistry::default();
    let driver = driver_for(&config, opts.clock.clone(), metrics.clone(), acks.clone())?;
    let readiness = Arc::new(RwLock::new(Readiness::default()));

    let listener = tokio::net::TcpListener::bind(config.daemon.listen)
        .await
        .with_context(|| format!("failed to listen on `{}`", config.daemon.listen))?;
    let addr = listener.local_addr()?;
    let app = crate::http::router(
        HttpState {
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            metrics_token: None,
        },
        acks,
    );
    let http_cancel = shutdown.clone();
    let http = tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_cancel.cancelled().await })
            .await;
        if let Err(e) = r {
            error!(error = %e, "HTTP server failed");
        }
    });
    info!(listen = %addr, policies = config.policies.len(), "HTTP server listening (/metrics, /healthz, /readyz)");

    let r = readiness_pass(&driver, &config, &readiness).await;
    if r.ready {
        info!("ready: the admin token is accepted and every store is reachable");
    } else {
        for c in r.checks.iter().filter(|c| !c.ok) {
            warn!(check = %c.name, reason = c.reason.as_deref().unwrap_or(""), "not ready");
        }
    }

    let config = Arc::new(config);
    let mut tasks = JoinSet::new();
    let permits = Arc::new(Semaphore::new(config.daemon.rotation_concurrency.get()));
    let policies: Vec<Arc<Policy>> = config.policies.iter().cloned().map(Arc::new).collect();
    // The first sweep runs before rotations start, so a crash's orphans are
    // revoked before anything new is created.
    for p in &policies {
        if let Err(e) = driver.sweep(p, false).await {
            warn!(policy = %p.name, error = %e, "orphan sweep at start failed");
        }
    }
    for p in &policies {
        tasks.spawn(policy_loop(
            driver.clone(),
            p.clone(),
            permits.clone(),
            shutdown.clone(),
        ));
    }
    {
        let (d, c) = (driver.clone(), shutdown.clone());
        let every = config.daemon.sweep_interval;
        let ps = policies.clone();
        tasks.spawn(async move {
            let clock = d.clock.clone();
            let first = clock.now() + chrono::Duration::from_std(every).unwrap_or_default();
            if sleep_until_wall(first, move || clock.now(), WALL_CHECK, &c).await {
                sweep_loop(d, ps, every, c).await;
            }
        });
    }
    {
        let (d, c, cfg, r) = (
            driver.clone(),
            shutdown.clone(),
            config.clone(),
            readiness.clone(),
        );
        tasks.spawn(async move {
            loop {
                let clock = d.clock.clone();
                let next = clock.now() + chrono::Duration::seconds(30);
                if !sleep_until_wall(next, move || clock.now(), WALL_CHECK, &c).await {
                    return;
                }
                readiness_pass(&d, &cfg, &r).await;
            }
        });
    }

    shutdown.cancelled().await;
    info!(timeout = %humantime::format_duration(config.daemon.shutdown_timeout), "shutting down: no new rotations; waiting for in-flight steps");
    let drained = tokio::time::timeout(config.daemon.shutdown_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("shutdown timeout reached; stopping in-flight work (every step resumes on restart)");
        tasks.abort_all();
    }
    let _ = http.await;
    info!(at = %Utc::now(), "stopped");
    Ok(())
}

async fn readiness_pass(
    driver: &Driver,
    config: &Config,
    slot: &Arc<RwLock<Readiness>>,
) -> Readiness {
    let r = readiness(driver, config).await;
    if let Ok(mut w) = slot.write() {
        *w = r.clone();
    }
    r
}
