//! The one-shot commands: validate, plan, rotate, status, sweep.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use futures_util::StreamExt as _;

use super::progress::Progress;
use super::{EXIT_FAILURE, load_config};
use crate::clock::Clock;
use crate::config::{Config, LoadOptions, Policy};
use crate::metrics::Metrics;
use crate::rotation::driver::{Driver, Tick};
use crate::rotation::plan::{self, Step};
use crate::schedule::{self, TokenTimes};
use crate::stores::JournalState;
use crate::verify::AckRegistry;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Check secret references for form only, without reading them (for
    /// linting a configuration on a machine that lacks the secrets).
    #[arg(long)]
    pub skip_secrets: bool,
    /// Also contact MotherDuck and every store, as `/readyz` does: the
    /// admin token is accepted, each destination is reachable, and (on
    /// Vault) its token has every capability a rotation needs. Changes
    /// nothing. Exits 1 if a check fails.
    #[arg(long, conflicts_with = "skip_secrets")]
    pub online: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Compute from this instant instead of now (RFC 3339, e.g.
    /// 2026-03-29T00:00:00Z), to see how a schedule behaves.
    #[arg(long, value_name = "INSTANT")]
    pub from: Option<DateTime<Utc>>,
    /// How many due times to show per policy (1 to 1000).
    #[arg(short = 'n', long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub count: u16,
    /// Only these policies (default: all).
    pub policies: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Policies to rotate.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub policies: Vec<String>,
    /// Rotate every policy.
    #[arg(long)]
    pub all: bool,
    /// Show what would happen, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also wait out the overlap period and revoke the old token, instead
    /// of leaving that to the daemon.
    #[arg(long)]
    pub wait: bool,
    /// How many policies to rotate at once (default: the configuration's
    /// `rotation_concurrency`). All of them share the one rate limit.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: Option<u16>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// List orphaned tokens without revoking them.
    #[arg(long)]
    pub dry_run: bool,
    /// How many policies to sweep at once (default: the configuration's
    /// `rotation_concurrency`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: Option<u16>,
    /// Only these policies (default: all).
    pub policies: Vec<String>,
}

pub async fn validate(path: &Path, args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let opts = LoadOptions {
        resolve_secrets: !args.skip_secrets,
    };
    let c = or_exit!(load_config(path, opts));
    for w in &c.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "{}: valid ({} policies, {} warning(s))",
        path.display(),
        c.policies.len(),
        c.warnings.len()
    );
    if !args.online {
        return Ok(ExitCode::SUCCESS);
    }
    let d = driver(&c)?;
    let r = crate::daemon::readiness(&d, &c).await;
    for check in &r.checks {
        match &check.reason {
            None if check.ok => println!("{}: ok", check.name),
            reason => println!(
                "{}: FAILED: {}",
                check.name,
                reason.as_deref().unwrap_or("no reason given")
            ),
        }
    }
    // Each policy's service account exists, so a typo is found now and
    // not at its first rotation. Only with a working admin token.
    let mut accounts_ok = true;
    let admin_ok = r.checks.iter().any(|c| c.name == "motherduck" && c.ok);
    if admin_ok {
        for p in &c.policies {
            let name = format!("service account {} ({})", p.service_account, p.name);
            match d.client.list_tokens(&p.service_account).await {
                Ok(_) => println!("{name}: ok"),
                Err(crate::motherduck::ApiError::Status { status: 404, .. }) => {
                    accounts_ok = false;
                    println!("{name}: FAILED: no such user in MotherDuck");
                }
                Err(e) => {
                    accounts_ok = false;
                    println!("{name}: FAILED: {e}");
                }
            }
        }
    }
    Ok(if r.ready && accounts_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    })
}

/// The policies named, or all; an unknown name is a usage error.
fn select<'a>(config: &'a Config, names: &[String]) -> Result<Vec<&'a Policy>, ExitCode> {
    if names.is_empty() {
        return Ok(config.policies.iter().collect());
    }
    let mut out = Vec::new();
    for n in names {
        match config.policies.iter().find(|p| &p.name == n) {
            Some(p) => out.push(p),
            None => {
                let known: Vec<&str> = config.policies.iter().map(|p| p.name.as_str()).collect();
                eprintln!("error: no policy named `{n}` (known: {})", known.join(", "));
                return Err(ExitCode::from(super::EXIT_USAGE));
            }
        }
    }
    Ok(out)
}

fn driver(config: &Config) -> anyhow::Result<Driver> {
    crate::daemon::driver_for(
        config,
        Clock::System,
        Arc::new(Metrics::new()),
        AckRegistry::default(),
    )
}

pub async fn plan(path: &Path, args: &PlanArgs) -> anyhow::Result<ExitCode> {
    let config = or_exit!(load_config(path, LoadOptions::default()));
    let policies = or_exit!(select(&config, &args.policies));
    let d = driver(&config)?;
    let now = args.from.unwrap_or_else(Utc::now);
    for p in policies {
        let obs = d.observe(p).await?;
        let times = obs.current().map(|m| TokenTimes {
            created_at: m.created_at,
            expires_at: m.expires_at,
        });
        println!("{} ({}):", p.name, p.service_account);
        let dues = schedule::upcoming(
            &p.name,
            &p.schedule,
            times.as_ref(),
            now,
            p.token_ttl,
            usize::from(args.count),
        );
        if dues.is_empty() {
            println!("  never due: no schedule, and the token does not expire");
        }
        for due in dues {
            let when = if due.at <= now {
                "due now".to_owned()
            } else {
                format!("in {}", human_delta(due.at - now))
            };
            println!("  {}  ({when})  {}", due.at.to_rfc3339(), due.detail);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rotate(path: &Path, args: &RotateArgs) -> anyhow::Result<ExitCode> {
    let config = or_exit!(load_config(path, LoadOptions::default()));
    let policies = or_exit!(select(&config, &args.policies));
    let acks = AckRegistry::default();
    let d = crate::daemon::driver_for(
        &config,
        Clock::System,
        Arc::new(Metrics::new()),
        acks.clone(),
    )?;
    let cancel = CancellationToken::new();
    {
        let c = cancel.clone();
        tokio::spawn(async move {
            super::shutdown_signal().await;
            c.cancel();
        });
    }
    // A policy verified by a consumer's acknowledgement needs the route
    // the consumer calls, on the address the configuration gives it.
    let wants_acks = policies.iter().any(|p| {
        p.hooks
            .iter()
            .any(|h| matches!(h, crate::verify::HookSpec::Ack(_)))
    });
    if wants_acks && !args.dry_run {
        let listen = config.daemon.listen;
        match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => {
                let app = crate::verify::ack_router(acks.clone());
                let stop = cancel.clone();
                println!(
                    "receiving acknowledgements on http://{listen}/v1/rotations/{{rotation_id}}/ack"
                );
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async move { stop.cancelled().await })
                        .await;
                });
            }
            Err(e) => {
                eprintln!(
                    "error: a policy is verified by an acknowledgement, which consumers send to `{listen}` (`daemon.listen`), and that address cannot be used ({e}); a running daemon probably holds it: let it rotate, or stop it first. Nothing was rotated."
                );
                return Ok(ExitCode::from(EXIT_FAILURE));
            }
        }
    }
    let out = Progress::new(
        policies.len(),
        if args.dry_run { "checked" } else { "rotated" },
    );
    // Policies rotate side by side, as many at once as the daemon would
    // (`rotation_concurrency`), under the client's one rate limit; each
    // policy's lines are printed as it gets there.
    let (d, cancel) = (&d, &cancel);
    Ok(each_policy(&config, args.concurrency, policies, &out, |p| {
        rotate_one(d, p, args, cancel, &out)
    })
    .await)
}

/// Runs `one` for every policy, `concurrency` at once (by default as many
/// as the daemon would: `rotation_concurrency`), counting each as it
/// finishes; fails when any of them returned `false`.
async fn each_policy<'a, F, Fut>(
    config: &Config,
    concurrency: Option<u16>,
    policies: Vec<&'a Policy>,
    out: &Progress,
    one: F,
) -> ExitCode
where
    F: Fn(&'a Policy) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let one = &one;
    let results: Vec<bool> = futures_util::stream::iter(policies)
        .map(|p| async move {
            let ok = one(p).await;
            out.finished(ok);
            ok
        })
        .buffer_unordered(concurrency.map_or(config.daemon.rotation_concurrency.get(), usize::from))
        .collect()
        .await;
    out.done();
    if results.iter().any(|ok| !ok) {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    }
}

/// Rotates one policy for `rotate`, printing what happens; `false` when it
/// did not rotate.
async fn rotate_one(
    d: &Driver,
    p: &Policy,
    args: &RotateArgs,
    cancel: &CancellationToken,
    out: &Progress,
) -> bool {
    let mut ok = true;
    if args.dry_run {
        let obs = match d.observe(p).await {
            Ok(obs) => obs,
            Err(e) => {
                out.say(format!("{}: failed: {e}", p.name));
                return false;
            }
        };
        let what = match &obs.step {
            Step::Wait { .. } | Step::Begin { .. } => {
                "would create a new token, stage and promote it in every destination, verify it, and revoke the old one after the overlap".to_owned()
            }
            other => format!("would resume the unfinished rotation: {}", describe_step(other)),
        };
        out.say(format!("{}: {what}", p.name));
        return true;
    }
    out.say(format!("{}: rotating", p.name));
    let before_journal = d
        .observe(p)
        .await
        .ok()
        .and_then(|o| plan::last_journal(&o.views).cloned());
    let before = before_journal.as_ref().map(|j| j.rotation_id.clone());
    // Whether the last rotation had already verified its new token: a
    // rotation this call resumes and verifies is this call's rotation.
    let before_verified = before_journal
        .as_ref()
        .is_some_and(|j| j.state == JournalState::Verified);
    // Whether the last rotation was unfinished short of its overlap:
    // then this call resumes it, and that is the rotation it reports.
    let resumes = before_journal.as_ref().is_some_and(|j| {
        !matches!(
            j.state,
            JournalState::Verified | JournalState::Done | JournalState::RolledBack
        )
    });
    let mut result = d.reconcile(p, true, cancel).await;
    // An earlier rotation still in its overlap period comes first: its
    // old token is revoked when the overlap ends, and only then can
    // this rotation begin (with --wait, it does).
    let mut behind_earlier = false;
    if matches!(&result, Ok(Tick::Wait { why, .. }) if why.starts_with("overlap")) {
        let last = d
            .observe(p)
            .await
            .ok()
            .and_then(|o| plan::last_journal(&o.views).map(|j| j.rotation_id.clone()));
        behind_earlier = before_verified && last.is_some() && last == before;
    }
    loop {
        match &result {
            Ok(Tick::Wait { until, why }) if args.wait && why.starts_with("overlap") => {
                out.say(format!(
                    "{}: waiting until {until} before revoking the old token",
                    p.name
                ));
                let clock = d.clock.clone();
                if !schedule::sleep_until_wall(
                    *until,
                    move || clock.now(),
                    crate::daemon::WALL_CHECK,
                    cancel,
                )
                .await
                {
                    break;
                }
                result = d.reconcile(p, behind_earlier, cancel).await;
                behind_earlier = false;
            }
            _ => break,
        }
    }
    match result {
        Err(e) => {
            ok = false;
            out.say(format!("{}: failed: {e}", p.name));
        }
        Ok(Tick::Busy { .. }) => {
            ok = false;
            out.say(format!(
                "{}: another replica holds the lock; not rotated",
                p.name
            ));
        }
        Ok(Tick::Stopped) => {
            ok = false;
            out.say(format!(
                "{}: interrupted; the rotation resumes on the next run",
                p.name
            ));
        }
        Ok(Tick::Wait { until, why }) => {
            let obs = match d.observe(p).await {
                Ok(obs) => obs,
                Err(e) => {
                    out.say(format!("{}: failed: {e}", p.name));
                    return false;
                }
            };
            let last = plan::last_journal(&obs.views).cloned();
            match last {
                Some(j)
                    if Some(&j.rotation_id) != before.as_ref()
                        || before.is_none()
                        || resumes =>
                {
                    match j.state {
                        JournalState::RolledBack => {
                            ok = false;
                            let kept = if j.previous_token_id.is_some() {
                                "the old token is current"
                            } else {
                                "no token is stored yet"
                            };
                            out.say(format!(
                                "{}: rolled back, {kept}: {}",
                                p.name,
                                j.last_error.as_deref().unwrap_or("unknown error")
                            ));
                        }
                        JournalState::Done if j.previous_token_id.is_none() => out.say(format!(
                            "{}: rotated: token {} is current (the policy's first token)",
                            p.name, j.new_token_id
                        )),
                        JournalState::Done => out.say(format!(
                            "{}: rotated: token {} is current, the old token is revoked",
                            p.name, j.new_token_id
                        )),
                        _ => out.say(format!(
                            "{}: rotated: token {} is current; the old token stays valid until {until} ({why}) and is revoked then by the daemon, or now with --wait",
                            p.name, j.new_token_id
                        )),
                    }
                }
                Some(j) if why.starts_with("overlap") => {
                    ok = false;
                    out.say(format!(
                        "{}: not rotated: rotation {} is in its overlap period until {until}; its old token is revoked then, and a new rotation can begin. Run `rotate` again after that, or `rotate --wait` to wait for it and rotate",
                        p.name, j.rotation_id
                    ));
                }
                _ => {
                    ok = false;
                    match d.unrecorded_failure(&p.name) {
                        // A first token that failed leaves no record
                        // to report it from.
                        Some(f) if why.starts_with("retry after") => out.say(format!(
                            "{}: failed: {}; no token is stored yet; the next attempt may begin at {}",
                            p.name, f.last_error, f.retry_at
                        )),
                        _ => out.say(format!("{}: no rotation happened ({why})", p.name)),
                    }
                }
            }
        }
    }
    ok
}

fn describe_step(s: &Step) -> String {
    match s {
        Step::Wait { until, .. } => format!("wait until {until}"),
        Step::Begin { why, .. } => format!("begin ({why})"),
        Step::Stage { journal, .. } => format!("stage rotation {}", journal.rotation_id),
        Step::Promote { journal, .. } => format!("promote rotation {}", journal.rotation_id),
        Step::Verify { journal } => format!("verify rotation {}", journal.rotation_id),
        Step::MarkVerified { journal, .. } => {
            format!("record verification of rotation {}", journal.rotation_id)
        }
        Step::Settle { journal, .. } => {
            format!("finish promoting rotation {}", journal.rotation_id)
        }
        Step::RevokeOld { journal } => format!(
            "revoke the old token {} of rotation {}",
            journal.previous_token_id.as_deref().unwrap_or("-"),
            journal.rotation_id
        ),
        Step::ContinueRollback { journal, .. } => {
            format!("finish rolling back rotation {}", journal.rotation_id)
        }
        Step::Inconsistent { reason } => format!("blocked: inconsistent records: {reason}"),
    }
}

/// What `status` reports per policy.
#[derive(Debug, Serialize)]
struct PolicyStatus {
    policy: String,
    service_account: String,
    token_id: Option<String>,
    token_created_at: Option<DateTime<Utc>>,
    token_age_seconds: Option<i64>,
    token_expires_at: Option<DateTime<Utc>>,
    next_due: Option<DateTime<Utc>>,
    next_due_reason: Option<String>,
    /// `idle`, or the state of the unfinished rotation.
    state: String,
    rotation_id: Option<String>,
    revoke_old_after: Option<DateTime<Utc>>,
    last_error: Option<String>,
    consecutive_failures: u32,
    destinations: Vec<DestinationStatus>,
    /// The reload actions and what the latest rotation's journal says of
    /// them; `None` for a policy without actions.
    #[serde(skip_serializing_if = "Option::is_none")]
    reload: Option<ReloadStatus>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct ReloadStatus {
    /// `kind: target` of each action, in order.
    actions: Vec<String>,
    /// The rotation the rest is about: the unfinished one, else the last.
    rotation_id: Option<String>,
    /// `promote` or `rollback`: what consumers were (or are to be) told of.
    cause: Option<&'static str>,
    /// When consumers were told; `None` while still to do.
    told_at: Option<DateTime<Utc>>,
    /// Actions that failed but were allowed to.
    note: Option<String>,
}

#[derive(Debug, Serialize)]
struct DestinationStatus {
    destination: String,
    current_token_id: Option<String>,
    pending_token_id: Option<String>,
    previous_token_id: Option<String>,
}

/// What `status --json` prints: which build answered, and the policies.
#[derive(Serialize)]
struct StatusReport<'a> {
    build: crate::build_info::BuildInfo,
    policies: &'a [PolicyStatus],
}

pub async fn status(path: &Path, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let config = or_exit!(load_config(path, LoadOptions::default()));
    let d = driver(&config)?;
    let mut out = Vec::new();
    let mut any_error = false;
    // Every policy at once, each cut off after a deadline: a store that
    // does not answer must not hold `status` for a request timeout per
    // destination.
    let deadline = crate::daemon::CHECK_DEADLINE;
    let observed = futures_util::future::join_all(config.policies.iter().map(|p| {
        let d = &d;
        async move {
            match tokio::time::timeout(deadline, d.observe(p)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!(
                    "the stores gave no answer within {}",
                    humantime::format_duration(deadline)
                )),
            }
        }
    }))
    .await;
    for (p, observed) in config.policies.iter().zip(observed) {
        let mut s = PolicyStatus {
            policy: p.name.clone(),
            service_account: p.service_account.clone(),
            token_id: None,
            token_created_at: None,
            token_age_seconds: None,
            token_expires_at: None,
            next_due: None,
            next_due_reason: None,
            state: "unknown".into(),
            rotation_id: None,
            revoke_old_after: None,
            last_error: None,
            consecutive_failures: 0,
            destinations: Vec::new(),
            reload: (!p.reload.is_empty()).then(|| ReloadStatus {
                actions: p
                    .reload
                    .iter()
                    .map(|r| format!("{}: {}", r.action.kind(), r.action.label()))
                    .collect(),
                rotation_id: None,
                cause: None,
                told_at: None,
                note: None,
            }),
            error: None,
        };
        match observed {
            Err(e) => {
                any_error = true;
                s.error = Some(e);
            }
            Ok(obs) => {
                if let Some(c) = obs.current() {
                    s.token_id = Some(c.token_id.clone());
                    s.token_created_at = Some(c.created_at);
                    s.token_age_seconds = Some((obs.now - c.created_at).num_seconds());
                    s.token_expires_at = c.expires_at;
                }
                if let Some(n) = &obs.next {
                    s.next_due = Some(n.at);
                    s.next_due_reason = Some(n.detail.clone());
                }
                // Due now whatever the schedule says: a destination lost
                // its record, or the destinations disagree.
                if let Step::Begin { why, .. } = &obs.step {
                    s.next_due = Some(obs.now);
                    s.next_due_reason = Some(why.clone());
                }
                match plan::active_journal(&obs.views) {
                    Ok(Some(j)) => {
                        s.state = format!("rotating ({})", j.state.as_str());
                        s.rotation_id = Some(j.rotation_id.clone());
                        s.revoke_old_after = j.revoke_after;
                    }
                    Ok(None) => s.state = "idle".into(),
                    Err(reason) => {
                        any_error = true;
                        s.state = "inconsistent".into();
                        s.error = Some(reason);
                    }
                }
                if let Some(j) = plan::last_journal(&obs.views)
                    && j.state == JournalState::RolledBack
                {
                    s.last_error = j.last_error.clone();
                    s.consecutive_failures = j.failures;
                }
                let latest = plan::active_journal(&obs.views)
                    .ok()
                    .flatten()
                    .or_else(|| plan::last_journal(&obs.views).cloned());
                if let (Some(r), Some(j)) = (s.reload.as_mut(), latest) {
                    r.rotation_id = Some(j.rotation_id.clone());
                    r.cause = Some(if j.state == JournalState::RolledBack {
                        "rollback"
                    } else {
                        "promote"
                    });
                    r.told_at = j.reloaded_at;
                    r.note = j.reload_note.clone();
                }
                for (i, v) in obs.views.iter().enumerate() {
                    s.destinations.push(DestinationStatus {
                        destination: p.destinations[i].label(),
                        current_token_id: v.current.as_ref().map(|r| r.meta.token_id.clone()),
                        pending_token_id: v.pending.as_ref().map(|r| r.meta.token_id.clone()),
                        previous_token_id: v.previous.as_ref().map(|r| r.meta.token_id.clone()),
                    });
                }
            }
        }
        out.push(s);
    }
    if args.json {
        let report = StatusReport {
            build: crate::build_info::BUILD,
            policies: &out,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for s in &out {
            print_status(s);
        }
    }
    Ok(if any_error {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_status(s: &PolicyStatus) {
    println!("{} ({})", s.policy, s.service_account);
    if let Some(e) = &s.error {
        println!("  error:       {e}");
    }
    match (&s.token_id, s.token_created_at) {
        (Some(id), Some(c)) => {
            let age = s.token_age_seconds.map_or_else(String::new, |a| {
                format!(" ({} ago)", human_delta(chrono::Duration::seconds(a)))
            });
            let exp = s
                .token_expires_at
                .map_or_else(|| "never".to_owned(), |e| e.to_rfc3339());
            println!(
                "  token:       {id}, created {}{age}, expires {exp}",
                c.to_rfc3339()
            );
        }
        _ => println!("  token:       none stored"),
    }
    match (&s.next_due, &s.next_due_reason) {
        (Some(n), Some(r)) => println!("  next due:    {} ({r})", n.to_rfc3339()),
        _ => println!("  next due:    never"),
    }
    let mut state = s.state.clone();
    if let Some(r) = &s.rotation_id {
        state.push_str(&format!(", rotation {r}"));
    }
    if let Some(t) = s.revoke_old_after {
        state.push_str(&format!(", old token revoked after {}", t.to_rfc3339()));
    }
    println!("  state:       {state}");
    match &s.last_error {
        Some(e) => println!(
            "  last error:  {e} ({} consecutive failure(s))",
            s.consecutive_failures
        ),
        None => println!("  last error:  -"),
    }
    if let Some(r) = &s.reload {
        let told = match (r.told_at, r.cause, &r.rotation_id) {
            (Some(t), Some(c), Some(id)) => {
                format!(
                    "consumers told of rotation {id} ({c}) at {}",
                    t.to_rfc3339()
                )
            }
            (None, Some(c), Some(id)) => format!("consumers not told of rotation {id} ({c})"),
            _ => "no rotation yet".to_owned(),
        };
        println!("  reload:      {told}");
        if let Some(n) = &r.note {
            println!("               failed, carried on: {n}");
        }
        for a in &r.actions {
            println!("               {a}");
        }
    }
    for d in &s.destinations {
        println!(
            "  {}: current {}{}{}",
            d.destination,
            d.current_token_id.as_deref().unwrap_or("-"),
            d.pending_token_id
                .as_ref()
                .map_or_else(String::new, |p| format!(", pending {p}")),
            d.previous_token_id
                .as_ref()
                .map_or_else(String::new, |p| format!(", previous {p}")),
        );
    }
}

pub async fn sweep(path: &Path, args: &SweepArgs) -> anyhow::Result<ExitCode> {
    let config = or_exit!(load_config(path, LoadOptions::default()));
    let policies = or_exit!(select(&config, &args.policies));
    let d = driver(&config)?;
    let out = Progress::new(policies.len(), "swept");
    let d = &d;
    Ok(each_policy(&config, args.concurrency, policies, &out, |p| {
        sweep_one(d, p, args.dry_run, &out)
    })
    .await)
}

/// Sweeps one policy for `sweep`, printing what it finds; `false` when the
/// sweep failed.
async fn sweep_one(d: &Driver, p: &Policy, dry_run: bool, out: &Progress) -> bool {
    match d.sweep(p, dry_run).await {
        Ok(None) => out.say(format!("{}: skipped, a rotation holds the lock", p.name)),
        Ok(Some(found)) if found.is_empty() => {
            out.say(format!("{}: no orphaned tokens", p.name));
        }
        Ok(Some(found)) => {
            for t in found.iter() {
                out.say(format!(
                    "{}: {} {} ({}, created {})",
                    p.name,
                    if dry_run { "orphan" } else { "revoked orphan" },
                    t.id,
                    t.name.as_deref().unwrap_or(""),
                    t.created_ts.to_rfc3339()
                ));
            }
        }
        Err(e) => {
            out.say(format!("{}: sweep failed: {e}", p.name));
            return false;
        }
    }
    true
}

/// "3h 5m", "42s": the two largest units.
pub fn human_delta(d: chrono::Duration) -> String {
    let secs = d.num_seconds().unsigned_abs();
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut parts = Vec::new();
    let mut rest = secs;
    for (n, u) in units {
        if rest >= n {
            parts.push(format!("{}{u}", rest / n));
            rest %= n;
        }
        if parts.len() == 2 {
            break;
        }
    }
    if parts.is_empty() {
        "0s".to_owned()
    } else {
        parts.join(" ")
    }
}
