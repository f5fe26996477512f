#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (configured in Cargo.toml,
# [package.metadata.deb]; the unit and the rest in packaging/deb/):
#
#   scripts/package.sh [more cargo-deb options]
#
# Prints the path of the .deb on stdout:
# target/debian/motherduck-rotator_<version>-1_<arch>.deb
#
# The binary is a plain `cargo build --release --locked`, the one a
# developer or the container build makes; its build date is the commit's
# (build.rs). The packaged files' times are the commit's too
# (SOURCE_DATE_EPOCH for cargo-deb), so two builds of one commit give the
# same package. SOURCE_DATE_EPOCH is not set for the build itself: a
# dependency's build script (aws-lc-sys) watches it, and a new value at
# every commit would rebuild the whole dependency tree.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
bin="$(bash scripts/release-tools.sh)"

cargo build --release --locked --quiet

epoch="${SOURCE_DATE_EPOCH:-}"
if [[ -z $epoch ]]; then
  epoch="$(git log -1 --format=%ct 2>/dev/null || true)"
fi
SOURCE_DATE_EPOCH="$epoch" "$bin/cargo-deb" --locked --quiet --no-build "$@"
