//! Pieces of configuration files the tests write. Paths of secret files
//! are relative to the configuration file: tests write `admin.token` and
//! `vault.token` next to it (see `support::world`).

/// `[motherduck]` for the simulator at `api`, the admin token read from
/// `admin.token`.
pub fn motherduck(api: &str) -> String {
    format!(
        r#"
[motherduck]
api_url = "{api}"
admin_token = {{ file = "admin.token" }}
"#
    )
}

/// [`motherduck`] with a short request timeout and a rate limit no test
/// reaches.
pub fn motherduck_unthrottled(api: &str) -> String {
    format!(
        "{}request_timeout = \"5s\"\nrate_limit_per_second = 1000\n",
        motherduck(api)
    )
}

/// `[daemon]` of a daemon started as a child: any port, JSON logs, and
/// `lines` (`key = value`, one a line) after those.
pub fn daemon(lines: &str) -> String {
    format!(
        r#"
[daemon]
listen = "127.0.0.1:0"
log_format = "json"
{lines}"#
    )
}

/// `[stores.vault]` on OpenBao's `secret/` at `addr` with the token in
/// `vault.token`, leases of `lease_ttl`.
pub fn vault_store(addr: &str, lease_ttl: &str) -> String {
    format!(
        r#"
[stores.vault]
type = "vault"
address = "{addr}"
auth = {{ method = "token", token = {{ file = "vault.token" }} }}
lease_ttl = "{lease_ttl}"
"#
    )
}

/// `[stores.aws]` on moto at `endpoint`, creating missing secrets, with
/// `lines` after those.
pub fn aws_store(endpoint: &str, lines: &str) -> String {
    format!(
        r#"
[stores.aws]
type = "aws"
region = "us-east-1"
endpoint_url = "{endpoint}"
create_if_missing = true
{lines}"#
    )
}

/// `[stores.<name>]` of type `file` in `directory`.
pub fn file_store(name: &str, directory: &str) -> String {
    format!(
        r#"
[stores.{name}]
type = "file"
directory = "{directory}"
"#
    )
}

/// `[[policy]]` `name` for the service account `account`, rotated daily
/// without overlap, writing to `destinations` (the items of the TOML
/// list); `lines` (`key = value`, one a line) follow.
pub fn policy(name: &str, account: &str, destinations: &str, lines: &str) -> String {
    format!(
        r#"
[[policy]]
name = "{name}"
service_account = "{account}"
schedule = {{ interval = "1d" }}
overlap = "0s"
destinations = [{destinations}]
{lines}"#
    )
}

/// A policy's `verify` line: the built-in check, polling every 10 ms for
/// up to `deadline`.
pub fn verify_motherduck(deadline: &str) -> String {
    format!(
        "verify = [{{ type = \"motherduck\", interval = \"10ms\", deadline = \"{deadline}\" }}]\n"
    )
}
