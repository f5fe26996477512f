//! Cron schedules in an IANA zone, read with `croner`.

use std::fmt;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

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
    pub(super) tz: Tz,
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
