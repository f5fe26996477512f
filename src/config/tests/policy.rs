//! Errors of `[[policy]]`: names, token settings, schedules, windows,
//! destinations on file stores, and retries.

use super::*;

// Every case starts with the same two lines, so a policy's first line is
// line 3.

#[test]
fn bad_policy_name() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "Orders.API"
service_account = "svc_orders"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        expect![[r#"
            4:1: `policy[0].name`: policy name `Orders.API` must be 1-64 characters of a-z, 0-9, `_` and `-`
        "#]],
    );
}

#[test]
fn duplicate_policy_names() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "b.json" }]
"#,
        expect![[r#"
            9:1: `policy[1].name`: duplicate policy name `app`
        "#]],
    );
}

#[test]
fn bad_service_account_name() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "9-app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        expect![[r#"
            5:1: `policy[0].service_account`: `9-app` is not a valid service account name: it must start with an alphabetic character; it may only contain letters, numbers and underscores
        "#]],
    );
}

#[test]
fn bad_token_type_and_prefix() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
token_type = "read_only"
token_name_prefix = "my.rotator"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        expect![[r#"
            6:1: `policy[0].token_type`: `read_only` is not one of read_write, read_scaling
            7:1: `policy[0].token_name_prefix`: `my.rotator` must be 1-32 characters of letters, digits, `_` and `-`
        "#]],
    );
}

#[test]
fn bad_durations() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1 fortnight" }
jitter = "-5m"
overlap = "5"
destinations = [{ store = "local", path = "a.json" }]
"#,
        expect![[r#"
            6:14: `policy[0].schedule.interval`: invalid duration `1 fortnight`: unknown time unit "fortnight", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations) (use e.g. "90s", "15m", "7d")
            7:1: `policy[0].jitter`: invalid duration `-5m`: expected number at 0 (use e.g. "90s", "15m", "7d")
            8:1: `policy[0].overlap`: invalid duration `5`: time unit needed, for example 5sec or 5ms (use e.g. "90s", "15m", "7d")
        "#]],
    );
}

// Regression: an empty directory (the config file's own), a NUL
// byte or a newline in a path or file name were accepted.
#[test]
fn empty_directory_control_characters_in_paths() {
    check(
        r#"
motherduck = { admin_token = { file = "admin\ntoken" } }
stores.empty = { type = "file", directory = "" }
stores.nul = { type = "file", directory = "var/\u0000lib" }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "app\n.json", bare_token_file = "app\t.token" }]
"#,
        expect![[r#"
            1:32: `motherduck.admin_token.file`: `admin\ntoken` contains a control character (NUL, newline, tab, ...); paths must not
            2:33: `stores.empty.directory`: must not be empty: name the directory that holds the records
            3:31: `stores.nul.directory`: `var/\0lib` contains a control character (NUL, newline, tab, ...); paths must not
            9:36: `policy[0].destinations[0].path`: `app\n.json` must be a plain file name inside the store's directory
            9:57: `policy[0].destinations[0].bare_token_file`: `app\t.token` must be a plain file name, different from `path`
        "#]],
    );
}

// Regression: a 30m token rotated 10m before expiry, with a 10m
// acknowledgement deadline, passed: a failed verification could
// then restore a token about to expire, and the overlap could end
// after it.
#[test]
fn rotate_before_expiry_shorter_than_a_rotation_can_take() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
token_ttl = "30m"
rotate_before_expiry = "10m"
overlap = "1m"
verify = [{ type = "ack", deadline = "10m" }]
destinations = [{ store = "local", path = "a.json" }]
"#,
        expect![[r#"
            7:1: `policy[0].rotate_before_expiry`: `10m` must be longer than `overlap` (`1m`) + the longest verification deadline (`10m`) + the step retries (`1m 30s`) = `12m 30s`: otherwise the old token can expire before the rotation is verified and its overlap is over
        "#]],
    );
}

// Regression: a policy locked on AWS that renews its lease through
// a long verification, rotating often, exceeded Secrets Manager's
// versions quota; `LimitExceededException` then let the lease
// expire mid-rotation.
#[test]
fn an_aws_lock_over_the_versions_quota() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.aws = { type = "aws", region = "eu-west-1", lock_ttl = "3s" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1h" }
verify = [{ type = "ack", deadline = "1m" }]
destinations = [{ store = "aws", path = "prod/app" }]
"#,
        expect![[r#"
            4:1: `policy[0].name`: in a day this policy can write about 3648 versions of the AWS lock secret `prod/app.lock` (24 rotations, each taking the lock twice and renewing it up to 150 times over a pass of up to 2m 30s), above the 100 new versions Secrets Manager accepts within 24 hours: rotate less often, shorten verification deadlines or retries, or lengthen `lock_ttl` (or, for a service without that quota, raise the store's `version_budget`)
        "#]],
    );
}

// Regression: `overlap = "300000y"` passed and panicked at the
// first verified rotation (a timestamp past the year 262143).
#[test]
fn durations_beyond_a_hundred_years() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1000000000y" }
overlap = "300000y"
destinations = [{ store = "local", path = "a.json" }]
"#,
        expect![[r#"
            6:14: `policy[0].schedule.interval`: `1000000000y` is longer than 100 years, the longest duration any setting takes
            7:1: `policy[0].overlap`: `300000y` is longer than 100 years, the longest duration any setting takes
        "#]],
    );
}

#[test]
fn token_ttl_too_short() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
token_ttl = "4m 59s"
rotate_before_expiry = "1m"
destinations = [{ store = "local", path = "a.json" }]
"#,
        expect![[r#"
            6:1: `policy[0].token_ttl`: `4m 59s` is outside what MotherDuck accepts (whole seconds from 5m to 365d)
        "#]],
    );
}

#[test]
fn token_ttl_too_long() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
token_ttl = "366d"
destinations = [{ store = "local", path = "a.json" }]
"#,
        expect![[r#"
            6:1: `policy[0].token_ttl`: `366d` is outside what MotherDuck accepts (whole seconds from 5m to 365d)
        "#]],
    );
}

#[test]
fn token_ttl_not_whole_seconds() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
token_ttl = "1h 500ms"
destinations = [{ store = "local", path = "a.json" }]
"#,
        expect![[r#"
            6:1: `policy[0].token_ttl`: `1h 500ms` is outside what MotherDuck accepts (whole seconds from 5m to 365d)
        "#]],
    );
}

#[test]
fn rotate_before_expiry_not_shorter_than_the_ttl() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
token_ttl = "1d"
rotate_before_expiry = "24h"
destinations = [{ store = "local", path = "a.json" }]
"#,
        expect![[r#"
            7:1: `policy[0].rotate_before_expiry`: `1day` must be shorter than `token_ttl` (`1day`)
        "#]],
    );
}

#[test]
fn rotate_before_expiry_within_the_overlap() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
token_ttl = "1d"
rotate_before_expiry = "1h"
overlap = "1h"
destinations = [{ store = "local", path = "a.json" }]
"#,
        expect![[r#"
            7:1: `policy[0].rotate_before_expiry`: `1h` must be longer than `overlap` (`1h`): the old token has to outlive the overlap period after the rotation starts
        "#]],
    );
}

#[test]
fn default_rotate_before_expiry_within_the_overlap() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
token_ttl = "10m"
destinations = [{ store = "local", path = "a.json" }]
"#,
        expect![[r#"
            3:1: `policy[0].rotate_before_expiry`: the default (a third of `token_ttl`, `3m 20s`) must be longer than `overlap` (`5m`): the old token has to outlive the overlap period after the rotation starts; set `rotate_before_expiry` longer than `overlap`, or shorten `overlap`
        "#]],
    );
}

#[test]
fn cron_and_interval_together() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { cron = "0 3 * * *", interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        expect![[r#"
            6:12: `policy[0].schedule`: give either `cron` or `interval`, not both
        "#]],
    );
}

#[test]
fn neither_cron_nor_interval() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { timezone = "UTC" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        expect![[r#"
            6:12: `policy[0].schedule`: give `cron` (with an optional `timezone`) or `interval`
        "#]],
    );
}

#[test]
fn timezone_with_an_interval() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d", timezone = "UTC" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        expect![[r#"
            6:31: `policy[0].schedule.timezone`: `timezone` applies to `cron` only
        "#]],
    );
}

#[test]
fn interval_below_a_second() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "500ms" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        expect![[r#"
            6:14: `policy[0].schedule.interval`: must be at least 1s
        "#]],
    );
}

#[test]
fn bad_cron() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { cron = "0 25 * * *" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        expect![[r#"
            6:14: `policy[0].schedule.cron`: invalid cron expression `0 25 * * *`: Component error: Number out of bounds.
        "#]],
    );
}

#[test]
fn cron_that_never_fires() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { cron = "0 0 30 2 *" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        expect![[r#"
            6:14: `policy[0].schedule.cron`: cron expression `0 0 30 2 *` never matches a date
        "#]],
    );
}

#[test]
fn bad_timezone() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { cron = "0 3 * * *", timezone = "CEST" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        expect![[r#"
            6:34: `policy[0].schedule.timezone`: unknown time zone `CEST`: expected an iana name such as `Europe/Berlin` or `UTC`
        "#]],
    );
}

#[test]
fn bad_windows() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
[[policy.windows]]
days = ["mon", "funday"]
start = "02:00"
end = "04:00"
[[policy.windows]]
start = "02:00"
end = "04:00"
[[policy.windows]]
days = ["sat"]
start = "2am"
end = "04:00"
[[policy.windows]]
days = ["sat"]
start = "02:00"
end = "24:00"
[[policy.windows]]
days = ["sun"]
start = "02:00"
end = "02:00"
[[policy.windows]]
days = ["sun"]
start = "02:00"
end = "04:00"
timezone = "Berlin"
"#,
        expect![[r#"
            9:8: `policy[0].windows[0].days`: unknown day `funday`: expected `mon`, `tue`, `wed`, `thu`, `fri`, `sat` or `sun`
            12:1: `policy[0].windows[1].days`: window needs at least one day, e.g. `mon-sun`
            17:1: `policy[0].windows[2].start`: invalid window start `2am`: expected HH:MM between 00:00 and 23:59
            22:1: `policy[0].windows[3].end`: invalid window end `24:00`: expected HH:MM between 00:00 and 23:59
            26:1: `policy[0].windows[4].end`: window start `02:00` equals its end, which leaves no time to rotate in (omit the window to allow any time)
            31:1: `policy[0].windows[5].timezone`: unknown time zone `Berlin`: expected an iana name such as `Europe/Berlin` or `UTC`
        "#]],
    );
}

#[test]
fn nothing_makes_the_policy_due() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
destinations = [{ store = "local", path = "a.json" }]
"#,
        expect![[r#"
            4:1: `policy[0].name`: nothing would ever make this policy due: set `schedule`, or `token_ttl` for expiry-driven rotation
        "#]],
    );
}

#[test]
fn no_destinations() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
"#,
        expect![[r#"
            4:1: `policy[0].name`: a policy needs at least one entry in `destinations`
        "#]],
    );
}

#[test]
fn unknown_store() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "vault", path = "a.json" }]
"#,
        expect![[r#"
            7:19: `policy[0].destinations[0].store`: no store named `vault` (defined: local)
        "#]],
    );
}

#[test]
fn unknown_store_none_defined() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        expect![[r#"
            6:19: `policy[0].destinations[0].store`: no store named `local` (defined: none)
        "#]],
    );
}

#[test]
fn file_names_that_are_not_plain() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
[[policy.destinations]]
store = "local"
path = "../app.json"
[[policy.destinations]]
store = "local"
path = ".app.json"
bare_token_file = "tokens/app"
[[policy.destinations]]
store = "local"
path = "app.json"
bare_token_file = "app.json"
"#,
        expect![[r#"
            9:1: `policy[0].destinations[0].path`: `../app.json` must be a plain file name inside the store's directory
            12:1: `policy[0].destinations[1].path`: `.app.json` must be a plain file name inside the store's directory
            13:1: `policy[0].destinations[1].bare_token_file`: `tokens/app` must be a plain file name, different from `path`
            17:1: `policy[0].destinations[2].bare_token_file`: `app.json` must be a plain file name, different from `path`
        "#]],
    );
}

#[test]
fn two_policies_write_the_same_file() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
stores.other = { type = "file", directory = "./store/" }
[[policy]]
name = "a"
service_account = "svc_a"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "app.json" }]
[[policy]]
name = "b"
service_account = "svc_b"
schedule = { interval = "1d" }
destinations = [{ store = "other", path = "app.json" }]
"#,
        expect![[r#"
            13:36: `policy[1].destinations[0].path`: `$DIR/./store/app.json` is already written by policy `a`
        "#]],
    );
}

#[test]
fn a_bare_token_file_is_another_policy_s_record() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "a"
service_account = "svc_a"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json", bare_token_file = "token" }]
[[policy]]
name = "b"
service_account = "svc_b"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "token" }]
"#,
        expect![[r#"
            12:36: `policy[1].destinations[0].path`: `$DIR/store/token` is already written by policy `a`
        "#]],
    );
}

#[test]
fn a_file_is_another_record_s_working_file() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "a"
service_account = "svc_a"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "app", bare_token_file = "app.lock" }]
[[policy]]
name = "b"
service_account = "svc_b"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "app.pending" }]
[[policy]]
name = "c"
service_account = "svc_c"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "x" }, { store = "local", path = "x.previous.json", bare_token_file = "x.previous" }]
"#,
        expect![[r#"
            7:50: `policy[0].destinations[0].bare_token_file`: `$DIR/store/app.lock` is already used by policy `a` as a working file of its record `$DIR/store/app`
            12:36: `policy[1].destinations[0].path`: `$DIR/store/app.pending` is already used by policy `a` as a working file of its record `$DIR/store/app`
            17:95: `policy[2].destinations[1].bare_token_file`: `$DIR/store/x.previous` is already used by policy `c` as a working file of its record `$DIR/store/x`
        "#]],
    );
}

#[test]
fn a_record_s_working_file_is_another_policy_s_file() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "a"
service_account = "svc_a"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "app.json.previous" }]
[[policy]]
name = "b"
service_account = "svc_b"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "app.json" }]
"#,
        expect![[r#"
            12:36: `policy[1].destinations[0].path`: the file store keeps `$DIR/store/app.json.previous` next to this record, but policy `a` already writes that file
        "#]],
    );
}

#[test]
fn bad_retry() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
[policy.retry]
max_attempts = 0
initial_backoff = "10m"
max_backoff = "5m"
"#,
        expect![[r#"
            9:1: `policy[0].retry.max_attempts`: must be at least 1
            11:1: `policy[0].retry.max_backoff`: must not be less than `initial_backoff`
        "#]],
    );
}

#[test]
fn zero_initial_backoff() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
retry = { initial_backoff = "0s" }
"#,
        expect![[r#"
            8:11: `policy[0].retry.initial_backoff`: must be greater than zero
        "#]],
    );
}
