//! `[[policy]]`: one rotation policy, its schedule, retries and the checks
//! that tie them to the token's lifetime (and, on an AWS lock, to Secrets
//! Manager's version quota).

use std::collections::BTreeMap;
use std::time::Duration;

use super::destinations::Target;
use super::raw::{RawHook, RawPolicy, RawRetry};
use super::span::FieldPath;
use super::stores::StoreDef;
use super::validator::{Validator, valid_name};
use crate::motherduck::TokenType;
use crate::rotation::plan::RetryPolicy;
use crate::schedule::{Cadence, ScheduleSpec};
use crate::stores::Destination;
use crate::stores::aws;
use crate::stores::vault::KvVersion;
use crate::verify::HookSpec;

/// One rotation policy, validated.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub service_account: String,
    pub token_type: TokenType,
    /// `None`: tokens never expire.
    pub token_ttl: Option<Duration>,
    pub token_name_prefix: String,
    pub schedule: ScheduleSpec,
    /// How long the old token stays valid after the new one is verified.
    pub overlap: Duration,
    pub hooks: Vec<HookSpec>,
    /// What tells consumers of a new (or restored) token, in order: run
    /// after promotion and before verification, and after a rollback.
    pub reload: Vec<crate::reload::ReloadSpec>,
    pub destinations: Vec<Destination>,
    /// Where the policy's coordination lock is taken (invariant 4): its
    /// first destination, unless the policy's `lock` names another place
    /// (then used only for locking). Never a Vault KV v1 destination, which
    /// has no check-and-set to lock with.
    pub lock: Destination,
    pub retry: RetryPolicy,
}

impl Policy {
    /// The token name for a rotation: `<prefix>.<policy>.<rotation id>`.
    /// Dots are not allowed in prefixes or policy names, so the name parses
    /// back unambiguously; orphans are recognised by it.
    pub fn token_name(&self, rotation_id: &str) -> String {
        format!("{}{rotation_id}", self.token_name_stem())
    }

    /// `<prefix>.<policy>.`, the start of every token name of this policy.
    pub fn token_name_stem(&self) -> String {
        format!("{}.{}.", self.token_name_prefix, self.name)
    }

    /// The rotation id in a token name of this policy, if it is one.
    pub fn rotation_id_of<'a>(&self, token_name: &'a str) -> Option<&'a str> {
        let stem = self.token_name_stem();
        token_name
            .strip_prefix(stem.as_str())
            .filter(|r| !r.is_empty() && !r.contains('.'))
    }
}

impl Validator<'_> {
    pub(super) fn policy(
        &mut self,
        p: &RawPolicy,
        raw_hooks: &[Option<RawHook>],
        path: &FieldPath,
        stores: &BTreeMap<String, StoreDef>,
    ) -> Option<(Policy, Vec<Target>, Target)> {
        let before = self.errors.len();
        if !valid_name(&p.name) || p.name.len() > 64 {
            self.error(
                &path.key("name"),
                format!(
                    "policy name `{}` must be 1-64 characters of a-z, 0-9, `_` and `-`",
                    p.name
                ),
            );
        }
        if let Err(issues) = crate::simulator::validate::username(
            Some(&serde_json::json!(p.service_account)),
            &["service_account"],
        ) {
            // The API's messages read "Username must …"; say "it must …".
            let reasons: Vec<String> = issues
                .into_iter()
                .map(|i| match i.message.strip_prefix("Username ") {
                    Some(rest) => format!("it {rest}"),
                    None => i.message,
                })
                .collect();
            self.error(
                &path.key("service_account"),
                format!(
                    "`{}` is not a valid service account name: {}",
                    p.service_account,
                    reasons.join("; ")
                ),
            );
        }
        let token_type = match p.token_type.as_deref().unwrap_or("read_write") {
            "read_write" => TokenType::ReadWrite,
            "read_scaling" => TokenType::ReadScaling,
            other => {
                self.error(
                    &path.key("token_type"),
                    format!("`{other}` is not one of read_write, read_scaling"),
                );
                TokenType::ReadWrite
            }
        };
        // An invalid TTL is reported once and then treated as absent, so
        // the checks that compare against it do not report follow-on errors.
        let token_ttl = self
            .opt_duration(&p.token_ttl, &path.key("token_ttl"))
            .filter(|ttl| {
                let ok = (300..=31_536_000).contains(&ttl.as_secs()) && ttl.subsec_nanos() == 0;
                if !ok {
                    self.error(
                        &path.key("token_ttl"),
                        format!(
                            "`{}` is outside what MotherDuck accepts (whole seconds from 5m to 365d)",
                            p.token_ttl.as_deref().unwrap_or_default()
                        ),
                    );
                }
                ok
            });
        let prefix = p
            .token_name_prefix
            .clone()
            .unwrap_or_else(|| "rotator".to_owned());
        if prefix.is_empty()
            || prefix.len() > 32
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            self.error(
                &path.key("token_name_prefix"),
                format!("`{prefix}` must be 1-32 characters of letters, digits, `_` and `-`"),
            );
        }
        let overlap = self.duration(&p.overlap, &path.key("overlap"), Duration::from_secs(300));
        let schedule = self.schedule(p, path, token_ttl, overlap);

        let mut hooks = Vec::new();
        for (i, h) in raw_hooks.iter().enumerate() {
            if let Some(h) = h
                && let Some(h) = self.hook(h, &path.key("verify").index(i))
            {
                hooks.push(h);
            }
        }
        let mut reload = Vec::new();
        for i in 0..p.reload.len() {
            if let Some(r) = self.reload_action(&path.key("reload").index(i)) {
                reload.push(r);
            }
        }
        if p.verify.is_empty() {
            self.warn(
                &path.key("name"),
                format!(
                    "policy `{}` has no verification hook; it relies on the overlap period ({}) alone",
                    p.name,
                    humantime::format_duration(overlap)
                ),
            );
        }

        let mut destinations = Vec::new();
        let mut targets = Vec::new();
        let mut all_built = true;
        if p.destinations.is_empty() {
            self.error(
                &path.key("name"),
                "a policy needs at least one entry in `destinations`",
            );
        }
        for (i, d) in p.destinations.iter().enumerate() {
            let dpath = path.key("destinations").index(i);
            match self.destination(
                &d.store,
                &d.path,
                d.bare_token_file.as_deref(),
                &dpath,
                stores,
            ) {
                Some((mut dest, mut target)) => {
                    if let Some(env) = &d.env_file {
                        self.env_file(&mut dest, &mut target, env, d, &dpath);
                    }
                    destinations.push(dest);
                    targets.push(target);
                }
                None => all_built = false,
            }
        }
        let lock = match &p.lock {
            Some(l) => {
                let lpath = path.key("lock");
                let lock = self.destination(&l.store, &l.path, None, &lpath, stores);
                if let Some((Destination::Vault(v), _)) = &lock
                    && v.kv_version() == KvVersion::V1
                {
                    self.error(
                        &lpath.key("store"),
                        format!(
                            "store `{}` is a Vault KV v1 mount, which has no check-and-set and cannot hold a lock; put the lock on a file, KV v2 or AWS store",
                            l.store
                        ),
                    );
                }
                lock
            }
            None => {
                let first = destinations.first().zip(targets.first());
                if let Some((Destination::Vault(v), _)) = first
                    && v.kv_version() == KvVersion::V1
                {
                    self.error(
                        &path.key("destinations").index(0).key("store"),
                        format!(
                            "the policy's lock would be on its first destination, but store `{}` is a Vault KV v1 mount, which has no check-and-set and cannot hold a lock; set `lock = {{ store = \"...\", path = \"...\" }}` on the policy to put it on a file, KV v2 or AWS store",
                            p.destinations[0].store
                        ),
                    );
                }
                first.map(|(d, t)| (d.clone(), t.clone()))
            }
        };

        let retry = self.retry(p.retry.as_ref(), &path.key("retry"));
        // An expiring token is replaced `rotate_before_expiry` ahead of its
        // expiry; the rotation then verifies (up to its longest deadline),
        // may retry a step, and keeps the old token for `overlap`. All of
        // it has to fit, or a rollback would restore a token about to
        // expire and the overlap would end after it.
        if let (Some(_), Some(ahead)) = (
            token_ttl,
            schedule.as_ref().and_then(|s| s.rotate_before_expiry),
        ) && ahead > overlap
        {
            let longest = hooks
                .iter()
                .map(HookSpec::deadline)
                .max()
                .unwrap_or_default();
            let budget: Duration = (1..retry.max_attempts).map(|n| retry.backoff(n)).sum();
            let needed = overlap.saturating_add(longest).saturating_add(budget);
            if ahead <= needed {
                let fmt = |d: Duration| humantime::format_duration(d).to_string();
                self.error(
                    &path.key("rotate_before_expiry"),
                    format!(
                        "`{}` must be longer than `overlap` (`{}`) + the longest verification deadline (`{}`) + the step retries (`{}`) = `{}`: otherwise the old token can expire before the rotation is verified and its overlap is over",
                        fmt(ahead),
                        fmt(overlap),
                        fmt(longest),
                        fmt(budget),
                        fmt(needed)
                    ),
                );
            }
        }
        if self.errors.len() > before || !all_built {
            return None;
        }
        let (lock, lock_target) = lock?;
        if let (Destination::Aws(d), Some(schedule)) = (&lock, &schedule) {
            self.aws_lock_budget(p, path, d, schedule, token_ttl, &hooks, &retry);
            if self.errors.len() > before {
                return None;
            }
        }
        let policy = Policy {
            name: p.name.clone(),
            service_account: p.service_account.clone(),
            token_type,
            token_ttl,
            token_name_prefix: prefix,
            schedule: schedule?,
            overlap,
            hooks,
            reload,
            destinations,
            lock,
            retry,
        };
        Some((policy, targets, lock_target))
    }

    /// Secrets Manager accepts about 100 new versions of a secret within 24
    /// hours, and every lease on an AWS lock writes versions of
    /// `<name>.lock`: one when taken (twice per rotation: the rotation, and
    /// the revocation after the overlap) and one per renewal, every third
    /// of `lock_ttl`, for as long as a pass can last (the longest
    /// verification deadline plus the step retries). Refuses a policy whose
    /// worst day exceeds the store's `version_budget`.
    #[allow(clippy::too_many_arguments)]
    fn aws_lock_budget(
        &mut self,
        p: &RawPolicy,
        path: &FieldPath,
        lock: &aws::AwsDestination,
        schedule: &ScheduleSpec,
        token_ttl: Option<Duration>,
        hooks: &[HookSpec],
        retry: &RetryPolicy,
    ) {
        let day = chrono::Duration::days(1);
        let start = chrono::DateTime::UNIX_EPOCH + chrono::Duration::days(20_000);
        let token = crate::schedule::TokenTimes {
            created_at: start,
            expires_at: token_ttl
                .and_then(|t| chrono::Duration::from_std(t).ok())
                .map(|t| start + t),
        };
        let budget = u64::from(lock.version_budget());
        // Enough rotations to see any schedule over the budget.
        let rotations = crate::schedule::upcoming(
            &p.name,
            schedule,
            Some(&token),
            start,
            token_ttl,
            usize::try_from(budget)
                .unwrap_or(usize::MAX)
                .saturating_add(1),
        )
        .iter()
        .filter(|d| d.at.max(start) <= start + day)
        .count() as u64;
        let longest = hooks
            .iter()
            .map(HookSpec::deadline)
            .max()
            .unwrap_or_default();
        let retries: Duration = (1..retry.max_attempts).map(|n| retry.backoff(n)).sum();
        let pass = longest.saturating_add(retries);
        let every = (lock.lock_ttl() / 3).max(Duration::from_millis(1));
        let renewals =
            u64::try_from(pass.as_nanos().div_ceil(every.as_nanos())).unwrap_or(u64::MAX);
        let worst = rotations.saturating_mul(renewals.saturating_add(2));
        if worst > budget {
            self.error(
                &path.key("name"),
                format!(
                    "in a day this policy can write about {worst} versions of the AWS lock secret `{}` ({rotations} rotations, each taking the lock twice and renewing it up to {renewals} times over a pass of up to {}), above the {budget} new versions Secrets Manager accepts within 24 hours: rotate less often, shorten verification deadlines or retries, or lengthen `lock_ttl` (or, for a service without that quota, raise the store's `version_budget`)",
                    lock.lock_name(),
                    humantime::format_duration(pass)
                ),
            );
        }
    }

    fn schedule(
        &mut self,
        p: &RawPolicy,
        path: &FieldPath,
        ttl: Option<Duration>,
        overlap: Duration,
    ) -> Option<ScheduleSpec> {
        let before = self.errors.len();
        let spath = path.key("schedule");
        let cadence = match &p.schedule {
            None => None,
            Some(s) => match (&s.cron, &s.interval) {
                (Some(_), Some(_)) => {
                    self.error(&spath, "give either `cron` or `interval`, not both");
                    None
                }
                (None, None) => {
                    self.error(
                        &spath,
                        "give `cron` (with an optional `timezone`) or `interval`",
                    );
                    None
                }
                (Some(expr), None) => {
                    match crate::schedule::parse_cron(expr, s.timezone.as_deref().unwrap_or("UTC"))
                    {
                        Ok(c) => Some(Cadence::Cron(c)),
                        Err(e) => {
                            let field = if e.contains("time zone") {
                                "timezone"
                            } else {
                                "cron"
                            };
                            self.error(&spath.key(field), e);
                            None
                        }
                    }
                }
                (None, Some(iv)) => {
                    if s.timezone.is_some() {
                        self.error(&spath.key("timezone"), "`timezone` applies to `cron` only");
                    }
                    match self.opt_duration(&Some(iv.clone()), &spath.key("interval")) {
                        Some(d) if d < Duration::from_secs(1) => {
                            self.error(&spath.key("interval"), "must be at least 1s");
                            None
                        }
                        Some(d) => Some(Cadence::Interval(d)),
                        None => None,
                    }
                }
            },
        };
        let jitter = self.duration(&p.jitter, &path.key("jitter"), Duration::ZERO);
        let mut windows = Vec::new();
        for (i, w) in p.windows.iter().enumerate() {
            let wpath = path.key("windows").index(i);
            match crate::schedule::parse_window(
                &w.days,
                &w.start,
                &w.end,
                w.timezone.as_deref().unwrap_or("UTC"),
            ) {
                Ok(w) => windows.push(w),
                Err(e) => {
                    let field = window_error_field(&e);
                    self.error(&field.map_or(wpath.clone(), |f| wpath.key(f)), e);
                }
            }
        }
        let rbe_path = path.key("rotate_before_expiry");
        let mut rotate_before_expiry = self.opt_duration(&p.rotate_before_expiry, &rbe_path);
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        let rbe_invalid = p.rotate_before_expiry.is_some() && rotate_before_expiry.is_none();
        if let Some(ttl) = ttl.filter(|_| !rbe_invalid) {
            // Expiring tokens always rotate before they expire; a third of
            // the lifetime leaves room for retries and the overlap.
            let defaulted = rotate_before_expiry.is_none() && p.rotate_before_expiry.is_none();
            let before = *rotate_before_expiry.get_or_insert(ttl / 3);
            let what = if defaulted {
                format!("the default (a third of `token_ttl`, `{}`)", fmt(before))
            } else {
                format!("`{}`", fmt(before))
            };
            if before >= ttl {
                self.error(
                    &rbe_path,
                    format!("{what} must be shorter than `token_ttl` (`{}`)", fmt(ttl)),
                );
            } else if before <= overlap {
                let fix = if defaulted {
                    "; set `rotate_before_expiry` longer than `overlap`, or shorten `overlap`"
                } else {
                    ""
                };
                self.error(
                    &rbe_path,
                    format!(
                        "{what} must be longer than `overlap` (`{}`): the old token has to outlive the overlap period after the rotation starts{fix}",
                        fmt(overlap)
                    ),
                );
            }
        } else if p.rotate_before_expiry.is_some() && p.token_ttl.is_none() {
            self.warn(
                &rbe_path,
                "has no effect: `token_ttl` is not set, tokens never expire",
            );
        }
        if p.schedule.is_none() && p.token_ttl.is_none() {
            self.error(
                &path.key("name"),
                "nothing would ever make this policy due: set `schedule`, or `token_ttl` for expiry-driven rotation",
            );
        }
        if self.errors.len() > before {
            return None;
        }
        Some(ScheduleSpec {
            cadence,
            jitter,
            windows,
            rotate_before_expiry,
        })
    }

    fn retry(&mut self, raw: Option<&RawRetry>, path: &FieldPath) -> RetryPolicy {
        let max_attempts = raw.and_then(|r| r.max_attempts).unwrap_or(3);
        if max_attempts == 0 {
            self.error(&path.key("max_attempts"), "must be at least 1");
        }
        let initial = self.duration(
            &raw.and_then(|r| r.initial_backoff.clone()),
            &path.key("initial_backoff"),
            Duration::from_secs(30),
        );
        let max = self.duration(
            &raw.and_then(|r| r.max_backoff.clone()),
            &path.key("max_backoff"),
            Duration::from_secs(3600),
        );
        if initial.is_zero() {
            self.error(&path.key("initial_backoff"), "must be greater than zero");
        }
        if max < initial {
            self.error(
                &path.key("max_backoff"),
                "must not be less than `initial_backoff`",
            );
        }
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            initial_backoff: initial,
            max_backoff: max,
        }
    }
}

/// Which window setting a [`crate::schedule::parse_window`] error is about,
/// from its wording; `None` leaves the error on the window as a whole.
fn window_error_field(message: &str) -> Option<&'static str> {
    if message.starts_with("unknown day") || message.contains("at least one day") {
        Some("days")
    } else if message.contains("equals its end") || message.starts_with("invalid window end") {
        Some("end")
    } else if message.starts_with("invalid window start") {
        Some("start")
    } else if message.starts_with("unknown time zone") {
        Some("timezone")
    } else {
        None
    }
}

impl Validator<'_> {
    /// Adds the env file `name` to a file destination (reported when the
    /// store is not a file store, or the name is not a plain file name of
    /// its own).
    fn env_file(
        &mut self,
        dest: &mut Destination,
        target: &mut Target,
        name: &str,
        raw: &super::raw::RawDestination,
        dpath: &FieldPath,
    ) {
        let Destination::File(f) = dest else {
            self.error(
                &dpath.key("env_file"),
                format!(
                    "applies to file stores only, and store `{}` is of type `{}`",
                    raw.store,
                    dest.kind()
                ),
            );
            return;
        };
        if !super::validator::plain_file_name(name)
            || name == raw.path
            || raw.bare_token_file.as_deref() == Some(name)
        {
            self.error(
                &dpath.key("env_file"),
                format!(
                    "`{}` must be a plain file name, different from `path` and `bare_token_file`",
                    name.escape_debug()
                ),
            );
            return;
        }
        f.env_file = Some(name.to_owned());
        target.writes.push((
            "env_file",
            super::destinations::Place::File(f.directory.join(name)),
            None,
        ));
    }
}
