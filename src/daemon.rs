//! The long-running daemon: one task driving every policy's passes from a
//! queue ordered by due time, the orphan sweep, readiness checks and the
//! HTTP server, all stopped through one cancellation token.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::alerts::Alerter;
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

/// Builds the driver for a configuration, with alerts disabled (the
/// one-shot commands).
///
/// # Errors
/// The MotherDuck client cannot be built (bad URL or token bytes).
pub fn driver_for(
    config: &Config,
    clock: Clock,
    metrics: Arc<Metrics>,
    acks: AckRegistry,
) -> anyhow::Result<Driver> {
    let alerts = Alerter::disabled(clock.clone(), metrics.clone());
    driver_with_alerts(config, clock, metrics, acks, alerts)
}

/// Builds the driver for a configuration, reporting through `alerts`.
///
/// # Errors
/// The MotherDuck client cannot be built (bad URL or token bytes).
pub fn driver_with_alerts(
    config: &Config,
    clock: Clock,
    metrics: Arc<Metrics>,
    acks: AckRegistry,
    alerts: Alerter,
) -> anyhow::Result<Driver> {
    let mut client_config = config.motherduck.client_config();
    client_config.metrics = Some(metrics.clone());
    let client = Client::new(client_config).context("failed to set up the MotherDuck client")?;
    let scrub_env: Vec<String> = config.motherduck.admin_token_env.iter().cloned().collect();
    let reloads = crate::reload::Reloader::new(metrics.clone(), scrub_env.clone());
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
        reloads,
        alerts,
        unrecorded_failures: Arc::default(),
        failed_passes: Arc::default(),
        failed_passes_before_alert: config.daemon.failed_passes_before_alert,
    })
}

/// Checks what readiness needs: the admin token is accepted and every
/// destination is reachable.
pub async fn readiness(driver: &Driver, config: &Config) -> Readiness {
    readiness_of(driver, config, None).await
}

/// The daemon's periodic readiness pass after `previous`: the admin token,
/// one destination per place (server and mount, or directory) and lock
/// store, and every destination that failed in `previous` until it
/// passes. With no previous checks, every destination (see [`readiness`]).
pub async fn readiness_after(driver: &Driver, config: &Config, previous: &Readiness) -> Readiness {
    readiness_of(driver, config, Some(previous)).await
}

/// Which destinations a readiness pass checks.
fn readiness_targets<'a>(
    config: &'a Config,
    previous: Option<&Readiness>,
) -> Vec<(String, &'a crate::stores::Destination, bool)> {
    let mut targets: Vec<(String, &crate::stores::Destination, bool)> = Vec::new();
    for p in &config.policies {
        for d in &p.destinations {
            targets.push((format!("store {} ({})", d.label(), p.name), d, false));
        }
        let lock = &p.lock;
        if !p.destinations.iter().any(|d| d.same_place(lock)) {
            targets.push((format!("lock {} ({})", lock.label(), p.name), lock, true));
        }
    }
    let Some(previous) = previous.filter(|r| !r.checks.is_empty()) else {
        return targets;
    };
    // After the first full pass: one destination per place (server and
    // mount, or directory), and every one that failed last time until it
    // passes. The passes of the policies read every destination anyway;
    // reading 10,000 records every 30 s to learn that a server answers
    // would cost more than the rotations.
    let failing: std::collections::HashSet<&str> = previous
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect();
    let mut seen = std::collections::HashSet::new();
    targets.retain(|(name, d, lock_only)| {
        seen.insert((d.place_key(), *lock_only)) || failing.contains(name.as_str())
    });
    targets
}

/// A readiness pass. With `previous` (the last pass's result), only what
/// [`readiness_targets`] picks is checked.
async fn readiness_of(driver: &Driver, config: &Config, previous: Option<&Readiness>) -> Readiness {
    let mut checks = vec![Check {
        name: "config".into(),
        ok: true,
        reason: None,
    }];
    // Every destination, and a policy's lock where it is kept apart from
    // them, checked at once and alongside the admin token: a store that
    // does not answer costs one CHECK_DEADLINE, not one per destination.
    let targets = readiness_targets(config, previous);
    // What destinations share (a directory's probe) is checked once for
    // all of them; then each destination's own part.
    let stores = async {
        // One destination per shared key runs the shared part.
        let mut sharing: HashMap<PathBuf, &crate::stores::Destination> = HashMap::new();
        for (_, d, _) in &targets {
            if let Some(key) = d.shared_check() {
                sharing.entry(key).or_insert(d);
            }
        }
        let shared: HashMap<PathBuf, Result<(), String>> =
            futures_util::future::join_all(sharing.into_iter().map(|(key, d)| async move {
                (key, deadline(&driver.metrics, d, d.check_shared()).await)
            }))
            .await
            .into_iter()
            .collect();
        futures_util::future::join_all(targets.iter().map(|(_, d, lock_only)| {
            let shared = d.shared_check().and_then(|key| shared.get(&key).cloned());
            async move {
                match shared {
                    Some(Err(e)) => Err(e),
                    _ => deadline(&driver.metrics, d, d.check_own(*lock_only)).await,
                }
            }
        }))
        .await
    };
    let admin = tokio::time::timeout(
        CHECK_DEADLINE,
        driver.client.check_token(&config.motherduck.admin_token),
    );
    let (answer, results) = tokio::join!(admin, stores);
    let admin = match answer.map_err(|_| ()) {
        Err(()) => {
            driver
                .metrics
                .dependency_call("motherduck", "check", CHECK_DEADLINE, Some("timeout"));
            Check {
                name: "motherduck".into(),
                ok: false,
                reason: Some(format!(
                    "no answer within {}",
                    humantime::format_duration(CHECK_DEADLINE)
                )),
            }
        }
        Ok(answer) => match answer {
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
        },
    };
    checks.push(admin);
    for ((name, d, _), r) in targets.iter().zip(results) {
        driver
            .metrics
            .store_op(d.kind(), crate::stores::StoreOp::Check, r.is_ok());
        checks.push(Check {
            name: name.clone(),
            ok: r.is_ok(),
            reason: r.err(),
        });
    }
    let r = Readiness::from_checks(checks);
    driver
        .metrics
        .ready
        .with_label_values::<&str>(&[])
        .set(i64::from(r.ready));
    r
}

/// A store check, failed if it takes longer than [`CHECK_DEADLINE`];
/// recorded as a `check` of the store's dependency health.
async fn deadline(
    metrics: &Metrics,
    d: &crate::stores::Destination,
    check: impl std::future::Future<Output = Result<(), crate::stores::StoreError>>,
) -> Result<(), String> {
    let started = tokio::time::Instant::now();
    let (r, failure) = match tokio::time::timeout(CHECK_DEADLINE, check).await {
        Ok(Ok(())) => (Ok(()), None),
        Ok(Err(e)) => (Err(e.to_string()), Some(e.kind.reason())),
        Err(_) => (
            Err(format!(
                "{}: no answer within {}",
                d.label(),
                humantime::format_duration(CHECK_DEADLINE)
            )),
            Some("timeout"),
        ),
    };
    metrics.dependency_call(&d.dependency(), "check", started.elapsed(), failure);
    r
}

/// How long one readiness check of a store may take before it counts as
/// failed: a hung server would otherwise keep `/readyz` green for as long
/// as its request timeouts and retries last.
pub const CHECK_DEADLINE: Duration = Duration::from_secs(10);

/// When a policy's next pass is due, after one that ended with `tick`.
/// `errors` counts the policy's failed passes in a row.
fn next_pass(
    policy: &Policy,
    tick: Result<Tick, crate::rotation::driver::DriveError>,
    errors: &mut u32,
    now: DateTime<Utc>,
    recheck: chrono::Duration,
) -> Option<DateTime<Utc>> {
    match tick {
        Ok(Tick::Wait { until, why }) => {
            *errors = 0;
            debug!(policy = %policy.name, next = %until, reason = %why, "waiting");
            // A rotation started by `rotate` or another replica changes
            // the records, not this plan: they are read again at least
            // every `recheck`.
            Some(until.min(now.checked_add_signed(recheck).unwrap_or(until)))
        }
        Ok(Tick::Busy { until }) => Some(until),
        Ok(Tick::Stopped) => None,
        Err(e) => {
            *errors += 1;
            let delay = policy.retry.backoff(*errors);
            error!(policy = %policy.name, error = %e, retry_in = %humantime::format_duration(delay), "policy pass failed");
            Some(now + chrono::Duration::from_std(delay).unwrap_or_default())
        }
    }
}

/// Drives every policy of a configuration generation until shutdown, or
/// until the generation is retired by a reload.
///
/// One task and one timer for all policies: a queue ordered by when each
/// policy is next due, and at most `permits` passes running at once, each a
/// short-lived task. A waiting policy costs a queue entry, not a task with
/// its own timer and buffers, so memory and wake-ups do not grow with the
/// number of policies.
///
/// `cancel` interrupts a rotation at its next safe point (shutdown);
/// `retire` only stops new passes from starting, so an in-flight rotation
/// finishes under the policy it started with. Either way this returns once
/// the running passes have ended. A pass that panics is logged and its
/// policy retried with backoff; it never stops the other policies.
async fn drive_policies(
    driver: Driver,
    policies: Vec<Arc<Policy>>,
    permits: Arc<Semaphore>,
    cancel: CancellationToken,
    retire: CancellationToken,
    recheck: Duration,
) {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    let recheck = chrono::Duration::from_std(recheck).unwrap_or(chrono::Duration::MAX);
    let clock = driver.clock.clone();
    let start = clock.now();
    // (due, policy index): every policy is looked at once at start.
    let mut queue: BinaryHeap<Reverse<(DateTime<Utc>, usize)>> =
        (0..policies.len()).map(|i| Reverse((start, i))).collect();
    let mut errors = vec![0u32; policies.len()];
    let mut running: JoinSet<(usize, Result<Tick, crate::rotation::driver::DriveError>)> =
        JoinSet::new();
    let mut by_task: HashMap<tokio::task::Id, usize> = HashMap::new();
    loop {
        let stopping = retire.is_cancelled();
        // Start every due pass that a permit allows.
        if !stopping {
            let now = clock.now();
            while let Some(&Reverse((at, i))) = queue.peek() {
                if at > now {
                    break;
                }
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    break;
                };
                queue.pop();
                let (d, p, c) = (driver.clone(), policies[i].clone(), cancel.clone());
                let handle = running.spawn(async move {
                    let _permit = permit;
                    crate::notify::status(&format!("rotating policy {}", p.name));
                    (i, d.reconcile(&p, false, &c).await)
                });
                by_task.insert(handle.id(), i);
            }
        } else if running.is_empty() {
            return;
        }
        let wake = queue.peek().map(|Reverse((at, _))| *at);
        let saturated = permits.available_permits() == 0;
        let c = clock.clone();
        let sleep = async {
            match wake {
                // With every permit taken, only a finished pass can start
                // another.
                Some(at) if !saturated && !stopping => {
                    sleep_until_wall(at, move || c.now(), WALL_CHECK, &retire).await;
                }
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            Some(done) = running.join_next_with_id() => {
                let now = clock.now();
                let (i, next) = match done {
                    Ok((id, (i, tick))) => {
                        by_task.remove(&id);
                        (i, next_pass(&policies[i], tick, &mut errors[i], now, recheck))
                    }
                    Err(e) => {
                        let Some(i) = by_task.remove(&e.id()) else { continue };
                        errors[i] += 1;
                        let delay = policies[i].retry.backoff(errors[i]);
                        error!(policy = %policies[i].name, retry_in = %humantime::format_duration(delay), "policy pass panicked");
                        (i, Some(now + chrono::Duration::from_std(delay).unwrap_or_default()))
                    }
                };
                if let Some(at) = next {
                    queue.push(Reverse((at, i)));
                }
            }
            () = retire.cancelled(), if !stopping => {}
            () = sleep => {}
        }
    }
}

/// When a policy's orphans should be looked at again before the next full
/// sweep.
enum Resweep {
    /// Not before the next full sweep.
    No,
    /// Soon: the lock was held (e.g. by a crashed holder's unexpired
    /// lease), or the sweep failed.
    Soon,
    /// At this instant: unreferenced tokens were spared for being younger
    /// than `orphan_min_age` (a crash between create and stage just
    /// before a restart leaves one).
    At(DateTime<Utc>),
}

impl Resweep {
    /// When to sweep again, given the time now and the retry interval;
    /// `None` for the next full sweep.
    fn when(self, now: DateTime<Utc>, retry_every: chrono::Duration) -> Option<DateTime<Utc>> {
        match self {
            Resweep::No => None,
            Resweep::Soon => Some(now + retry_every),
            Resweep::At(at) => Some(at),
        }
    }
}

async fn sweep_one(driver: &Driver, p: &Policy) -> Resweep {
    match driver.sweep(p, false).await {
        Ok(Some(found)) => {
            if !found.is_empty() {
                warn!(policy = %p.name, revoked = found.len(), "orphan sweep revoked tokens");
            }
            match found.recheck_at {
                Some(at) => {
                    info!(policy = %p.name, at = %at, "unreferenced tokens younger than orphan_min_age; sweeping again once they are old enough");
                    Resweep::At(at)
                }
                None => Resweep::No,
            }
        }
        Ok(None) => {
            info!(policy = %p.name, "orphan sweep postponed: the policy's lock is held");
            Resweep::Soon
        }
        Err(e) => {
            warn!(policy = %p.name, error = %e, "orphan sweep failed; retrying soon");
            Resweep::Soon
        }
    }
}

/// When a generation's first full sweep runs.
#[derive(Debug, Clone, Copy)]
enum SweepFirst {
    /// At start-up: a crash's orphans are looked for at once (beside the
    /// rotations, never before them).
    Now,
    /// After a reload: the previous generation swept recently.
    AfterInterval,
}

/// Sweeps orphans of every policy every `every`, and sweeps a policy again
/// sooner when its last sweep asked for it: every `retry_every` while it
/// could not run, or once spared young tokens are old enough. So a crash's
/// orphans do not wait a whole sweep interval.
async fn sweep_loop(
    driver: Driver,
    policies: Vec<Arc<Policy>>,
    every: Duration,
    retry_every: Duration,
    first: SweepFirst,
    cancel: CancellationToken,
) {
    let clock = driver.clock.clone();
    let every = chrono::Duration::from_std(every).unwrap_or_default();
    let retry_every = chrono::Duration::from_std(retry_every).unwrap_or_default();
    let mut pending: Vec<(DateTime<Utc>, Arc<Policy>)> = Vec::new();
    let mut next_full = match first {
        SweepFirst::Now => clock.now(),
        SweepFirst::AfterInterval => clock.now() + every,
    };
    loop {
        let wake = pending
            .iter()
            .map(|(at, _)| *at)
            .fold(next_full, DateTime::min);
        let c = clock.clone();
        if !sleep_until_wall(wake, move || c.now(), WALL_CHECK, &cancel).await {
            return;
        }
        let now = clock.now();
        let batch: Vec<Arc<Policy>> = if now >= next_full {
            next_full = now + every;
            pending.clear();
            policies.clone()
        } else {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut pending)
                .into_iter()
                .partition(|(at, _)| *at <= now);
            pending = later;
            due.into_iter().map(|(_, p)| p).collect()
        };
        for p in batch {
            if cancel.is_cancelled() {
                return;
            }
            if let Some(at) = sweep_one(&driver, &p).await.when(clock.now(), retry_every) {
                pending.push((at, p));
            }
        }
    }
}

/// Options of [`run`] that are not configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub clock: Clock,
    /// Where the configuration came from; SIGHUP reloads it from here.
    /// `None` (the demo) ignores SIGHUP.
    pub config_path: Option<std::path::PathBuf>,
}

/// The tasks of one configuration generation. A reload retires the old
/// generation (its loops stop between passes) and starts a new one.
struct Generation {
    config: Arc<Config>,
    retire: CancellationToken,
    tasks: JoinSet<()>,
}

impl Generation {
    fn start(
        config: Arc<Config>,
        driver: Driver,
        shutdown: &CancellationToken,
        readiness: Arc<RwLock<Readiness>>,
        sweep_first: SweepFirst,
    ) -> Generation {
        let retire = shutdown.child_token();
        let mut tasks = JoinSet::new();
        let permits = Arc::new(Semaphore::new(config.daemon.rotation_concurrency.get()));
        let policies: Vec<Arc<Policy>> = config.policies.iter().cloned().map(Arc::new).collect();
        driver
            .metrics
            .set_policies(policies.iter().map(|p| p.name.as_str()));
        tasks.spawn(drive_policies(
            driver.clone(),
            policies.clone(),
            permits,
            shutdown.clone(),
            retire.clone(),
            config.daemon.recheck_interval,
        ));
        {
            let (d, r) = (driver.clone(), retire.clone());
            let every = config.daemon.sweep_interval;
            let retry_every = config.daemon.lock_retry_interval;
            let ps = policies.clone();
            tasks.spawn(crate::motherduck::background(sweep_loop(
                d,
                ps,
                every,
                retry_every,
                sweep_first,
                r,
            )));
        }
        {
            let (d, r, cfg) = (driver, retire.clone(), config.clone());
            tasks.spawn(async move {
                loop {
                    let clock = d.clock.clone();
                    let next = clock.now()
                        + chrono::Duration::from_std(cfg.daemon.health_interval)
                            .unwrap_or_default();
                    if !sleep_until_wall(next, move || clock.now(), WALL_CHECK, &r).await {
                        return;
                    }
                    readiness_pass(&d, &cfg, &readiness).await;
                }
            });
        }
        for conn in &config.vault_connections {
            let r = retire.clone();
            let handle = conn.spawn_token_renewal(r.clone());
            tasks.spawn(async move {
                let _ = handle.await;
            });
        }
        Generation {
            config,
            retire,
            tasks,
        }
    }
}

/// What the daemon's drivers share across configuration reloads.
struct DriverDeps {
    clock: Clock,
    metrics: Arc<Metrics>,
    acks: AckRegistry,
    alerts: Alerter,
}

impl DriverDeps {
    /// The driver for `config`.
    fn driver(&self, config: &Config) -> anyhow::Result<Driver> {
        driver_with_alerts(
            config,
            self.clock.clone(),
            self.metrics.clone(),
            self.acks.clone(),
            self.alerts.clone(),
        )
    }
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
    let (alerts, alert_rx) =
        Alerter::new(config.alerts.clone(), opts.clock.clone(), metrics.clone());
    if let Some(rx) = alert_rx {
        tokio::spawn(crate::alerts::deliver(alerts.clone(), rx, shutdown.clone()));
        let (a, c) = (alerts.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(crate::alerts::ALERTMANAGER_REFRESH);
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => a.refresh_alertmanager(),
                    () = c.cancelled() => return,
                }
            }
        });
    }
    let deps = DriverDeps {
        clock: opts.clock.clone(),
        metrics: metrics.clone(),
        acks: acks.clone(),
        alerts: alerts.clone(),
    };
    let driver = deps.driver(&config)?;
    let readiness = Arc::new(RwLock::new(Readiness::default()));

    let listener = tokio::net::TcpListener::bind(config.daemon.listen)
        .await
        .with_context(|| format!("failed to listen on `{}`", config.daemon.listen))?;
    let addr = listener.local_addr()?;
    let app = crate::http::router(
        HttpState {
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            metrics_token: config.daemon.metrics_bearer_token.clone(),
        },
        acks.clone(),
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
    // Rotations start at once; the first full sweep runs beside them, at
    // background priority (see `motherduck::background`).
    let mut current = Generation::start(
        config.clone(),
        driver,
        &shutdown,
        readiness.clone(),
        SweepFirst::Now,
    );
    let mut retired: Vec<Generation> = Vec::new();
    crate::notify::ready(&format!(
        "running {} polic{}",
        config.policies.len(),
        if config.policies.len() == 1 {
            "y"
        } else {
            "ies"
        }
    ));

    let mut watchdog = crate::notify::watchdog_interval().map(tokio::time::interval);
    let mut hangup = hangup_signal();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = async {
                match watchdog.as_mut() {
                    Some(w) => { w.tick().await; }
                    None => std::future::pending().await,
                }
            } => crate::notify::watchdog(),
            got = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if got.is_none() {
                    hangup = None;
                    continue;
                }
                let Some(path) = opts.config_path.as_deref() else {
                    info!("SIGHUP ignored: this run has no configuration file to reload");
                    continue;
                };
                crate::notify::reloading();
                match reload(path, &current.config, &deps) {
                    Ok((config, driver)) => {
                        let old = std::mem::replace(
                            &mut current,
                            Generation::start(config, driver, &shutdown, readiness.clone(), SweepFirst::AfterInterval),
                        );
                        old.retire.cancel();
                        retired.push(old);
                        metrics.config_reloads_total.with_label_values(&["success"]).inc();
                        info!(policies = current.config.policies.len(), "configuration reloaded; in-flight rotations finish under the previous policy");
                    }
                    Err(e) => {
                        metrics.config_reloads_total.with_label_values(&["failure"]).inc();
                        error!("configuration reload failed; the previous configuration keeps running:\n{e}");
                    }
                }
                crate::notify::ready("running");
            }
        }
        // Forget retired generations whose tasks have all ended.
        retired.retain_mut(|g| {
            while g.tasks.try_join_next().is_some() {}
            !g.tasks.is_empty()
        });
    }

    crate::notify::stopping();
    info!(timeout = %humantime::format_duration(current.config.daemon.shutdown_timeout), "shutting down: no new rotations; waiting for in-flight steps");
    let timeout = current.config.daemon.shutdown_timeout;
    retired.push(current);
    let drained = tokio::time::timeout(timeout, async {
        for g in &mut retired {
            while g.tasks.join_next().await.is_some() {}
        }
    })
    .await;
    if drained.is_err() {
        warn!("shutdown timeout reached; stopping in-flight work (every step resumes on restart)");
        for g in &mut retired {
            g.tasks.abort_all();
        }
    }
    let _ = http.await;
    info!(at = %Utc::now(), "stopped");
    Ok(())
}

/// SIGHUP, where the platform has it.
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

/// Loads and validates the new configuration completely, then builds its
/// driver; nothing is swapped unless both succeed.
fn reload(
    path: &std::path::Path,
    old: &Config,
    deps: &DriverDeps,
) -> anyhow::Result<(Arc<Config>, Driver)> {
    let config = crate::config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    info!("`[alerts]` and `daemon.metrics_bearer_token` changes take effect at the next restart");
    if config.daemon.listen != old.daemon.listen {
        warn!(old = %old.daemon.listen, new = %config.daemon.listen, "a new listen address takes effect only after a restart");
    }
    for w in &config.warnings {
        warn!("{w}");
    }
    let driver = deps.driver(&config)?;
    Ok((Arc::new(config), driver))
}

async fn readiness_pass(
    driver: &Driver,
    config: &Config,
    slot: &Arc<RwLock<Readiness>>,
) -> Readiness {
    let previous = slot.read().ok().map(|r| r.clone());
    let r = readiness_of(driver, config, previous.as_ref()).await;
    if let Ok(mut w) = slot.write() {
        // Changes are logged, so an outage shows in the log even when no
        // rotation is due.
        if w.ready && !r.ready {
            for c in r.checks.iter().filter(|c| !c.ok) {
                warn!(check = %c.name, reason = c.reason.as_deref().unwrap_or(""), "not ready");
            }
        } else if !w.ready && r.ready && !w.checks.is_empty() {
            info!("ready again: the admin token is accepted and every store is reachable");
        }
        *w = r.clone();
    }
    r
}
