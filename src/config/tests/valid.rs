//! Valid configurations and the validated values they become, where a test
//! needs more than a rendering; the others are cases in `data/valid/`.

use super::*;

const FULL: &str = r#"
[motherduck]
api_url = "http://127.0.0.1:8787"
admin_token = { file = "admin.token" }
request_timeout = "20s"
max_retries = 6
rate_limit_per_second = 3

[daemon]
listen = "0.0.0.0:9100"
log_format = "json"
rotation_concurrency = 2
sweep_interval = "30m"
orphan_min_age = "10m"
shutdown_timeout = "45s"
lock_retry_interval = "15s"
instance_id = "rotator-a"

[stores.local]
type = "file"
directory = "secrets"

[[policy]]
name = "orders-api"
service_account = "svc_orders"
token_type = "read_scaling"
token_ttl = "30d"
token_name_prefix = "mdr"
schedule = { cron = "0 3 * * mon", timezone = "Europe/Berlin" }
jitter = "20m"
windows = [{ days = ["mon-fri"], start = "02:00", end = "05:30", timezone = "Europe/Berlin" }]
rotate_before_expiry = "7d"
overlap = "1h"
destinations = [
  { store = "local", path = "orders.json", bare_token_file = "orders.token" },
  { store = "local", path = "orders-replica.json" },
]
retry = { max_attempts = 5, initial_backoff = "1m", max_backoff = "2h" }

[[policy.verify]]
type = "http"
url = "https://orders.example.com/health"
method = "post"
headers = { X-Api-Key = { env = "PROBE_KEY" }, Accept = "application/json" }
expect_status = [200, 204]
json_field = "/motherduck/token_id"
interval = "5s"
deadline = "3m"
request_timeout = "4s"

[[policy.verify]]
type = "command"
command = ["/usr/local/bin/check-orders", "--quick"]
pass_token = true
inherit_env = ["KUBECONFIG"]
timeout = "20s"
interval = "10s"
deadline = "4m"

[[policy.verify]]
type = "ack"
deadline = "15m"

[[policy.verify]]
type = "motherduck"
interval = "2s"
deadline = "30s"

[[policy]]
name = "reports"
service_account = "svc_reports"
schedule = { interval = "12h" }
destinations = [{ store = "local", path = "reports.json" }]
verify = [{ type = "motherduck" }]
"#;

#[test]
fn full_configuration_becomes_validated_types() {
    check(
        FULL,
        expect![[r#"
        motherduck: api_url http://127.0.0.1:8787, admin_token md-admin-token-from-file (env none), request_timeout 20s, max_retries 6, rate_limit_per_second 3
        daemon: listen 0.0.0.0:9100, metrics_bearer_token none, log_format Json, rotation_concurrency 2, sweep_interval 30m, orphan_min_age 10m, shutdown_timeout 45s, lock_retry_interval 15s, recheck_interval 5m, instance_id rotator-a
        alerts: repeat_interval 1h, expiry_warning 1day, max_per_minute 30, max_attempts 5, runbook_url none, sinks []
        vault connections: []
        policy orders-api: service_account svc_orders, token_type ReadScaling, token_ttl 30days, token names mdr.orders-api.<rotation id>, overlap 1h
          schedule: cron `0 3 * * mon` (Europe/Berlin), jitter 20m, rotate_before_expiry 7days
          window: Mon,Tue,Wed,Thu,Fri 02:00:00-05:30:00 (Europe/Berlin)
          hook http: POST https://orders.example.com/health, expect_status [200, 204], json_field /motherduck/token_id, interval 5s, deadline 3m, request_timeout 4s
          hook command: /usr/local/bin/check-orders ["--quick"], pass_token true, inherit_env ["KUBECONFIG"], timeout 20s, interval 10s, deadline 4m
          hook ack: deadline 15m
          hook motherduck: interval 2s, deadline 30s
          destination: file store local: $DIR/secrets/orders.json, bare_token_file orders.token
          destination: file store local: $DIR/secrets/orders-replica.json, bare_token_file none
          lock: file store local: $DIR/secrets/orders.json, bare_token_file orders.token
          retry: max_attempts 5, initial_backoff 1m, max_backoff 2h
        policy reports: service_account svc_reports, token_type ReadWrite, token_ttl none, token names rotator.reports.<rotation id>, overlap 5m
          schedule: interval 12h, jitter 0s, rotate_before_expiry none
          hook motherduck: interval 5s, deadline 1m
          destination: file store local: $DIR/secrets/reports.json, bare_token_file none
          lock: file store local: $DIR/secrets/reports.json, bare_token_file none
          retry: max_attempts 3, initial_backoff 30s, max_backoff 1h
    "#]],
    );
    // A header's secret is resolved but never shown.
    let config = valid(FULL);
    let HookSpec::Http(http) = &config.policies[0].hooks[0] else {
        panic!("expected an HTTP hook first");
    };
    let debug = format!("{http:?}");
    assert!(
        !debug.contains("probe-api-key") && debug.contains("[REDACTED]"),
        "the secret header is resolved and redacted: {debug}"
    );
}

/// The cron forms config/example.toml tells users about.
#[test]
fn documented_cron_forms_are_accepted() {
    for cron in [
        "0 3 * * tue",
        "30 0 3 * * *",
        "0 3 * * MON-FRI",
        "0 3 L * *",
        "0 3 15W * *",
        "0 3 * * mon#1",
        "0 3 * * 5#L",
        "0 3 1 jan *",
        "*/15 * * * *",
        "@hourly",
        "@daily",
        "@weekly",
        "@monthly",
        "@yearly",
    ] {
        let src = format!(
            "motherduck = {{ admin_token = {{ env = \"MD_TOKEN\" }} }}\n\
             stores.local = {{ type = \"file\", directory = \"store\" }}\n\
             [[policy]]\n\
             name = \"app\"\n\
             service_account = \"svc_app\"\n\
             schedule = {{ cron = \"{cron}\", timezone = \"America/New_York\" }}\n\
             destinations = [{{ store = \"local\", path = \"app.json\" }}]\n\
             verify = [{{ type = \"motherduck\" }}]\n"
        );
        let scratch = Scratch::new();
        let config = parse_in(&scratch, &src, &FakeEnv::new(), true)
            .unwrap_or_else(|e| panic!("cron `{cron}`: {e}"));
        let Some(Cadence::Cron(c)) = &config.policies[0].schedule.cadence else {
            panic!("cron `{cron}`: no cron cadence");
        };
        assert_eq!(c.expression(), cron);
    }
}
