//! Vault and AWS stores: the connections and destinations they become, what
//! only `Debug` shows of them, and secrets they must not read or echo. Their
//! errors are cases in `data/stores/`.

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
