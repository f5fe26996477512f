//! Errors of the `[motherduck]` and `[daemon]` sections and of secrets.

use super::*;

#[test]
fn inline_admin_token() {
    check(
        r#"
[motherduck]
admin_token = "md-inline-secret"
"#,
        expect![[r#"
            2:1: `motherduck.admin_token`: inline secrets are not allowed; reference it with { file = "..." }, { env = "VAR" } or { credential = "name" }
        "#]],
    );
}

#[test]
fn inline_numeric_admin_token() {
    check(
        r#"
[motherduck]
admin_token = 1234567
"#,
        expect![[r#"
            2:1: `motherduck.admin_token`: inline secrets are not allowed; reference it with { file = "..." }, { env = "VAR" } or { credential = "name" }
        "#]],
    );
}

#[test]
fn empty_secret_reference() {
    check(
        r#"
[motherduck]
admin_token = {}
"#,
        expect![[r#"
            2:15: `motherduck.admin_token`: a secret reference needs one of `file`, `env` or `credential`
        "#]],
    );
}

#[test]
fn two_secret_references() {
    check(
        r#"
[motherduck]
admin_token = { file = "admin.token", env = "MD_TOKEN" }
"#,
        expect![[r#"
            2:15: `motherduck.admin_token`: give exactly one of `file`, `env` or `credential`, not `file` and `env`
        "#]],
    );
}

#[test]
fn environment_variable_unset() {
    check(
        r#"
[motherduck]
admin_token = { env = "MD_TOKEN_UNSET" }
"#,
        expect![[r#"
            2:17: `motherduck.admin_token.env`: environment variable `MD_TOKEN_UNSET` is not set or empty
        "#]],
    );
}

#[test]
fn environment_variable_blank() {
    check(
        r#"
[motherduck]
admin_token = { env = "EMPTY_VAR" }
"#,
        expect![[r#"
            2:17: `motherduck.admin_token.env`: environment variable `EMPTY_VAR` is not set or empty
        "#]],
    );
}

#[test]
fn not_a_variable_name() {
    check(
        r#"
[motherduck]
admin_token = { env = "$MD_TOKEN" }
"#,
        expect![[r#"
            2:17: `motherduck.admin_token.env`: `$MD_TOKEN` is not an environment variable name (letters, digits and `_`, not starting with a digit)
        "#]],
    );
}

#[test]
fn token_pasted_as_a_variable_name() {
    check(
        r#"
[motherduck]
admin_token = { env = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl" }
"#,
        expect![[r#"
            2:17: `motherduck.admin_token.env`: this looks like a token rather than a variable name; never put the secret itself in the configuration (the value is not shown)
        "#]],
    );
}

#[test]
fn credential_without_credentials_directory() {
    check(
        r#"
[motherduck]
admin_token = { credential = "md_admin" }
"#,
        expect![[r#"
            2:17: `motherduck.admin_token.credential`: credential `md_admin` needs $CREDENTIALS_DIRECTORY (set by systemd's LoadCredential=); it is not set
        "#]],
    );
}

#[test]
fn credential_name_with_a_slash() {
    check(
        r#"
[motherduck]
admin_token = { credential = "../md_admin" }
"#,
        expect![[r#"
            2:17: `motherduck.admin_token.credential`: invalid credential name `../md_admin`: it must be a file name in $CREDENTIALS_DIRECTORY (no `/`, not starting with `.`)
        "#]],
    );
}

#[test]
fn secret_file_missing() {
    check(
        r#"
[motherduck]
admin_token = { file = "missing.token" }
"#,
        expect![[r#"
            2:17: `motherduck.admin_token.file`: failed to read secret file `$DIR/missing.token`: No such file or directory (os error 2)
        "#]],
    );
}

#[test]
fn secret_file_is_a_directory() {
    check(
        r#"
[motherduck]
admin_token = { file = "a-directory" }
"#,
        expect![[r#"
            2:17: `motherduck.admin_token.file`: failed to read secret file `$DIR/a-directory`: Is a directory (os error 21)
        "#]],
    );
}

#[test]
fn secret_file_empty() {
    check(
        r#"
[motherduck]
admin_token = { file = "empty.token" }
"#,
        expect![[r#"
            2:17: `motherduck.admin_token.file`: secret file `$DIR/empty.token` is empty
        "#]],
    );
}

#[test]
fn secret_file_path_empty() {
    check(
        r#"
[motherduck]
admin_token = { file = "" }
"#,
        expect![[r#"
            2:17: `motherduck.admin_token.file`: the secret file path is empty
        "#]],
    );
}

#[test]
fn admin_token_with_a_line_break_inside() {
    check(
        r#"
[motherduck]
admin_token = { file = "broken.token" }
"#,
        expect![[r#"
            2:15: `motherduck.admin_token`: the admin token contains characters not allowed in an HTTP header, such as a line break inside it
        "#]],
    );
}

#[test]
fn plain_http_api_url_off_loopback() {
    check(
        r#"
[motherduck]
api_url = "http://api.motherduck.com"
admin_token = { env = "MD_TOKEN" }
"#,
        expect![[r#"
            2:1: `motherduck.api_url`: MotherDuck API URL `http://api.motherduck.com` must use https (plain http is allowed only for loopback addresses)
        "#]],
    );
}

#[test]
fn api_url_with_a_query() {
    check(
        r#"
[motherduck]
api_url = "https://api.motherduck.com/?region=eu"
admin_token = { env = "MD_TOKEN" }
"#,
        expect![[r#"
            2:1: `motherduck.api_url`: invalid MotherDuck API URL `https://api.motherduck.com/?region=eu`: a query or fragment is not allowed
        "#]],
    );
}

#[test]
fn api_url_not_a_url() {
    check(
        r#"
[motherduck]
api_url = "api.motherduck.com"
admin_token = { env = "MD_TOKEN" }
"#,
        expect![[r#"
            2:1: `motherduck.api_url`: invalid MotherDuck API URL `api.motherduck.com`: relative URL without a base
        "#]],
    );
}

#[test]
fn bad_motherduck_numbers_and_durations() {
    check(
        r#"
[motherduck]
admin_token = { env = "MD_TOKEN" }
request_timeout = "0s"
max_retries = 21
rate_limit_per_second = 0
"#,
        expect![[r#"
            3:1: `motherduck.request_timeout`: must be greater than zero
            4:1: `motherduck.max_retries`: `21` is more than the maximum of 20
            5:1: `motherduck.rate_limit_per_second`: must be at least 1
        "#]],
    );
}

#[test]
fn bad_daemon_settings() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[daemon]
listen = "localhost:9464"
log_format = "yaml"
rotation_concurrency = 0
sweep_interval = "500ms"
orphan_min_age = "five minutes"
shutdown_timeout = "30"
lock_retry_interval = "0s"
instance_id = " "
"#,
        expect![[r#"
            3:1: `daemon.listen`: `localhost:9464` is not an address like 127.0.0.1:9464
            4:1: `daemon.log_format`: `yaml` is not one of auto, text, json
            5:1: `daemon.rotation_concurrency`: must be at least 1
            6:1: `daemon.sweep_interval`: must be at least 1s
            7:1: `daemon.orphan_min_age`: invalid duration `five minutes`: expected number at 0 (use e.g. "90s", "15m", "7d")
            8:1: `daemon.shutdown_timeout`: invalid duration `30`: time unit needed, for example 30sec or 30ms (use e.g. "90s", "15m", "7d")
            9:1: `daemon.lock_retry_interval`: must be greater than zero
            10:1: `daemon.instance_id`: ` ` must be non-empty text without control characters
        "#]],
    );
}

#[test]
fn bad_store_name() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.Local]
type = "file"
directory = "store"
"#,
        expect![[r#"
            2:1: `stores.Local`: store name `Local` may contain only a-z, 0-9, `_` and `-`
        "#]],
    );
}
