//! Errors of verification hooks (`[[policy.verify]]`).

use super::*;

/// The policy most cases below verify, lines 1-7; a case's own text
/// starts on line 8.
macro_rules! with_policy {
    ($rest:literal) => {
        concat!(
            r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]"#,
            $rest
        )
    };
}

// A hook's table is read on its own, so the rest of the file is
// still checked.
#[test]
fn unknown_field_in_an_inline_hook() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "app"
service_account = "svc_app"
verify = [{ type = "motherduck" }, { type = "http", url = "https://a.example.com/", timeout = "5s" }]
"#,
        expect![[r#"
            3:1: `policy[0].name`: nothing would ever make this policy due: set `schedule`, or `token_ttl` for expiry-driven rotation
            3:1: `policy[0].name`: a policy needs at least one entry in `destinations`
            5:85: `policy[0].verify[1].timeout`: unknown field `timeout`, expected one of `url`, `method`, `headers`, `expect_status`, `json_field`, `interval`, `deadline`, `request_timeout`
        "#]],
    );
}

#[test]
fn unknown_field_in_a_hook_table() {
    check(
        with_policy!(
            r#"
[[policy.verify]]
type = "command"
command = ["true"]
env = ["A=1"]
"#
        ),
        expect![[r#"
            11:1: `policy[0].verify[0].env`: unknown field `env`, expected one of `command`, `timeout`, `interval`, `deadline`, `pass_token`, `inherit_env`
        "#]],
    );
}

#[test]
fn unknown_hook_type() {
    check(
        with_policy!(
            r#"
verify = [{ type = "webhook", url = "https://a.example.com/" }]
"#
        ),
        expect![[r#"
            8:20: `policy[0].verify[0].type`: unknown variant `webhook`, expected one of `http`, `command`, `ack`, `motherduck`
        "#]],
    );
}

#[test]
fn hook_without_a_type() {
    check(
        with_policy!(
            r#"
verify = [{ url = "https://a.example.com/" }, "motherduck"]
"#
        ),
        expect![[r#"
            8:11: `policy[0].verify[0]`: missing field `type`
            8:47: `policy[0].verify[1]`: a verification hook is a table with a `type`, such as { type = "motherduck" }
        "#]],
    );
}

#[test]
fn command_hook_without_a_program() {
    check(
        with_policy!(
            r#"
verify = [{ type = "command", command = [] }]
"#
        ),
        expect![[r#"
            8:41: `policy[0].verify[0].command`: needs at least the program to run
        "#]],
    );
}

#[test]
fn command_hook_with_an_empty_program() {
    check(
        with_policy!(
            r#"
verify = [{ type = "command", command = [""] }]
"#
        ),
        expect![[r#"
            8:41: `policy[0].verify[0].command`: the command program must not be empty
        "#]],
    );
}

#[test]
fn command_hook_timing() {
    check(
        with_policy!(
            r#"
verify = [
  { type = "command", command = ["check"], timeout = "5m", deadline = "1m" },
  { type = "command", command = ["check"], interval = "0s" },
]
"#
        ),
        expect![[r#"
            9:44: `policy[0].verify[0].timeout`: timeout `5m` must not exceed the deadline `1m`
            10:44: `policy[0].verify[1].interval`: interval `0s` must be greater than zero
        "#]],
    );
}

#[test]
fn command_hook_inheriting_a_secret() {
    check(
        with_policy!(
            r#"
verify = [{ type = "command", command = ["check"], inherit_env = ["KUBECONFIG", "MD_TOKEN"] }]
"#
        ),
        expect![[r#"
            8:81: `policy[0].verify[0].inherit_env[1]`: `MD_TOKEN` holds a secret this configuration references; a verification command must not inherit it
        "#]],
    );
}

#[test]
fn command_hook_inheriting_motherduck_token() {
    check(
        with_policy!(
            r#"
verify = [{ type = "command", command = ["check"], inherit_env = ["MOTHERDUCK_TOKEN"] }]
"#
        ),
        expect![[r#"
            8:66: `policy[0].verify[0].inherit_env`: inherit_env may not name `MOTHERDUCK_TOKEN`; set pass_token to hand the new token to the command
        "#]],
    );
}

#[test]
fn http_hook_over_plain_http_off_loopback() {
    check(
        with_policy!(
            r#"
verify = [{ type = "http", url = "http://app.internal:8080/health" }]
"#
        ),
        expect![[r#"
            8:28: `policy[0].verify[0].url`: probe url `http://app.internal:8080/health` must use https (plain http is allowed only for loopback addresses)
        "#]],
    );
}

#[test]
fn http_hook_with_credentials_in_the_url() {
    check(
        with_policy!(
            r#"
verify = [{ type = "http", url = "https://user:hunter2@app.example.com/" }]
"#
        ),
        expect![[r#"
            8:28: `policy[0].verify[0].url`: probe url must not contain credentials; send them in a secret header
        "#]],
    );
}

#[test]
fn http_hook_with_a_literal_authorization_header() {
    check(
        with_policy!(
            r#"
verify = [{ type = "http", url = "https://app.example.com/", headers = { Authorization = "Bearer hunter2" } }]
"#
        ),
        expect![[r#"
            8:74: `policy[0].verify[0].headers.Authorization`: header `Authorization` carries a credential; give its value as a secret reference, not a literal
        "#]],
    );
}

#[test]
fn http_hook_with_an_unset_header_secret() {
    check(
        with_policy!(
            r#"
verify = [{ type = "http", url = "https://app.example.com/", headers = { Authorization = { env = "PROBE_TOKEN" } } }]
"#
        ),
        expect![[r#"
            8:92: `policy[0].verify[0].headers.Authorization.env`: environment variable `PROBE_TOKEN` is not set or empty
        "#]],
    );
}

#[test]
fn http_hook_settings() {
    check(
        with_policy!(
            r#"
[[policy.verify]]
type = "http"
url = "https://app.example.com/"
json_field = "token_id"
[[policy.verify]]
type = "http"
url = "https://app.example.com/"
expect_status = [200, 700]
[[policy.verify]]
type = "http"
url = "https://app.example.com/"
method = "GET POST"
[[policy.verify]]
type = "http"
url = "https://app.example.com/"
request_timeout = "1m"
deadline = "30s"
"#
        ),
        expect![[r#"
            11:1: `policy[0].verify[0].json_field`: json_field `token_id` is not a JSON pointer (it must start with `/`, like `/token_id`)
            15:17: `policy[0].verify[1].expect_status`: expected status `700` is not an HTTP status (100-599)
            19:1: `policy[0].verify[2].method`: invalid http method `GET POST`
            23:1: `policy[0].verify[3].request_timeout`: request_timeout `1m` must not exceed the deadline `30s`
        "#]],
    );
}

#[test]
fn ack_and_built_in_hook_timing() {
    check(
        with_policy!(
            r#"
verify = [{ type = "ack", deadline = "0s" }, { type = "motherduck", interval = "0s" }]
"#
        ),
        expect![[r#"
            8:27: `policy[0].verify[0].deadline`: deadline `0s` must be greater than zero
            8:69: `policy[0].verify[1].interval`: interval `0s` must be greater than zero
        "#]],
    );
}

// Regression: a setting of the wrong type inside a hook table (`url = 3`,
// `timeout = 5`) was reported at the `[[policy.verify]]` header, without
// its key, since serde's tagged enum buffered the table.

#[test]
fn a_wrong_typed_hook_setting_is_reported_at_its_own_key() {
    check(
        with_policy!(
            r#"
[[policy.verify]]
type = "http"
url = 3
[[policy.verify]]
type = "command"
command = ["true"]
timeout = 5
[[policy.verify]]
type = "ack"
deadline = 5
[[policy.verify]]
type = "motherduck"
interval = 5
"#
        ),
        expect![[r#"
            10:7: `policy[0].verify[0].url`: invalid type: integer `3`, expected a string
            14:11: `policy[0].verify[1].timeout`: invalid type: integer `5`, expected a string
            17:12: `policy[0].verify[2].deadline`: invalid type: integer `5`, expected a string
            20:12: `policy[0].verify[3].interval`: invalid type: integer `5`, expected a string
        "#]],
    );
}

#[test]
fn a_wrong_typed_setting_in_an_inline_hook_is_reported_at_its_own_key() {
    check(
        with_policy!(
            r#"
verify = [{ type = "motherduck" }, { type = "command", command = ["true"], pass_token = "yes" }]
"#
        ),
        expect![[r#"
            8:89: `policy[0].verify[1].pass_token`: invalid type: string "yes", expected a boolean
        "#]],
    );
}
