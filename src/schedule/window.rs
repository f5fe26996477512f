//! Rotation windows: weekly spans of local wall-clock time in a zone.

use std::fmt;

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, TimeZone, Utc,
    Weekday,
};
use chrono_tz::Tz;

use super::*;

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
