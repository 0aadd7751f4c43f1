#!/usr/bin/env bash
# Benchmark of the image source: a 5-layer image of about 330 MB (incompressible and
# text-like files, ~1,000 whiteouts in layer 3), pushed to a loopback docker-registry,
# then pulled and unpacked by
#   - `kiln source fetch`, each time into a fresh root (cold)
#   - `skopeo copy docker://… oci:…` + `umoci unpack` (what a user would otherwise run)
#   - `kiln source fetch` again into the last root (cached: no blob request; the host
#     still copies the cached tree into DEST)
#   - `kiln source resolve` against the last root (cached keys)
# Runs alternate contender by contender; outputs are kept until the end. Prints medians
# and ratios: kiln / (skopeo + umoci) (target <= 0.30), cached / cold (target <= 0.02).
#
# Usage: bench/image.sh   (RUNS=3 by default; WORK=DIR to choose the disk)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-3}
for p in docker-registry:docker-registry skopeo:skopeo umoci:umoci openssl:openssl; do
  command -v "${p%%:*}" >/dev/null || { echo "bench/image.sh needs ${p%%:*}: apt-get install ${p##*:}" >&2; exit 2; }
done
ensure_kiln
ROOTLESS=()
[ "$(id -u)" -eq 0 ] || ROOTLESS=(--rootless)

WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench-image.XXXXXX")}
mkdir -p "$WORK"
REG_PID=""
cleanup() { [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# A free loopback port: one nothing answers on.
while :; do
  PORT=$((20000 + RANDOM % 40000))
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || break
done
HOST="127.0.0.1:$PORT"
cat > "$WORK/registry.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: $HOST
YML
docker-registry serve "$WORK/registry.yml" > "$WORK/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 200); do curl -fs "http://$HOST/v2/" >/dev/null 2>&1 && break; sleep 0.05; done

# --- the image -------------------------------------------------------------------------
# Built and pushed by kiln-image-bench-push (tests/e2e/image_bench_push.rs): 5 gzip
# layers, ~330 MB unpacked, 1,000 whiteouts in layer 3.
(cd "$bench_root" && cargo build -q --release -p kiln-tests --bin kiln-image-bench-push)
"$bench_root/target/release/kiln-image-bench-push" "$HOST" bench/img:1
IMG="$HOST/bench/img:1"
du -sb "$WORK/registry" | awk '{ printf "%.0f MB in the registry\n", $1 / 1e6 }' >&2

# --- the runs --------------------------------------------------------------------------
kiln_fetch() { "$KILN" --root "$1" --progress quiet source fetch "docker-image://$IMG" --dest "$2"; }
kiln_resolve() { "$KILN" --root "$1" --progress quiet source resolve "docker-image://$IMG"; }
skopeo_umoci() {
  skopeo copy -q --src-tls-verify=false "docker://$IMG" "oci:$1:img" &&
    umoci unpack "${ROOTLESS[@]}" --image "$1:img" "$2"
}

for i in $(seq "$RUNS"); do
  time_once kiln_fetch "$WORK/root$i" "$WORK/k$i" >> "$WORK/t_kiln"
  time_once skopeo_umoci "$WORK/s$i" "$WORK/u$i" >> "$WORK/t_su"
  time_once kiln_fetch "$WORK/root$i" "$WORK/kc$i" >> "$WORK/t_cached"
  time_once kiln_resolve "$WORK/root$i" >> "$WORK/t_resolve"
done
# Same tree as umoci's (content and names), and no whiteout files left.
diff -r -q "$WORK/k1" "$WORK/u1/rootfs" >/dev/null || { echo "kiln and umoci trees differ" >&2; exit 1; }
[ -z "$(find "$WORK/k1" -name '.wh.*' | head -1)" ] || { echo "whiteout files left in kiln's tree" >&2; exit 1; }

k=$(median "$WORK/t_kiln"); su=$(median "$WORK/t_su"); kc=$(median "$WORK/t_cached"); kr=$(median "$WORK/t_resolve")
echo "image pull + unpack, 5 layers ~330 MB, ~1,000 whiteouts, loopback registry (median of $RUNS runs, $WORK):"
printf '  kiln source fetch (cold)            %8.3f s\n' "$k"
printf '  skopeo copy + umoci unpack          %8.3f s\n' "$su"
printf '  kiln source fetch (cached)          %8.3f s\n' "$kc"
printf '  kiln source resolve (cached)        %8.3f s\n' "$kr"
echo "  ratio kiln / (skopeo + umoci)       $(ratio "$k" "$su")  (target <= 0.30)"
echo "  ratio cached fetch / cold           $(ratio "$kc" "$k")  (target <= 0.02)"
echo "  ratio cached resolve / cold         $(ratio "$kr" "$k")"
