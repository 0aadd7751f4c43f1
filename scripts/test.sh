#!/usr/bin/env bash
# Runs kiln's whole test suite on a fresh machine: installs the programs the tests
# need (Debian packages, as root or through sudo) if they are missing, builds the
# workspace (the kiln binary and every plugin .so), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# program -> Debian package
declare -A needs=(
  [git]=git
  [skopeo]=skopeo
  [umoci]=umoci
  [curl]=curl
  [sha256sum]=coreutils
  [tar]=tar
  [openssl]=openssl
  [docker-registry]=docker-registry
  [htpasswd]=apache2-utils
  [runc]=runc
  [busybox]=busybox-static
)
missing=()
for prog in "${!needs[@]}"; do
  command -v "$prog" >/dev/null 2>&1 || missing+=("${needs[$prog]}")
done
if ((${#missing[@]})); then
  echo "installing missing test dependencies: ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The end-to-end tests run the real binary and the real plugin files, so build them first.
cargo build --workspace
cargo test --workspace --no-fail-fast "$@"
