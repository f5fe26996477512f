#!/usr/bin/env bash
# Builds the release binary and benchmarks it against the simulator; prints
# one table (see scripts/bench.py for the rows and options, e.g.
# `scripts/bench.sh --sizes 1000` or `--smoke`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
exec python3 scripts/bench.py --bin target/release/motherduck-rotator "$@"
