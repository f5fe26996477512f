//! The AWS default credential chain beyond environment variables.

use super::*;

/// Creates the IAM role `motherduck-rotator` that `principal` may assume
/// with `action`.
async fn create_role(moto: &Moto, principal: Value, action: &str) {
    let trust = json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow",
        "Principal": principal,
        "Action": action}]});
    iam(
        moto,
        &[
            ("Action", "CreateRole"),
            ("RoleName", "motherduck-rotator"),
            ("AssumeRolePolicyDocument", &trust.to_string()),
        ],
    )
    .await;
}

/// The default credential chain, beyond environment variables: a named
/// profile in the shared files (with moto enforcing IAM, so only the
/// profile's keys can work), and web identity (IRSA: a projected token
/// exchanged with STS for a role's credentials, STS being moto too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_credential_chain_reads_profiles_and_web_identity() {
    let (w, moto, config) = World::with_aws().await;
    secrets_manager(&moto, "CreateSecret", json!({ "Name": SECRET })).await;

    // A profile.
    let keys = iam_user(&moto, "rotator", &moto_iam_policy(&[])).await;
    let aws_dir = w.dir().join("aws");
    std::fs::create_dir_all(&aws_dir).unwrap();
    std::fs::write(
        aws_dir.join("config"),
        format!("[profile rotator]\nregion = {REGION}\n"),
    )
    .unwrap();
    std::fs::write(
        aws_dir.join("credentials"),
        format!(
            "[rotator]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            keys.0, keys.1
        ),
    )
    .unwrap();
    enforce_iam(&moto, true).await;
    let config_file = aws_dir.join("config").display().to_string();
    let credentials_file = aws_dir.join("credentials").display().to_string();
    let profile_env = [
        ("AWS_PROFILE", "rotator"),
        ("AWS_CONFIG_FILE", config_file.as_str()),
        ("AWS_SHARED_CREDENTIALS_FILE", credentials_file.as_str()),
    ];
    let out = w
        .run(&config, &["rotate", "orders-api"], &profile_env)
        .await;
    assert_ok("rotation with a profile", &out);
    // The same profile with keys moto does not know is refused: the keys
    // above really were the ones used.
    std::fs::write(
        aws_dir.join("credentials"),
        "[rotator]\naws_access_key_id = AKIAUNKNOWN000000000\naws_secret_access_key = x\n",
    )
    .unwrap();
    let out = w
        .run(&config, &["rotate", "orders-api"], &profile_env)
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    assert_eq!(w.live_ids().len(), 1, "the refused run left no token");

    // Web identity. moto answers STS's unsigned AssumeRoleWithWebIdentity
    // only while it does not enforce IAM.
    enforce_iam(&moto, false).await;
    create_role(
        &moto,
        json!({"Federated": format!("arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.eks.example")}),
        "sts:AssumeRoleWithWebIdentity",
    )
    .await;
    std::fs::write(
        w.dir().join("web-identity.jwt"),
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyb3RhdG9yIn0.c2ln",
    )
    .unwrap();
    let token_file = w.dir().join("web-identity.jwt").display().to_string();
    let role_arn = format!("arn:aws:iam::{ACCOUNT}:role/motherduck-rotator");
    let web_env = [
        ("AWS_ROLE_ARN", role_arn.as_str()),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.as_str()),
        ("AWS_ROLE_SESSION_NAME", "motherduck-rotator"),
        ("AWS_ENDPOINT_URL_STS", moto.endpoint.as_str()),
    ];
    let out = w.run(&config, &["rotate", "orders-api"], &web_env).await;
    assert_ok("rotation with web identity", &out);
    assert_eq!(w.live_ids().len(), 1);
    // Without the web identity variables nothing else in the chain has
    // credentials.
    let out = w.run(&config, &["rotate", "orders-api"], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    assert!(
        printed(&out).contains("no usable AWS credentials"),
        "{}",
        printed(&out)
    );
}

/// The last link of the default credential chain: instance metadata
/// (IMDSv2), served here by wiremock at `AWS_EC2_METADATA_SERVICE_ENDPOINT`
/// with temporary credentials of a role holding the README's policy. moto
/// enforces IAM, so the rotation can only succeed with those credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_credential_chain_reads_instance_metadata() {
    use wiremock::matchers::{header_exists, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let (w, moto, config) = World::with_aws().await;
    secrets_manager(&moto, "CreateSecret", json!({ "Name": SECRET })).await;
    create_role(
        &moto,
        json!({"Service": "ec2.amazonaws.com"}),
        "sts:AssumeRole",
    )
    .await;
    iam(
        &moto,
        &[
            ("Action", "PutRolePolicy"),
            ("RoleName", "motherduck-rotator"),
            ("PolicyName", "motherduck-rotator"),
            ("PolicyDocument", &moto_iam_policy(&[]).to_string()),
        ],
    )
    .await;
    // What EC2 does for an instance profile: temporary credentials of the
    // role (taken from moto's STS while it does not enforce IAM).
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/", moto.endpoint))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            (
                "RoleArn",
                &format!("arn:aws:iam::{ACCOUNT}:role/motherduck-rotator"),
            ),
            ("RoleSessionName", "i-0123456789abcdef0"),
            ("WebIdentityToken", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
        ]))
        .send()
        .await
        .unwrap();
    let xml = resp.text().await.unwrap();
    let creds = json!({
        "Code": "Success",
        "LastUpdated": "2026-01-01T00:00:00Z",
        "Type": "AWS-HMAC",
        "AccessKeyId": xml_field(&xml, "AccessKeyId"),
        "SecretAccessKey": xml_field(&xml, "SecretAccessKey"),
        "Token": xml_field(&xml, "SessionToken"),
        "Expiration": (chrono::Utc::now() + chrono::Duration::hours(6))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
    });

    let imds = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/latest/api/token"))
        .and(header_exists("x-aws-ec2-metadata-token-ttl-seconds"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-aws-ec2-metadata-token-ttl-seconds", "21600")
                .set_body_string("imds-session-token"),
        )
        .mount(&imds)
        .await;
    Mock::given(method("GET"))
        .and(path("/latest/meta-data/iam/security-credentials/"))
        .and(header_exists("x-aws-ec2-metadata-token"))
        .respond_with(ResponseTemplate::new(200).set_body_string("motherduck-rotator"))
        .mount(&imds)
        .await;
    Mock::given(method("GET"))
        .and(path(
            "/latest/meta-data/iam/security-credentials/motherduck-rotator",
        ))
        .and(header_exists("x-aws-ec2-metadata-token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(&creds))
        .mount(&imds)
        .await;

    // A metadata service that answers badly is reported as a credentials
    // problem, not as Secrets Manager being unreachable.
    let broken = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/latest/api/token"))
        .respond_with(ResponseTemplate::new(200).set_body_string("no-ttl-header"))
        .mount(&broken)
        .await;
    let broken_endpoint = broken.uri();
    let out = w
        .run(
            &config,
            &["rotate", "orders-api"],
            &[
                ("AWS_EC2_METADATA_DISABLED", "false"),
                (
                    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                    broken_endpoint.as_str(),
                ),
            ],
        )
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cannot load AWS credentials"),
        "{}",
        printed(&out)
    );

    enforce_iam(&moto, true).await;
    let endpoint = imds.uri();
    let imds_env = [
        ("AWS_EC2_METADATA_DISABLED", "false"),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint.as_str()),
    ];
    let out = w.run(&config, &["rotate", "orders-api"], &imds_env).await;
    assert_ok("rotation with instance metadata credentials", &out);
    assert_eq!(w.live_ids().len(), 1);
    let asked = imds.received_requests().await.unwrap();
    assert!(
        asked.iter().any(|r| r
            .url
            .path()
            .ends_with("/security-credentials/motherduck-rotator")),
        "the credentials came from instance metadata"
    );
}
