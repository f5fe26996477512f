#!/usr/bin/env bash
# Writes the software bill of materials of the binary, a CycloneDX 1.5 JSON
# document, with cargo-cyclonedx:
#
#   scripts/sbom.sh [target triple, default x86_64-unknown-linux-gnu]
#
# It lists every crate compiled into the binary for that platform (normal
# dependencies, all levels; not build-time or dev dependencies), with
# version, licence, package URL and checksum. Prints the file's path:
# target/sbom/motherduck-rotator.cdx.json. The timestamp is the commit's
# (SOURCE_DATE_EPOCH), so the same commit gives the same document.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
bin="$(bash scripts/release-tools.sh)"
target="${1:-x86_64-unknown-linux-gnu}"
out_dir="${CARGO_TARGET_DIR:-$repo_root/target}/sbom"

if [[ -z ${SOURCE_DATE_EPOCH:-} ]] && epoch="$(git log -1 --format=%ct 2>/dev/null)"; then
  export SOURCE_DATE_EPOCH="$epoch"
fi

# cargo-cyclonedx writes next to Cargo.toml; move it out of the source tree.
name=motherduck-rotator.cdx
"$bin/cargo-cyclonedx" cyclonedx --quiet --format json --spec-version 1.5 \
  --target "$target" --no-build-deps --override-filename "$name"
mkdir -p "$out_dir"
mv -f "$name.json" "$out_dir/$name.json"
printf '%s\n' "$out_dir/$name.json"
