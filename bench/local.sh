#!/usr/bin/env bash
# The local source against `cp -a`: a tree of 20,000 small files (in /dev/shm when
# there is one) fetched with `kiln source fetch local://ctx --local ctx=DIR --dest OUT`
# and copied with `cp -a DIR/. OUT`, alternately, RUNS times each. Outputs are kept
# until the end so that no deletion runs between timings. Target: ratio <= 1.
# FILES=N and RUNS=N override the defaults; KILN=path picks the binary.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_kiln
runs="${RUNS:-7}"
files="${FILES:-20000}"
base=/dev/shm
[ -d "$base" ] && [ -w "$base" ] || base="${TMPDIR:-/tmp}"
work=$(mktemp -d "$base/kiln-bench-local.XXXXXX")
trap 'rm -rf "$work"' EXIT

src="$work/src"
echo "creating $files files under $src..." >&2
python3 - "$src" "$files" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i % 40}", f"e{i % 13}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.txt"), "w") as f:
        f.write("x" * (i % 4000))
    if i % 100 == 0:
        os.symlink(f"f{i}.txt", os.path.join(d, f"l{i}"))
EOF

: > "$work/kiln"; : > "$work/cp"
for i in $(seq "$runs"); do
  time_once "$KILN" --root "$work/root" --progress quiet source fetch local://ctx \
    --local "ctx=$src" --dest "$work/out-kiln-$i" >> "$work/kiln"
  mkdir "$work/out-cp-$i"
  time_once cp -a "$src/." "$work/out-cp-$i" >> "$work/cp"
done

# The two copies must agree (names, modes, sizes, mtimes, link targets).
lst() { (cd "$1" && find . -mindepth 1 -printf '%p %y %m %s %T@ %l\n' | sort); }
if ! diff <(lst "$src") <(lst "$work/out-kiln-1") > "$work/diff"; then
  echo "kiln's copy differs from the source:" >&2; head -20 "$work/diff" >&2; exit 1
fi

t_kiln=$(median "$work/kiln"); t_cp=$(median "$work/cp")
echo "local source, $files files (median of $runs runs, outputs on $base):"
echo "  kiln source fetch local://   $(ms "$t_kiln") ms"
echo "  cp -a                        $(ms "$t_cp") ms"
echo "  ratio kiln/cp                $(ratio "$t_kiln" "$t_cp") (target: <= 1)"
