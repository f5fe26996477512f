//! The deployment artefacts under `deploy/`: the systemd unit (checked by
//! the real `systemd-analyze`), the container image's assumptions (checked
//! on the built binary, since no container engine runs here) and the
//! Kubernetes manifests (checked against the Kubernetes schemas by
//! `kubernetes-validate`, which bundles them and runs offline).
//!
//! The tools come from `scripts/setup-test-env.sh`; a missing tool fails the
//! test with a message naming that script, never skips it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use motherduck_rotator::secret::ExposeSecret;
use motherduck_rotator::simulator::{Simulator, SimulatorOptions};

use crate::support::services::{free_port, tool_path};

const BIN: &str = env!("CARGO_BIN_EXE_motherduck-rotator");
const UNIT: &str = "deploy/systemd/motherduck-rotator.service";
const UNIT_NAME: &str = "motherduck-rotator.service";
const SETUP: &str = "scripts/setup-test-env.sh";
/// `kubernetes-validate` checks against each of these schema versions: the
/// oldest the manifests support (native sidecars are on by default from
/// 1.29) and the newest the pinned validator bundles.
const KUBERNETES_VERSIONS: &[&str] = &["1.29.0", "1.37.0"];
/// The uid:gid of distroless's `nonroot` user, which the image runs as.
const IMAGE_UID: u32 = 65532;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// A system tool every supported machine has; a clear message if not.
fn system_tool(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.is_file(),
        "{path} is missing; install the Debian package `{package}` (see {SETUP})"
    );
    p
}

/// A temporary directory, removed on drop. Mode 0755, so that a process
/// run as another uid can reach what the test puts in it.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!("mdr-deploy-{tag}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Read-only folders inside would stop the removal.
        fn unlock(p: &Path) {
            if let Ok(m) = std::fs::symlink_metadata(p)
                && m.is_dir()
            {
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
                if let Ok(rd) = std::fs::read_dir(p) {
                    for e in rd.flatten() {
                        unlock(&e.path());
                    }
                }
            }
        }
        unlock(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Puts the built binary at `dst`: a hard link where the file system
/// allows (the debug binary is large), else a copy.
fn place_binary(dst: &Path) {
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    if std::fs::hard_link(BIN, dst).is_err() {
        std::fs::copy(BIN, dst).unwrap_or_else(|e| panic!("copy {BIN} to {}: {e}", dst.display()));
    }
}

// ------------------------------------------------------------------ systemd

/// The unit's `Key=value` settings (comments and section headers dropped).
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn systemd_unit_has_the_required_settings() {
    let settings = unit_settings(&read(UNIT));
    let has = |k: &str, v: &str| settings.iter().any(|(sk, sv)| sk == k && sv == v);
    for (k, v) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        (
            "ExecStart",
            "/usr/bin/motherduck-rotator --config /etc/motherduck-rotator/config.toml run",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "64"),
        (
            "LoadCredential",
            "motherduck-admin-token:/etc/motherduck-rotator/admin-token",
        ),
        ("DynamicUser", "yes"),
        ("StateDirectory", "motherduck-rotator"),
        ("StateDirectoryMode", "0700"),
        ("UMask", "0077"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("MemoryDenyWriteExecute", "yes"),
    ] {
        assert!(has(k, v), "{UNIT} lacks `{k}={v}`");
    }
    // The watchdog must leave room for the daemon's ping interval (at most
    // 30 s, or half of WATCHDOG_USEC).
    let watchdog = settings
        .iter()
        .find(|(k, _)| k == "WatchdogSec")
        .map(|(_, v)| humantime::parse_duration(v).expect("WatchdogSec is a duration"))
        .expect("WatchdogSec is set");
    assert!(
        watchdog >= Duration::from_secs(60),
        "WatchdogSec={watchdog:?}"
    );
    // The stop timeout must exceed the default drain (shutdown_timeout 30s).
    let stop = settings
        .iter()
        .find(|(k, _)| k == "TimeoutStopSec")
        .map(|(_, v)| humantime::parse_duration(v).expect("TimeoutStopSec is a duration"))
        .expect("TimeoutStopSec is set");
    assert!(stop > Duration::from_secs(30), "TimeoutStopSec={stop:?}");
    // Verification commands are child processes: nothing may stop them
    // from being forked and executed.
    for (k, v) in &settings {
        assert!(
            !(k == "SystemCallFilter" && v.starts_with('~') && v.contains("@process")),
            "{UNIT} blocks @process; command hooks need fork/exec"
        );
        assert!(
            k != "PrivateNetwork",
            "{UNIT}: the daemon needs the network"
        );
        assert!(
            k != "IPAddressDeny",
            "{UNIT}: an address allow-list breaks HTTPS egress to MotherDuck/AWS/Vault"
        );
    }
}

/// `systemd-analyze verify` on `unit_text`, installed under the unit's
/// name with `ExecStart` pointing at a copy of the built binary (verify
/// insists that the command exists; /usr/bin/motherduck-rotator does not
/// here). Returns whether it passed and its whole output.
fn systemd_verify(unit_text: &str) -> (bool, String) {
    let scratch = Scratch::new("systemd");
    let bin = scratch.path().join("usr/bin/motherduck-rotator");
    place_binary(&bin);
    let unit = unit_text.replace("/usr/bin/motherduck-rotator", bin.to_str().unwrap());
    assert_ne!(unit, unit_text, "the unit runs /usr/bin/motherduck-rotator");
    let path = scratch.write(UNIT_NAME, &unit);
    let out = run(Command::new(tool_path("systemd-analyze"))
        .args(["verify", "--man=no"])
        .arg(&path)
        .env("SYSTEMD_LOG_COLOR", "0")
        .current_dir(scratch.path()));
    (out.status.success(), text(&out))
}

#[test]
fn systemd_analyze_verify_is_clean() {
    let (ok, out) = systemd_verify(&read(UNIT));
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify {UNIT}: {out}"
    );
}

#[test]
fn systemd_analyze_verify_catches_a_broken_unit() {
    // A misspelt value is only a warning to systemd; the clean-output rule
    // above turns it into a failure.
    let broken = read(UNIT).replace("Type=notify", "Type=notfy");
    let (ok, out) = systemd_verify(&broken);
    assert!(!(ok && out.trim().is_empty()), "not caught: {out}");
    assert!(out.contains("notfy"), "{out}");
}

/// `systemd-analyze security --offline=yes --threshold=20`: the overall
/// exposure, and whether it is at most 2.0.
fn systemd_security(unit_text: &str) -> (f64, bool, String) {
    let scratch = Scratch::new("security");
    let path = scratch.write(UNIT_NAME, unit_text);
    let out = run(Command::new(tool_path("systemd-analyze"))
        .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(&path)
        .env("SYSTEMD_COLORS", "0")
        .current_dir(scratch.path()));
    let out_text = text(&out);
    let marker = format!("Overall exposure level for {UNIT_NAME}:");
    let score = out_text
        .lines()
        .find_map(|l| l.split_once(&marker).map(|(_, rest)| rest.to_owned()))
        .and_then(|rest| rest.split_whitespace().next().map(str::to_owned))
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {out_text}"));
    (score, out.status.success(), out_text)
}

#[test]
fn systemd_security_exposure_is_at_most_2_0() {
    let (score, within, out) = systemd_security(&read(UNIT));
    assert!(score <= 2.0 && within, "exposure {score} > 2.0:\n{out}");
}

#[test]
fn systemd_security_check_fails_a_weak_unit() {
    let weak: String = read(UNIT)
        .lines()
        .filter(|l| {
            ![
                "SystemCallFilter=",
                "RestrictAddressFamilies=",
                "PrivateDevices=",
                "PrivateUsers=",
                "MemoryDenyWriteExecute=",
                "ProtectSystem=",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let (score, within, out) = systemd_security(&weak);
    assert!(score > 2.0 && !within, "not caught ({score}): {out}");
}

#[test]
fn systemd_example_config_validates() {
    // As under the unit: the credential directory systemd would set up.
    let scratch = Scratch::new("creds");
    scratch.write("motherduck-admin-token", "placeholder\n");
    let out = run(Command::new(BIN)
        .args(["--config"])
        .arg(repo().join("deploy/systemd/config.toml"))
        .args(["validate", "--skip-secrets"])
        .env("CREDENTIALS_DIRECTORY", scratch.path()));
    assert!(out.status.success(), "{}", text(&out));

    let config = read("deploy/systemd/config.toml");
    assert!(config.contains(r#"admin_token = { credential = "motherduck-admin-token" }"#));
    assert!(config.contains(r#"directory = "/var/lib/motherduck-rotator""#));
}

// ---------------------------------------------------------------- container

/// What gcr.io/distroless/cc-debian12 provides: glibc (with its split-out
/// compatibility libraries), libgcc_s, and the loader.
const DISTROLESS_CC_LIBS: &[&str] = &[
    "linux-vdso.so",
    "libc.so",
    "libm.so",
    "libgcc_s.so",
    "ld-linux",
    "libpthread.so",
    "libdl.so",
    "librt.so",
];
/// glibc of Debian 12, the runtime image's base.
const DISTROLESS_GLIBC: (u32, u32) = (2, 36);

#[test]
fn container_binary_links_only_against_distroless_cc_libraries() {
    let out = run(Command::new(system_tool("/usr/bin/ldd", "libc-bin")).arg(BIN));
    let listing = text(&out);
    assert!(out.status.success(), "ldd: {listing}");
    let mut libs = Vec::new();
    for line in listing.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let first = line.split_whitespace().next().unwrap();
        let name = first.rsplit('/').next().unwrap();
        libs.push(name.to_owned());
        assert!(
            DISTROLESS_CC_LIBS.iter().any(|p| name.starts_with(p)),
            "the binary needs `{name}`, which distroless cc does not provide:\n{listing}"
        );
        assert!(!line.contains("not found"), "{listing}");
    }
    assert!(libs.iter().any(|l| l.starts_with("libc.so")), "{listing}");
    assert!(
        !listing.contains("libssl") && !listing.contains("libcrypto"),
        "{listing}"
    );

    // And no glibc symbol newer than the runtime image's glibc.
    let out = run(Command::new(system_tool("/usr/bin/readelf", "binutils"))
        .args(["--version-info", "--wide"])
        .arg(BIN));
    assert!(out.status.success(), "readelf: {}", text(&out));
    let versions = text(&out);
    let newest = versions
        .split("GLIBC_")
        .skip(1)
        .filter_map(|rest| {
            let v: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .max()
        .expect("the binary uses versioned glibc symbols");
    assert!(
        newest <= DISTROLESS_GLIBC,
        "the binary needs GLIBC_{}.{}; distroless cc-debian12 has {}.{}",
        newest.0,
        newest.1,
        DISTROLESS_GLIBC.0,
        DISTROLESS_GLIBC.1
    );
}

/// A minimal valid configuration whose file store is `state`.
fn minimal_config(api_url: &str, admin_token: &Path, listen: &str, state: &Path) -> String {
    format!(
        r#"[motherduck]
api_url = "{api_url}"
admin_token = {{ file = "{token}" }}

[daemon]
listen = "{listen}"
log_format = "json"
shutdown_timeout = "5s"

[stores.state]
type = "file"
directory = "{state}"

[[policy]]
name = "orders-api"
service_account = "svc_orders"
token_ttl = "1h"
schedule = {{ interval = "1h" }}
overlap = "1s"
verify = [{{ type = "motherduck", interval = "1s", deadline = "20s" }}]
destinations = [{{ store = "state", path = "orders-api.json", bare_token_file = "orders-api.token" }}]
"#,
        token = admin_token.display(),
        state = state.display(),
    )
}

#[test]
fn container_binary_runs_with_an_empty_environment() {
    let scratch = Scratch::new("emptyenv");
    let token = scratch.write("etc/admin-token", "placeholder\n");
    let state = scratch.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = scratch.write(
        "etc/config.toml",
        &minimal_config("https://api.motherduck.com", &token, "0.0.0.0:9464", &state),
    );
    // The configuration is read-only, as a ConfigMap mount is.
    for p in [&token, &config] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    std::fs::set_permissions(
        scratch.path().join("etc"),
        std::fs::Permissions::from_mode(0o555),
    )
    .unwrap();

    let out = run(Command::new(BIN).arg("--help").env_clear().current_dir("/"));
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));

    let out = run(Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["validate", "--skip-secrets"])
        .env_clear()
        .current_dir("/"));
    assert!(out.status.success(), "{}", text(&out));
    // Validation writes nothing, not even into the state directory.
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
}

/// Runs the daemon as the image would: empty environment, `/` as working
/// directory, every mount read-only except the state directory (a private
/// mount namespace), and, when the test runs as root, as the image's uid.
/// It must rotate a token into the state directory, report ready, and
/// exit 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_daemon_runs_on_a_read_only_root() {
    let unshare = system_tool("/usr/bin/unshare", "util-linux");
    let running = Simulator::spawn(SimulatorOptions::default())
        .await
        .expect("simulator starts");
    running.sim.add_service_account("svc_orders");

    let scratch = Scratch::new("rootro");
    let bin = scratch.path().join("usr/bin/motherduck-rotator");
    place_binary(&bin);
    let token = scratch.write("etc/admin-token", running.admin_token.expose_secret());
    let state = scratch.path().join("var/lib/motherduck-rotator");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let port = free_port();
    let config = scratch.write(
        "etc/config.toml",
        &minimal_config(
            &running.base_url(),
            &token,
            &format!("127.0.0.1:{port}"),
            &state,
        ),
    );
    // The configuration is world-readable, as a ConfigMap mount is; the
    // admin token is mounted as the manifests mount a Secret: mode 0440,
    // its group the pod's `fsGroup`, which the process is in.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o440)).unwrap();

    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        system_tool("/usr/bin/setpriv", "util-linux");
        std::os::unix::fs::chown(&state, Some(IMAGE_UID), Some(IMAGE_UID)).unwrap();
        std::os::unix::fs::chown(&token, Some(0), Some(IMAGE_UID)).unwrap();
    }
    // In the new mount namespace: keep the state directory writable (its
    // own bind mount), make every other mount read-only except the kernel
    // file systems, prove that the root is read-only, then run the binary.
    let script = r#"
set -eu
PATH=/usr/sbin:/usr/bin:/sbin:/bin
state=$1; drop=$2; shift 2
mount --bind "$state" "$state"
while read -r _ _ _ _ mp opts _; do
  case $mp in
    "$state"|/proc|/proc/*|/sys|/sys/*|/dev|/dev/pts) continue ;;
  esac
  case ,$opts, in *,ro,*) continue ;; esac
  mount -o "remount,bind,ro,${opts#rw,}" "$mp"
done < /proc/self/mountinfo
for probe in /.mdr-ro-probe /tmp/.mdr-ro-probe /var/tmp/.mdr-ro-probe; do
  if touch "$probe" 2>/dev/null; then echo "$probe is writable" >&2; exit 99; fi
done
cd /
if [ "$drop" = yes ]; then
  exec /usr/bin/setpriv --reuid=65532 --regid=65532 --clear-groups --no-new-privs /usr/bin/env -i "$@"
fi
exec /usr/bin/env -i "$@"
"#;
    let mut cmd = tokio::process::Command::new(&unshare);
    cmd.arg("--mount");
    if !as_root {
        cmd.arg("--map-root-user");
    }
    let mut child = cmd
        .args(["/bin/sh", "-c", script, "sh"])
        .arg(&state)
        .arg(if as_root { "yes" } else { "no" })
        .arg(&bin)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env_clear()
        .current_dir("/")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", unshare.display()));
    let pid = child.id().expect("child pid") as libc::pid_t;

    let token_file = state.join("orders-api.token");
    let http = reqwest::Client::new();
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ready = false;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().await.unwrap();
            panic!("the daemon exited early ({status}): {}", text(&out));
        }
        if !ready {
            ready = matches!(http.get(&readyz).send().await, Ok(r) if r.status() == 200);
        }
        if ready && token_file.is_file() {
            break;
        }
        if Instant::now() > deadline {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let out = child.wait_with_output().await.unwrap();
            panic!(
                "no ready daemon and token file within 60 s (ready: {ready}): {}",
                text(&out)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SAFETY: signalling our own child (the daemon: every step execs).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the daemon stops within 20 s of SIGTERM")
        .unwrap();
    let log = text(&out);
    assert!(out.status.success(), "exit {}: {log}", out.status);
    assert!(!log.contains("Read-only file system"), "{log}");

    let meta = std::fs::metadata(&token_file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    if as_root {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.uid(), IMAGE_UID, "written as the image's user");
    }
    let secret = std::fs::read_to_string(&token_file).unwrap();
    assert!(secret.trim().starts_with("eyJ"), "a token was stored");
}

#[test]
fn dockerfile_matches_the_repository() {
    let dockerfile = read("deploy/container/Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "a builder and a runtime stage: {froms:?}");
    assert!(
        froms[0].starts_with("FROM rust:1.95-bookworm "),
        "{}",
        froms[0]
    );
    assert!(
        froms[1].starts_with("FROM gcr.io/distroless/cc-debian12:nonroot"),
        "{}",
        froms[1]
    );
    // The builder's Rust matches the pinned toolchain.
    assert!(read("rust-toolchain.toml").contains(r#"channel = "1.95"#));
    assert!(dockerfile.contains("cargo build --release --locked"));
    for needed in [
        "USER 65532:65532",
        "EXPOSE 9464",
        r#"ENTRYPOINT ["/usr/bin/motherduck-rotator"]"#,
        r#"VOLUME ["/var/lib/motherduck-rotator"]"#,
        "COPY --from=builder /out/ /",
    ] {
        assert!(
            instructions.contains(&needed),
            "Dockerfile lacks `{needed}`"
        );
    }
    // The state directory ships owned by the runtime user, owner-only.
    assert!(
        dockerfile.contains("install -d -m 0700 -o 65532 -g 65532 /out/var/lib/motherduck-rotator")
    );
    // Everything the build copies exists, and the ignore file lets it in.
    let ignore = read("deploy/container/Dockerfile.dockerignore");
    let copied: Vec<&str> = instructions
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
        .flat_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().skip(1).collect();
            parts[..parts.len() - 1].to_vec()
        })
        .collect();
    assert!(!copied.is_empty());
    for src in &copied {
        assert!(
            repo().join(src).exists(),
            "COPY {src}: not in the repository"
        );
        let entry = format!("!{}", src.trim_end_matches('/'));
        assert!(
            ignore.lines().any(|l| l.trim_end_matches('/') == entry),
            "Dockerfile.dockerignore excludes {src}"
        );
    }
    // A build script would be needed too.
    if repo().join("build.rs").exists() {
        assert!(
            copied.contains(&"build.rs"),
            "the Dockerfile does not copy build.rs"
        );
    }
    // Files the sources embed at compile time are inside what is copied.
    let root = std::fs::canonicalize(repo()).unwrap();
    for entry in walk(&repo().join("src")) {
        let source = std::fs::read_to_string(&entry).unwrap();
        for (_, rest) in source
            .match_indices("include_str!(\"")
            .chain(source.match_indices("include_bytes!(\""))
            .map(|(i, _)| source.split_at(i))
        {
            let rel = rest.split('"').nth(1).unwrap();
            let target = entry.parent().unwrap().join(rel);
            let target = std::fs::canonicalize(&target)
                .unwrap_or_else(|e| panic!("{}: {rel}: {e}", entry.display()));
            let inside = target.strip_prefix(&root).unwrap();
            let top = inside.components().next().unwrap().as_os_str();
            assert!(
                copied
                    .iter()
                    .any(|c| Path::new(c.trim_end_matches('/')).as_os_str() == top),
                "{} embeds {}, which the Dockerfile does not copy",
                entry.display(),
                inside.display()
            );
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

// --------------------------------------------------------------- Kubernetes

fn manifests() -> Vec<PathBuf> {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(
        files.iter().any(|p| p.ends_with("sidecar.yaml"))
            && files.iter().any(|p| p.ends_with("standalone.yaml")),
        "{files:?}"
    );
    files
}

/// The number of YAML documents with content in `text`.
fn document_count(text: &str) -> usize {
    text.split("\n---")
        .filter(|doc| {
            doc.lines().any(|l| {
                let l = l.trim();
                !l.is_empty() && !l.starts_with('#') && l != "---"
            })
        })
        .count()
}

/// `kubernetes-validate --strict` (unknown fields are errors) against one
/// schema version. Ok when every document passed with no warning (an
/// unknown kind is only a warning to the tool).
fn kubernetes_validate(file: &Path, version: &str, offline: bool) -> Result<String, String> {
    let tool = tool_path("kubernetes-validate");
    let mut cmd = if offline {
        // A new network namespace (as an unprivileged user namespace, so
        // this works for any user): no interface but a downed loopback.
        let mut c = Command::new(system_tool("/usr/bin/unshare", "util-linux"));
        c.args(["--net", "--map-root-user"]).arg(&tool);
        c
    } else {
        Command::new(&tool)
    };
    let out = run(cmd
        .args(["--strict", "--kubernetes-version", version])
        .arg(file));
    let out_text = text(&out);
    let documents = document_count(&std::fs::read_to_string(file).unwrap());
    let passed = out_text.matches(" passed for resource ").count();
    if out.status.success()
        && passed == documents
        && !out_text.contains("WARN")
        && !out_text.contains("ERROR")
    {
        Ok(out_text)
    } else {
        Err(format!(
            "{} against {version}: exit {}, {passed}/{documents} documents passed:\n{out_text}",
            file.display(),
            out.status
        ))
    }
}

#[test]
fn kubernetes_manifests_match_the_schemas() {
    for file in manifests() {
        for version in KUBERNETES_VERSIONS {
            if let Err(e) = kubernetes_validate(&file, version, false) {
                panic!("{e}");
            }
        }
    }
}

#[test]
fn kubernetes_validator_works_offline() {
    // The validator bundles the schemas; prove it never needs the network
    // by running it where there is none.
    let file = repo().join("deploy/kubernetes/sidecar.yaml");
    if let Err(e) = kubernetes_validate(&file, KUBERNETES_VERSIONS[0], true) {
        panic!("{e}");
    }
}

#[test]
fn kubernetes_validator_rejects_broken_manifests() {
    let sidecar = read("deploy/kubernetes/sidecar.yaml");
    let scratch = Scratch::new("k8s");
    let cases = [
        // A misspelt field (only --strict catches this).
        (
            "typo",
            sidecar.replacen(
                "readOnlyRootFilesystem: true",
                "readOnlyRootFilesystm: true",
                1,
            ),
            "readOnlyRootFilesystm",
        ),
        // A wrong type.
        (
            "type",
            sidecar.replacen("  replicas: 1\n", "  replicas: one\n", 1),
            "replicas",
        ),
        // A missing required field.
        (
            "required",
            sidecar.replacen("              port: metrics\n", "", 1),
            "port",
        ),
        // A kind the schemas do not know (a warning to the tool).
        (
            "kind",
            sidecar.replacen("kind: Deployment", "kind: Deploymnet", 1),
            "Deploymnet",
        ),
    ];
    for (name, text, needle) in cases {
        assert_ne!(text, sidecar, "case {name} changed nothing");
        let path = scratch.write(&format!("{name}.yaml"), &text);
        match kubernetes_validate(&path, KUBERNETES_VERSIONS[1], false) {
            Ok(out) => panic!("case {name} was accepted:\n{out}"),
            Err(e) => assert!(e.contains(needle), "case {name}: {e}"),
        }
    }
}

/// Checks the manifests beyond their schema, with the validator's Python
/// (it brings PyYAML), and prints the embedded rotator configurations as
/// JSON: `[{"file": ..., "configmap": ..., "toml": ...}]`.
const MANIFEST_RULES: &str = r#"
import json, re, sys, yaml

errors, configs = [], []

def err(file, msg):
    errors.append(f"{file}: {msg}")

def probe_port(c, probe):
    port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
    if isinstance(port, str):
        port = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}.get(port)
    return port

for file in sys.argv[1:]:
    docs = [d for d in yaml.safe_load_all(open(file)) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    for name, cm in by_kind.get("ConfigMap", {}).items():
        if "config.toml" in cm.get("data", {}):
            configs.append({"file": file, "configmap": name, "toml": cm["data"]["config.toml"]})
    for name, dep in by_kind.get("Deployment", {}).items():
        pod = dep["spec"]["template"]["spec"]
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True: err(file, f"{name}: runAsNonRoot")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault": err(file, f"{name}: seccompProfile")
        if not psc.get("runAsUser") or not psc.get("fsGroup"): err(file, f"{name}: runAsUser/fsGroup")
        sa = pod.get("serviceAccountName")
        acct = by_kind.get("ServiceAccount", {}).get(sa)
        if not acct: err(file, f"{name}: ServiceAccount {sa} not defined")
        elif "eks.amazonaws.com/role-arn" not in acct["metadata"].get("annotations", {}): err(file, f"{sa}: no IRSA annotation")
        containers = pod.get("containers", []) + pod.get("initContainers", [])
        rotators = [c for c in containers if "motherduck-rotator" in c["image"]]
        if len(rotators) != 1: err(file, f"{name}: {len(rotators)} rotator containers")
        for c in containers:
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False: err(file, f"{c['name']}: allowPrivilegeEscalation")
            if sc.get("readOnlyRootFilesystem") is not True: err(file, f"{c['name']}: readOnlyRootFilesystem")
            if "ALL" not in (sc.get("capabilities") or {}).get("drop", []): err(file, f"{c['name']}: drop ALL")
            # One uid for every container: the file store is owner-only.
            if "runAsUser" in sc and sc["runAsUser"] != psc.get("runAsUser"): err(file, f"{c['name']}: own runAsUser")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for r in rotators:
            if r in pod.get("initContainers", []) and r.get("restartPolicy") != "Always":
                err(file, f"{r['name']}: an init container that is not a native sidecar")
            if 9464 not in [p.get("containerPort") for p in r.get("ports", [])]: err(file, f"{r['name']}: port 9464")
            for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
                if ((r.get(probe) or {}).get("httpGet") or {}).get("path") != path: err(file, f"{r['name']}: {probe} {path}")
                if probe_port(r, probe) != 9464: err(file, f"{r['name']}: {probe} port")
            res = r.get("resources", {})
            if not all(k in res.get("requests", {}) for k in ("cpu", "memory")) or "memory" not in res.get("limits", {}):
                err(file, f"{r['name']}: resources")
            mounts = {m["mountPath"]: m["name"] for m in r.get("volumeMounts", [])}
            cm_name = ((volumes.get(mounts.get("/etc/motherduck-rotator")) or {}).get("configMap") or {}).get("name")
            cm = by_kind.get("ConfigMap", {}).get(cm_name)
            if not cm: err(file, f"{r['name']}: no ConfigMap at /etc/motherduck-rotator"); continue
            toml = cm["data"]["config.toml"]
            if 'listen = "0.0.0.0:9464"' not in toml: err(file, f"{cm_name}: listen must be 0.0.0.0:9464")
            m = re.search(r'shutdown_timeout = "(\d+)s"', toml)
            if not m or int(m.group(1)) >= pod.get("terminationGracePeriodSeconds", 30):
                err(file, f"{name}: shutdown_timeout not below terminationGracePeriodSeconds")
            secrets = [v["secret"]["secretName"] for v in volumes.values() if "secret" in v]
            for s in secrets:
                if s not in by_kind.get("Secret", {}): err(file, f"{name}: Secret {s} not defined")
            if "admin_token = { file = " not in toml: err(file, f"{cm_name}: admin token not from a file")
            # A file store in an emptyDir: one pod, never two at once, and
            # the app container sees the same volume.
            empties = [n for n, v in volumes.items() if "emptyDir" in v]
            for n in empties:
                path = [p for p, v in mounts.items() if v == n]
                if not path: continue
                if not re.search(r'directory = "' + re.escape(path[0]) + r'/[^"]+"', toml):
                    err(file, f"{name}: the file store must be a subdirectory of the emptyDir at {path[0]}")
                if dep["spec"].get("replicas") != 1 or dep["spec"].get("strategy", {}).get("type") != "Recreate":
                    err(file, f"{name}: an emptyDir file store needs replicas: 1 and strategy Recreate")
                apps = [c for c in pod.get("containers", []) if c not in rotators]
                if not apps or not all(any(m["name"] == n for m in c.get("volumeMounts", [])) for c in apps):
                    err(file, f"{name}: the app containers do not mount {n}")
        if dep["spec"].get("replicas", 1) >= 2:
            labels = dep["spec"]["selector"]["matchLabels"]
            def selects(sel): return sel and all(labels.get(k) == v for k, v in sel.items())
            if not any(selects(p["spec"]["selector"].get("matchLabels")) for p in by_kind.get("PodDisruptionBudget", {}).values()):
                err(file, f"{name}: no PodDisruptionBudget")
            if not any(selects(s["spec"].get("selector")) for s in by_kind.get("Service", {}).values()):
                err(file, f"{name}: no Service")

print(json.dumps({"errors": errors, "configs": configs}))
"#;

/// Runs [`MANIFEST_RULES`] on `files` (with the venv's Python, which has
/// PyYAML as a dependency of kubernetes-validate).
fn manifest_rules(files: &[PathBuf]) -> serde_json::Value {
    let out = run(Command::new(tool_path("python"))
        .args(["-c", MANIFEST_RULES])
        .args(files));
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

#[test]
fn kubernetes_rules_catch_a_broken_sidecar() {
    let sidecar = read("deploy/kubernetes/sidecar.yaml");
    let scratch = Scratch::new("k8s-rules");
    let cases = [
        (
            "replicas",
            sidecar.replacen("  replicas: 1\n", "  replicas: 2\n", 1),
            "needs replicas: 1",
        ),
        (
            "listen",
            sidecar.replacen(
                r#"listen = "0.0.0.0:9464""#,
                r#"listen = "127.0.0.1:9464""#,
                1,
            ),
            "listen must be 0.0.0.0:9464",
        ),
        (
            "store",
            sidecar.replacen(
                r#"directory = "/var/run/motherduck/store""#,
                r#"directory = "/var/run/motherduck""#,
                1,
            ),
            "must be a subdirectory of the emptyDir",
        ),
        (
            "rootfs",
            sidecar.replacen(
                "readOnlyRootFilesystem: true",
                "readOnlyRootFilesystem: false",
                1,
            ),
            "readOnlyRootFilesystem",
        ),
        (
            "probe",
            sidecar.replacen("path: /healthz", "path: /metrics", 1),
            "livenessProbe /healthz",
        ),
    ];
    for (name, text, needle) in cases {
        assert_ne!(text, sidecar, "case {name} changed nothing");
        let path = scratch.write(&format!("{name}.yaml"), &text);
        let report = manifest_rules(&[path]);
        let errors = report["errors"].to_string();
        assert!(errors.contains(needle), "case {name} not caught: {errors}");
    }
}

#[test]
fn kubernetes_manifests_follow_the_deployment_rules() {
    let files = manifests();
    let report = manifest_rules(&files);
    let errors = report["errors"].as_array().unwrap();
    assert!(errors.is_empty(), "{errors:#?}");

    // Every embedded rotator configuration is valid.
    let configs = report["configs"].as_array().unwrap();
    assert_eq!(configs.len(), files.len(), "one rotator config per file");
    let scratch = Scratch::new("k8s-config");
    for c in configs {
        let name = c["configmap"].as_str().unwrap();
        let path = scratch.write(&format!("{name}.toml"), c["toml"].as_str().unwrap());
        let out = run(Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .args(["validate", "--skip-secrets"])
            .env_clear());
        assert!(
            out.status.success(),
            "ConfigMap {name} in {}: {}",
            c["file"],
            text(&out)
        );
    }
}
