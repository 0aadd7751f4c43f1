#!/usr/bin/env bash
# Benchmark of the http source: a file served on loopback, fetched by
#   1. `kiln source fetch` with http.checksum (cold root)
#   2. `curl -o` followed by `sha256sum` (what a user would otherwise run)
#   3. `curl -o` alone
#   4. `kiln source fetch` again (cached)
# and the ratios kiln/curl+sha256sum (target <= 0.6), kiln/curl (target <= 1.1),
# cached/cold.
#
# Usage: bench/http.sh [SIZE_MIB]   (default 1024; PROFILE=release|debug, default release)
set -euo pipefail

SIZE_MIB=${1:-1024}
PROFILE=${PROFILE:-release}
HERE=$(cd "$(dirname "$0")/.." && pwd)
for p in curl sha256sum; do
  command -v "$p" >/dev/null || { echo "bench/http.sh needs $p: apt-get install ${p/sha256sum/coreutils}" >&2; exit 2; }
done

flag=""; [ "$PROFILE" = release ] && flag="--release"
(cd "$HERE" && cargo build -q $flag -p kiln -p kiln-source-http -p kiln-tests --bin kiln --bin kiln-http-serve)
BIN="$HERE/target/$PROFILE"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench-http.XXXXXX")
SERVER_PID=""
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

echo "making a ${SIZE_MIB} MiB file..." >&2
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$WORK/data"
DIGEST="sha256:$(sha256sum "$WORK/data" | cut -d' ' -f1)"

"$BIN/kiln-http-serve" "$WORK/data" > "$WORK/url" &
SERVER_PID=$!
for _ in $(seq 100); do [ -s "$WORK/url" ] && break; sleep 0.05; done
URL=$(cat "$WORK/url")

now() { date +%s.%N; }
elapsed() { awk -v a="$(now)" -v b="$1" 'BEGIN{printf "%.6f", a-b}'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.4f", a/b}'; }
kiln() { "$BIN/kiln" --root "$WORK/root" --progress quiet "$@"; }

# Warm the page cache of the served file once, so every contender sees the same server.
cat "$WORK/data" > /dev/null

t=$(now); kiln source fetch "$URL" --attr "http.checksum=$DIGEST" --dest "$WORK/k1" > /dev/null
T_KILN=$(elapsed "$t")
[ "$(sha256sum "$WORK/k1/file" | cut -d' ' -f1)" = "${DIGEST#sha256:}" ] || { echo "kiln fetched wrong bytes" >&2; exit 1; }

t=$(now); curl -sS -o "$WORK/c1" "$URL"; sha256sum "$WORK/c1" > /dev/null
T_CURL_SHA=$(elapsed "$t"); rm -f "$WORK/c1"

t=$(now); curl -sS -o "$WORK/c2" "$URL"
T_CURL=$(elapsed "$t"); rm -f "$WORK/c2"

t=$(now); kiln source fetch "$URL" --attr "http.checksum=$DIGEST" --dest "$WORK/k2" > /dev/null
T_CACHED=$(elapsed "$t")

printf 'size                       %d MiB\n' "$SIZE_MIB"
printf 'kiln fetch (checksum)      %.3f s\n' "$T_KILN"
printf 'curl -o + sha256sum        %.3f s\n' "$T_CURL_SHA"
printf 'curl -o                    %.3f s\n' "$T_CURL"
printf 'kiln fetch, cached         %.3f s\n' "$T_CACHED"
printf 'ratio kiln / (curl+sha256sum) = %.2f  (target <= 0.6)\n' "$(div "$T_KILN" "$T_CURL_SHA")"
printf 'ratio kiln / curl             = %.2f  (target <= 1.1)\n' "$(div "$T_KILN" "$T_CURL")"
printf 'ratio cached / cold           = %.2f\n' "$(div "$T_CACHED" "$T_KILN")"
