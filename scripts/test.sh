#!/usr/bin/env bash
# The one command for running every test:
#   scripts/test.sh [extra args for the first `cargo test`]
# It installs the real services the tests need (scripts/setup-test-env.sh),
# points the tests at them, then runs all test targets and the doctests.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

export MDR_TOOLS_DIR="${MDR_TOOLS_DIR:-$repo_root/.tools}"
bash "$repo_root/scripts/setup-test-env.sh"
# Make it absolute even if the caller passed a relative override.
MDR_TOOLS_DIR="$(cd "$MDR_TOOLS_DIR" && pwd)"
export MDR_TOOLS_DIR

# The package test (tests/it/package.rs) builds the .deb, a release build.
# Doing that here, before the tests run in parallel, keeps its minutes of
# compiling from slowing the timing-sensitive tests; the test then only
# repackages.
bash "$repo_root/scripts/package.sh" >/dev/null

cargo test --locked --all-targets "$@"
cargo test --locked --doc
