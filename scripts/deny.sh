#!/usr/bin/env bash
# Checks the dependencies against deny.toml with cargo-deny:
#
#   scripts/deny.sh
#
# Always: licences (an allow-list), bans (no OpenSSL, no wildcard versions)
# and sources (crates.io only). Advisories only when MDR_ADVISORY_DB names a
# directory of advisory databases as cargo-deny keeps them (a copy of
# ~/.cargo/advisory-dbs from a machine where `cargo deny fetch` ran); it is
# used as it is, never fetched, since fetching needs the network.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
bin="$(bash scripts/release-tools.sh)"

checks=(licenses bans sources)
config=deny.toml
extra=()
if [[ -n ${MDR_ADVISORY_DB:-} ]]; then
  [[ -d $MDR_ADVISORY_DB ]] || {
    echo "deny: MDR_ADVISORY_DB=$MDR_ADVISORY_DB is not a directory" >&2
    exit 1
  }
  # deny.toml with db-path pointing at the given database, used as it is.
  config="$(mktemp)"
  trap 'rm -f "$config"' EXIT
  sed "s|^\[advisories\]\$|[advisories]\ndb-path = \"$MDR_ADVISORY_DB\"|" deny.toml >"$config"
  checks+=(advisories)
  # Never fetch: use the database as given.
  extra=(--offline)
fi

"$bin/cargo-deny" --locked "${extra[@]}" --config "$config" check "${checks[@]}"
