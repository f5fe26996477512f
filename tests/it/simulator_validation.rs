//! The simulator's validation rules, table-driven over raw HTTP so that the
//! status, the error body's shape and every issue are checked as a client
//! sees them.

use motherduck_rotator::secret::ExposeSecret;
use motherduck_rotator::simulator::{Simulator, SimulatorOptions};
use serde_json::{Value, json};

/// The cases sent, in order, to one endpoint.
struct Endpoint {
    method: &'static str,
    path: &'static str,
    cases: &'static [Case],
}

struct Case {
    what: &'static str,
    body: &'static str,
    status: u16,
    /// Expected `(code, path)` of each issue, in order; empty for success
    /// or for errors without issues.
    issues: &'static [(&'static str, &'static str)],
}

const fn case(
    what: &'static str,
    body: &'static str,
    status: u16,
    issues: &'static [(&'static str, &'static str)],
) -> Case {
    Case {
        what,
        body,
        status,
        issues,
    }
}

const DUCK_OK: &str = r#"{"config":{"read_write":{"instance_size":"standard","cooldown_seconds":60},"read_scaling":{"instance_size":"jumbo","flock_size":64,"cooldown_seconds":86400}}}"#;

const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "POST",
        path: "/v1/users",
        cases: &[
            case("valid username", r#"{"username":"svc_ok1"}"#, 200, &[]),
            case("username of 3", r#"{"username":"abc"}"#, 200, &[]),
            case(
                "username too short",
                r#"{"username":"ab"}"#,
                400,
                &[("too_small", "username")],
            ),
            case(
                "username digit first",
                r#"{"username":"1abc"}"#,
                400,
                &[("invalid_string", "username")],
            ),
            case(
                "username underscore first",
                r#"{"username":"_abc"}"#,
                400,
                &[("invalid_string", "username")],
            ),
            case(
                "username with hyphen",
                r#"{"username":"svc-app"}"#,
                400,
                &[("invalid_string", "username")],
            ),
            case(
                "username with space",
                r#"{"username":"svc app"}"#,
                400,
                &[("invalid_string", "username")],
            ),
            case(
                "username non-ascii",
                r#"{"username":"svcé"}"#,
                400,
                &[("invalid_string", "username")],
            ),
            case(
                "username missing",
                r#"{}"#,
                400,
                &[("invalid_type", "username")],
            ),
            case(
                "username not a string",
                r#"{"username":5}"#,
                400,
                &[("invalid_type", "username")],
            ),
            case("body not an object", r#"[1]"#, 400, &[("invalid_type", "")]),
            case(
                "body not JSON",
                r#"{"username":"#,
                400,
                &[("invalid_type", "")],
            ),
            case(
                "username duplicate, other case",
                r#"{"username":"SVC_TARGET"}"#,
                409,
                &[],
            ),
        ],
    },
    Endpoint {
        method: "POST",
        path: "/v1/users/svc_target/tokens",
        cases: &[
            case("token minimal", r#"{"name":"n"}"#, 200, &[]),
            case(
                "token full",
                r#"{"name":"n","ttl":31536000,"token_type":"read_scaling","description":"d"}"#,
                200,
                &[],
            ),
            case("ttl minimum", r#"{"name":"n","ttl":300}"#, 200, &[]),
            case(
                "ttl as numeric string",
                r#"{"name":"n","ttl":"300"}"#,
                200,
                &[],
            ),
            case(
                "ttl below minimum",
                r#"{"name":"n","ttl":299}"#,
                400,
                &[("too_small", "ttl")],
            ),
            case(
                "ttl above maximum",
                r#"{"name":"n","ttl":31536001}"#,
                400,
                &[("too_big", "ttl")],
            ),
            case(
                "ttl fractional",
                r#"{"name":"n","ttl":300.5}"#,
                400,
                &[("invalid_type", "ttl")],
            ),
            case(
                "ttl not a number",
                r#"{"name":"n","ttl":"soon"}"#,
                400,
                &[("invalid_type", "ttl")],
            ),
            case(
                "name missing",
                r#"{"ttl":300}"#,
                400,
                &[("invalid_type", "name")],
            ),
            case(
                "name empty",
                r#"{"name":""}"#,
                400,
                &[("too_small", "name")],
            ),
            case(
                "name reserved extension",
                r#"{"name":"MotherDuck Extension"}"#,
                400,
                &[("custom", "name")],
            ),
            case(
                "name reserved flights",
                r#"{"name":"MotherDuck Flights"}"#,
                400,
                &[("custom", "name")],
            ),
            case(
                "token_type unknown",
                r#"{"name":"n","token_type":"admin"}"#,
                400,
                &[("invalid_enum_value", "token_type")],
            ),
            case(
                "description empty",
                r#"{"name":"n","description":""}"#,
                400,
                &[("too_small", "description")],
            ),
            case(
                "several fields at once",
                r#"{"name":"","ttl":1,"token_type":"x"}"#,
                400,
                &[
                    ("too_small", "name"),
                    ("too_small", "ttl"),
                    ("invalid_enum_value", "token_type"),
                ],
            ),
        ],
    },
    Endpoint {
        method: "POST",
        path: "/v1/users/svc_nobody/tokens",
        cases: &[case("token for missing user", r#"{"name":"n"}"#, 404, &[])],
    },
    Endpoint {
        method: "DELETE",
        path: "/v1/users/svc_target/tokens/00000000-0000-0000-0000-000000000000",
        cases: &[case("revoke unknown token id", "", 404, &[])],
    },
    Endpoint {
        method: "DELETE",
        path: "/v1/users/svc_nobody",
        cases: &[case("delete missing user", "", 404, &[])],
    },
    Endpoint {
        method: "PUT",
        path: "/v1/users/svc_target/instances",
        cases: &[
            case("duckling valid at the bounds", DUCK_OK, 200, &[]),
            case(
                "duckling flock 0",
                r#"{"config":{"read_write":{"instance_size":"pulse"},"read_scaling":{"instance_size":"pulse","flock_size":0}}}"#,
                200,
                &[],
            ),
            case(
                "duckling config missing",
                r#"{}"#,
                400,
                &[("invalid_type", "config")],
            ),
            case(
                "duckling read_scaling missing",
                r#"{"config":{"read_write":{"instance_size":"pulse"}}}"#,
                400,
                &[("invalid_type", "config.read_scaling")],
            ),
            case(
                "duckling size unknown",
                r#"{"config":{"read_write":{"instance_size":"huge"},"read_scaling":{"instance_size":"pulse","flock_size":1}}}"#,
                400,
                &[("invalid_enum_value", "config.read_write.instance_size")],
            ),
            case(
                "duckling flock missing",
                r#"{"config":{"read_write":{"instance_size":"mega"},"read_scaling":{"instance_size":"giga"}}}"#,
                400,
                &[("invalid_type", "config.read_scaling.flock_size")],
            ),
            case(
                "duckling flock 65",
                r#"{"config":{"read_write":{"instance_size":"mega"},"read_scaling":{"instance_size":"giga","flock_size":65}}}"#,
                400,
                &[("too_big", "config.read_scaling.flock_size")],
            ),
            case(
                "duckling cooldown 59",
                r#"{"config":{"read_write":{"instance_size":"mega","cooldown_seconds":59},"read_scaling":{"instance_size":"giga","flock_size":1}}}"#,
                400,
                &[("too_small", "config.read_write.cooldown_seconds")],
            ),
            case(
                "duckling cooldown 86401",
                r#"{"config":{"read_write":{"instance_size":"mega"},"read_scaling":{"instance_size":"giga","flock_size":1,"cooldown_seconds":86401}}}"#,
                400,
                &[("too_big", "config.read_scaling.cooldown_seconds")],
            ),
            case(
                "duckling cooldown on pulse",
                r#"{"config":{"read_write":{"instance_size":"pulse","cooldown_seconds":600},"read_scaling":{"instance_size":"giga","flock_size":1}}}"#,
                400,
                &[("custom", "config.read_write.cooldown_seconds")],
            ),
        ],
    },
    Endpoint {
        method: "PUT",
        path: "/v1/users/svc_nobody/instances",
        cases: &[case("duckling for missing user", DUCK_OK, 404, &[])],
    },
    Endpoint {
        method: "POST",
        path: "/v1/dives/d1/embed-session",
        cases: &[
            case(
                "embed valid",
                r#"{"username":"svc_target","session_hint":"h"}"#,
                200,
                &[],
            ),
            case(
                "embed username missing",
                r#"{}"#,
                400,
                &[("invalid_type", "username")],
            ),
            case(
                "embed hint wrong type",
                r#"{"username":"svc_target","session_hint":3}"#,
                400,
                &[("invalid_type", "session_hint")],
            ),
            case(
                "embed unknown user",
                r#"{"username":"svc_nobody"}"#,
                404,
                &[],
            ),
        ],
    },
];

fn issue_path(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(".")
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn validation_table() {
    let running = Simulator::spawn(SimulatorOptions::default()).await.unwrap();
    running.sim.add_service_account("svc_target");
    let http = reqwest::Client::new();
    let mut failures = Vec::new();
    let cases = ENDPOINTS
        .iter()
        .flat_map(|e| e.cases.iter().map(move |c| (e, c)));
    for (e, c) in cases {
        let url = format!("{}{}", running.base_url(), e.path);
        let method = reqwest::Method::from_bytes(e.method.as_bytes()).unwrap();
        let mut req = http
            .request(method, &url)
            .bearer_auth(running.admin_token.expose_secret());
        if !c.body.is_empty() {
            req = req
                .header("content-type", "application/json")
                .body(c.body.to_owned());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        if status != c.status {
            failures.push(format!(
                "{}: status {status}, want {} ({body})",
                c.what, c.status
            ));
            continue;
        }
        if status == 200 {
            continue;
        }
        // Every error has the documented shape.
        let code = body["code"].as_str().unwrap_or_default();
        if body["data"]["code"] != json!(code)
            || body["data"]["httpStatus"] != json!(status)
            || !body["data"]["path"].is_string()
            || !body["message"].is_string()
        {
            failures.push(format!("{}: malformed error body {body}", c.what));
        }
        let got: Vec<(String, String)> = body["issues"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| {
                        (
                            i["code"].as_str().unwrap_or_default().to_owned(),
                            issue_path(&i["path"]),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let want: Vec<(String, String)> = c
            .issues
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        if got != want {
            failures.push(format!("{}: issues {got:?}, want {want:?}", c.what));
        }
        if status == 400 && got.is_empty() {
            failures.push(format!("{}: a 400 must list issues", c.what));
        }
        if status != 400 && body.get("issues").is_some() {
            failures.push(format!("{}: only a 400 carries issues", c.what));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn authentication_precedes_validation_and_unknown_routes_are_plain_text() {
    let running = Simulator::spawn(SimulatorOptions::default()).await.unwrap();
    let http = reqwest::Client::new();
    let base = running.base_url();

    let r = http
        .post(format!("{base}/v1/users"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no token");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "UNAUTHORIZED");
    assert_eq!(body["data"]["path"], "users.createServiceAccount");

    let r = http
        .post(format!("{base}/v1/users"))
        .header("authorization", "Basic abc")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "not a bearer token");

    for (method, path) in [
        ("GET", "/v1/nothing"),
        ("GET", "/"),
        ("PATCH", "/v1/users"),
        ("GET", "/v1/users/x/tokens/y/z"),
    ] {
        let r = http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{base}{path}"),
            )
            .bearer_auth(running.admin_token.expose_secret())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{method} {path}");
        assert_eq!(r.text().await.unwrap(), "Not Found", "{method} {path}");
    }
}
