//! TLS with a CA file, and mutual TLS against a listener that requires a
//! client certificate (certificates made with the `openssl` CLI).

use super::*;

/// An OpenBao dev server with TLS (`-dev-tls`), which writes its CA to a
/// directory; killed on drop.
struct TlsBao {
    child: tokio::process::Child,
    dir: PathBuf,
    addr: String,
    root: String,
}

impl TlsBao {
    async fn start() -> TlsBao {
        let root = format!("root-{}", uuid::Uuid::new_v4());
        let dir = std::env::temp_dir().join(format!("mdr-it-baotls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        // Ready once it answers on TLS (the certificate is not checked
        // here; the product checks it).
        let probe = reqwest::Client::builder()
            .no_proxy()
            .tls_danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        let started = start_bao(
            &dir,
            &root,
            || {
                let port = free_port();
                let args = vec![
                    "-dev-tls".to_owned(),
                    format!("-dev-tls-cert-dir={}", dir.display()),
                    format!("-dev-listen-address=127.0.0.1:{port}"),
                ];
                (args, format!("https://127.0.0.1:{port}"))
            },
            async |addr| {
                let ok = probe
                    .get(format!("{addr}/v1/sys/mounts/secret"))
                    .header("X-Vault-Token", &root)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                ok && dir.join("vault-ca.pem").is_file()
            },
        )
        .await;
        let Some((child, addr)) = started else {
            panic!(
                "bao -dev-tls did not start: {}",
                std::fs::read_to_string(dir.join("bao.log")).unwrap_or_default()
            );
        };
        TlsBao {
            child,
            dir,
            addr,
            root,
        }
    }
}

/// `bao server -dev` in `dir` with the root token `root`, its output in
/// `bao.log`, killed on drop. Up to three attempts: `attempt()` gives each
/// its extra arguments and what `ready` needs; the server is returned once
/// `ready` holds, within 60 s and while it runs.
async fn start_bao<T>(
    dir: &Path,
    root: &str,
    mut attempt: impl FnMut() -> (Vec<String>, T),
    mut ready: impl AsyncFnMut(&T) -> bool,
) -> Option<(tokio::process::Child, T)> {
    let bao = tool_path("bao");
    for _attempt in 0..3 {
        let (args, t) = attempt();
        let log = std::fs::File::create(dir.join("bao.log")).unwrap();
        let mut child = tokio::process::Command::new(&bao)
            .arg("server")
            .arg("-dev")
            .arg(format!("-dev-root-token-id={root}"))
            .arg("-dev-no-store-token")
            .args(&args)
            .current_dir(dir)
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn bao");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if ready(&t).await {
                return Some((child, t));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    None
}

impl Drop for TlsBao {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn https_with_a_ca_file() {
    let bao = TlsBao::start().await;
    let mut s = settings(&bao.addr, token_auth(&bao.root));
    s.ca_file = Some(bao.dir.join("vault-ca.pem"));
    let d = dest(
        &VaultConnection::new(s).unwrap(),
        "secret",
        "motherduck/tls",
        KvVersion::V2,
    );
    d.check().await.unwrap();
    rotate_fully(&d, &record("r1", &secret("r1"), None)).await;

    // Without the CA the server's certificate is not trusted.
    let untrusted = dest(
        &connect(&bao.addr, token_auth(&bao.root)),
        "secret",
        "motherduck/tls",
        KvVersion::V2,
    );
    let e = untrusted.load().await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Transient, "{e}");
    assert!(
        e.to_string().contains("TLS handshake with Vault failed"),
        "{e}"
    );
    assert!(e.to_string().contains("`ca_file`"), "{e}");
    assert_clean(&e, &[&bao.root]);

    // Plain http to a host that is not loopback is refused up front.
    let e = VaultConnection::new(settings("http://vault.example:8200", token_auth(&bao.root)))
        .unwrap_err();
    assert!(e.to_string().contains("use https"), "{e}");
}

/// Runs the `openssl` CLI in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new(tool_path("openssl"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("spawn openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA in `dir`: `<name>.pem` and `<name>.key`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=mdr test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// A certificate signed by the CA `ca` in `dir`, with the X.509 v3
/// extensions `ext`: `<name>.pem` and `<name>.key`.
fn make_cert(dir: &Path, ca: &str, name: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN=mdr test {name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-days",
            "2",
            "-set_serial",
            &format!("0x{}", uuid::Uuid::new_v4().simple()),
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// A temporary directory with TLS material made by `openssl`:
/// - `ca`: the CA that OpenBao trusts for clients and that signs its
///   certificate;
/// - `server`: for `IP:127.0.0.1`;
/// - `client`: a client certificate signed by `ca`;
/// - `other-ca` and `stranger`: a client certificate signed by a CA the
///   server does not trust.
///
/// Removed on drop.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = std::env::temp_dir().join(format!("mdr-it-mtls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki { dir };
        let d = &pki.dir;
        make_ca(d, "ca");
        make_cert(
            d,
            "ca",
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        make_cert(d, "ca", "client", "extendedKeyUsage=clientAuth\n");
        make_ca(d, "other-ca");
        make_cert(d, "other-ca", "stranger", "extendedKeyUsage=clientAuth\n");
        pki
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port `p` with `p + 1` free too: every `bao` TCP listener also binds
/// its cluster port on the next port.
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let port = free_port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("found no two adjacent free loopback ports in 100 tries");
}

/// An error and its causes, `: `-separated (for a probe's failure).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// An OpenBao dev server with a second listener that requires a client
/// certificate signed by [`Pki`]'s `ca` (`tls_require_and_verify_client_cert`);
/// killed, and its directory removed, on drop.
struct MtlsBao {
    child: tokio::process::Child,
    pki: Pki,
    /// `https://127.0.0.1:PORT`, the listener that requires a client
    /// certificate.
    addr: String,
    /// `http://127.0.0.1:PORT`, the dev listener, for reading back as a
    /// consumer.
    plain: String,
    root: String,
}

impl MtlsBao {
    async fn start() -> MtlsBao {
        let root = format!("root-{}", uuid::Uuid::new_v4());
        let pki = Pki::new();
        let dir = pki.dir.clone();
        // Ready once a request with the client certificate succeeds on
        // the mutual TLS listener.
        let mut identity = std::fs::read(pki.path("client.pem")).unwrap();
        identity.extend(std::fs::read(pki.path("client.key")).unwrap());
        let probe = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .tls_certs_only([reqwest::Certificate::from_pem(
                &std::fs::read(pki.path("ca.pem")).unwrap(),
            )
            .unwrap()])
            .identity(reqwest::Identity::from_pem(&identity).unwrap())
            .build()
            .unwrap();
        let mut last_probe = String::from("no probe");
        let started = start_bao(
            &dir,
            &root,
            || {
                // Two pairs that do not overlap (each listener binds its
                // cluster port on the next port).
                let plain_port = free_port_pair();
                let tls_port = loop {
                    let p = free_port_pair();
                    if p.abs_diff(plain_port) > 1 {
                        break p;
                    }
                };
                let config = dir.join("mtls.hcl");
                std::fs::write(
                    &config,
                    format!(
                        r#"listener "tcp" {{
  address                            = "127.0.0.1:{tls_port}"
  tls_cert_file                      = "{server}"
  tls_key_file                       = "{server_key}"
  tls_client_ca_file                 = "{ca}"
  tls_require_and_verify_client_cert = true
}}
"#,
                        server = pki.path("server.pem").display(),
                        server_key = pki.path("server.key").display(),
                        ca = pki.path("ca.pem").display(),
                    ),
                )
                .unwrap();
                let args = vec![
                    format!("-dev-listen-address=127.0.0.1:{plain_port}"),
                    format!("-config={}", config.display()),
                ];
                (args, (plain_port, format!("https://127.0.0.1:{tls_port}")))
            },
            async |(_, addr)| match probe
                .get(format!("{addr}/v1/sys/mounts/secret"))
                .header("X-Vault-Token", &root)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => true,
                Ok(r) => {
                    last_probe = format!("HTTP {}", r.status());
                    false
                }
                Err(e) => {
                    last_probe = error_chain(&e);
                    false
                }
            },
        )
        .await;
        let Some((child, (plain_port, addr))) = started else {
            panic!(
                "bao with a mutual TLS listener did not start (last probe: {last_probe}): {}",
                std::fs::read_to_string(dir.join("bao.log")).unwrap_or_default()
            );
        };
        MtlsBao {
            child,
            pki,
            addr,
            plain: format!("http://127.0.0.1:{plain_port}"),
            root,
        }
    }

    /// Settings for the mutual TLS listener that trust `ca.pem`, with the
    /// client certificate `<cert>.pem` / `<cert>.key`, if any.
    fn client_settings(&self, cert: Option<&str>) -> VaultSettings {
        let mut s = settings(&self.addr, token_auth(&self.root));
        s.ca_file = Some(self.pki.path("ca.pem"));
        if let Some(c) = cert {
            s.client_cert = Some(self.pki.path(&format!("{c}.pem")));
            s.client_key = Some(self.pki.path(&format!("{c}.key")));
        }
        s
    }

    /// Root access through the plain dev listener.
    fn api(&self) -> Api {
        Api {
            addr: self.plain.clone(),
            root: self.root.clone(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }
}

impl Drop for MtlsBao {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test]
async fn mutual_tls_with_a_client_certificate() {
    let bao = MtlsBao::start().await;
    let d = dest(
        &VaultConnection::new(bao.client_settings(Some("client"))).unwrap(),
        "secret",
        "motherduck/mtls",
        KvVersion::V2,
    );
    d.check().await.unwrap();
    let s1 = secret("r1");
    rotate_fully(&d, &record("r1", &s1, None)).await;

    // Where a consumer reads it.
    let (status, body) = bao.api().read("secret/data/motherduck/mtls").await;
    assert_eq!(status, 200);
    assert!(
        body["data"]["data"]["token"] == s1.as_str(),
        "token not written"
    );
    let cur = d.load().await.unwrap().current.unwrap();
    assert_eq!(cur.meta.rotation_id, "r1");
}

#[tokio::test]
async fn mutual_tls_refuses_a_missing_or_foreign_client_certificate() {
    let bao = MtlsBao::start().await;
    // Written with the right certificate first, so a refusal is not a
    // missing secret.
    let good = dest(
        &VaultConnection::new(bao.client_settings(Some("client"))).unwrap(),
        "secret",
        "motherduck/mtls",
        KvVersion::V2,
    );
    let s1 = secret("r1");
    good.stage(&record("r1", &s1, None)).await.unwrap();

    // The TLS alert OpenBao (Go) sends for each.
    for (cert, alert) in [
        (None, "CertificateRequired"),
        (Some("stranger"), "UnknownCA"),
    ] {
        let d = dest(
            &VaultConnection::new(bao.client_settings(cert)).unwrap(),
            "secret",
            "motherduck/mtls",
            KvVersion::V2,
        );
        let s2 = secret("r2");
        for e in [
            d.check().await.unwrap_err(),
            d.load().await.unwrap_err(),
            d.stage(&record("r2", &s2, None)).await.unwrap_err(),
        ] {
            // Retried like any failure to talk to Vault, but worded so an
            // operator looks at the certificates, not the network.
            assert_eq!(e.kind, StoreErrorKind::Transient, "{cert:?}: {e}");
            let m = e.to_string();
            for part in [
                "TLS handshake with Vault failed",
                "`client_cert` and `client_key`",
                alert,
            ] {
                assert!(m.contains(part), "{cert:?}: no {part:?} in: {m}");
            }
            assert!(!m.contains("cannot reach"), "{cert:?}: {m}");
            assert_clean(&e, &[&s1, &s2, &bao.root]);
        }
    }

    // Nothing was written by the refused clients.
    let (_, body) = bao.api().read("secret/data/motherduck/mtls.pending").await;
    assert!(
        body["data"]["data"]["token"] == s1.as_str(),
        "pending token changed"
    );
    let (status, _) = bao.api().read("secret/data/motherduck/mtls").await;
    assert_eq!(status, 404);
}

/// A client certificate and key that do not belong together, or a key
/// that cannot be read, fail when the connection is built (at startup and
/// in `validate`), naming the files and quoting no key material.
#[test]
fn a_mismatched_or_unreadable_client_key_is_a_setup_error() {
    let pki = Pki::new();
    let key_material: Vec<String> = ["client.key", "stranger.key"]
        .iter()
        .map(|k| {
            let pem = std::fs::read_to_string(pki.path(k)).unwrap();
            pem.lines().nth(1).unwrap().to_owned()
        })
        .collect();
    let setup = |cert: &str, key: PathBuf| {
        let mut s = settings("https://127.0.0.1:8200", token_auth("t"));
        s.ca_file = Some(pki.path("ca.pem"));
        s.client_cert = Some(pki.path(cert));
        s.client_key = Some(key);
        let e = VaultConnection::new(s).unwrap_err();
        let shown = format!("{e} {e:?}");
        for k in &key_material {
            assert!(!shown.contains(k.as_str()), "key material in: {e}");
        }
        e
    };

    // The client certificate with another certificate's key.
    let e = setup("client.pem", pki.path("stranger.key"));
    assert!(
        matches!(
            e,
            VaultSetupError::BadPem {
                what: "client certificate and key",
                ..
            }
        ),
        "{e}"
    );
    let m = e.to_string();
    for part in [
        pki.path("client.pem").display().to_string(),
        pki.path("stranger.key").display().to_string(),
        "does the key belong to the certificate?".to_owned(),
    ] {
        assert!(m.contains(&part), "no {part:?} in: {m}");
    }

    // A key path that cannot be read (a directory: as root, file
    // permissions would not stop the read).
    let e = setup("client.pem", pki.dir.clone());
    assert!(
        matches!(
            e,
            VaultSetupError::ReadFile {
                what: "client key",
                ..
            }
        ),
        "{e}"
    );
    let m = e.to_string();
    assert!(m.contains(&pki.dir.display().to_string()), "{m}");

    // A key file that holds a certificate, not a key.
    let e = setup("client.pem", pki.path("client.pem"));
    assert!(matches!(e, VaultSetupError::BadPem { .. }), "{e}");
    assert!(e.to_string().contains("private key"), "{e}");
}

/// The binary's `validate` reads `client_cert`, `client_key` and
/// `ca_file` relative to the configuration file, accepts a matching pair
/// and reports a mismatched one against the field, exiting 64.
#[test]
fn validate_reads_relative_mutual_tls_files() {
    let pki = Pki::new();
    crate::support::write_secret(pki.path("admin.token"), "md-admin-token\n");
    crate::support::write_secret(pki.path("vault.token"), "vault-token\n");
    let validate = |key: &str| {
        let config = pki.path(&format!("config-{key}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"[motherduck]
admin_token = {{ file = "admin.token" }}

[stores.vault]
type = "vault"
address = "https://127.0.0.1:8200"
auth = {{ method = "token", token = {{ file = "vault.token" }} }}
ca_file = "ca.pem"
client_cert = "client.pem"
client_key = "{key}"

[[policy]]
name = "mtls"
service_account = "svc_mtls"
schedule = {{ interval = "1d" }}
destinations = [{{ store = "vault", path = "motherduck/mtls" }}]
"#
            ),
        )
        .unwrap();
        // Run from elsewhere: the paths are relative to the file.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_motherduck-rotator"))
            .arg("--config")
            .arg(&config)
            .arg("validate")
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .output()
            .expect("the binary runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, stdout, stderr) = validate("client.key");
    assert_eq!(code, Some(0), "stderr:\n{stderr}");
    assert!(stdout.contains("valid (1 policies"), "stdout:\n{stdout}");

    let (code, _, stderr) = validate("stranger.key");
    assert_eq!(code, Some(64), "stderr:\n{stderr}");
    for part in [
        "`stores.vault.client_cert`",
        "stranger.key",
        "does the key belong to the certificate?",
    ] {
        assert!(stderr.contains(part), "no {part:?} in stderr:\n{stderr}");
    }
}

/// Client certificates are short-lived where they are issued automatically
/// (cert-manager, Vault Agent): a renewed certificate written over the
/// configured files is used from the next request on, without a restart.
/// Shown by swapping in a certificate from a CA the server does not trust
/// (refused from the next request) and then a good one again (accepted),
/// the way Kubernetes swaps a projected secret: a new file behind the path.
#[tokio::test]
async fn a_renewed_client_certificate_is_used_without_a_restart() {
    let bao = MtlsBao::start().await;
    let live_cert = bao.pki.path("live.pem");
    let live_key = bao.pki.path("live.key");
    let install = |name: &str| {
        for (ext, live) in [("pem", &live_cert), ("key", &live_key)] {
            let staged = bao.pki.path(&format!("staged.{ext}"));
            std::fs::copy(bao.pki.path(&format!("{name}.{ext}")), &staged).unwrap();
            std::fs::rename(&staged, live).unwrap();
        }
    };
    install("client");
    let mut s = bao.client_settings(None);
    s.client_cert = Some(live_cert.clone());
    s.client_key = Some(live_key.clone());
    let d = dest(
        &VaultConnection::new(s).unwrap(),
        "secret",
        "motherduck/renewed",
        KvVersion::V2,
    );
    d.check().await.unwrap();

    install("stranger");
    let e = d.load().await.unwrap_err();
    assert!(e.to_string().contains("UnknownCA"), "{e}");

    install("client");
    d.load().await.unwrap();
    rotate_fully(&d, &record("r1", &secret("r1"), None)).await;

    // A half-written update (a key that is not PEM) is not taken up: the
    // connection keeps the certificate it has.
    std::fs::write(&live_key, "not a key").unwrap();
    d.load().await.unwrap();
}
