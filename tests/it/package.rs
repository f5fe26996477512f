//! The Debian package (`scripts/package.sh`, cargo-deb): built once for
//! this module, checked with `lintian`, unpacked with `dpkg-deb -x` into a
//! temporary root, and the unpacked unit, binary and configuration used as
//! the package would install them. Nothing is installed on this machine.
//!
//! The tools come from `scripts/setup-test-env.sh` (which runs
//! `scripts/release-tools.sh`); `scripts/package.sh` installs cargo-deb
//! itself if it is missing. A missing tool fails the test, never skips it.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::support::services::tool_path;

const BIN: &str = env!("CARGO_BIN_EXE_motherduck-rotator");
const VERSION: &str = env!("CARGO_PKG_VERSION");
const SETUP: &str = "scripts/setup-test-env.sh";
const UNIT: &str = "usr/lib/systemd/system/motherduck-rotator.service";
const CONFIG: &str = "etc/motherduck-rotator/config.toml";

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

fn system_tool(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.is_file(),
        "{path} is missing; install the Debian package `{package}` (see {SETUP})"
    );
    p
}

/// The built package and its unpacked tree, shared by the tests below.
struct Package {
    deb: PathBuf,
    /// `dpkg-deb -x` of it, next to the .deb under target/ (replaced by
    /// the next run, so it can be looked at after a failure).
    root: PathBuf,
}

/// Builds the package once (a release build: minutes the first time, a
/// repackaging afterwards) and unpacks it.
fn package() -> &'static Package {
    static PACKAGE: OnceLock<Package> = OnceLock::new();
    PACKAGE.get_or_init(|| {
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("scripts/package.sh"))
            .current_dir(repo());
        // The variables cargo sets for this test binary describe it, not
        // the release build that the script starts.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR" {
                cmd.env_remove(k);
            }
        }
        let out = run(&mut cmd);
        assert!(
            out.status.success(),
            "scripts/package.sh failed: {}",
            text(&out)
        );
        let deb = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .rfind(|l| l.ends_with(".deb"))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("scripts/package.sh printed no .deb path: {}", text(&out)));
        assert!(deb.is_file(), "{} is not a file", deb.display());
        let name = deb.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(&format!("motherduck-rotator_{VERSION}-1_")),
            "{name}"
        );

        let root = deb.with_extension("root");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let out = run(Command::new(system_tool("/usr/bin/dpkg-deb", "dpkg"))
            .arg("-x")
            .arg(&deb)
            .arg(&root));
        assert!(out.status.success(), "dpkg-deb -x: {}", text(&out));
        Package { deb, root }
    })
}

fn dpkg_deb(args: &[&str]) -> String {
    let deb = &package().deb;
    let out = run(Command::new(system_tool("/usr/bin/dpkg-deb", "dpkg"))
        .args(args)
        .arg(deb));
    assert!(out.status.success(), "dpkg-deb {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dpkg-deb --ctrl-tarfile` member `name` (postinst, conffiles, …).
fn control_file(name: &str) -> Option<String> {
    let scratch = package()
        .deb
        .with_extension(format!("control-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&scratch).unwrap();
    let out = run(Command::new(system_tool("/usr/bin/dpkg-deb", "dpkg"))
        .arg("--control")
        .arg(&package().deb)
        .arg(&scratch));
    assert!(out.status.success(), "dpkg-deb --control: {}", text(&out));
    let content = std::fs::read_to_string(scratch.join(name)).ok();
    let _ = std::fs::remove_dir_all(&scratch);
    content
}

#[test]
fn lintian_reports_no_errors() {
    let lintian = system_tool("/usr/bin/lintian", "lintian");
    // Tags are listed at every level down to "info", so that the output
    // shown on failure is the whole picture.
    let out = run(Command::new(&lintian)
        .args(["--display-info", "--tag-display-limit", "0"])
        .arg(&package().deb));
    let report = text(&out);
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{report}");
    // lintian exits 1 only for errors (its default --fail-on=error).
    assert!(out.status.success(), "lintian failed:\n{report}");
    println!("lintian {}:\n{report}", package().deb.display());
}

#[test]
fn the_package_holds_the_binary_unit_user_state_directory_and_config() {
    // path -> mode, owner of every file and directory, from the archive.
    let listing = dpkg_deb(&["--contents"]);
    let entries: BTreeMap<String, (String, String)> = listing
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f.get(5)?.trim_start_matches('.').to_owned();
            Some((path, (f[0].to_owned(), f[1].to_owned())))
        })
        .collect();
    println!("{listing}");
    for (path, mode) in [
        ("/usr/bin/motherduck-rotator", "-rwxr-xr-x"),
        (
            "/usr/lib/systemd/system/motherduck-rotator.service",
            "-rw-r--r--",
        ),
        ("/usr/lib/sysusers.d/motherduck-rotator.conf", "-rw-r--r--"),
        ("/usr/lib/tmpfiles.d/motherduck-rotator.conf", "-rw-r--r--"),
        // Group-readable only: the postinst gives it to the service's
        // group; until then, root alone reads it.
        ("/etc/motherduck-rotator/config.toml", "-rw-r-----"),
        ("/usr/share/doc/motherduck-rotator/copyright", "-rw-r--r--"),
        (
            "/usr/share/doc/motherduck-rotator/example.toml",
            "-rw-r--r--",
        ),
    ] {
        let (m, owner) = entries
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"));
        assert_eq!(m, mode, "{path}");
        assert_eq!(owner, "0/0", "{path}");
    }
    assert!(
        entries.contains_key("/usr/share/lintian/overrides/motherduck-rotator"),
        "{listing}"
    );
    // No file of the build tree, the tests or the tools sneaks in.
    for path in entries.keys() {
        assert!(
            ["/usr/", "/etc/"].iter().any(|p| path.starts_with(p)) || path == "/",
            "unexpected {path} in the package"
        );
    }

    // The configuration is a conffile: dpkg keeps an edited one on upgrade.
    let conffiles = control_file("conffiles").expect("the package has conffiles");
    assert_eq!(
        conffiles.lines().collect::<Vec<_>>(),
        ["/etc/motherduck-rotator/config.toml"]
    );

    let fields = dpkg_deb(&["--field"]);
    let field = |name: &str| {
        fields
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{fields}"))
            .to_owned()
    };
    assert_eq!(field("Package"), "motherduck-rotator");
    assert_eq!(field("Version"), format!("{VERSION}-1"));
    let depends = field("Depends");
    assert!(depends.contains("libc6"), "{depends}");
    assert!(depends.contains("systemd | systemd-sysusers"), "{depends}");

    let sysusers = std::fs::read_to_string(
        package()
            .root
            .join("usr/lib/sysusers.d/motherduck-rotator.conf"),
    )
    .unwrap();
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["u", "motherduck-rotator"])),
        "{sysusers}"
    );
    let tmpfiles = std::fs::read_to_string(
        package()
            .root
            .join("usr/lib/tmpfiles.d/motherduck-rotator.conf"),
    )
    .unwrap();
    assert!(
        tmpfiles.lines().any(|l| l.split_whitespace().take(5).eq([
            "d",
            "/var/lib/motherduck-rotator",
            "0700",
            "motherduck-rotator",
            "motherduck-rotator"
        ])),
        "{tmpfiles}"
    );
}

/// Enabled on install, never started while the configuration is the
/// example; an upgrade restarts only a running service. The user exists
/// before the configuration is given to its group.
#[test]
fn the_maintainer_scripts_enable_the_service_but_do_not_start_it() {
    let postinst = control_file("postinst").expect("a postinst");
    let sysusers = postinst
        .find("systemd-sysusers")
        .expect("postinst creates the user");
    let chown = postinst
        .find("chown root:motherduck-rotator")
        .expect("postinst gives the config to the group");
    assert!(sysusers < chown, "{postinst}");
    assert!(postinst.contains("systemd-tmpfiles"), "{postinst}");
    assert!(
        postinst.contains("deb-systemd-helper enable motherduck-rotator.service"),
        "{postinst}"
    );
    assert!(!postinst.contains("#DEBHELPER#"), "{postinst}");
    // Only an upgrade (`$2` is the old version) touches a running unit,
    // and only through try-restart.
    for line in postinst
        .lines()
        .filter(|l| l.contains("deb-systemd-invoke"))
    {
        assert!(line.contains("try-restart"), "starts the service: {line}");
    }
    assert!(!postinst.contains("systemctl start"), "{postinst}");

    let prerm = control_file("prerm").expect("a prerm");
    assert!(
        prerm.contains("deb-systemd-invoke stop motherduck-rotator.service"),
        "{prerm}"
    );
    let postrm = control_file("postrm").expect("a postrm");
    assert!(postrm.contains("deb-systemd-helper purge"), "{postrm}");
    // None of them deletes the state directory (consumers read it).
    for script in [&postinst, &prerm, &postrm] {
        assert!(!script.contains("/var/lib/motherduck-rotator"), "{script}");
    }

    // Each is valid POSIX sh.
    let sh = system_tool("/usr/bin/dash", "dash");
    for (name, script) in [
        ("postinst", &postinst),
        ("prerm", &prerm),
        ("postrm", &postrm),
    ] {
        let out = run(Command::new(&sh).args(["-n", "-c", script]));
        assert!(out.status.success(), "{name}: {}", text(&out));
    }
}

/// `systemd-analyze verify` and `security` on the unit as unpacked.
#[test]
fn the_packaged_unit_verifies_and_is_hardened() {
    let root = &package().root;
    let unit = root.join(UNIT);
    // verify insists that ExecStart's program exists, so the copy it reads
    // runs the unpacked binary by its path here; nothing else changes. The
    // copy keeps the unit's name, which verify also checks.
    let text_of_unit = std::fs::read_to_string(&unit).unwrap();
    let bin = root.join("usr/bin/motherduck-rotator");
    let verified = text_of_unit.replace("/usr/bin/motherduck-rotator", bin.to_str().unwrap());
    assert_ne!(
        verified, text_of_unit,
        "the unit runs /usr/bin/motherduck-rotator"
    );
    let dir = root.with_extension(format!("verify-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("motherduck-rotator.service");
    std::fs::write(&copy, verified).unwrap();
    let out = run(Command::new(tool_path("systemd-analyze"))
        .args(["verify", "--man=no"])
        .arg(&copy)
        .env("SYSTEMD_LOG_COLOR", "0")
        .current_dir(&dir));
    let _ = std::fs::remove_dir_all(&dir);
    let report = text(&out);
    assert!(
        out.status.success() && report.trim().is_empty(),
        "systemd-analyze verify {}: {report}",
        unit.display()
    );

    let out = run(Command::new(tool_path("systemd-analyze"))
        .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(&unit)
        .env("SYSTEMD_COLORS", "0"));
    let report = text(&out);
    let score = report
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for motherduck-rotator.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {report}"));
    assert!(
        score <= 2.0 && out.status.success(),
        "exposure {score}:\n{report}"
    );
    println!("systemd-analyze security: exposure {score}");
}

/// The unit's `Key=value` settings, comments and blank lines dropped,
/// with their section.
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    let mut section = String::new();
    let mut settings = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        settings.push((section.clone(), line.to_owned()));
    }
    settings
}

/// The package's unit is deploy/systemd's with a system user instead of a
/// dynamic one and a pointer to the installed README, and nothing else
/// changed: the hardening is the same.
#[test]
fn the_packaged_unit_differs_from_deploy_systemd_only_in_its_user() {
    let packaged = std::fs::read_to_string(package().root.join(UNIT)).unwrap();
    let deploy =
        std::fs::read_to_string(repo().join("deploy/systemd/motherduck-rotator.service")).unwrap();
    let packaged = unit_settings(&packaged);
    let deploy = unit_settings(&deploy);
    let only_in = |a: &[(String, String)], b: &[(String, String)]| -> Vec<String> {
        a.iter()
            .filter(|s| !b.contains(s))
            .map(|(sec, l)| format!("{sec} {l}"))
            .collect()
    };
    assert_eq!(
        only_in(&packaged, &deploy),
        [
            "[Unit] Documentation=file:/usr/share/doc/motherduck-rotator/README.md",
            "[Service] User=motherduck-rotator",
            "[Service] Group=motherduck-rotator"
        ]
    );
    assert_eq!(only_in(&deploy, &packaged), ["[Service] DynamicUser=yes"]);
}

/// The unpacked binary runs, says which build it is (the same as the test
/// build of this tree: one commit, one identity), and accepts the packaged
/// configuration as systemd would run it.
#[test]
fn the_packaged_binary_runs_and_validates_the_packaged_config() {
    let root = &package().root;
    let bin = root.join("usr/bin/motherduck-rotator");
    let out = run(Command::new(&bin).arg("--version").env_clear());
    assert!(out.status.success(), "{}", text(&out));
    let packaged_version = String::from_utf8_lossy(&out.stdout).into_owned();
    let out = run(Command::new(BIN).arg("--version"));
    let test_build_version = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(packaged_version, test_build_version);
    assert!(
        packaged_version.starts_with(&format!("motherduck-rotator {VERSION} (commit ")),
        "{packaged_version}"
    );

    // As under the unit: the credential directory systemd would set up.
    let creds = root.with_extension(format!("creds-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("motherduck-admin-token"), "placeholder\n").unwrap();
    std::fs::set_permissions(
        creds.join("motherduck-admin-token"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let out = run(Command::new(&bin)
        .arg("--config")
        .arg(root.join(CONFIG))
        .args(["validate", "--skip-secrets"])
        .env_clear()
        .env("CREDENTIALS_DIRECTORY", &creds));
    let _ = std::fs::remove_dir_all(&creds);
    assert!(out.status.success(), "{}", text(&out));

    let config = std::fs::read_to_string(root.join(CONFIG)).unwrap();
    assert!(config.contains(r#"admin_token = { credential = "motherduck-admin-token" }"#));
    assert!(config.contains(r#"directory = "/var/lib/motherduck-rotator""#));
}

/// The Debian changelog's newest entry is this version.
#[test]
fn the_debian_changelog_names_this_version() {
    let changelog = std::fs::read_to_string(repo().join("packaging/deb/changelog")).unwrap();
    let first = changelog.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("motherduck-rotator ({VERSION}-1) ")),
        "packaging/deb/changelog starts with `{first}`; add an entry for {VERSION}"
    );
}
