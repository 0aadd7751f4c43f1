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
  [base64]=coreutils
  [gzip]=gzip
  [git-lfs]=git-lfs
  [ssh-agent]=openssh-client
  [sshd]=openssh-server
  [runc]=runc
  [busybox]=busybox-static
  [setpriv]=util-linux
)
missing=()
for prog in "${!needs[@]}"; do
  command -v "$prog" >/dev/null 2>&1 || missing+=("${needs[$prog]}")
done
# Run steps need a static busybox inside their root: Debian's `busybox` package is
# dynamically linked and answers `command -v busybox` all the same.
if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed"; then
  [[ " ${missing[*]} " == *" busybox-static "* ]] || missing+=(busybox-static)
fi
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

# A plugin built out of tree, as a third party would: the template against a copy of
# plugin-api/ alone (no kiln workspace around it), loaded into the built kiln with a
# sha256 pin, then resolved, fetched, built, and rebuilt from the cache.
template_check() {
  local tmp kiln so sum root started out
  tmp=$(mktemp -d)
  # Expanded now: `tmp` is local and gone when the shell exits.
  trap "rm -rf -- '$tmp'" EXIT
  kiln="$PWD/target/debug/kiln"
  cp -r plugin-api "$tmp/plugin-api"
  rm -rf "$tmp/plugin-api/target"
  mkdir "$tmp/hello"
  cp -r examples/plugin-template/Cargo.toml examples/plugin-template/kiln.toml \
    examples/plugin-template/build.toml examples/plugin-template/src "$tmp/hello/"
  sed -i 's|path = "../../plugin-api"|path = "../plugin-api"|' "$tmp/hello/Cargo.toml"
  started=$SECONDS
  # One profile for the tests and the .so, so abi_stable compiles once.
  (cd "$tmp/hello" && env -u CARGO_TARGET_DIR cargo test --release --quiet &&
    env -u CARGO_TARGET_DIR cargo build --release --quiet)
  echo "template: out-of-tree test + release build took $((SECONDS - started))s" >&2
  so="$tmp/hello/target/release/libkiln_source_hello.so"
  sum=$(sha256sum "$so" | cut -d' ' -f1)
  sed -i "s|^# sha256 = .*|sha256 = \"$sum\"|" "$tmp/hello/kiln.toml"
  grep -q "^sha256 = \"$sum\"" "$tmp/hello/kiln.toml"
  root="$tmp/root"
  k() { "$kiln" --config "$tmp/hello/kiln.toml" --root "$root" "$@"; }
  # Outputs are captured before grep reads them (grep -q on a pipe could cut it short).
  out=$(k plugins show com.example.source.v1.hello --json)
  grep -q '"status": "loaded"' <<<"$out"
  out=$(k source resolve hello://world --attr hello.times=2 --json)
  grep -q '"digest": "sha256:' <<<"$out"
  out=$(k source fetch hello://world --attr hello.times=2 --dest "$tmp/fetched" --json)
  grep -q '"cached": false' <<<"$out"
  grep -qx 'Hello, world!' "$tmp/fetched/world.txt"
  out=$(k --progress plain build "$tmp/hello/build.toml" --output "type=local,dest=$tmp/out1" 2>&1)
  if grep -q CACHED <<<"$out"; then echo "template: first build was cached: $out" >&2; return 1; fi
  out=$(k --progress plain build "$tmp/hello/build.toml" --output "type=local,dest=$tmp/out2" 2>&1)
  grep -q '=> hi CACHED' <<<"$out" || { echo "template: rebuild not cached: $out" >&2; return 1; }
  cmp "$tmp/out1/world.txt" "$tmp/out2/world.txt"
  [ "$(cat "$tmp/out2/world.txt")" = "$(printf 'Hello, world!\nHello, world!\nand\nmore')" ]
  # A wrong pin is refused.
  sed -i "s|^sha256 = .*|sha256 = \"$(printf '0%.0s' {1..64})\"|" "$tmp/hello/kiln.toml"
  if k source resolve hello://world >/dev/null 2>&1; then
    echo "template: a wrong sha256 pin was not refused" >&2
    return 1
  fi
  echo "template: out-of-tree plugin built, pinned, loaded, fetched, built and rebuilt cached" >&2
}
template_check
