//! When is a policy next due: cron in an IANA zone, fixed intervals, jitter,
//! rotation windows and "rotate before expiry", whichever comes first.
//!
//! Everything here except [`sleep_until_wall`] is pure: the functions take
//! `now` and the token's times as values and never read a clock, so the
//! driver, the `plan` command and the tests all see the same answers. The
//! state that decides "when" is the current token's `created_at` and
//! `expires_at` as the stores report them, not an in-memory timer; a due time
//! in the past simply means "due now", so a restart neither skips nor doubles
//! a rotation.
//!
//! # Why `croner` and not `tokio-cron-scheduler`
//!
//! `tokio-cron-scheduler` was evaluated and not used: its time-zone jobs keep
//! the UTC offset they were created with and so run an hour off after a DST
//! change (its issues #87 and #107), it polls every 500 ms, and a repeated job
//! can stop scheduling for good (#113). Instead this module asks `croner` for
//! the next occurrence in the schedule's own zone, and the driver sleeps
//! until then with [`sleep_until_wall`].
//!
//! # Daylight saving time
//!
//! Cron patterns are evaluated on the local wall clock of their zone, with
//! `croner`'s rules, which follow Vixie cron:
//!
//! - A pattern with a single fixed second, minute and hour (`30 2 * * *`) is
//!   a *fixed-time* job. If its time does not exist on a spring-forward day,
//!   it runs once at the first instant after the gap (03:00 local in
//!   Europe/Berlin and America/New_York). If its time happens twice on a
//!   fall-back day, it runs once, at the earlier instant.
//! - Any other pattern (`0 * * * *`, `*/15 * * * *`) is an *interval* job: it
//!   runs at every real instant whose local time matches, so a skipped hour
//!   is skipped and a repeated hour runs twice, which keeps "hourly" meaning
//!   once per real hour.
//!
//! Rotation windows are spans of real time: an occurrence runs from the first
//! instant the local clock reads its start to the first instant it reads its
//! end. A start inside a spring-forward gap therefore opens at the end of the
//! gap (a window lying wholly inside the gap does not occur that day), and a
//! repeated hour on a fall-back day is never entered twice.

use std::fmt;
use std::time::Duration;

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, TimeDelta,
    TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// What makes a policy due, besides the token's expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cadence {
    /// Rotate at the first cron occurrence after the token was created.
    Cron(CronSchedule),
    /// Rotate a fixed time after the token was created.
    Interval(Duration),
}

/// A validated cron pattern together with the IANA zone it is read in.
///
/// The zone is part of the schedule rather than a process setting because
/// "03:00" means a different instant in every zone, and the same instant
/// moves by an hour twice a year in most of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    /// The parsed pattern that `croner` evaluates; boxed because it is a
    /// few hundred bytes and [`Cadence`] would otherwise carry that size
    /// for intervals too.
    cron: Box<Cron>,
    /// The pattern as the user wrote it, for messages and the `plan` output.
    source: String,
    /// The zone whose wall clock the pattern describes.
    tz: Tz,
}

impl CronSchedule {
    /// The pattern as it was written in the configuration.
    pub fn expression(&self) -> &str {
        &self.source
    }

    /// The zone the pattern is evaluated in.
    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// The first occurrence strictly after `t`, or `None` if the pattern has
    /// none before `croner`'s search limit (year 5000).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|next| next.with_timezone(&Utc))
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` ({})", self.source, self.tz)
    }
}

/// A recurring span of local time in which rotations are allowed, such as
/// "weekdays 02:00 to 04:00 Europe/Berlin".
///
/// Operators use windows to keep credential changes out of business hours.
/// An occurrence belongs to the day it starts on, so `fri 22:00-02:00` runs
/// from Friday 22:00 to Saturday 02:00.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Days on which an occurrence starts, one bit per day, Monday = bit 0.
    days: u8,
    /// Local time the window opens.
    start: NaiveTime,
    /// Local time the window closes; at or before `start` means the next day.
    end: NaiveTime,
    /// The zone whose wall clock `start` and `end` are read on.
    tz: Tz,
}

impl Window {
    /// The days on which an occurrence starts, Monday first.
    pub fn days(&self) -> impl Iterator<Item = Weekday> + '_ {
        ALL_DAYS.into_iter().filter(|d| self.has_day(*d))
    }

    /// The local time the window opens.
    pub fn start(&self) -> NaiveTime {
        self.start
    }

    /// The local time the window closes, on the next day if it is at or
    /// before [`Window::start`].
    pub fn end(&self) -> NaiveTime {
        self.end
    }

    /// The zone the window is read in.
    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    fn has_day(&self, day: Weekday) -> bool {
        self.days & day_bit(day) != 0
    }

    /// The real-time span of the occurrence that starts on local date `date`,
    /// or `None` if it has no length that day (it lies inside a DST gap).
    fn occurrence(&self, date: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        if !self.has_day(date.weekday()) {
            return None;
        }
        let end_date = if self.end <= self.start {
            date.succ_opt()?
        } else {
            date
        };
        let open = first_instant_at_or_after(self.tz, date.and_time(self.start))?;
        let close = first_instant_at_or_after(self.tz, end_date.and_time(self.end))?;
        (open < close).then_some((open, close))
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days: Vec<&str> = self.days().map(day_name).collect();
        write!(
            f,
            "{} {}-{} ({})",
            days.join(","),
            self.start.format("%H:%M"),
            self.end.format("%H:%M"),
            self.tz
        )
    }
}

/// A policy's validated schedule: everything that decides when it is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSpec {
    /// The regular cadence; `None` means the policy rotates only because its
    /// token is about to expire.
    pub cadence: Option<Cadence>,
    /// Upper bound of a delay added to each cadence slot so that many
    /// policies on the same schedule do not all hit MotherDuck at once;
    /// zero means none.
    pub jitter: Duration,
    /// Spans in which rotations are allowed; empty means any time.
    pub windows: Vec<Window>,
    /// Rotate this long before the current token expires, if it expires.
    pub rotate_before_expiry: Option<Duration>,
}

/// The current token's lifetime as the stores report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTimes {
    /// When the token was created; cadences count from here.
    pub created_at: DateTime<Utc>,
    /// When MotherDuck stops accepting the token, if ever.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Why a policy is due: a closed set, so it can label metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DueReason {
    /// No token is stored for the policy yet.
    NoToken,
    /// The cron schedule reached a slot.
    Cron,
    /// The fixed interval since the token's creation ran out.
    Interval,
    /// The token is about to expire.
    Expiry,
    /// A failed rotation's backoff decided the time.
    Retry,
}

impl DueReason {
    /// A stable snake_case name for metric labels and log fields.
    pub fn as_str(self) -> &'static str {
        match self {
            DueReason::NoToken => "no_token",
            DueReason::Cron => "cron",
            DueReason::Interval => "interval",
            DueReason::Expiry => "expiry",
            DueReason::Retry => "retry",
        }
    }
}

impl fmt::Display for DueReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DueReason::NoToken => "no token stored yet",
            DueReason::Cron => "cron schedule",
            DueReason::Interval => "fixed interval",
            DueReason::Expiry => "token expiry",
            DueReason::Retry => "retry after a failed rotation",
        })
    }
}

/// When a policy is next due, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// When to rotate; a time in the past means "now".
    pub at: DateTime<Utc>,
    /// Which rule decided `at`.
    pub reason: DueReason,
    /// The time the rule produced before jitter, windows and backoff moved
    /// it; jitter is derived from it, and the `plan` output shows it.
    pub slot: DateTime<Utc>,
    /// A sentence for humans naming the rule and its values, e.g.
    /// "cron `0 3 * * *` (Europe/Berlin) slot 2026-03-29T03:00:00+02:00".
    pub detail: String,
}

impl fmt::Display for Due {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", rfc3339(self.at), self.detail)
    }
}

/// Parses an IANA time zone name such as `Europe/Berlin` or `UTC`.
///
/// # Errors
/// Fails, quoting the value, when the name is not in the tz database.
pub fn parse_timezone(tz: &str) -> Result<Tz, String> {
    tz.parse::<Tz>().map_err(|_| {
        format!("unknown time zone `{tz}`: expected an iana name such as `Europe/Berlin` or `UTC`")
    })
}

/// Parses a cron pattern read in the zone `tz`.
///
/// The pattern has the five standard fields (minute, hour, day of month,
/// month, day of week), and `croner`'s extensions (`L`, `W`, `#`, names,
/// `@daily` and the like) are accepted. A sixth field in front is taken as
/// seconds, as `croner` reads it; a year field is rejected, so every accepted
/// pattern recurs.
///
/// # Errors
/// Fails, quoting the value, when the zone is unknown, the pattern does not
/// parse, or it never matches (`0 0 30 2 *`).
pub fn parse_cron(expr: &str, tz: &str) -> Result<CronSchedule, String> {
    let zone = parse_timezone(tz)?;
    if expr.trim().is_empty() {
        return Err("cron expression is empty".to_owned());
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| format!("invalid cron expression `{expr}`: {e}"))?;
    let schedule = CronSchedule {
        cron: Box::new(cron),
        source: expr.to_owned(),
        tz: zone,
    };
    // A pattern such as "30 February" parses but never fires; a policy
    // holding it would silently never rotate, so it is refused here.
    if schedule.next_after(DateTime::UNIX_EPOCH).is_none() {
        return Err(format!("cron expression `{expr}` never matches a date"));
    }
    Ok(schedule)
}

/// Parses a rotation window.
///
/// `days` holds day names (`mon` or `monday`, any case) and inclusive ranges
/// (`mon-fri`; `fri-mon` wraps over the weekend); an item may also be a
/// comma-separated list. `start` and `end` are `HH:MM` local times in `tz`;
/// an `end` at or before `start` closes the window on the next day.
///
/// # Errors
/// Fails, quoting the value, for an unknown day, an empty day list, a time
/// that is not `HH:MM`, `start` equal to `end`, or an unknown zone.
pub fn parse_window(days: &[String], start: &str, end: &str, tz: &str) -> Result<Window, String> {
    let mut mask = 0u8;
    for item in days.iter().flat_map(|d| d.split(',')) {
        mask |= parse_day_item(item.trim())?;
    }
    if mask == 0 {
        return Err("window needs at least one day, e.g. `mon-sun`".to_owned());
    }
    let start_time = parse_hhmm(start).map_err(|e| format!("invalid window start {e}"))?;
    let end_time = parse_hhmm(end).map_err(|e| format!("invalid window end {e}"))?;
    if start_time == end_time {
        return Err(format!(
            "window start `{start}` equals its end, which leaves no time to rotate in (omit the window to allow any time)"
        ));
    }
    Ok(Window {
        days: mask,
        start: start_time,
        end: end_time,
        tz: parse_timezone(tz)?,
    })
}

/// Says whether `t` lies inside one of `windows`; with no windows every time
/// is allowed.
pub fn in_window(windows: &[Window], t: DateTime<Utc>) -> bool {
    windows.is_empty()
        || windows.iter().any(|w| {
            candidate_dates(w.tz, t, -2, 1)
                .filter_map(|d| w.occurrence(d))
                .any(|(open, close)| open <= t && t < close)
        })
}

/// The first instant at or after `t` at which one of `windows` opens.
///
/// Returns `None` when there are no windows, since then nothing ever has to
/// wait for one.
pub fn next_window_start(windows: &[Window], t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    windows
        .iter()
        .filter_map(|w| {
            // Every window starts on at least one day a week, so eight days
            // ahead always holds an occurrence.
            candidate_dates(w.tz, t, -1, 8)
                .filter_map(|d| w.occurrence(d))
                .map(|(open, _)| open)
                .find(|open| *open >= t)
        })
        .min()
}

/// Works out when the policy `policy` is next due.
///
/// - With no token the policy is due at `now`: consumers have nothing to use,
///   so neither jitter nor windows delay it.
/// - A cron cadence is due at its first slot strictly after the token's
///   `created_at`, an interval at `created_at` plus the interval. Jitter adds
///   an offset in `[0, jitter)` derived from SHA-256 of the policy name and
///   the slot, so every replica and every restart picks the same time.
/// - With `rotate_before_expiry` and an expiring token, the policy is also
///   due that long before `expires_at`; jitter does not apply to this time,
///   because it may only delay and the deadline is what it protects.
/// - `not_before` (a backoff after a failed rotation) is a lower bound on
///   each of those times; where it moved the winner, the reason is
///   [`DueReason::Retry`].
/// - Windows then move a time that falls outside them to the next opening.
///   A time already in the past is judged at `now`, since that is when the
///   rotation would happen. A window never delays a rotation past the
///   token's expiry: if the next opening is at or after `expires_at`, the
///   unwindowed time stands, since an outage is worse than rotating outside
///   a window.
/// - The earliest of the cadence and expiry times wins; on a tie the cadence.
///
/// A result in the past means "due now". Because the base is the token's
/// own `created_at`, a daemon that was down across several slots gets one
/// past time, rotates once, and the new token's `created_at` moves the next
/// slot into the future.
///
/// Returns `None` when nothing will ever make the policy due: no cadence and
/// a token that never expires (or no `rotate_before_expiry`), or a time past
/// the representable range.
pub fn next_due(
    policy: &str,
    spec: &ScheduleSpec,
    token: Option<&TokenTimes>,
    now: DateTime<Utc>,
    not_before: Option<DateTime<Utc>>,
) -> Option<Due> {
    let Some(token) = token else {
        let due = Due {
            at: now,
            reason: DueReason::NoToken,
            slot: now,
            detail: "no token stored yet".to_owned(),
        };
        return Some(apply_not_before(due, not_before, now, None));
    };

    let cadence = spec
        .cadence
        .as_ref()
        .and_then(|c| cadence_due(policy, c, spec.jitter, token));
    let expiry = expiry_due(spec.rotate_before_expiry, token);

    [cadence, expiry]
        .into_iter()
        .flatten()
        .map(|due| {
            let due = apply_not_before(due, not_before, now, token.expires_at);
            place_in_windows(due, &spec.windows, now, token.expires_at)
        })
        .min_by_key(|due| due.at)
}

/// Says whether `due` has arrived at `now`.
pub fn is_due(due: &Due, now: DateTime<Utc>) -> bool {
    due.at <= now
}

/// The next `n` due times, assuming each rotation happens exactly when due
/// (or at `now` for one already past) and creates a token that lives for
/// `token_ttl`, or forever if `None`.
///
/// This feeds the `plan` command, so an operator can see a schedule's
/// effect, DST changes and windows included, before enabling it. The list is
/// shorter than `n` when the policy stops being due.
pub fn upcoming(
    policy: &str,
    spec: &ScheduleSpec,
    token: Option<&TokenTimes>,
    now: DateTime<Utc>,
    token_ttl: Option<Duration>,
    n: usize,
) -> Vec<Due> {
    let ttl = token_ttl.and_then(|d| TimeDelta::from_std(d).ok());
    let mut current = token.copied();
    let mut now = now;
    let mut plan = Vec::new();
    while plan.len() < n {
        let Some(due) = next_due(policy, spec, current.as_ref(), now, None) else {
            break;
        };
        let rotated_at = due.at.max(now);
        current = Some(TokenTimes {
            created_at: rotated_at,
            expires_at: ttl.and_then(|ttl| rotated_at.checked_add_signed(ttl)),
        });
        now = rotated_at;
        plan.push(due);
    }
    plan
}

/// Sleeps until the wall clock read through `now` reaches `deadline`.
///
/// Tokio's timers run on the monotonic clock, which stops while the machine
/// is suspended and ignores changes to the wall clock, while the schedule is
/// in wall-clock time. So this sleeps at most `max_chunk` at a time and
/// re-reads the wall clock after each chunk: after a resume or a clock jump
/// it returns, or adjusts, within one chunk. A `max_chunk` of zero is taken
/// as one millisecond.
///
/// Returns `true` when the deadline is reached and `false` as soon as
/// `cancel` fires.
pub async fn sleep_until_wall(
    deadline: DateTime<Utc>,
    now: impl Fn() -> DateTime<Utc>,
    max_chunk: Duration,
    cancel: &CancellationToken,
) -> bool {
    let max_chunk = max_chunk.max(Duration::from_millis(1));
    loop {
        if cancel.is_cancelled() {
            return false;
        }
        // A deadline in the past fails the conversion, which is "arrived".
        let Ok(remaining) = (deadline - now()).to_std() else {
            return true;
        };
        if remaining.is_zero() {
            return true;
        }
        let chunk = remaining.min(max_chunk);
        tokio::select! {
            biased;
            () = cancel.cancelled() => return false,
            () = tokio::time::sleep(chunk) => {}
        }
    }
}

const ALL_DAYS: [Weekday; 7] = [
    Weekday::Mon,
    Weekday::Tue,
    Weekday::Wed,
    Weekday::Thu,
    Weekday::Fri,
    Weekday::Sat,
    Weekday::Sun,
];

fn day_bit(day: Weekday) -> u8 {
    1 << day.num_days_from_monday()
}

fn day_name(day: Weekday) -> &'static str {
    match day {
        Weekday::Mon => "mon",
        Weekday::Tue => "tue",
        Weekday::Wed => "wed",
        Weekday::Thu => "thu",
        Weekday::Fri => "fri",
        Weekday::Sat => "sat",
        Weekday::Sun => "sun",
    }
}

fn parse_day(name: &str) -> Result<Weekday, String> {
    name.parse::<Weekday>().map_err(|_| {
        format!("unknown day `{name}`: expected `mon`, `tue`, `wed`, `thu`, `fri`, `sat` or `sun`")
    })
}

/// Parses one day or inclusive day range into a day mask.
fn parse_day_item(item: &str) -> Result<u8, String> {
    match item.split_once('-') {
        None => Ok(day_bit(parse_day(item)?)),
        Some((from, to)) => {
            let (from, to) = (parse_day(from.trim())?, parse_day(to.trim())?);
            let mut mask = day_bit(from);
            let mut day = from;
            while day != to {
                day = day.succ();
                mask |= day_bit(day);
            }
            Ok(mask)
        }
    }
}

/// Parses a strict `HH:MM`; the error quotes the value for the caller to
/// prefix with which time it was.
fn parse_hhmm(s: &str) -> Result<NaiveTime, String> {
    let bad = || format!("`{s}`: expected HH:MM between 00:00 and 23:59");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let two_digits = |p: &str| p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(h) || !two_digits(m) {
        return Err(bad());
    }
    let (h, m) = (
        h.parse::<u32>().map_err(|_| bad())?,
        m.parse::<u32>().map_err(|_| bad())?,
    );
    NaiveTime::from_hms_opt(h, m, 0).ok_or_else(bad)
}

/// The local dates around `t` in `tz`, from `before` to `after` days away.
fn candidate_dates(
    tz: Tz,
    t: DateTime<Utc>,
    before: i64,
    after: i64,
) -> impl Iterator<Item = NaiveDate> {
    let today = t.with_timezone(&tz).date_naive();
    (before..=after)
        .filter_map(move |offset| today.checked_add_signed(TimeDelta::try_days(offset)?))
}

/// The first instant at which the local clock of `tz` reads `local` or
/// later: the instant itself when it exists once, the earlier one when it
/// exists twice, and the end of the gap when a spring-forward skips it.
fn first_instant_at_or_after(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
        LocalResult::None => {
            // Find the first whole local minute after the gap; tz database
            // gaps last up to a day (Pacific/Apia skipped 2011-12-30).
            let minute = TimeDelta::try_minutes(1)?;
            let mut probe = local;
            let mut after_gap = None;
            for _ in 0..(48 * 60) {
                probe = probe.checked_add_signed(minute)?;
                if let Some(t) = tz.from_local_datetime(&probe).earliest() {
                    after_gap = Some(t.with_timezone(&Utc));
                    break;
                }
            }
            // The clock may have jumped at a second inside the previous
            // minute; step back while the instant before still reads past
            // `local`, which only instants after the jump do.
            let mut t = after_gap?;
            let second = TimeDelta::try_seconds(1)?;
            while let Some(earlier) = t.checked_sub_signed(second) {
                if earlier.with_timezone(&tz).naive_local() > local {
                    t = earlier;
                } else {
                    break;
                }
            }
            Some(t)
        }
    }
}

fn rfc3339<Z: TimeZone>(t: DateTime<Z>) -> String
where
    Z::Offset: fmt::Display,
{
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A delay in `[0, jitter)` that depends only on the policy name and the
/// slot, so replicas and restarts agree on it without talking to each other.
fn jitter_offset(policy: &str, slot: DateTime<Utc>, jitter: Duration) -> Duration {
    let span = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
    if span == 0 {
        return Duration::ZERO;
    }
    let digest = Sha256::digest(format!("{policy}|{}", rfc3339(slot)).as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    Duration::from_millis(u64::from_be_bytes(head) % span)
}

fn cadence_due(
    policy: &str,
    cadence: &Cadence,
    jitter: Duration,
    token: &TokenTimes,
) -> Option<Due> {
    let (slot, reason, mut detail) = match cadence {
        Cadence::Cron(schedule) => {
            let slot = schedule.next_after(token.created_at)?;
            let detail = format!(
                "cron {schedule} slot {}",
                rfc3339(slot.with_timezone(&schedule.tz))
            );
            (slot, DueReason::Cron, detail)
        }
        Cadence::Interval(every) => {
            let slot = token
                .created_at
                .checked_add_signed(TimeDelta::from_std(*every).ok()?)?;
            let detail = format!(
                "interval {} after token created at {}",
                humantime::format_duration(*every),
                rfc3339(token.created_at)
            );
            (slot, DueReason::Interval, detail)
        }
    };
    let offset = jitter_offset(policy, slot, jitter);
    let at = slot.checked_add_signed(TimeDelta::from_std(offset).ok()?)?;
    if !offset.is_zero() {
        let offset = Duration::from_secs(offset.as_secs());
        detail.push_str(&format!(", jitter +{}", humantime::format_duration(offset)));
    }
    Some(Due {
        at,
        reason,
        slot,
        detail,
    })
}

fn expiry_due(before: Option<Duration>, token: &TokenTimes) -> Option<Due> {
    let (before, expires_at) = (before?, token.expires_at?);
    let at = expires_at.checked_sub_signed(TimeDelta::from_std(before).ok()?)?;
    Some(Due {
        at,
        reason: DueReason::Expiry,
        slot: at,
        detail: format!(
            "token expires at {}, rotate {} before",
            rfc3339(expires_at),
            humantime::format_duration(before)
        ),
    })
}

fn apply_not_before(
    due: Due,
    not_before: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> Due {
    // A backoff never runs past the expiry of a token that still works:
    // the retry comes halfway between now (or the due time) and the expiry
    // instead, so repeated failures retry more often as it nears, never
    // after it. Once the token has expired the backoff applies as it is.
    let not_before = match (not_before, expires_at) {
        (Some(nb), Some(exp)) if nb >= exp && now < exp => {
            let from = due.at.max(now);
            Some(from + (exp - from) / 2)
        }
        (nb, _) => nb,
    };
    match not_before {
        Some(nb) if nb > due.at => Due {
            at: nb,
            reason: DueReason::Retry,
            detail: format!("retry not before {} ({})", rfc3339(nb), due.detail),
            slot: due.slot,
        },
        _ => due,
    }
}

/// Moves `due` into the next window if it falls outside all of them, unless
/// that would push it to or past the token's expiry.
fn place_in_windows(
    mut due: Due,
    windows: &[Window],
    now: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> Due {
    // A time in the past is acted on now, so "now" is what must be allowed.
    let effective = due.at.max(now);
    if in_window(windows, effective) {
        return due;
    }
    let Some(opening) = next_window_start(windows, effective) else {
        return due;
    };
    match expires_at {
        Some(expiry) if opening >= expiry => {
            due.detail.push_str(&format!(
                ", outside the rotation windows because the next one opens at {}, after the token expires",
                rfc3339(opening)
            ));
        }
        _ => {
            due.detail.push_str(&format!(
                ", moved into the rotation window opening at {}",
                rfc3339(opening)
            ));
            due.at = opening;
        }
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::clock::Clock;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("bad test time `{s}`: {e}"))
            .with_timezone(&Utc)
    }

    fn cron(expr: &str, tz: &str) -> CronSchedule {
        parse_cron(expr, tz).unwrap_or_else(|e| panic!("{e}"))
    }

    fn window(days: &[&str], start: &str, end: &str, tz: &str) -> Window {
        let days: Vec<String> = days.iter().map(|d| (*d).to_owned()).collect();
        parse_window(&days, start, end, tz).unwrap_or_else(|e| panic!("{e}"))
    }

    fn spec(cadence: Option<Cadence>) -> ScheduleSpec {
        ScheduleSpec {
            cadence,
            jitter: Duration::ZERO,
            windows: Vec::new(),
            rotate_before_expiry: None,
        }
    }

    fn token(created_at: &str, expires_at: Option<&str>) -> TokenTimes {
        TokenTimes {
            created_at: utc(created_at),
            expires_at: expires_at.map(utc),
        }
    }

    fn hours(n: u64) -> Duration {
        Duration::from_secs(n * 3600)
    }

    fn days(n: u64) -> Duration {
        hours(24 * n)
    }

    /// Follows a daily cron pattern from `start`, as if each rotation
    /// happened `latency` after its slot, and compares the slots in UTC.
    fn check_cron_slots(expr: &str, tz: &str, start: &str, latency_secs: i64, want: &[&str]) {
        let spec = spec(Some(Cadence::Cron(cron(expr, tz))));
        let mut created_at = utc(start);
        let mut got = Vec::new();
        for _ in want {
            let due = next_due(
                "p",
                &spec,
                Some(&TokenTimes {
                    created_at,
                    expires_at: None,
                }),
                created_at,
                None,
            )
            .unwrap_or_else(|| panic!("`{expr}` in {tz} is never due"));
            assert_eq!(due.reason, DueReason::Cron);
            assert_eq!(due.at, due.slot, "no jitter or window configured");
            got.push(rfc3339(due.at));
            created_at = due.at + TimeDelta::seconds(latency_secs);
        }
        assert_eq!(got, want, "`{expr}` in {tz} from {start}");
    }

    #[test]
    fn cron_across_europe_berlin_spring_forward() {
        // 2026-03-29 01:00 UTC: 02:00 CET becomes 03:00 CEST.
        for latency in [0, 5] {
            check_cron_slots(
                "0 3 * * *",
                "Europe/Berlin",
                "2026-03-27T12:00:00Z",
                latency,
                &[
                    "2026-03-28T02:00:00Z",
                    "2026-03-29T01:00:00Z",
                    "2026-03-30T01:00:00Z",
                ],
            );
            // 02:30 does not exist on the 29th: it runs once, at 03:00 CEST.
            check_cron_slots(
                "30 2 * * *",
                "Europe/Berlin",
                "2026-03-27T12:00:00Z",
                latency,
                &[
                    "2026-03-28T01:30:00Z",
                    "2026-03-29T01:00:00Z",
                    "2026-03-30T00:30:00Z",
                ],
            );
        }
    }

    #[test]
    fn cron_across_europe_berlin_fall_back() {
        // 2026-10-25 01:00 UTC: 03:00 CEST becomes 02:00 CET; 02:00-03:00 repeats.
        for latency in [0, 5] {
            check_cron_slots(
                "0 3 * * *",
                "Europe/Berlin",
                "2026-10-23T12:00:00Z",
                latency,
                &[
                    "2026-10-24T01:00:00Z",
                    "2026-10-25T02:00:00Z",
                    "2026-10-26T02:00:00Z",
                ],
            );
            // 02:30 happens twice on the 25th: it runs once, at the first (CEST).
            check_cron_slots(
                "30 2 * * *",
                "Europe/Berlin",
                "2026-10-23T12:00:00Z",
                latency,
                &[
                    "2026-10-24T00:30:00Z",
                    "2026-10-25T00:30:00Z",
                    "2026-10-26T01:30:00Z",
                ],
            );
        }
    }

    #[test]
    fn cron_across_america_new_york_spring_forward() {
        // 2026-03-08 02:00 EST becomes 03:00 EDT (07:00 UTC).
        for latency in [0, 5] {
            check_cron_slots(
                "0 3 * * *",
                "America/New_York",
                "2026-03-06T12:00:00Z",
                latency,
                &[
                    "2026-03-07T08:00:00Z",
                    "2026-03-08T07:00:00Z",
                    "2026-03-09T07:00:00Z",
                ],
            );
            check_cron_slots(
                "30 2 * * *",
                "America/New_York",
                "2026-03-06T12:00:00Z",
                latency,
                &[
                    "2026-03-07T07:30:00Z",
                    "2026-03-08T07:00:00Z",
                    "2026-03-09T06:30:00Z",
                ],
            );
        }
    }

    #[test]
    fn cron_across_america_new_york_fall_back() {
        // 2026-11-01 02:00 EDT becomes 01:00 EST (06:00 UTC); 01:00-02:00 repeats.
        for latency in [0, 5] {
            check_cron_slots(
                "0 3 * * *",
                "America/New_York",
                "2026-10-30T12:00:00Z",
                latency,
                &[
                    "2026-10-31T07:00:00Z",
                    "2026-11-01T08:00:00Z",
                    "2026-11-02T08:00:00Z",
                ],
            );
            // 02:30 is not repeated in New York; it simply moves by an hour in UTC.
            check_cron_slots(
                "30 2 * * *",
                "America/New_York",
                "2026-10-30T12:00:00Z",
                latency,
                &[
                    "2026-10-31T06:30:00Z",
                    "2026-11-01T07:30:00Z",
                    "2026-11-02T07:30:00Z",
                ],
            );
            // 01:30 is repeated: it runs once, at the first (EDT).
            check_cron_slots(
                "30 1 * * *",
                "America/New_York",
                "2026-10-30T12:00:00Z",
                latency,
                &[
                    "2026-10-31T05:30:00Z",
                    "2026-11-01T05:30:00Z",
                    "2026-11-02T06:30:00Z",
                ],
            );
        }
    }

    #[test]
    fn hourly_cron_runs_every_real_hour_across_dst() {
        check_cron_slots(
            "30 * * * *",
            "Europe/Berlin",
            "2026-03-29T00:00:00Z",
            0,
            // 01:30 CET, then 02:30 does not exist, then 03:30 CEST.
            &[
                "2026-03-29T00:30:00Z",
                "2026-03-29T01:30:00Z",
                "2026-03-29T02:30:00Z",
            ],
        );
        check_cron_slots(
            "30 * * * *",
            "Europe/Berlin",
            "2026-10-25T00:00:00Z",
            0,
            // 02:30 CEST, 02:30 CET, 03:30 CET.
            &[
                "2026-10-25T00:30:00Z",
                "2026-10-25T01:30:00Z",
                "2026-10-25T02:30:00Z",
            ],
        );
    }

    #[test]
    fn cron_detail_names_pattern_zone_and_local_slot() {
        let spec = spec(Some(Cadence::Cron(cron("0 3 * * *", "Europe/Berlin"))));
        let t = token("2026-03-28T12:00:00Z", None);
        let due = next_due("p", &spec, Some(&t), t.created_at, None).unwrap();
        assert_eq!(
            due.detail,
            "cron `0 3 * * *` (Europe/Berlin) slot 2026-03-29T03:00:00+02:00"
        );
    }

    /// One `next_due` case: the schedule, token and inputs, and the expected
    /// time and reason.
    struct Case {
        name: &'static str,
        spec: ScheduleSpec,
        token: Option<TokenTimes>,
        now: &'static str,
        not_before: Option<&'static str>,
        want_at: &'static str,
        want_reason: DueReason,
    }

    fn check(cases: Vec<Case>) {
        for c in cases {
            let due = next_due(
                "policy",
                &c.spec,
                c.token.as_ref(),
                utc(c.now),
                c.not_before.map(utc),
            )
            .unwrap_or_else(|| panic!("{}: never due", c.name));
            assert_eq!(
                (rfc3339(due.at), due.reason),
                (c.want_at.to_owned(), c.want_reason),
                "{}: {}",
                c.name,
                due.detail
            );
        }
    }

    #[test]
    fn next_due_cases() {
        let daily_utc = || Some(Cadence::Cron(cron("0 3 * * *", "UTC")));
        let night = || vec![window(&["mon-sun"], "02:00", "04:00", "UTC")];
        check(vec![
            Case {
                name: "no token is due now",
                spec: spec(daily_utc()),
                token: None,
                now: "2026-01-01T12:00:00Z",
                not_before: None,
                want_at: "2026-01-01T12:00:00Z",
                want_reason: DueReason::NoToken,
            },
            Case {
                name: "no token ignores windows",
                spec: ScheduleSpec {
                    windows: night(),
                    ..spec(daily_utc())
                },
                token: None,
                now: "2026-01-01T12:00:00Z",
                not_before: None,
                want_at: "2026-01-01T12:00:00Z",
                want_reason: DueReason::NoToken,
            },
            Case {
                name: "no token waits for the retry backoff",
                spec: spec(daily_utc()),
                token: None,
                now: "2026-01-01T12:00:00Z",
                not_before: Some("2026-01-01T12:05:00Z"),
                want_at: "2026-01-01T12:05:00Z",
                want_reason: DueReason::Retry,
            },
            Case {
                name: "interval counts from created_at",
                spec: spec(Some(Cadence::Interval(days(7)))),
                token: Some(token("2026-01-01T10:20:30.250Z", None)),
                now: "2026-01-02T00:00:00Z",
                not_before: None,
                want_at: "2026-01-08T10:20:30.250Z",
                want_reason: DueReason::Interval,
            },
            Case {
                name: "cron slot is strictly after created_at",
                spec: spec(daily_utc()),
                token: Some(token("2026-01-01T03:00:00Z", None)),
                now: "2026-01-01T03:00:01Z",
                not_before: None,
                want_at: "2026-01-02T03:00:00Z",
                want_reason: DueReason::Cron,
            },
            Case {
                name: "expiry earlier than the cadence wins",
                spec: ScheduleSpec {
                    rotate_before_expiry: Some(days(3)),
                    ..spec(Some(Cadence::Interval(days(30))))
                },
                token: Some(token("2026-01-01T00:00:00Z", Some("2026-01-11T00:00:00Z"))),
                now: "2026-01-02T00:00:00Z",
                not_before: None,
                want_at: "2026-01-08T00:00:00Z",
                want_reason: DueReason::Expiry,
            },
            Case {
                name: "cadence earlier than the expiry wins",
                spec: ScheduleSpec {
                    rotate_before_expiry: Some(days(3)),
                    ..spec(Some(Cadence::Interval(days(5))))
                },
                token: Some(token("2026-01-01T00:00:00Z", Some("2026-01-11T00:00:00Z"))),
                now: "2026-01-02T00:00:00Z",
                not_before: None,
                want_at: "2026-01-06T00:00:00Z",
                want_reason: DueReason::Interval,
            },
            Case {
                name: "expiry only",
                spec: ScheduleSpec {
                    rotate_before_expiry: Some(hours(12)),
                    ..spec(None)
                },
                token: Some(token("2026-01-01T00:00:00Z", Some("2026-01-11T00:00:00Z"))),
                now: "2026-01-02T00:00:00Z",
                not_before: None,
                want_at: "2026-01-10T12:00:00Z",
                want_reason: DueReason::Expiry,
            },
            Case {
                name: "expiry time is moved into a window",
                spec: ScheduleSpec {
                    rotate_before_expiry: Some(hours(12)),
                    windows: night(),
                    ..spec(None)
                },
                token: Some(token("2026-01-01T00:00:00Z", Some("2026-01-11T12:00:00Z"))),
                now: "2026-01-02T00:00:00Z",
                not_before: None,
                want_at: "2026-01-11T02:00:00Z",
                want_reason: DueReason::Expiry,
            },
            Case {
                name: "a window opening after expiry is ignored",
                spec: ScheduleSpec {
                    rotate_before_expiry: Some(hours(1)),
                    windows: night(),
                    ..spec(None)
                },
                token: Some(token("2026-01-01T00:00:00Z", Some("2026-01-11T12:00:00Z"))),
                now: "2026-01-02T00:00:00Z",
                not_before: None,
                want_at: "2026-01-11T11:00:00Z",
                want_reason: DueReason::Expiry,
            },
            Case {
                name: "a window opening exactly at expiry is ignored",
                spec: ScheduleSpec {
                    rotate_before_expiry: Some(hours(1)),
                    windows: night(),
                    ..spec(None)
                },
                token: Some(token("2026-01-01T00:00:00Z", Some("2026-01-11T02:00:00Z"))),
                now: "2026-01-02T00:00:00Z",
                not_before: None,
                want_at: "2026-01-11T01:00:00Z",
                want_reason: DueReason::Expiry,
            },
            Case {
                name: "a retry after the token expired does not wait for a window",
                spec: ScheduleSpec {
                    rotate_before_expiry: Some(hours(1)),
                    windows: night(),
                    ..spec(None)
                },
                token: Some(token("2026-01-01T00:00:00Z", Some("2026-01-11T12:00:00Z"))),
                now: "2026-01-11T12:30:00Z",
                not_before: Some("2026-01-11T12:35:00Z"),
                want_at: "2026-01-11T12:35:00Z",
                want_reason: DueReason::Retry,
            },
            Case {
                name: "cadence outside the window moves to the next opening",
                spec: ScheduleSpec {
                    windows: night(),
                    ..spec(Some(Cadence::Cron(cron("0 12 * * *", "UTC"))))
                },
                token: Some(token("2026-01-01T00:00:00Z", None)),
                now: "2026-01-01T00:00:00Z",
                not_before: None,
                want_at: "2026-01-02T02:00:00Z",
                want_reason: DueReason::Cron,
            },
            Case {
                // Regression: a backoff after a failed rotation could end
                // after the token's expiry: an outage planned by the retry.
                name: "a retry backoff past the token's expiry comes before it",
                spec: ScheduleSpec {
                    rotate_before_expiry: Some(hours(1)),
                    ..spec(None)
                },
                token: Some(token("2026-01-01T00:00:00Z", Some("2026-01-11T12:00:00Z"))),
                now: "2026-01-11T11:10:00Z",
                not_before: Some("2026-01-11T13:10:00Z"),
                want_at: "2026-01-11T11:35:00Z",
                want_reason: DueReason::Retry,
            },
            Case {
                name: "retry backoff binds",
                spec: spec(Some(Cadence::Interval(hours(1)))),
                token: Some(token("2026-01-01T00:00:00Z", None)),
                now: "2026-01-01T01:00:10Z",
                not_before: Some("2026-01-01T01:05:00Z"),
                want_at: "2026-01-01T01:05:00Z",
                want_reason: DueReason::Retry,
            },
            Case {
                name: "retry backoff already passed does not bind",
                spec: spec(Some(Cadence::Interval(hours(1)))),
                token: Some(token("2026-01-01T00:00:00Z", None)),
                now: "2026-01-01T00:10:00Z",
                not_before: Some("2026-01-01T00:20:00Z"),
                want_at: "2026-01-01T01:00:00Z",
                want_reason: DueReason::Interval,
            },
            Case {
                name: "retry backoff ending outside the window waits for it",
                spec: ScheduleSpec {
                    windows: night(),
                    ..spec(Some(Cadence::Cron(cron("50 3 * * *", "UTC"))))
                },
                token: Some(token("2026-01-01T12:00:00Z", None)),
                now: "2026-01-02T03:50:00Z",
                not_before: Some("2026-01-02T04:05:00Z"),
                want_at: "2026-01-03T02:00:00Z",
                want_reason: DueReason::Retry,
            },
        ]);
    }

    #[test]
    fn never_due_without_cadence_or_expiry() {
        let expiry_only = ScheduleSpec {
            rotate_before_expiry: Some(days(1)),
            ..spec(None)
        };
        let forever = token("2026-01-01T00:00:00Z", None);
        let now = utc("2026-01-02T00:00:00Z");
        assert_eq!(next_due("p", &expiry_only, Some(&forever), now, None), None);
        assert_eq!(next_due("p", &spec(None), Some(&forever), now, None), None);
        assert!(upcoming("p", &expiry_only, Some(&forever), now, None, 3).is_empty());
    }

    #[test]
    fn slots_missed_while_down_rotate_once() {
        // The daemon was down from just after the 01-01 rotation until 12:00
        // on 01-04, across the 01-02, 01-03 and 01-04 03:00 slots.
        let spec = spec(Some(Cadence::Cron(cron("0 3 * * *", "UTC"))));
        let before = token("2026-01-01T03:00:05Z", None);
        let now = utc("2026-01-04T12:00:00Z");

        let due = next_due("p", &spec, Some(&before), now, None).unwrap();
        assert_eq!(due.at, utc("2026-01-02T03:00:00Z"));
        assert!(is_due(&due, now));
        // A restart before the rotation sees the same single due time.
        assert_eq!(next_due("p", &spec, Some(&before), now, None), Some(due));

        // One rotation at `now`; a restart right after it finds nothing due.
        let after = TokenTimes {
            created_at: now,
            expires_at: None,
        };
        for later in [now, now + TimeDelta::minutes(1)] {
            let next = next_due("p", &spec, Some(&after), later, None).unwrap();
            assert_eq!(next.at, utc("2026-01-05T03:00:00Z"));
            assert!(!is_due(&next, later));
        }
    }

    #[test]
    fn missed_slot_outside_a_window_waits_for_the_window() {
        // The missed 03:00 slot was inside the window, but the rotation would
        // happen now, at 12:00, which is not.
        let spec = ScheduleSpec {
            windows: vec![window(&["mon-sun"], "02:00", "04:00", "UTC")],
            ..spec(Some(Cadence::Cron(cron("0 3 * * *", "UTC"))))
        };
        let t = token("2026-01-01T03:00:05Z", None);
        let now = utc("2026-01-04T12:00:00Z");
        let due = next_due("p", &spec, Some(&t), now, None).unwrap();
        assert_eq!(due.at, utc("2026-01-05T02:00:00Z"));
        assert_eq!(due.slot, utc("2026-01-02T03:00:00Z"));
        // Inside the window, the past time stands and means "now".
        let now = utc("2026-01-05T02:30:00Z");
        let due = next_due("p", &spec, Some(&t), now, None).unwrap();
        assert_eq!(due.at, utc("2026-01-02T03:00:00Z"));
        assert!(is_due(&due, now));
    }

    #[test]
    fn jitter_is_stable_bounded_and_spread() {
        let jitter = Duration::from_secs(3600);
        let spec = ScheduleSpec {
            jitter,
            ..spec(Some(Cadence::Cron(cron("0 3 * * *", "Europe/Berlin"))))
        };
        let t = token("2026-01-01T12:00:00Z", None);
        let now = t.created_at;
        let slot = utc("2026-01-02T02:00:00Z");

        let mut offsets = std::collections::BTreeSet::new();
        for i in 0..20 {
            let name = format!("policy-{i}");
            let a = next_due(&name, &spec, Some(&t), now, None).unwrap();
            let b = next_due(&name, &spec, Some(&t), now, None).unwrap();
            assert_eq!(a, b, "{name}: same inputs, same answer");
            assert_eq!(a.slot, slot);
            let offset = (a.at - a.slot).to_std().unwrap();
            assert!(offset < jitter, "{name}: {offset:?}");
            offsets.insert(offset);
        }
        assert!(offsets.len() >= 18, "offsets barely differ: {offsets:?}");

        // Pins the formula, so replicas running different builds agree.
        assert_eq!(
            jitter_offset("analytics", utc("2026-03-29T01:00:00Z"), jitter),
            Duration::from_millis(PINNED_JITTER_MS)
        );
        assert_eq!(
            jitter_offset("analytics", slot, Duration::ZERO),
            Duration::ZERO
        );
    }

    /// Computed independently: `int.from_bytes(sha256(b"analytics|2026-03-29T01:00:00Z")
    /// .digest()[:8], "big") % 3_600_000` in Python.
    const PINNED_JITTER_MS: u64 = 1_720_086;

    #[test]
    fn windows_membership() {
        let weekdays_night = window(&["mon-fri"], "02:00", "04:00", "Europe/Berlin");
        let weekend_late = window(&["fri", "Sat"], "22:00", "02:00", "UTC");
        // 2026-01-02 is a Friday.
        let cases: &[(&Window, &str, bool)] = &[
            (&weekdays_night, "2026-01-02T01:00:00Z", true), // Fri 02:00 CET
            (&weekdays_night, "2026-01-02T00:59:59Z", false),
            (&weekdays_night, "2026-01-02T02:59:59Z", true),
            (&weekdays_night, "2026-01-02T03:00:00Z", false), // end is exclusive
            (&weekdays_night, "2026-01-03T01:30:00Z", false), // Saturday
            (&weekend_late, "2026-01-02T23:00:00Z", true),    // Fri 23:00
            (&weekend_late, "2026-01-03T01:00:00Z", true),    // Sat 01:00, Friday's window
            (&weekend_late, "2026-01-04T01:59:00Z", true),    // Sun 01:59, Saturday's window
            (&weekend_late, "2026-01-04T02:00:00Z", false),
            (&weekend_late, "2026-01-02T01:00:00Z", false), // Fri 01:00: Thursday has none
            (&weekend_late, "2026-01-04T23:00:00Z", false), // Sunday evening
        ];
        for (w, t, want) in cases {
            assert_eq!(
                in_window(std::slice::from_ref(*w), utc(t)),
                *want,
                "{w} at {t}"
            );
        }
        assert!(in_window(&[], utc("2026-01-01T00:00:00Z")));
    }

    #[test]
    fn windows_next_start() {
        let weekdays_night = window(&["mon-fri"], "02:00", "04:00", "Europe/Berlin");
        let sunday_noon = window(&["sun"], "12:00", "13:00", "UTC");
        let cases: &[(&[Window], &str, Option<&str>)] = &[
            // Friday 05:00 Berlin: next is Monday 02:00 CET.
            (
                std::slice::from_ref(&weekdays_night),
                "2026-01-02T04:00:00Z",
                Some("2026-01-05T01:00:00Z"),
            ),
            // An opening exactly at t counts.
            (
                std::slice::from_ref(&weekdays_night),
                "2026-01-05T01:00:00Z",
                Some("2026-01-05T01:00:00Z"),
            ),
            // The earliest of several windows.
            (
                &[weekdays_night.clone(), sunday_noon.clone()],
                "2026-01-02T04:00:00Z",
                Some("2026-01-04T12:00:00Z"),
            ),
            (&[], "2026-01-02T04:00:00Z", None),
        ];
        for (ws, t, want) in cases {
            assert_eq!(next_window_start(ws, utc(t)), want.map(utc), "at {t}");
        }
    }

    #[test]
    fn windows_across_dst() {
        // On 2026-03-29, 02:30 Berlin does not exist: the window opens when
        // the clock jumps to 03:00 CEST (01:00 UTC).
        let w = [window(&["mon-sun"], "02:30", "04:00", "Europe/Berlin")];
        assert_eq!(
            next_window_start(&w, utc("2026-03-28T12:00:00Z")),
            Some(utc("2026-03-29T01:00:00Z"))
        );
        assert!(in_window(&w, utc("2026-03-29T01:00:00Z")));
        assert!(!in_window(&w, utc("2026-03-29T00:59:59Z")));

        // A window wholly inside the gap does not occur that day.
        let w = [window(&["mon-sun"], "02:10", "02:50", "Europe/Berlin")];
        assert_eq!(
            next_window_start(&w, utc("2026-03-28T12:00:00Z")),
            Some(utc("2026-03-30T00:10:00Z"))
        );

        // On 2026-10-25, 02:00-03:00 repeats; a 02:00-02:30 window is open
        // only on the first pass.
        let w = [window(&["mon-sun"], "02:00", "02:30", "Europe/Berlin")];
        assert!(in_window(&w, utc("2026-10-25T00:15:00Z"))); // 02:15 CEST
        assert!(!in_window(&w, utc("2026-10-25T01:15:00Z"))); // 02:15 CET
        assert_eq!(
            next_window_start(&w, utc("2026-10-25T00:30:00Z")),
            Some(utc("2026-10-26T01:00:00Z"))
        );

        // New York: a 01:00-03:00 window on 2026-11-01 lasts three real hours.
        let w = [window(&["sun"], "01:00", "03:00", "America/New_York")];
        assert!(in_window(&w, utc("2026-11-01T05:00:00Z"))); // 01:00 EDT
        assert!(in_window(&w, utc("2026-11-01T07:59:59Z"))); // 02:59:59 EST
        assert!(!in_window(&w, utc("2026-11-01T08:00:00Z"))); // 03:00 EST
    }

    #[test]
    fn upcoming_follows_each_rotation() {
        let spec = ScheduleSpec {
            rotate_before_expiry: Some(days(2)),
            ..spec(Some(Cadence::Cron(cron("0 3 * * mon", "UTC"))))
        };
        let now = utc("2026-01-01T12:00:00Z"); // a Thursday
        let plan = upcoming("p", &spec, None, now, Some(days(5)), 4);
        let got: Vec<(String, DueReason)> =
            plan.iter().map(|d| (rfc3339(d.at), d.reason)).collect();
        assert_eq!(
            got,
            vec![
                ("2026-01-01T12:00:00Z".to_owned(), DueReason::NoToken),
                // Expires 01-06 12:00, so rotate 01-04 12:00, before Monday's slot.
                ("2026-01-04T12:00:00Z".to_owned(), DueReason::Expiry),
                ("2026-01-05T03:00:00Z".to_owned(), DueReason::Cron),
                ("2026-01-08T03:00:00Z".to_owned(), DueReason::Expiry),
            ]
        );
    }

    #[test]
    fn upcoming_starts_with_an_overdue_rotation_once() {
        let spec = spec(Some(Cadence::Interval(days(1))));
        let t = token("2026-01-01T00:00:00Z", None);
        let now = utc("2026-01-05T06:00:00Z");
        let plan: Vec<String> = upcoming("p", &spec, Some(&t), now, None, 3)
            .iter()
            .map(|d| rfc3339(d.at))
            .collect();
        assert_eq!(
            plan,
            [
                "2026-01-02T00:00:00Z",
                "2026-01-06T06:00:00Z",
                "2026-01-07T06:00:00Z"
            ]
        );
    }

    #[test]
    fn parse_errors_name_the_value_and_the_reason() {
        let cases: Vec<(Result<(), String>, &str)> = vec![
            (
                parse_cron("61 * * * *", "UTC").map(drop),
                "invalid cron expression `61 * * * *`: ",
            ),
            (
                parse_cron("0 3 * *", "UTC").map(drop),
                "invalid cron expression `0 3 * *`: ",
            ),
            (
                parse_cron("0 0 0 3 * * 2026", "UTC").map(drop),
                "invalid cron expression `0 0 0 3 * * 2026`: ",
            ),
            (parse_cron("", "UTC").map(drop), "cron expression is empty"),
            (
                parse_cron("0 0 30 2 *", "UTC").map(drop),
                "cron expression `0 0 30 2 *` never matches a date",
            ),
            (
                parse_cron("0 3 * * *", "Europe/Berln").map(drop),
                "unknown time zone `Europe/Berln`: ",
            ),
            (
                parse_timezone("CEST").map(drop),
                "unknown time zone `CEST`: ",
            ),
            (
                parse_window(&["mon".into(), "funday".into()], "02:00", "04:00", "UTC").map(drop),
                "unknown day `funday`: ",
            ),
            (
                parse_window(&["mon-fr".into()], "02:00", "04:00", "UTC").map(drop),
                "unknown day `fr`: ",
            ),
            (
                parse_window(&[], "02:00", "04:00", "UTC").map(drop),
                "window needs at least one day",
            ),
            (
                parse_window(&["mon".into()], "2:00", "04:00", "UTC").map(drop),
                "invalid window start `2:00`: expected HH:MM",
            ),
            (
                parse_window(&["mon".into()], "02:00", "24:00", "UTC").map(drop),
                "invalid window end `24:00`: expected HH:MM",
            ),
            (
                parse_window(&["mon".into()], "03:00", "03:00", "UTC").map(drop),
                "window start `03:00` equals its end",
            ),
            (
                parse_window(&["mon".into()], "02:00", "04:00", "Mars/Olympus").map(drop),
                "unknown time zone `Mars/Olympus`: ",
            ),
        ];
        for (got, want) in cases {
            match got {
                Err(e) => assert!(e.starts_with(want), "`{e}` should start with `{want}`"),
                Ok(()) => panic!("expected an error starting with `{want}`"),
            }
        }
    }

    #[test]
    fn parse_accepts_the_documented_forms() {
        let w = window(
            &["MON-wed", "Friday,sun"],
            "22:00",
            "02:00",
            "Europe/Berlin",
        );
        assert_eq!(
            w.to_string(),
            "mon,tue,wed,fri,sun 22:00-02:00 (Europe/Berlin)"
        );
        let w = window(&["fri-mon"], "01:00", "02:00", "UTC");
        assert_eq!(w.to_string(), "mon,fri,sat,sun 01:00-02:00 (UTC)");

        for (expr, after, want) in [
            ("0 3 * * *", "2026-01-01T00:00:00Z", "2026-01-01T03:00:00Z"),
            (
                "30 0 3 * * *",
                "2026-01-01T00:00:00Z",
                "2026-01-01T03:00:30Z",
            ),
            ("@daily", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
            (
                "0 3 * * MON-FRI",
                "2026-01-03T00:00:00Z",
                "2026-01-05T03:00:00Z",
            ),
        ] {
            let s = cron(expr, "UTC");
            assert_eq!(s.next_after(utc(after)), Some(utc(want)), "`{expr}`");
        }
    }

    #[test]
    fn due_reason_labels_and_text() {
        assert_eq!(DueReason::NoToken.to_string(), "no token stored yet");
        assert_eq!(DueReason::Expiry.as_str(), "expiry");
        let spec = ScheduleSpec {
            rotate_before_expiry: Some(days(3)),
            ..spec(None)
        };
        let t = token("2026-01-01T00:00:00Z", Some("2026-01-31T00:00:00Z"));
        let due = next_due("p", &spec, Some(&t), t.created_at, None).unwrap();
        assert_eq!(
            due.detail,
            "token expires at 2026-01-31T00:00:00Z, rotate 3days before"
        );
    }

    /// A wall clock that follows tokio's paused clock plus a manual offset,
    /// so a test can make the wall clock jump while monotonic time runs on.
    fn wall(offset: &Clock) -> impl Fn() -> DateTime<Utc> + use<> {
        let offset = offset.clone();
        let origin = tokio::time::Instant::now();
        move || {
            let elapsed = TimeDelta::from_std(origin.elapsed()).unwrap_or(TimeDelta::MAX);
            offset.now() + elapsed
        }
    }

    const CHUNK: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn sleep_until_wall_reaches_the_deadline_exactly() {
        let offset = Clock::manual(utc("2026-01-01T00:00:00Z"));
        let start = tokio::time::Instant::now();
        let deadline = utc("2026-01-01T00:01:35Z");
        assert!(sleep_until_wall(deadline, wall(&offset), CHUNK, &CancellationToken::new()).await);
        assert_eq!(start.elapsed(), Duration::from_secs(95));
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_until_wall_returns_within_a_chunk_after_a_forward_jump() {
        // Like a resume from suspend: the wall clock leaps past the deadline
        // while the monotonic clock saw only ten seconds.
        let offset = Clock::manual(utc("2026-01-01T00:00:00Z"));
        let jumper = offset.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            jumper.advance(TimeDelta::hours(2));
        });
        let start = tokio::time::Instant::now();
        let deadline = utc("2026-01-01T01:00:00Z");
        assert!(sleep_until_wall(deadline, wall(&offset), CHUNK, &CancellationToken::new()).await);
        assert!(
            start.elapsed() <= Duration::from_secs(10) + CHUNK,
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_until_wall_keeps_waiting_after_a_backward_jump() {
        let offset = Clock::manual(utc("2026-01-01T00:00:00Z"));
        let jumper = offset.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            jumper.advance(TimeDelta::minutes(-5));
        });
        let start = tokio::time::Instant::now();
        let deadline = utc("2026-01-01T00:01:00Z");
        assert!(sleep_until_wall(deadline, wall(&offset), CHUNK, &CancellationToken::new()).await);
        // One minute of wall time plus the five minutes it was set back.
        assert_eq!(start.elapsed(), Duration::from_secs(6 * 60));
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_until_wall_stops_when_cancelled() {
        let offset = Clock::manual(utc("2026-01-01T00:00:00Z"));
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            canceller.cancel();
        });
        let start = tokio::time::Instant::now();
        let deadline = utc("2026-01-02T00:00:00Z");
        assert!(!sleep_until_wall(deadline, wall(&offset), CHUNK, &cancel).await);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // Already cancelled: returns at once, even for a past deadline.
        assert!(
            !sleep_until_wall(utc("2025-01-01T00:00:00Z"), wall(&offset), CHUNK, &cancel).await
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_until_wall_past_deadline_returns_at_once() {
        let offset = Clock::manual(utc("2026-01-01T00:00:00Z"));
        let start = tokio::time::Instant::now();
        let deadline = utc("2025-12-31T00:00:00Z");
        assert!(sleep_until_wall(deadline, wall(&offset), CHUNK, &CancellationToken::new()).await);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
