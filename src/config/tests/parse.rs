//! Errors that serde or the TOML parser reports, and a file with a problem
//! in every section.

use super::*;

// Errors that serde or the TOML parser reports: one per file, since they
// stop the parse.

#[test]
fn toml_syntax() {
    check(
        r#"
[motherduck
admin_token = { env = "MD_TOKEN" }
"#,
        expect![[r#"
            1:12: unclosed table, expected `]`
        "#]],
    );
}

#[test]
fn unquoted_string() {
    check(
        r#"
[motherduck]
admin_token = md-secret
"#,
        expect![[r#"
            2:15: string values must be quoted, expected literal string
        "#]],
    );
}

#[test]
fn unknown_top_level_field() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
polcy = []
"#,
        expect![[r#"
            2:1: `polcy`: unknown field `polcy`, expected one of `motherduck`, `daemon`, `stores`, `policy`, `alerts`
        "#]],
    );
}

#[test]
fn unknown_field_in_motherduck() {
    check(
        r#"
[motherduck]
admin_token = { env = "MD_TOKEN" }
api_uri = "https://api.motherduck.com"
"#,
        expect![[r#"
            3:1: `motherduck.api_uri`: unknown field `api_uri`, expected one of `api_url`, `admin_token`, `request_timeout`, `max_retries`, `rate_limit_per_second`
        "#]],
    );
}

#[test]
fn unknown_field_in_daemon() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[daemon]
listen_address = "127.0.0.1:9464"
"#,
        expect![[r#"
            3:1: `daemon.listen_address`: unknown field `listen_address`, expected one of `listen`, `log_format`, `rotation_concurrency`, `sweep_interval`, `orphan_min_age`, `shutdown_timeout`, `lock_retry_interval`, `recheck_interval`, `instance_id`, `metrics_bearer_token`
        "#]],
    );
}

#[test]
fn unknown_field_in_a_policy() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "app"
service_account = "svc_app"
token_tll = "1d"
"#,
        expect![[r#"
            5:1: `policy[0].token_tll`: unknown field `token_tll`, expected one of `name`, `service_account`, `token_type`, `token_ttl`, `token_name_prefix`, `schedule`, `jitter`, `windows`, `rotate_before_expiry`, `overlap`, `verify`, `destinations`, `lock`, `retry`
        "#]],
    );
}

#[test]
fn unknown_field_in_the_second_policy() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "a"
service_account = "svc_a"
[[policy]]
name = "b"
service_account = "svc_b"
overlapp = "5m"
"#,
        expect![[r#"
            8:1: `policy[1].overlapp`: unknown field `overlapp`, expected one of `name`, `service_account`, `token_type`, `token_ttl`, `token_name_prefix`, `schedule`, `jitter`, `windows`, `rotate_before_expiry`, `overlap`, `verify`, `destinations`, `lock`, `retry`
        "#]],
    );
}

#[test]
fn unknown_field_in_a_store_table() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.local]
type = "file"
directory = "store"
mode = "0600"
"#,
        expect![[r#"
            5:1: `stores.local.mode`: unknown field `mode`, expected `directory`
        "#]],
    );
}

#[test]
fn unknown_field_in_an_inline_store() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", dir = "store" }
"#,
        expect![[r#"
            2:33: `stores.local.dir`: unknown field `dir`, expected `directory`
        "#]],
    );
}

#[test]
fn unknown_store_type() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.vault]
type = "hashicorp"
"#,
        expect![[r#"
            3:8: `stores.vault.type`: unknown variant `hashicorp`, expected one of `file`, `vault`, `aws`
        "#]],
    );
}

#[test]
fn store_without_a_type() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.local]
directory = "store"
"#,
        expect![[r#"
            2:1: `stores.local`: missing field `type`
        "#]],
    );
}

#[test]
fn unknown_field_in_a_destination() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "app"
service_account = "svc_app"
destinations = [{ store = "local", file = "app.json" }]
"#,
        expect![[r#"
            5:36: `policy[0].destinations[0].file`: unknown field `file`, expected one of `store`, `path`, `bare_token_file`
        "#]],
    );
}

#[test]
fn unknown_field_in_a_secret_reference() {
    check(
        r#"
[motherduck]
admin_token = { path = "/etc/md.token" }
"#,
        expect![[r#"
            2:17: `motherduck.admin_token.path`: unknown field `path`, expected one of `file`, `env`, `credential`
        "#]],
    );
}

#[test]
fn unknown_field_in_a_schedule() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { every = "1h" }
"#,
        expect![[r#"
            5:14: `policy[0].schedule.every`: unknown field `every`, expected one of `cron`, `timezone`, `interval`
        "#]],
    );
}

#[test]
fn missing_motherduck() {
    check(
        r#"
[daemon]
listen = "127.0.0.1:9464"
"#,
        expect![[r#"
            1:1: missing field `motherduck`
        "#]],
    );
}

#[test]
fn missing_admin_token() {
    check(
        r#"
[motherduck]
api_url = "https://api.motherduck.com"
"#,
        expect![[r#"
            1:1: `motherduck`: missing field `admin_token`
        "#]],
    );
}

#[test]
fn policy_without_service_account() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "app"
"#,
        expect![[r#"
            2:1: `policy[0]`: missing field `service_account`
        "#]],
    );
}

#[test]
fn window_without_start() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "app"
service_account = "svc_app"
windows = [{ days = ["sat"], end = "04:00" }]
"#,
        expect![[r#"
            5:12: `policy[0].windows[0]`: missing field `start`
        "#]],
    );
}

#[test]
fn number_where_a_string_belongs() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = 3600 }
"#,
        expect![[r#"
            5:25: `policy[0].schedule.interval`: invalid type: integer `3600`, expected a string
        "#]],
    );
}

#[test]
fn string_where_a_number_belongs() {
    check(
        r#"
[motherduck]
admin_token = { env = "MD_TOKEN" }
max_retries = "4"
"#,
        expect![[r#"
            3:15: `motherduck.max_retries`: invalid type: string "4", expected u32
        "#]],
    );
}

#[test]
fn negative_count() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
daemon = { rotation_concurrency = -1 }
"#,
        expect![[r#"
            2:35: `daemon.rotation_concurrency`: invalid value: integer `-1`, expected usize
        "#]],
    );
}

#[test]
fn table_where_a_list_belongs() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "app"
service_account = "svc_app"
destinations = { store = "local", path = "app.json" }
"#,
        expect![[r#"
            5:16: `policy[0].destinations`: invalid type: map, expected a sequence
        "#]],
    );
}

// One problem in each section; none hides another.

#[test]
fn every_problem_in_a_file_is_reported() {
    check(
        r#"
[motherduck]
api_url = "http://api.motherduck.com"
admin_token = { env = "MD_TOKEN_UNSET" }

[daemon]
log_format = "xml"

[stores.local]
type = "file"
directory = "store"

[[policy]]
name = "a"
service_account = "svc_a"
token_ttl = "1m"
schedule = { cron = "0 3 * * *", timezone = "Mars/Olympus" }
destinations = [{ store = "local", path = "a.json" }]
verify = [{ type = "http", url = "http://a.example.com/" }]

[[policy]]
name = "a"
service_account = "svc a"
schedule = { interval = "1d" }
destinations = [{ store = "nope", path = "b.json" }]
retry = { initial_backoff = "1h", max_backoff = "1m" }
"#,
        expect![[r#"
            2:1: `motherduck.api_url`: MotherDuck API URL `http://api.motherduck.com` must use https (plain http is allowed only for loopback addresses)
            3:17: `motherduck.admin_token.env`: environment variable `MD_TOKEN_UNSET` is not set or empty
            6:1: `daemon.log_format`: `xml` is not one of auto, text, json
            15:1: `policy[0].token_ttl`: `1m` is outside what MotherDuck accepts (whole seconds from 5m to 365d)
            16:34: `policy[0].schedule.timezone`: unknown time zone `Mars/Olympus`: expected an iana name such as `Europe/Berlin` or `UTC`
            18:28: `policy[0].verify[0].url`: probe url `http://a.example.com/` must use https (plain http is allowed only for loopback addresses)
            21:1: `policy[1].name`: duplicate policy name `a`
            22:1: `policy[1].service_account`: `svc a` is not a valid service account name: it may only contain letters, numbers and underscores
            24:19: `policy[1].destinations[0].store`: no store named `nope` (defined: local)
            25:35: `policy[1].retry.max_backoff`: must not be less than `initial_backoff`
        "#]],
    );
}
