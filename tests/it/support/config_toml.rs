//! Pieces of configuration files the tests write. Paths of secret files
//! are relative to the configuration file: tests write `admin.token` and
//! `vault.token` next to it (see `support::world`).

/// `[motherduck]` for the simulator at `api`, the admin token read from
/// `admin.token`.
pub fn motherduck(api: &str) -> String {
    motherduck_with(api, r#"{ file = "admin.token" }"#)
}

/// `[motherduck]` for the simulator at `api`, the admin token from
/// `admin_token` (a secret reference, e.g. `{ env = "X" }`).
pub fn motherduck_with(api: &str, admin_token: &str) -> String {
    format!("\n[motherduck]\napi_url = \"{api}\"\nadmin_token = {admin_token}\n")
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
    vault_store_named("vault", addr, &format!("lease_ttl = \"{lease_ttl}\"\n"))
}

/// `[stores.<name>]` on the OpenBao at `addr` with the token in
/// `vault.token`, and `lines` after those.
pub fn vault_store_named(name: &str, addr: &str, lines: &str) -> String {
    let auth = r#"auth = { method = "token", token = { file = "vault.token" } }"#;
    format!("\n[stores.{name}]\ntype = \"vault\"\naddress = \"{addr}\"\n{auth}\n{lines}")
}

/// `[stores.aws]` on moto at `endpoint`, creating missing secrets, with
/// `lines` after those.
pub fn aws_store(endpoint: &str, lines: &str) -> String {
    let table = "\n[stores.aws]\ntype = \"aws\"\nregion = \"us-east-1\"\n";
    format!("{table}endpoint_url = \"{endpoint}\"\ncreate_if_missing = true\n{lines}")
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
    policy_on(name, account, r#"{ interval = "1d" }"#, "0s", destinations) + lines
}

/// `[[policy]]` `name` for the service account `account` on `schedule`
/// (a TOML value) with `overlap`, writing to `destinations` (the items of
/// the TOML list); more `key = value` lines may follow.
pub fn policy_on(
    name: &str,
    account: &str,
    schedule: &str,
    overlap: &str,
    destinations: &str,
) -> String {
    format!(
        "\n[[policy]]\nname = \"{name}\"\nservice_account = \"{account}\"\nschedule = {schedule}\noverlap = \"{overlap}\"\ndestinations = [{destinations}]\n"
    )
}

/// A policy's `verify` line: the built-in check, polling every 10 ms for
/// up to `deadline`.
pub fn verify_motherduck(deadline: &str) -> String {
    format!(
        "verify = [{{ type = \"motherduck\", interval = \"10ms\", deadline = \"{deadline}\" }}]\n"
    )
}
