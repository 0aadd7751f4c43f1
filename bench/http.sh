#!/usr/bin/env bash
# Benchmark of the http source: a file served on loopback (default 1 GiB), fetched by
#   - `kiln source fetch` with http.checksum, each time into a fresh root (cold)
#   - `curl -o` followed by `sha256sum` (what a user would otherwise run)
#   - `curl -o` alone
#   - `kiln source fetch` again into the last root (cached)
# Runs alternate contender by contender; outputs are kept until the end (deleting
# files slows file creation on this disk for minutes). Prints medians and ratios:
# kiln/(curl+sha256sum) (target <= 0.6), kiln/curl (target <= 1.1), cached/cold.
#
# Usage: bench/http.sh [SIZE_MIB]   (RUNS=3 by default; WORK=DIR to choose the disk)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
SIZE_MIB=${1:-1024}
RUNS=${RUNS:-3}
for p in curl sha256sum; do
  command -v "$p" >/dev/null || { echo "bench/http.sh needs $p: apt-get install ${p/sha256sum/coreutils}" >&2; exit 2; }
done
ensure_kiln
(cd "$bench_root" && cargo build -q --release -p kiln-tests --bin kiln-http-serve)
SERVE="$bench_root/target/release/kiln-http-serve"

WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench-http.XXXXXX")}
mkdir -p "$WORK"
SERVER_PID=""
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

echo "making a ${SIZE_MIB} MiB file in $WORK ..." >&2
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$WORK/data"
DIGEST="sha256:$(openssl dgst -sha256 -r "$WORK/data" | cut -d' ' -f1)"
"$SERVE" "$WORK/data" > "$WORK/url" &
SERVER_PID=$!
for _ in $(seq 100); do [ -s "$WORK/url" ] && break; sleep 0.05; done
URL=$(cat "$WORK/url")
cat "$WORK/data" > /dev/null   # the served file in the page cache for every contender

kiln_fetch() { "$KILN" --root "$1" --progress quiet source fetch "$URL" --attr "http.checksum=$DIGEST" --dest "$2"; }
curl_sha() { curl -sS -o "$1" "$URL" && sha256sum "$1" > /dev/null; }

for i in $(seq "$RUNS"); do
  time_once kiln_fetch "$WORK/root$i" "$WORK/k$i" >> "$WORK/t_kiln"
  time_once curl_sha "$WORK/cs$i" >> "$WORK/t_curl_sha"
  time_once curl -sS -o "$WORK/c$i" "$URL" >> "$WORK/t_curl"
  time_once kiln_fetch "$WORK/root$i" "$WORK/kc$i" >> "$WORK/t_cached"
done
got=$(openssl dgst -sha256 -r "$WORK/k1/data" 2>/dev/null | cut -d' ' -f1 || true)
[ -z "$got" ] && got=$(find "$WORK/k1" -type f -exec openssl dgst -sha256 -r {} + | cut -d' ' -f1)
[ "sha256:$got" = "$DIGEST" ] || { echo "kiln fetched wrong bytes" >&2; exit 1; }

k=$(median "$WORK/t_kiln"); cs=$(median "$WORK/t_curl_sha"); c=$(median "$WORK/t_curl"); kc=$(median "$WORK/t_cached")
echo "http fetch of ${SIZE_MIB} MiB on loopback (median of $RUNS runs, $WORK):"
printf '  kiln source fetch (checksum, cold)  %8.3f s\n' "$k"
printf '  curl -o + sha256sum                 %8.3f s\n' "$cs"
printf '  curl -o                             %8.3f s\n' "$c"
printf '  kiln source fetch (cached)          %8.3f s\n' "$kc"
echo "  ratio kiln / (curl + sha256sum)     $(ratio "$k" "$cs")  (target <= 0.6)"
echo "  ratio kiln / curl                   $(ratio "$k" "$c")  (target <= 1.1)"
echo "  ratio cached / cold                 $(ratio "$kc" "$k")"
