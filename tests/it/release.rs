//! What a release says about itself: the build identity (`--version`, the
//! build-info metric, `status --json`, and `build.rs` on a checkout, a
//! dirty tree and a tarball), the SBOM against `Cargo.lock`, the licence
//! and ban checks, the changelog's form and the supported Rust version.
//!
//! cargo-cyclonedx and cargo-deny come from `scripts/release-tools.sh`
//! (run by `scripts/setup-test-env.sh`); the scripts under test install
//! them if they are missing, and fail loudly if they cannot.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use motherduck_rotator::build_info::BUILD;

const BIN: &str = env!("CARGO_BIN_EXE_motherduck-rotator");
/// The platform the SBOM and the checks describe.
const TARGET: &str = "x86_64-unknown-linux-gnu";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
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

/// A command that runs a project script or cargo for the release build,
/// without the variables cargo set for this test binary.
fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR" {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(repo());
    cmd
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("mdr-release-{tag}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ------------------------------------------------------------ build identity

#[test]
fn version_prints_version_commit_dirty_date_and_rust() {
    let out = run(Command::new(BIN).arg("--version"));
    assert!(out.status.success(), "{}", text(&out));
    let line = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        line.trim_end(),
        format!("motherduck-rotator {}", BUILD.version_line())
    );
    assert!(line.contains(&format!("commit {}", BUILD.commit)), "{line}");
    assert!(
        line.contains(&format!("built {}", BUILD.build_date)),
        "{line}"
    );
    assert!(
        line.contains(&format!("rustc {}", BUILD.rust_version)),
        "{line}"
    );
    assert_eq!(line.contains(", dirty,"), BUILD.dirty, "{line}");
    // `-V` says the same.
    let short = run(Command::new(BIN).arg("-V"));
    assert_eq!(short.stdout, out.stdout);

    // This test runs in a git checkout: the commit is known, and it is HEAD.
    let head = run(Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo()));
    assert!(head.status.success(), "git rev-parse: {}", text(&head));
    assert_eq!(BUILD.commit, String::from_utf8_lossy(&head.stdout).trim());
}

#[test]
fn the_build_info_metric_carries_version_and_commit() {
    let rendered = motherduck_rotator::metrics::Metrics::new().render();
    let expected = format!(
        "motherduck_rotator_build_info{{commit=\"{}\",version=\"{}\"}} 1",
        BUILD.commit_label(),
        BUILD.version
    );
    assert!(
        rendered.lines().any(|l| l == expected),
        "no `{expected}` in:\n{rendered}"
    );
}

#[test]
fn status_json_names_the_build() {
    let dir = TempDir::new("status");
    let store = dir.0.join("store");
    std::fs::create_dir(&store).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o700)).unwrap();
    let token = dir.0.join("admin-token");
    std::fs::write(&token, "placeholder\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.0.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"[motherduck]
api_url = "http://127.0.0.1:9"
admin_token = {{ file = "{}" }}

[stores.local]
type = "file"
directory = "{}"

[[policy]]
name = "orders-api"
service_account = "svc_orders"
token_ttl = "30d"
schedule = {{ interval = "7d" }}
overlap = "1h"
verify = [{{ type = "motherduck" }}]
destinations = [{{ store = "local", path = "orders-api.json" }}]
"#,
            token.display(),
            store.display()
        ),
    )
    .unwrap();
    let out = run(Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["status", "--json"]));
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", text(&out)));
    assert_eq!(
        status["build"],
        serde_json::json!({
            "version": BUILD.version,
            "commit": BUILD.commit,
            "dirty": BUILD.dirty,
            "build_date": BUILD.build_date,
            "rust_version": BUILD.rust_version,
        })
    );
    assert_eq!(status["policies"][0]["policy"], "orders-api", "{status}");
    assert_eq!(status["policies"][0]["state"], "idle", "{status}");
}

/// The compiled `build.rs` of this crate (cargo keeps it under
/// target/<profile>/build/), so its behaviour can be checked on other
/// trees without compiling the crate again.
fn build_script() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/it-<hash>
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    std::fs::read_dir(profile_dir.join("build"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("motherduck-rotator-")
        })
        .map(|e| e.path().join("build-script-build"))
        .filter(|p| p.is_file())
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("no build script under {}", profile_dir.display()))
}

/// Runs the build script for a crate at `dir`; returns the `MDR_BUILD_*`
/// values it sets.
fn identity_of(dir: &Path, source_date_epoch: Option<&str>) -> [String; 3] {
    let mut cmd = Command::new(build_script());
    cmd.env("CARGO_MANIFEST_DIR", dir)
        .env("RUSTC", "rustc")
        .env_remove("SOURCE_DATE_EPOCH")
        .current_dir(dir);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("GIT_") {
            cmd.env_remove(k);
        }
    }
    if let Some(epoch) = source_date_epoch {
        cmd.env("SOURCE_DATE_EPOCH", epoch);
    }
    let out = run(&mut cmd);
    assert!(out.status.success(), "build script: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let get = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cargo::rustc-env={name}=")))
            .unwrap_or_else(|| panic!("{name} not set: {stdout}"))
            .to_owned()
    };
    let rustc = get("MDR_BUILD_RUSTC");
    assert!(rustc.starts_with("1."), "{rustc}");
    [
        get("MDR_BUILD_COMMIT"),
        get("MDR_BUILD_DIRTY"),
        get("MDR_BUILD_DATE"),
    ]
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = run(Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env("GIT_COMMITTER_DATE", "@1700000000 +0000")
        .env("GIT_AUTHOR_DATE", "@1700000000 +0000")
        .current_dir(dir));
    assert!(out.status.success(), "git {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A minimal crate layout: what the build script looks at.
fn write_crate(dir: &Path) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("Cargo.toml"), "[package]\nname = \"x\"\n").unwrap();
    std::fs::write(dir.join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(dir.join("README.md"), "x\n").unwrap();
}

#[test]
fn build_identity_from_a_checkout_a_dirty_tree_and_a_tarball() {
    // A git checkout: the commit and its date; the same twice.
    let repo_dir = TempDir::new("git");
    write_crate(&repo_dir.0);
    git(&repo_dir.0, &["init", "-q"]);
    git(&repo_dir.0, &["add", "."]);
    git(&repo_dir.0, &["commit", "-q", "-m", "x"]);
    let head = git(&repo_dir.0, &["rev-parse", "HEAD"]);
    let clean = [head.clone(), "false".into(), "2023-11-14".into()];
    assert_eq!(identity_of(&repo_dir.0, None), clean);
    assert_eq!(identity_of(&repo_dir.0, None), clean);
    // SOURCE_DATE_EPOCH, when a packager sets it, is the date.
    assert_eq!(
        identity_of(&repo_dir.0, Some("1767225600"))[2],
        "2026-01-01"
    );

    // A changed source file makes it dirty; a changed README does not
    // (it is not compiled in), an untracked source file does.
    std::fs::write(repo_dir.0.join("src/main.rs"), "fn main() { }\n").unwrap();
    assert_eq!(identity_of(&repo_dir.0, None)[1], "true");
    git(&repo_dir.0, &["checkout", "-q", "--", "src/main.rs"]);
    std::fs::write(repo_dir.0.join("README.md"), "y\n").unwrap();
    assert_eq!(identity_of(&repo_dir.0, None), clean);
    std::fs::write(repo_dir.0.join("src/extra.rs"), "\n").unwrap();
    assert_eq!(identity_of(&repo_dir.0, None)[1], "true");
    std::fs::remove_file(repo_dir.0.join("src/extra.rs")).unwrap();

    // An unpacked source tarball: no .git, so no commit, and no date
    // unless SOURCE_DATE_EPOCH gives one.
    let tarball = TempDir::new("tarball");
    write_crate(&tarball.0);
    assert_eq!(
        identity_of(&tarball.0, None),
        ["unknown", "false", "unknown"]
    );
    assert_eq!(
        identity_of(&tarball.0, Some("1767225600")),
        ["unknown", "false", "2026-01-01"]
    );

    // The same tarball unpacked inside some other repository is not that
    // repository's commit.
    let nested = repo_dir.0.join("vendor/x");
    write_crate(&nested);
    assert_eq!(identity_of(&nested, None), ["unknown", "false", "unknown"]);
}

// ---------------------------------------------------------------------- SBOM

/// `name@version` of every crate the binary is built from on `TARGET`:
/// reachable from this crate through normal dependencies (not build or dev
/// ones), proc-macro crates included, since the code they generate is in
/// the binary. From `cargo metadata`, independently of cargo-cyclonedx.
fn crates_in_the_binary() -> BTreeSet<String> {
    let out = run(clean_command("cargo").args([
        "metadata",
        "--format-version",
        "1",
        "--locked",
        "--filter-platform",
        TARGET,
    ]));
    assert!(out.status.success(), "cargo metadata: {}", text(&out));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages: std::collections::HashMap<&str, &serde_json::Value> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    let nodes: std::collections::HashMap<&str, &serde_json::Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let root = meta["resolve"]["root"].as_str().unwrap();
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            let dep_id = dep["pkg"].as_str().unwrap();
            if normal {
                stack.push(dep_id);
            }
        }
    }
    seen.iter()
        .filter(|id| **id != root)
        .map(|id| {
            let p = packages[id];
            format!(
                "{}@{}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap()
            )
        })
        .collect()
}

/// `name@version` of every `[[package]]` in Cargo.lock but this crate.
fn cargo_lock_crates() -> BTreeSet<String> {
    let lock: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo().join("Cargo.lock")).unwrap()).unwrap();
    lock["package"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"].as_str() != Some(env!("CARGO_PKG_NAME")))
        .map(|p| {
            format!(
                "{}@{}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn the_sbom_lists_every_crate_of_cargo_lock_in_the_binary() {
    let out = run(clean_command("bash").arg(repo().join("scripts/sbom.sh")));
    assert!(out.status.success(), "scripts/sbom.sh: {}", text(&out));
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let sbom: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())),
    )
    .unwrap();
    assert_eq!(sbom["bomFormat"], "CycloneDX", "{}", path.display());
    assert_eq!(
        sbom["metadata"]["component"]["name"],
        env!("CARGO_PKG_NAME")
    );
    assert_eq!(
        sbom["metadata"]["component"]["version"],
        env!("CARGO_PKG_VERSION")
    );
    let listed: BTreeSet<String> = sbom["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let purl = c["purl"].as_str().unwrap_or_default();
            assert!(purl.starts_with("pkg:cargo/"), "{c}");
            assert!(
                c["licenses"].as_array().is_some_and(|l| !l.is_empty()),
                "no licence: {c}"
            );
            format!(
                "{}@{}",
                c["name"].as_str().unwrap(),
                c["version"].as_str().unwrap()
            )
        })
        .collect();

    let lock = cargo_lock_crates();
    let in_binary = crates_in_the_binary();
    let missing: Vec<_> = in_binary.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "in the binary, not in the SBOM: {missing:?}"
    );
    let extra: Vec<_> = listed.difference(&in_binary).collect();
    assert!(
        extra.is_empty(),
        "in the SBOM, not in the binary: {extra:?}"
    );
    let unlocked: Vec<_> = listed.difference(&lock).collect();
    assert!(
        unlocked.is_empty(),
        "in the SBOM, not in Cargo.lock: {unlocked:?}"
    );
    println!(
        "SBOM {}: {} crates; Cargo.lock: {} crates besides this one, {} of them in the binary",
        path.display(),
        listed.len(),
        lock.len(),
        in_binary.len()
    );
}

// ------------------------------------------------------- licences and bans

#[test]
fn dependency_licences_bans_and_sources_pass_cargo_deny() {
    let out = run(clean_command("bash").arg(repo().join("scripts/deny.sh")));
    let report = text(&out);
    assert!(out.status.success(), "scripts/deny.sh:\n{report}");
    assert!(
        report.contains("licenses ok")
            && report.contains("bans ok")
            && report.contains("sources ok"),
        "{report}"
    );
}

/// The check has teeth: without MIT on the allow-list, the MIT-only
/// crates fail it.
#[test]
fn cargo_deny_fails_a_licence_outside_the_allow_list() {
    let out = run(clean_command("bash").arg(repo().join("scripts/release-tools.sh")));
    assert!(out.status.success(), "release-tools: {}", text(&out));
    let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let dir = TempDir::new("deny");
    let config = std::fs::read_to_string(repo().join("deny.toml"))
        .unwrap()
        .replace("    \"MIT\",\n", "");
    let path = dir.0.join("deny.toml");
    std::fs::write(&path, config).unwrap();
    let out = run(clean_command(bin.join("cargo-deny"))
        .args(["--locked", "--config"])
        .arg(&path)
        .args(["check", "licenses"]));
    let report = text(&out);
    assert!(!out.status.success(), "{report}");
    assert!(report.contains("rejected"), "{report}");
}

// ---------------------------------------------------- changelog and policy

/// Keep a Changelog: a title, an `[Unreleased]` section first, released
/// versions as `## [x.y.z] - YYYY-MM-DD`, newest first, and only the six
/// kinds of change as subsections.
#[test]
fn the_changelog_keeps_the_keep_a_changelog_form() {
    let changelog = std::fs::read_to_string(repo().join("CHANGELOG.md")).unwrap();
    assert_eq!(changelog.lines().next(), Some("# Changelog"));
    let versions: Vec<&str> = changelog
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .collect();
    assert_eq!(versions.first(), Some(&"[Unreleased]"), "{versions:?}");
    let mut released = Vec::new();
    for v in &versions[1..] {
        let (name, date) = v
            .split_once(" - ")
            .unwrap_or_else(|| panic!("`## {v}`: expected `## [x.y.z] - YYYY-MM-DD`"));
        let name = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or_else(|| panic!("`## {v}`: the version in brackets"));
        chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
            .unwrap_or_else(|e| panic!("`## {v}`: {e}"));
        let parts: Vec<u64> = name
            .split('.')
            .map(|p| p.parse().unwrap_or_else(|_| panic!("`## {v}`: not x.y.z")))
            .collect();
        assert_eq!(parts.len(), 3, "`## {v}`");
        released.push(parts);
    }
    assert!(
        released.windows(2).all(|w| w[0] > w[1]),
        "versions not newest first: {versions:?}"
    );
    for kind in changelog.lines().filter_map(|l| l.strip_prefix("### ")) {
        assert!(
            [
                "Added",
                "Changed",
                "Deprecated",
                "Removed",
                "Fixed",
                "Security"
            ]
            .contains(&kind),
            "`### {kind}` is not a Keep a Changelog section"
        );
    }
}

/// The supported Rust version is the pinned toolchain's, and this build
/// used at least that.
#[test]
fn rust_version_is_the_pinned_toolchain() {
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo().join("Cargo.toml")).unwrap()).unwrap();
    let rust_version = manifest["package"]["rust-version"]
        .as_str()
        .expect("Cargo.toml sets package.rust-version");
    let toolchain: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo().join("rust-toolchain.toml")).unwrap())
            .unwrap();
    let channel = toolchain["toolchain"]["channel"].as_str().unwrap();
    assert!(
        channel == rust_version || channel.starts_with(&format!("{rust_version}.")),
        "rust-version {rust_version} but rust-toolchain.toml pins {channel}"
    );
    let parse = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap()).collect() };
    assert!(
        parse(BUILD.rust_version) >= parse(rust_version),
        "built with {} < rust-version {rust_version}",
        BUILD.rust_version
    );
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("`Cargo.toml`\n  ({rust_version})")),
        "the README's Compatibility section names another Rust version than {rust_version}"
    );
}
