//! Destinations and locks on Vault and AWS stores, and the places two
//! destinations must not share.

use super::*;

/// The stores the destination and lock cases below use, lines 1-5; their
/// first policy starts on line 6.
macro_rules! with_stores {
    ($rest:literal) => {
        concat!(
            r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
stores.kv = { type = "vault", address = "https://vault.example.com", auth = { method = "token", token = { file = "vault.token" } } }
stores.kv1 = { type = "vault", address = "https://vault.example.com", kv_version = 1, mount = "kv1", auth = { method = "token", token = { file = "vault.token" } } }
stores.aws = { type = "aws", region = "us-east-1" }"#,
            $rest
        )
    };
}

#[test]
fn the_same_path_on_different_servers_namespaces_or_regions_is_fine() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.primary = { type = "vault", address = "https://vault-1.example.com", auth = { method = "token", token = { file = "vault.token" } } }
stores.dr = { type = "vault", address = "https://vault-2.example.com", auth = { method = "token", token = { file = "vault.token" } } }
stores.team-b = { type = "vault", address = "https://vault-1.example.com", namespace = "team-b", auth = { method = "token", token = { file = "vault.token" } } }
stores.us = { type = "aws", region = "us-east-1" }
stores.eu = { type = "aws", region = "eu-west-1" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
verify = [{ type = "motherduck" }]
destinations = [
  { store = "primary", path = "app" },
  { store = "dr", path = "app" },
  { store = "team-b", path = "app" },
  { store = "us", path = "app" },
  { store = "eu", path = "app" },
]
"#,
        expect![[r#"
            motherduck: api_url https://api.motherduck.com, admin_token md-admin-token-from-env (env MD_TOKEN), request_timeout 15s, max_retries 4, rate_limit_per_second 100
            daemon: listen 127.0.0.1:9464, metrics_bearer_token none, log_format Auto, rotation_concurrency 4, sweep_interval 1h, orphan_min_age 5m, shutdown_timeout 30s, lock_retry_interval 30s, recheck_interval 5m, instance_id <host>:<pid>
            alerts: repeat_interval 1h, expiry_warning 1day, max_per_minute 30, max_attempts 5, runbook_url none, sinks []
            vault connections: ["https://vault-2.example.com", "https://vault-1.example.com", "https://vault-1.example.com"]
            policy app: service_account svc_app, token_type ReadWrite, token_ttl none, token names rotator.app.<rotation id>, overlap 5m
              schedule: interval 1day, jitter 0s, rotate_before_expiry none
              hook motherduck: interval 5s, deadline 1m
              destination: vault store primary: vault:secret/app at https://vault-1.example.com (namespace none, token auth), mount secret, path app, V2, lease_ttl 10m
              destination: vault store dr: vault:secret/app at https://vault-2.example.com (namespace none, token auth), mount secret, path app, V2, lease_ttl 10m
              destination: vault store team-b: vault:secret/app at https://vault-1.example.com (namespace team-b, token auth), mount secret, path app, V2, lease_ttl 10m
              destination: aws store us: aws:us-east-1/app, secret app, lock_ttl 10m, version_budget 100
              destination: aws store eu: aws:eu-west-1/app, secret app, lock_ttl 10m, version_budget 100
              lock: vault store primary: vault:secret/app at https://vault-1.example.com (namespace none, token auth), mount secret, path app, V2, lease_ttl 10m
              retry: max_attempts 3, initial_backoff 30s, max_backoff 1h
        "#]],
    );
}

// Errors of Vault and AWS destinations, of locks and of places two
// destinations would share.

#[test]
fn vault_paths() {
    check(
        with_stores!(
            r#"
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [
  { store = "kv", path = "/app" },
  { store = "kv", path = "app/" },
  { store = "kv", path = "a//b" },
  { store = "kv", path = "a/../b" },
  { store = "kv", path = "my app" },
  { store = "kv", path = "" },
  { store = "kv", path = "app.pending" },
  { store = "kv", path = "app.lock" },
  { store = "kv1", path = "app.previous" },
  { store = "kv", path = "app", bare_token_file = "app.token" },
]
"#
        ),
        expect![[r#"
            11:19: `policy[0].destinations[0].path`: Vault KV path `/app` must not start or end with `/`
            12:19: `policy[0].destinations[1].path`: Vault KV path `app/` must not start or end with `/`
            13:19: `policy[0].destinations[2].path`: Vault KV path `a//b` must not have an empty, `.` or `..` segment
            14:19: `policy[0].destinations[3].path`: Vault KV path `a/../b` must not have an empty, `.` or `..` segment
            15:19: `policy[0].destinations[4].path`: Vault KV path `my app` must not contain whitespace or any of `? # * +`
            16:19: `policy[0].destinations[5].path`: Vault KV path `` must not be empty
            17:19: `policy[0].destinations[6].path`: Vault KV path `app.pending` must not end with `.pending`: the Vault store keeps `<path>.pending`, `<path>.lock` (KV v2) and `<path>.previous` (KV v1) next to each destination
            18:19: `policy[0].destinations[7].path`: Vault KV path `app.lock` must not end with `.lock`: the Vault store keeps `<path>.pending`, `<path>.lock` (KV v2) and `<path>.previous` (KV v1) next to each destination
            19:20: `policy[0].destinations[8].path`: Vault KV path `app.previous` must not end with `.previous`: the Vault store keeps `<path>.pending`, `<path>.lock` (KV v2) and `<path>.previous` (KV v1) next to each destination
            20:33: `policy[0].destinations[9].bare_token_file`: applies to file stores only, and store `kv` is of type `vault`
        "#]],
    );
}

#[test]
fn aws_secret_names() {
    check(
        with_stores!(
            r#"
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [
  { store = "aws", path = "" },
  { store = "aws", path = "arn:aws:secretsmanager:us-east-1:123456789012:secret:app-AbCdEf" },
  { store = "aws", path = "my app" },
  { store = "aws", path = "app#1" },
  { store = "aws", path = "app.journal" },
  { store = "aws", path = "app.lock" },
  { store = "aws", path = "app", bare_token_file = "app.token" },
]
"#
        ),
        expect![[r#"
            11:20: `policy[0].destinations[0].path`: secret name `` must not be empty
            12:20: `policy[0].destinations[1].path`: secret name `arn:aws:secretsmanager:us-east-1:123456789012:secret:app-AbCdEf` is an ARN: give the secret's name, after which the store names its companion secrets
            13:20: `policy[0].destinations[2].path`: secret name `my app` contains ` `, which Secrets Manager does not allow (letters, digits and `/_+=.@-` only)
            14:20: `policy[0].destinations[3].path`: secret name `app#1` contains `#`, which Secrets Manager does not allow (letters, digits and `/_+=.@-` only)
            15:20: `policy[0].destinations[4].path`: secret name `app.journal` must not end with `.journal`: the AWS store keeps `<name>.journal` and `<name>.lock` next to each destination
            16:20: `policy[0].destinations[5].path`: secret name `app.lock` must not end with `.lock`: the AWS store keeps `<name>.journal` and `<name>.lock` next to each destination
            17:34: `policy[0].destinations[6].bare_token_file`: applies to file stores only, and store `aws` is of type `aws`
        "#]],
    );
}

#[test]
fn a_destination_on_a_store_with_errors_is_not_checked_further() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.v = { type = "vault", address = "http://vault.example.com", auth = { method = "token", token = { file = "vault.token" } } }
stores.x = { type = "consul" }
stores.a = { type = "aws", region = "us-east-1", lock_ttl = "1s" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "v", path = "app" }, { store = "x", path = "app" }, { store = "a", path = "app" }, { store = "v", path = "/bad" }]
"#,
        expect![[r#"
            2:30: `stores.v.address`: Vault address `http://vault.example.com` uses plain http; use https (http is allowed only for a loopback address)
            3:21: `stores.x.type`: unknown variant `consul`, expected one of `file`, `vault`, `aws`
            4:50: `stores.a.lock_ttl`: must be at least 3s (the holder renews its lease every third of it)
            9:125: `policy[0].destinations[3].path`: Vault KV path `/bad` must not start or end with `/`
        "#]],
    );
}

#[test]
fn the_default_lock_on_a_kv_v1_destination() {
    check(
        with_stores!(
            r#"
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "kv1", path = "app" }, { store = "local", path = "app.json" }]
"#
        ),
        expect![[r#"
            10:19: `policy[0].destinations[0].store`: the policy's lock would be on its first destination, but store `kv1` is a Vault KV v1 mount, which has no check-and-set and cannot hold a lock; set `lock = { store = "...", path = "..." }` on the policy to put it on a file, KV v2 or AWS store
        "#]],
    );
}

#[test]
fn an_explicit_lock_on_a_kv_v1_destination_an_unknown_store_a_bad_path() {
    check(
        with_stores!(
            r#"
[[policy]]
name = "a"
service_account = "svc_a"
schedule = { interval = "1d" }
destinations = [{ store = "kv1", path = "a" }]
lock = { store = "kv1", path = "a" }
[[policy]]
name = "b"
service_account = "svc_b"
schedule = { interval = "1d" }
destinations = [{ store = "kv", path = "b" }]
lock = { store = "nowhere", path = "b" }
[[policy]]
name = "c"
service_account = "svc_c"
schedule = { interval = "1d" }
destinations = [{ store = "kv", path = "c" }]
lock = { store = "local", path = "../c.json" }
"#
        ),
        expect![[r#"
            11:10: `policy[0].lock.store`: store `kv1` is a Vault KV v1 mount, which has no check-and-set and cannot hold a lock; put the lock on a file, KV v2 or AWS store
            17:10: `policy[1].lock.store`: no store named `nowhere` (defined: aws, kv, kv1, local)
            23:27: `policy[2].lock.path`: `../c.json` must be a plain file name inside the store's directory
        "#]],
    );
}

#[test]
fn a_lock_with_a_bare_token_file() {
    check(
        with_stores!(
            r#"
[[policy]]
name = "a"
service_account = "svc_a"
schedule = { interval = "1d" }
destinations = [{ store = "kv", path = "a" }]
lock = { store = "local", path = "a.json", bare_token_file = "a.token" }
"#
        ),
        expect![[r#"
            11:44: `policy[0].lock.bare_token_file`: unknown field `bare_token_file`, expected `store` or `path`
        "#]],
    );
}

#[test]
fn two_destinations_on_one_vault_secret_or_one_aws_secret() {
    check(
        with_stores!(
            r#"
stores.kv-again = { type = "vault", address = "https://vault.example.com/", mount = "/secret/", auth = { method = "token", token = { file = "vault.token" } } }
stores.kv1-on-secret = { type = "vault", address = "https://vault.example.com", kv_version = 1, auth = { method = "token", token = { file = "vault.token" } } }
stores.aws-vpce = { type = "aws", region = "us-east-1", endpoint_url = "https://vpce-1.secretsmanager.us-east-1.vpce.amazonaws.com" }
[[policy]]
name = "a"
service_account = "svc_a"
schedule = { interval = "1d" }
destinations = [{ store = "kv", path = "app" }, { store = "aws", path = "app" }]
[[policy]]
name = "b"
service_account = "svc_b"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "b.json" }, { store = "kv-again", path = "app" }, { store = "aws-vpce", path = "app" }]
lock = { store = "local", path = "b.json" }
[[policy]]
name = "c"
service_account = "svc_c"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "c.json" }, { store = "kv1-on-secret", path = "app" }]
"#
        ),
        expect![[r#"
            18:77: `policy[1].destinations[1].path`: `vault:secret/app` is already written by policy `a`
            18:115: `policy[1].destinations[2].path`: `aws:us-east-1/app` is already written by policy `a`
            24:82: `policy[2].destinations[1].path`: `vault:secret/app` is already written by policy `a`
        "#]],
    );
}

#[test]
fn a_lock_on_another_policy_s_destination_and_the_other_way_round() {
    check(
        with_stores!(
            r#"
[[policy]]
name = "a"
service_account = "svc_a"
schedule = { interval = "1d" }
destinations = [{ store = "kv", path = "a" }]
[[policy]]
name = "b"
service_account = "svc_b"
schedule = { interval = "1d" }
destinations = [{ store = "kv1", path = "b" }]
lock = { store = "kv", path = "a" }
[[policy]]
name = "c"
service_account = "svc_c"
schedule = { interval = "1d" }
destinations = [{ store = "kv1", path = "c" }]
lock = { store = "aws", path = "shared-lock" }
[[policy]]
name = "d"
service_account = "svc_d"
schedule = { interval = "1d" }
destinations = [{ store = "aws", path = "shared-lock" }]
[[policy]]
name = "e"
service_account = "svc_e"
schedule = { interval = "1d" }
destinations = [{ store = "kv1", path = "e" }]
lock = { store = "aws", path = "shared-lock" }
"#
        ),
        expect![[r#"
            16:24: `policy[1].lock.path`: the lock would be kept at `vault:secret/a.lock`, which is already used by policy `a` as a sibling secret of its record `vault:secret/a`
            27:34: `policy[3].destinations[0].path`: the aws store keeps `aws:us-east-1/shared-lock.lock` next to this record, but policy `c` already keeps its lock there
            33:25: `policy[4].lock.path`: the lock would be kept at `aws:us-east-1/shared-lock.lock`, which is already used by policy `c` for its lock
        "#]],
    );
}
