//! Vault and AWS stores: the connections and destinations they become, and
//! their errors.

use crate::stores::aws::AwsDestination;
use crate::stores::vault::VaultDestination;

use super::*;

fn vault_of(d: &Destination) -> &VaultDestination {
    match d {
        Destination::Vault(v) => v,
        other => panic!("expected a Vault destination, got {other:?}"),
    }
}

fn aws_of(d: &Destination) -> &AwsDestination {
    match d {
        Destination::Aws(a) => a,
        other => panic!("expected an AWS destination, got {other:?}"),
    }
}

const STORES: &str = r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }

[stores.vault]
type = "vault"
address = "https://vault.example.com:8200/"
namespace = "admin/team-a"
kv_version = 2
mount = "kv/"
auth = { method = "approle", mount = "approle-prod", role_id = { file = "vault-role-id" }, secret_id = { env = "VAULT_SECRET_ID" } }
ca_file = "ca.pem"
lease_ttl = "2m"
request_timeout = "5s"

[stores.legacy]
type = "vault"
address = "http://127.0.0.1:8200"
kv_version = 1
mount = "kv1"
auth = { method = "token", token = { file = "vault.token" } }

[stores.k8s]
type = "vault"
address = "https://vault.internal"
[stores.k8s.auth]
method = "kubernetes"
role = "rotator"
jwt_file = "sa.jwt"

[stores.unused]
type = "vault"
address = "https://vault.unused.example.com"
auth = { method = "token", token = { file = "vault.token" } }

[stores.aws]
type = "aws"
region = "eu-central-1"
create_if_missing = true
kms_key_id = "alias/motherduck"
lock_ttl = "90s"

[stores.moto]
type = "aws"
region = "us-east-1"
endpoint_url = "http://127.0.0.1:5000"

[stores.local]
type = "file"
directory = "store"

[[policy]]
name = "orders"
service_account = "svc_orders"
schedule = { interval = "1d" }
verify = [{ type = "motherduck" }]
destinations = [
  { store = "vault", path = "motherduck/orders" },
  { store = "legacy", path = "motherduck/orders" },
  { store = "aws", path = "prod/motherduck/orders" },
]

[[policy]]
name = "reports"
service_account = "svc_reports"
schedule = { interval = "1d" }
verify = [{ type = "motherduck" }]
destinations = [{ store = "legacy", path = "reports" }, { store = "k8s", path = "reports" }]
lock = { store = "local", path = "reports.json" }

[[policy]]
name = "etl"
service_account = "svc_etl"
schedule = { interval = "1d" }
verify = [{ type = "motherduck" }]
destinations = [{ store = "moto", path = "etl" }]
lock = { store = "moto", path = "etl" }
"#;

#[test]
fn vault_and_aws_stores_become_validated_types() {
    // Surrounding slashes of a mount are dropped; by default the lock is
    // on the first destination; `unused` has no destination, so no token
    // to keep alive.
    check(
        STORES,
        expect![[r#"
            motherduck: api_url https://api.motherduck.com, admin_token md-admin-token-from-env (env MD_TOKEN), request_timeout 15s, max_retries 4, rate_limit_per_second 100
            daemon: listen 127.0.0.1:9464, metrics_bearer_token none, log_format Auto, rotation_concurrency 4, sweep_interval 1h, orphan_min_age 5m, shutdown_timeout 30s, lock_retry_interval 30s, recheck_interval 5m, instance_id <host>:<pid>
            alerts: repeat_interval 1h, expiry_warning 1day, max_per_minute 30, max_attempts 5, runbook_url none, sinks []
            vault connections: ["https://vault.internal", "http://127.0.0.1:8200", "https://vault.example.com:8200"]
            policy orders: service_account svc_orders, token_type ReadWrite, token_ttl none, token names rotator.orders.<rotation id>, overlap 5m
              schedule: interval 1day, jitter 0s, rotate_before_expiry none
              hook motherduck: interval 5s, deadline 1m
              destination: vault store vault: vault:kv/motherduck/orders at https://vault.example.com:8200 (namespace admin/team-a, approle auth), mount kv, path motherduck/orders, V2, lease_ttl 2m
              destination: vault store legacy: vault:kv1/motherduck/orders (kv v1) at http://127.0.0.1:8200 (namespace none, token auth), mount kv1, path motherduck/orders, V1, lease_ttl 10m
              destination: aws store aws: aws:eu-central-1/prod/motherduck/orders, secret prod/motherduck/orders, lock_ttl 1m 30s, version_budget 100
              lock: vault store vault: vault:kv/motherduck/orders at https://vault.example.com:8200 (namespace admin/team-a, approle auth), mount kv, path motherduck/orders, V2, lease_ttl 2m
              retry: max_attempts 3, initial_backoff 30s, max_backoff 1h
            policy reports: service_account svc_reports, token_type ReadWrite, token_ttl none, token names rotator.reports.<rotation id>, overlap 5m
              schedule: interval 1day, jitter 0s, rotate_before_expiry none
              hook motherduck: interval 5s, deadline 1m
              destination: vault store legacy: vault:kv1/reports (kv v1) at http://127.0.0.1:8200 (namespace none, token auth), mount kv1, path reports, V1, lease_ttl 10m
              destination: vault store k8s: vault:secret/reports at https://vault.internal (namespace none, kubernetes auth), mount secret, path reports, V2, lease_ttl 10m
              lock: file store local: $DIR/store/reports.json, bare_token_file none
              retry: max_attempts 3, initial_backoff 30s, max_backoff 1h
            policy etl: service_account svc_etl, token_type ReadWrite, token_ttl none, token names rotator.etl.<rotation id>, overlap 5m
              schedule: interval 1day, jitter 0s, rotate_before_expiry none
              hook motherduck: interval 5s, deadline 1m
              destination: aws store moto: aws:us-east-1/etl, secret etl, lock_ttl 10m, version_budget 100
              lock: aws store moto: aws:us-east-1/etl, secret etl, lock_ttl 10m, version_budget 100
              retry: max_attempts 3, initial_backoff 30s, max_backoff 1h
        "#]],
    );

    // What only `Debug` shows.
    let scratch = Scratch::new();
    let config = parse_in(&scratch, STORES, &FakeEnv::new(), true)
        .unwrap_or_else(|e| panic!("expected a valid configuration, got:\n{e}"));
    let orders = &config.policies[0];
    let debug = format!("{:?}", vault_of(&orders.destinations[0]).connection());
    assert!(
        debug.contains("\"admin/team-a\"") && debug.contains("\"approle-prod\""),
        "namespace and auth mount: {debug}"
    );
    let debug = format!("{:?}", aws_of(&orders.destinations[2]));
    for part in [
        "create_if_missing: true",
        "kms_key_id: Some(\"alias/motherduck\")",
        "lock_ttl: 90s",
        "endpoint_url: None",
    ] {
        assert!(debug.contains(part), "{part} in {debug}");
    }
    let k8s = vault_of(&config.policies[1].destinations[1]);
    let debug = format!("{:?}", k8s.connection());
    assert!(
        debug.contains("mount: \"kubernetes\"") && debug.contains("role: \"rotator\""),
        "{debug}"
    );
    assert!(
        debug.contains(&scratch.dir.join("sa.jwt").display().to_string()),
        "a relative jwt_file resolves against the configuration's folder: {debug}"
    );
    let debug = format!("{:?}", aws_of(&config.policies[2].destinations[0]));
    for part in [
        "region: \"us-east-1\"",
        "endpoint_url: Some(\"http://127.0.0.1:5000\")",
        "create_if_missing: false",
        "kms_key_id: None",
        "lock_ttl: 600s",
    ] {
        assert!(debug.contains(part), "{part} in {debug}");
    }
    let shown = format!("{config:?}");
    for secret in [
        VAULT_TOKEN,
        ROLE_ID,
        SECRET_ID,
        "kubernetes-service-account-jwt",
    ] {
        assert!(!shown.contains(secret), "Debug shows `{secret}`");
    }
}

#[test]
fn destinations_on_one_store_share_its_connection() {
    let config = valid(STORES);
    let orders = vault_of(&config.policies[0].destinations[1]);
    let reports = vault_of(&config.policies[1].destinations[0]);
    // Equal addresses alone would not prove it: the token state is shared.
    assert_eq!(
        orders.connection().address(),
        reports.connection().address()
    );
    assert!(
        config
            .vault_connections
            .iter()
            .any(|c| format!("{c:?}") == format!("{:?}", orders.connection())),
        "the store's connection is exposed"
    );
}

#[test]
fn vault_and_aws_secrets_are_not_read_without_resolving() {
    // Every file and variable named here is missing, and the JWT is the
    // default path of a pod: a linting machine has none of them.
    let src = r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.vault]
type = "vault"
address = "https://vault.example.com"
auth = { method = "approle", role_id = { file = "/nonexistent/role-id" }, secret_id = { env = "UNSET_SECRET_ID" } }
ca_file = "/nonexistent/ca.pem"
client_cert = "/nonexistent/client.crt"
client_key = "/nonexistent/client.key"
[stores.token]
type = "vault"
address = "https://vault.example.com"
kv_version = 1
auth = { method = "token", token = { credential = "vault_token" } }
[stores.k8s]
type = "vault"
address = "https://vault.example.com"
auth = { method = "kubernetes", role = "rotator" }
[stores.aws]
type = "aws"
region = "us-east-1"
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
verify = [{ type = "motherduck" }]
destinations = [{ store = "vault", path = "a" }, { store = "token", path = "b" }, { store = "k8s", path = "c" }]
lock = { store = "aws", path = "app" }
"#;
    check_unresolved(
        src,
        expect![[r#"
            motherduck: api_url https://api.motherduck.com, admin_token unresolved (env MD_TOKEN), request_timeout 15s, max_retries 4, rate_limit_per_second 100
            daemon: listen 127.0.0.1:9464, metrics_bearer_token none, log_format Auto, rotation_concurrency 4, sweep_interval 1h, orphan_min_age 5m, shutdown_timeout 30s, lock_retry_interval 30s, recheck_interval 5m, instance_id <host>:<pid>
            alerts: repeat_interval 1h, expiry_warning 1day, max_per_minute 30, max_attempts 5, runbook_url none, sinks []
            vault connections: ["https://vault.example.com", "https://vault.example.com", "https://vault.example.com"]
            policy app: service_account svc_app, token_type ReadWrite, token_ttl none, token names rotator.app.<rotation id>, overlap 5m
              schedule: interval 1day, jitter 0s, rotate_before_expiry none
              hook motherduck: interval 5s, deadline 1m
              destination: vault store vault: vault:secret/a at https://vault.example.com (namespace none, approle auth), mount secret, path a, V2, lease_ttl 10m
              destination: vault store token: vault:secret/b (kv v1) at https://vault.example.com (namespace none, token auth), mount secret, path b, V1, lease_ttl 10m
              destination: vault store k8s: vault:secret/c at https://vault.example.com (namespace none, kubernetes auth), mount secret, path c, V2, lease_ttl 10m
              lock: aws store aws: aws:us-east-1/app, secret app, lock_ttl 10m, version_budget 100
              retry: max_attempts 3, initial_backoff 30s, max_backoff 1h
        "#]],
    );
    // The same text fails when the secrets are read.
    check(
        src,
        expect![[r#"
        5:42: `stores.vault.auth.role_id.file`: failed to read secret file `/nonexistent/role-id`: No such file or directory (os error 2)
        5:89: `stores.vault.auth.secret_id.env`: environment variable `UNSET_SECRET_ID` is not set or empty
        6:1: `stores.vault.ca_file`: failed to read CA file `/nonexistent/ca.pem`: No such file or directory (os error 2)
        13:38: `stores.token.auth.token.credential`: credential `vault_token` needs $CREDENTIALS_DIRECTORY (set by systemd's LoadCredential=); it is not set
        17:8: `stores.k8s.auth.jwt_file`: failed to read secret file `/var/run/secrets/kubernetes.io/serviceaccount/token`: No such file or directory (os error 2) (the service-account token Kubernetes auth logs in with)
    "#]],
    );
}

#[test]
fn vault_credentials_never_appear_in_errors() {
    let scratch = Scratch::new();
    for auth in [
        format!("{{ method = \"token\", token = \"{JWT}\" }}"),
        format!("{{ method = \"token\", token = {{ env = \"{JWT}\" }} }}"),
        format!(
            "{{ method = \"approle\", role_id = \"{JWT}\", secret_id = {{ env = \"VAULT_SECRET_ID\" }} }}"
        ),
        format!(
            "{{ method = \"approle\", role_id = {{ file = \"vault-role-id\" }}, secret_id = \"{JWT}\" }}"
        ),
    ] {
        let src = format!(
            "motherduck = {{ admin_token = {{ env = \"MD_TOKEN\" }} }}\n\
             [stores.v]\n\
             type = \"vault\"\n\
             address = \"https://vault.example.com\"\n\
             auth = {auth}\n"
        );
        for resolve in [true, false] {
            let errors = parse_in(&scratch, &src, &FakeEnv::new(), resolve)
                .expect_err("a pasted secret is refused");
            let shown = format!("{errors} {errors:?}");
            assert!(!shown.contains("eyJ"), "the secret is echoed: {shown}");
            assert_eq!(errors.0.len(), 1, "{errors}");
            assert!(errors.0[0].field.starts_with("stores.v.auth."), "{errors}");
        }
    }
    // Credentials in the address are not repeated either.
    let errors = parse_in(
        &scratch,
        "motherduck = { admin_token = { env = \"MD_TOKEN\" } }\n\
         stores.v = { type = \"vault\", address = \"https://admin:hunter2@vault.example.com\", auth = { method = \"token\", token = { env = \"MD_TOKEN\" } } }\n",
        &FakeEnv::new(),
        true,
    )
    .expect_err("credentials in the address are refused");
    let shown = format!("{errors} {errors:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert_eq!(errors.0[0].field, "stores.v.address");
}

#[test]
fn vault_credential_variables_are_kept_from_commands() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.v = { type = "vault", address = "https://vault.example.com", auth = { method = "approle", role_id = { file = "vault-role-id" }, secret_id = { env = "VAULT_SECRET_ID" } } }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "v", path = "app" }]
verify = [{ type = "command", command = ["true"], inherit_env = ["HOME", "VAULT_SECRET_ID"] }]
"#,
        expect![[r#"
            8:74: `policy[0].verify[0].inherit_env[1]`: `VAULT_SECRET_ID` holds a secret this configuration references; a verification command must not inherit it
        "#]],
    );
}

#[test]
fn a_lease_ttl_on_a_kv_v1_store_is_warned_about() {
    // A KV v1 destination after the first is fine: the lock is on the
    // first.
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[stores.v1]
type = "vault"
address = "https://vault.example.com"
kv_version = 1
lease_ttl = "5m"
auth = { method = "token", token = { file = "vault.token" } }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
verify = [{ type = "motherduck" }]
destinations = [{ store = "local", path = "app.json" }, { store = "v1", path = "app" }]
"#,
        expect![[r#"
            motherduck: api_url https://api.motherduck.com, admin_token md-admin-token-from-env (env MD_TOKEN), request_timeout 15s, max_retries 4, rate_limit_per_second 100
            daemon: listen 127.0.0.1:9464, metrics_bearer_token none, log_format Auto, rotation_concurrency 4, sweep_interval 1h, orphan_min_age 5m, shutdown_timeout 30s, lock_retry_interval 30s, recheck_interval 5m, instance_id <host>:<pid>
            alerts: repeat_interval 1h, expiry_warning 1day, max_per_minute 30, max_attempts 5, runbook_url none, sinks []
            vault connections: ["https://vault.example.com"]
            policy app: service_account svc_app, token_type ReadWrite, token_ttl none, token names rotator.app.<rotation id>, overlap 5m
              schedule: interval 1day, jitter 0s, rotate_before_expiry none
              hook motherduck: interval 5s, deadline 1m
              destination: file store local: $DIR/store/app.json, bare_token_file none
              destination: vault store v1: vault:secret/app (kv v1) at https://vault.example.com (namespace none, token auth), mount secret, path app, V1, lease_ttl 5m
              lock: file store local: $DIR/store/app.json, bare_token_file none
              retry: max_attempts 3, initial_backoff 30s, max_backoff 1h
            warning: $DIR/rotator.toml:7: `stores.v1.lease_ttl`: has no effect: a KV v1 store cannot hold a lock
        "#]],
    );
}

// Errors of Vault stores. Each case's store starts on line 2.

#[test]
fn vault_store_without_address_and_auth() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.v]
type = "vault"
"#,
        expect![[r#"
            2:1: `stores.v`: missing field `address`
        "#]],
    );
}

#[test]
fn unknown_field_in_a_vault_store() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.v]
type = "vault"
adress = "https://vault.example.com"
"#,
        expect![[r#"
            4:1: `stores.v.adress`: unknown field `adress`, expected one of `address`, `namespace`, `kv_version`, `mount`, `auth`, `ca_file`, `client_cert`, `client_key`, `lease_ttl`, `request_timeout`
        "#]],
    );
}

#[test]
fn a_file_store_setting_in_a_vault_store() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.v = { type = "vault", directory = "store" }
"#,
        expect![[r#"
            2:30: `stores.v.directory`: unknown field `directory`, expected one of `address`, `namespace`, `kv_version`, `mount`, `auth`, `ca_file`, `client_cert`, `client_key`, `lease_ttl`, `request_timeout`
        "#]],
    );
}

#[test]
fn kv_version_as_a_string() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.v]
type = "vault"
address = "https://vault.example.com"
kv_version = "2"
auth = { method = "token", token = { env = "MD_TOKEN" } }
"#,
        expect![[r#"
            5:14: `stores.v.kv_version`: invalid type: string "2", expected i64
        "#]],
    );
}

#[test]
fn unknown_auth_method() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.v]
type = "vault"
address = "https://vault.example.com"
auth = { method = "ldap", username = "rotator" }
"#,
        expect![[r#"
            5:19: `stores.v.auth.method`: unknown variant `ldap`, expected one of `token`, `approle`, `kubernetes`
        "#]],
    );
}

#[test]
fn unknown_field_in_auth() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.v]
type = "vault"
address = "https://vault.example.com"
[stores.v.auth]
method = "kubernetes"
role = "rotator"
jwt_path = "/var/run/token"
"#,
        expect![[r#"
            8:1: `stores.v.auth.jwt_path`: unknown field `jwt_path`, expected one of `method`, `mount`, `token`, `role_id`, `secret_id`, `role`, `jwt_file`
        "#]],
    );
}

#[test]
fn unknown_field_in_a_vault_secret_reference() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.v]
type = "vault"
address = "https://vault.example.com"
auth = { method = "token", token = { path = "vault.token" } }
"#,
        expect![[r#"
            5:38: `stores.v.auth.token.path`: unknown field `path`, expected one of `file`, `env`, `credential`
        "#]],
    );
}

#[test]
fn bad_vault_settings() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.v]
type = "vault"
address = "http://vault.example.com:8200"
namespace = "team a"
kv_version = 3
mount = "kv//x"
auth = { method = "token", token = { file = "vault.token" } }
lease_ttl = "500ms"
request_timeout = "0s"
"#,
        expect![[r#"
            4:1: `stores.v.address`: Vault address `http://vault.example.com:8200` uses plain http; use https (http is allowed only for a loopback address)
            5:1: `stores.v.namespace`: `team a` is not a namespace: give a path such as "admin/team-a", without whitespace
            6:1: `stores.v.kv_version`: `3` is not a KV secrets engine version: use 1 or 2
            7:1: `stores.v.mount`: mount `kv//x` must not have an empty, `.` or `..` segment
            9:1: `stores.v.lease_ttl`: must be at least 1s
            10:1: `stores.v.request_timeout`: must be greater than zero
        "#]],
    );
}

#[test]
fn address_not_a_url_and_a_missing_ca_file() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.v]
type = "vault"
address = "vault.example.com:8200"
auth = { method = "token", token = { file = "vault.token" } }
ca_file = "missing-ca.pem"
"#,
        expect![[r#"
            4:1: `stores.v.address`: invalid Vault address `vault.example.com:8200`: no host
            6:1: `stores.v.ca_file`: failed to read CA file `$DIR/missing-ca.pem`: No such file or directory (os error 2)
        "#]],
    );
}

#[test]
fn vault_address_with_an_unsupported_scheme() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.v = { type = "vault", address = "ftp://vault.example.com", auth = { method = "token", token = { file = "vault.token" } } }
"#,
        expect![[r#"
            2:30: `stores.v.address`: invalid Vault address `ftp://vault.example.com`: unsupported scheme `ftp`
        "#]],
    );
}

#[test]
fn ca_file_without_a_certificate() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.v]
type = "vault"
address = "https://vault.example.com"
auth = { method = "token", token = { file = "vault.token" } }
ca_file = "not-a-cert.pem"
"#,
        expect![[r#"
            6:1: `stores.v.ca_file`: CA file `$DIR/not-a-cert.pem` is not usable: no PEM certificate in it
        "#]],
    );
}

#[test]
fn client_certificate_without_key_and_key_without_certificate() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.a]
type = "vault"
address = "https://vault.example.com"
auth = { method = "token", token = { file = "vault.token" } }
client_cert = "client.crt"
[stores.b]
type = "vault"
address = "https://vault.example.com"
auth = { method = "token", token = { file = "vault.token" } }
client_key = "client.key"
"#,
        expect![[r#"
            6:1: `stores.a.client_cert`: a client certificate needs its key: set `client_key` too (both or neither)
            11:1: `stores.b.client_key`: a client key needs its certificate: set `client_cert` too (both or neither)
        "#]],
    );
}

#[test]
fn client_certificate_and_key_missing_or_unusable() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.a]
type = "vault"
address = "https://vault.example.com"
auth = { method = "token", token = { file = "vault.token" } }
client_cert = "missing.crt"
client_key = "client.key"
[stores.b]
type = "vault"
address = "https://vault.example.com"
auth = { method = "token", token = { file = "vault.token" } }
client_cert = "client.crt"
client_key = "missing.key"
[stores.c]
type = "vault"
address = "https://vault.example.com"
auth = { method = "token", token = { file = "vault.token" } }
client_cert = "client.crt"
client_key = "client.key"
"#,
        expect![[r#"
            6:1: `stores.a.client_cert`: failed to read client certificate `$DIR/missing.crt`: No such file or directory (os error 2)
            13:1: `stores.b.client_key`: failed to read client key `$DIR/missing.key`: No such file or directory (os error 2)
            18:1: `stores.c.client_cert`: client certificate and key `$DIR/client.crt, $DIR/client.key` is not usable: builder error: unexpected error: private key or certificate not found
        "#]],
    );
}

#[test]
fn token_auth_missing_token_inline_token_foreign_keys() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.a = { type = "vault", address = "https://vault.example.com", auth = { method = "token" } }
stores.b = { type = "vault", address = "https://vault.example.com", auth = { method = "token", token = "hvs.inline" } }
stores.c = { type = "vault", address = "https://vault.example.com", auth = { method = "token", token = { file = "vault.token" }, role = "x" } }
"#,
        expect![[r#"
            2:76: `stores.a.auth.token`: method `token` needs `token`
            3:96: `stores.b.auth.token`: inline secrets are not allowed; reference it with { file = "..." }, { env = "VAR" } or { credential = "name" }
            4:130: `stores.c.auth.role`: does not apply to method `token`, which takes `token`
        "#]],
    );
}

#[test]
fn token_auth_unreadable_and_broken_token_files() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.a = { type = "vault", address = "https://vault.example.com", auth = { method = "token", token = { file = "missing.token" } } }
stores.b = { type = "vault", address = "https://vault.example.com", auth = { method = "token", token = { file = "broken.token" } } }
"#,
        expect![[r#"
            2:106: `stores.a.auth.token.file`: failed to read secret file `$DIR/missing.token`: No such file or directory (os error 2)
            3:104: `stores.b.auth.token`: the Vault token contains characters not allowed in an HTTP header, such as a line break inside it
        "#]],
    );
}

#[test]
fn approle_auth_missing_ids_bad_mount_unset_variable_foreign_keys() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.a]
type = "vault"
address = "https://vault.example.com"
auth = { method = "approle", mount = "", role_id = { file = "vault-role-id" } }
[stores.b]
type = "vault"
address = "https://vault.example.com"
auth = { method = "approle", role_id = { env = "UNSET_ROLE_ID" }, secret_id = { env = "VAULT_SECRET_ID" }, jwt_file = "sa.jwt" }
"#,
        expect![[r#"
            5:8: `stores.a.auth.secret_id`: method `approle` needs `secret_id`
            5:30: `stores.a.auth.mount`: mount `` must not be empty
            9:42: `stores.b.auth.role_id.env`: environment variable `UNSET_ROLE_ID` is not set or empty
            9:108: `stores.b.auth.jwt_file`: does not apply to method `approle`, which takes `mount`, `role_id`, `secret_id`
        "#]],
    );
}

#[test]
fn kubernetes_auth_missing_role_bad_role_missing_and_empty_jwt_files_foreign_keys() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.a = { type = "vault", address = "https://vault.example.com", auth = { method = "kubernetes", jwt_file = "sa.jwt" } }
stores.b = { type = "vault", address = "https://vault.example.com", auth = { method = "kubernetes", role = "my role", jwt_file = "missing.jwt" } }
stores.c = { type = "vault", address = "https://vault.example.com", auth = { method = "kubernetes", role = "r", jwt_file = "", token = { env = "MD_TOKEN" } } }
"#,
        expect![[r#"
            2:76: `stores.a.auth.role`: method `kubernetes` needs `role`
            3:101: `stores.b.auth.role`: `my role` is not a role name: it must be non-empty, without whitespace or `/`
            3:119: `stores.b.auth.jwt_file`: failed to read secret file `$DIR/missing.jwt`: No such file or directory (os error 2) (the service-account token Kubernetes auth logs in with)
            4:113: `stores.c.auth.jwt_file`: the JWT file path is empty
            4:136: `stores.c.auth.token`: does not apply to method `kubernetes`, which takes `mount`, `role`, `jwt_file`
        "#]],
    );
}

// Errors of AWS stores.

#[test]
fn aws_store_without_region() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.a = { type = "aws", create_if_missing = true }
"#,
        expect![[r#"
            2:12: `stores.a`: missing field `region`
        "#]],
    );
}

#[test]
fn unknown_field_in_an_aws_store() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.a]
type = "aws"
region = "us-east-1"
endpoint = "https://vpce.example.com"
"#,
        expect![[r#"
            5:1: `stores.a.endpoint`: unknown field `endpoint`, expected one of `region`, `endpoint_url`, `create_if_missing`, `kms_key_id`, `lock_ttl`, `version_budget`
        "#]],
    );
}

#[test]
fn create_if_missing_as_a_string() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.a]
type = "aws"
region = "us-east-1"
create_if_missing = "yes"
"#,
        expect![[r#"
            5:21: `stores.a.create_if_missing`: invalid type: string "yes", expected a boolean
        "#]],
    );
}

#[test]
fn bad_region_and_endpoint_together() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.a]
type = "aws"
region = "EU Central"
endpoint_url = "http://secretsmanager.example.com"
"#,
        expect![[r#"
            4:1: `stores.a.region`: invalid AWS region `EU Central`: expected lowercase letters, digits and dashes, e.g. `us-east-1`
            5:1: `stores.a.endpoint_url`: AWS endpoint URL `http://secretsmanager.example.com` uses plain http; https is required unless the host is loopback
        "#]],
    );
}

#[test]
fn bad_endpoints_kms_key_and_lock_ttl() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.a]
type = "aws"
region = "us-east-1"
endpoint_url = "secretsmanager.example.com"
kms_key_id = "alias/my key"
lock_ttl = "2s"
[stores.b]
type = "aws"
region = ""
endpoint_url = "ftp://127.0.0.1:5000"
kms_key_id = ""
lock_ttl = "ten minutes"
"#,
        expect![[r#"
            5:1: `stores.a.endpoint_url`: invalid AWS endpoint URL `secretsmanager.example.com`: relative URL without a base
            6:1: `stores.a.kms_key_id`: `alias/my key` is not a KMS key id: give a key id, key ARN, alias name (`alias/...`) or alias ARN, without whitespace
            7:1: `stores.a.lock_ttl`: must be at least 3s (the holder renews its lease every third of it)
            10:1: `stores.b.region`: invalid AWS region ``: expected lowercase letters, digits and dashes, e.g. `us-east-1`
            11:1: `stores.b.endpoint_url`: invalid AWS endpoint URL `ftp://127.0.0.1:5000`: unsupported scheme `ftp`
            12:1: `stores.b.kms_key_id`: `` is not a KMS key id: give a key id, key ARN, alias name (`alias/...`) or alias ARN, without whitespace
            13:1: `stores.b.lock_ttl`: invalid duration `ten minutes`: expected number at 0 (use e.g. "90s", "15m", "7d")
        "#]],
    );
}

#[test]
fn store_type_not_a_string() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.a = { type = 1 }
"#,
        expect![[r#"
            2:21: `stores.a.type`: invalid type: integer, expected one of `file`, `vault`, `aws`
        "#]],
    );
}

#[test]
fn store_not_a_table() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.a = "vault"
"#,
        expect![[r#"
            2:8: `stores.a`: a store is a table with a `type`, such as { type = "file", directory = "..." }
        "#]],
    );
}

#[test]
fn errors_in_several_stores_are_all_reported() {
    check(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.a = { type = "aws" }
stores.b = { type = "file", dir = "x" }
stores.c = { type = "vault", address = "https://v", auth = { method = "token" } }
"#,
        expect![[r#"
            2:12: `stores.a`: missing field `region`
            3:29: `stores.b.dir`: unknown field `dir`, expected `directory`
            4:60: `stores.c.auth.token`: method `token` needs `token`
        "#]],
    );
}
