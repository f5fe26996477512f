//! Build identity: which commit the binary was built from, whether its
//! sources differed from that commit, the build date and the compiler's
//! version. `src/build_info.rs` reads them back with `env!`.
//!
//! The date is the commit's date (or `SOURCE_DATE_EPOCH` when a packager
//! sets it), not the wall clock, so two builds of one commit say the same
//! thing. A build from a source tarball without `.git` reports the commit
//! as `unknown`. Only `git` and `rustc` are run; no crate is needed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What makes the binary: "dirty" means one of these differs from the
/// commit. Docs, tests and deploy files do not change the binary, so
/// editing them neither marks it dirty nor rebuilds it.
const SOURCES: &[&str] = &["src", "build.rs", "Cargo.toml", "Cargo.lock"];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    println!("cargo::rerun-if-env-changed=SOURCE_DATE_EPOCH");
    for s in SOURCES {
        println!("cargo::rerun-if-changed={s}");
    }

    let git = Git::find(&manifest_dir);
    let (commit, dirty, commit_time) = match &git {
        Some(g) => {
            g.watch();
            (g.commit(), g.dirty(), g.commit_time())
        }
        None => (None, None, None),
    };
    let date_epoch = source_date_epoch().or(commit_time);

    println!(
        "cargo::rustc-env=MDR_BUILD_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    println!(
        "cargo::rustc-env=MDR_BUILD_DIRTY={}",
        if dirty == Some(true) { "true" } else { "false" }
    );
    println!(
        "cargo::rustc-env=MDR_BUILD_DATE={}",
        date_epoch.map_or_else(|| "unknown".to_owned(), civil_date)
    );
    println!("cargo::rustc-env=MDR_BUILD_RUSTC={}", rustc_version());
}

/// The git checkout the crate is the top of. A crate unpacked inside some
/// other repository (a vendored tarball) is not that repository's commit.
struct Git {
    dir: PathBuf,
}

impl Git {
    fn find(manifest_dir: &Path) -> Option<Git> {
        let git = Git {
            dir: manifest_dir.to_owned(),
        };
        let top = git.run(&["rev-parse", "--show-toplevel"])?;
        let same = std::fs::canonicalize(&top).ok()? == std::fs::canonicalize(manifest_dir).ok()?;
        same.then_some(git)
    }

    /// Output of a git command, trimmed; `None` if git is missing or fails.
    fn run(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("git")
            // Never take the repository's index lock: a build must not
            // disturb a concurrent `git commit`.
            .arg("--no-optional-locks")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Reruns the build script when HEAD moves (its reflog grows with every
    /// commit, checkout and reset) or the branch it names gets a new
    /// commit. Not on index changes: `git status` rewrites the index, and
    /// staging changes nothing that "dirty" compares. Only existing files
    /// are watched: cargo reruns on every build for one that is missing.
    fn watch(&self) {
        let mut paths = ["HEAD", "packed-refs", "logs/HEAD"]
            .map(str::to_owned)
            .to_vec();
        if let Some(branch) = self.run(&["symbolic-ref", "-q", "HEAD"]) {
            paths.push(branch);
        }
        for p in paths {
            if let Some(abs) = self.run(&["rev-parse", "--path-format=absolute", "--git-path", &p])
                && Path::new(&abs).exists()
            {
                println!("cargo::rerun-if-changed={abs}");
            }
        }
    }

    fn commit(&self) -> Option<String> {
        self.run(&["rev-parse", "--verify", "-q", "HEAD"])
            .filter(|c| !c.is_empty())
    }

    /// Whether any of [`SOURCES`] differs from HEAD, untracked files
    /// included (an untracked `src` file may be compiled in).
    fn dirty(&self) -> Option<bool> {
        let mut args = vec!["status", "--porcelain", "--untracked-files=normal", "--"];
        args.extend_from_slice(SOURCES);
        self.run(&args).map(|s| !s.is_empty())
    }

    /// The committer date of HEAD, in seconds since the epoch.
    fn commit_time(&self) -> Option<i64> {
        self.run(&["show", "-s", "--format=%ct", "HEAD"])?
            .parse()
            .ok()
    }
}

/// <https://reproducible-builds.org/specs/source-date-epoch/>
fn source_date_epoch() -> Option<i64> {
    std::env::var("SOURCE_DATE_EPOCH").ok()?.trim().parse().ok()
}

/// `1.95.0` from `rustc 1.95.0 (59807616e 2026-04-14)`.
fn rustc_version() -> String {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    Command::new(rustc)
        .arg("-V")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(1)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `YYYY-MM-DD` (UTC) of a Unix time, by the days-to-civil algorithm of
/// Howard Hinnant's date library.
fn civil_date(epoch: i64) -> String {
    let z = epoch.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
