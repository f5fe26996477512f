#!/usr/bin/env bash
# Times `validate` on configurations with 1,500 and 6,000 policies that each
# have two problems, and prints the figures: the time should grow about as
# the number of problems does (4x here), not faster.
#   scripts/bench-validate.sh [path to the binary, default target/release]
set -euo pipefail
bin="${1:-target/release/motherduck-rotator}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
for n in 1500 6000; do
  {
    printf '[motherduck]\nadmin_token = { env = "MD_TOKEN" }\n\n[stores.local]\ntype = "file"\ndirectory = "store"\n'
    for ((i = 0; i < n; i++)); do
      printf '\n[[policy]]\nname = "p%d"\nservice_account = "svc_%d"\nschedule = { interval = "0s" }\ndestinations = [{ store = "nope", path = "a%d.json" }]\n' "$i" "$i" "$i"
    done
  } > "$dir/c$n.toml"
  start=$(date +%s.%N)
  MD_TOKEN=x "$bin" --config "$dir/c$n.toml" validate > /dev/null 2> "$dir/err$n" || true
  end=$(date +%s.%N)
  problems=$(grep -c '^error: .*toml:' "$dir/err$n" || true)
  awk -v n="$n" -v p="$problems" -v s="$start" -v e="$end" \
    'BEGIN { printf "%5d policies, %5d problems: %.2f s\n", n, p, e - s }'
done
