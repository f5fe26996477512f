use super::*;

use tokio_util::sync::CancellationToken;

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
    let got: Vec<(String, DueReason)> = plan.iter().map(|d| (rfc3339(d.at), d.reason)).collect();
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
    assert!(!sleep_until_wall(utc("2025-01-01T00:00:00Z"), wall(&offset), CHUNK, &cancel).await);
}

#[tokio::test(start_paused = true)]
async fn sleep_until_wall_past_deadline_returns_at_once() {
    let offset = Clock::manual(utc("2026-01-01T00:00:00Z"));
    let start = tokio::time::Instant::now();
    let deadline = utc("2025-12-31T00:00:00Z");
    assert!(sleep_until_wall(deadline, wall(&offset), CHUNK, &CancellationToken::new()).await);
    assert_eq!(start.elapsed(), Duration::ZERO);
}
