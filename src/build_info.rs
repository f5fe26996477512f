//! What this binary is: its version, the git commit it was built from,
//! whether its sources differed from that commit, the build date and the
//! Rust version. `build.rs` finds them; `--version`, the
//! `motherduck_rotator_build_info` metric and `status --json` show them.

use std::sync::LazyLock;

use serde::Serialize;

/// The identity of this build. Two builds of one commit have the same one:
/// the date is the commit's (or `SOURCE_DATE_EPOCH`), not the clock's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BuildInfo {
    /// The crate version, from `Cargo.toml`.
    pub version: &'static str,
    /// The full commit hash, or `unknown` for a build outside a git
    /// checkout (a source tarball).
    pub commit: &'static str,
    /// Whether the sources (`src/`, `build.rs`, `Cargo.toml`,
    /// `Cargo.lock`) differed from the commit.
    pub dirty: bool,
    /// `YYYY-MM-DD`: the commit's date, `SOURCE_DATE_EPOCH`'s if set, or
    /// `unknown`.
    pub build_date: &'static str,
    /// The compiler, e.g. `1.95.0`.
    pub rust_version: &'static str,
}

/// This binary's identity.
pub const BUILD: BuildInfo = BuildInfo {
    version: env!("CARGO_PKG_VERSION"),
    commit: env!("MDR_BUILD_COMMIT"),
    dirty: matches!(env!("MDR_BUILD_DIRTY").as_bytes(), b"true"),
    build_date: env!("MDR_BUILD_DATE"),
    rust_version: env!("MDR_BUILD_RUSTC"),
};

impl BuildInfo {
    /// The commit, with `-dirty` appended when the sources differed from
    /// it: the `commit` label of the build-info metric.
    pub fn commit_label(&self) -> String {
        if self.dirty {
            format!("{}-dirty", self.commit)
        } else {
            self.commit.to_owned()
        }
    }

    /// The line `--version` prints after the program name.
    pub fn version_line(&self) -> String {
        format!(
            "{} (commit {}{}, built {}, rustc {})",
            self.version,
            self.commit,
            if self.dirty { ", dirty" } else { "" },
            self.build_date,
            self.rust_version,
        )
    }
}

/// [`BuildInfo::version_line`] of this binary, for clap.
pub fn version_line() -> &'static str {
    static LINE: LazyLock<String> = LazyLock::new(|| BUILD.version_line());
    &LINE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(commit: &'static str, dirty: bool) -> BuildInfo {
        BuildInfo {
            version: "1.2.3",
            commit,
            dirty,
            build_date: "2026-01-31",
            rust_version: "1.95.0",
        }
    }

    #[test]
    fn the_version_line_names_every_part() {
        let c = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            sample(c, false).version_line(),
            format!("1.2.3 (commit {c}, built 2026-01-31, rustc 1.95.0)")
        );
        assert_eq!(
            sample(c, true).version_line(),
            format!("1.2.3 (commit {c}, dirty, built 2026-01-31, rustc 1.95.0)")
        );
        assert_eq!(sample(c, true).commit_label(), format!("{c}-dirty"));
        assert_eq!(sample("unknown", false).commit_label(), "unknown");
    }

    #[test]
    fn this_build_has_an_identity() {
        assert_eq!(BUILD.version, env!("CARGO_PKG_VERSION"));
        assert!(
            BUILD.commit == "unknown"
                || (BUILD.commit.len() == 40
                    && BUILD.commit.bytes().all(|b| b.is_ascii_hexdigit())),
            "{BUILD:?}"
        );
        assert!(
            BUILD.build_date == "unknown"
                || chrono::NaiveDate::parse_from_str(BUILD.build_date, "%Y-%m-%d").is_ok(),
            "{BUILD:?}"
        );
        assert!(BUILD.rust_version.starts_with("1."), "{BUILD:?}");
    }
}
