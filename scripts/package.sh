#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (configured in Cargo.toml,
# [package.metadata.deb]; the unit and the rest in packaging/deb/):
#
#   scripts/package.sh [more cargo-deb options]
#
# Prints the path of the .deb on stdout:
# target/debian/motherduck-rotator_<version>-1_<arch>.deb
#
# The build is a `cargo build --release --locked`. The build date baked into
# the binary and the packaged files' times are the commit's
# (SOURCE_DATE_EPOCH), so two builds of one commit are the same.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
bin="$(bash scripts/release-tools.sh)"

if [[ -z ${SOURCE_DATE_EPOCH:-} ]] && epoch="$(git log -1 --format=%ct 2>/dev/null)"; then
  export SOURCE_DATE_EPOCH="$epoch"
fi

"$bin/cargo-deb" --locked --quiet "$@"
