#!/usr/bin/env bash
# The local source (trees of small files, in /dev/shm when there is one):
#
# 1. cold copy: `kiln source fetch local://ctx --local ctx=DIR --dest OUT` against
#    `cp -a DIR/. OUT` and a `tar -c | tar -x` pipe, alternately, RUNS times each.
#    Targets: ratio to cp <= 1, ratio to the tar pipe <= 1.
# 2. incremental builds, for FILES and BIG_FILES files: `kiln build` of a definition that
#    only snapshots the context, first into a fresh root (cold), then again with the
#    context unchanged, then with 1 % of the files rewritten. Targets: unchanged <= 0.1
#    and 1 % changed <= 0.2 of the cold build.
#
# Outputs are kept until the end so that no deletion runs between timings. The tree is
# left alone for a moment before the incremental rows so that its files are older than
# the first build's walk (files changed in the walk's clock tick are copied again).
# FILES=N, BIG_FILES=N (0: skip), RUNS=N and BENCH_DIR=DIR (e.g. a disk instead of
# /dev/shm) override the defaults; KILN=path picks the binary.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_kiln
runs="${RUNS:-7}"
files="${FILES:-20000}"
big_files="${BIG_FILES:-100000}"
base="${BENCH_DIR:-/dev/shm}"
[ -d "$base" ] && [ -w "$base" ] || base="${TMPDIR:-/tmp}"
work=$(mktemp -d "$base/kiln-bench-local.XXXXXX")
trap 'rm -rf "$work"' EXIT

# make_tree DIR N: N small files in 40x13 folders, a symlink every 100 files.
make_tree() {
  echo "creating $2 files under $1..." >&2
  python3 - "$1" "$2" <<'EOF'
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
}

# touch_percent DIR N PCT ROUND: rewrites PCT % of the N files (new content, same names).
touch_percent() {
  python3 - "$1" "$2" "$3" "$4" <<'EOF'
import os, sys
root, n, pct, rnd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
step = max(1, 100 // pct)
for i in range(0, n, step):
    p = os.path.join(root, f"d{i % 40}", f"e{i % 13}", f"f{i}.txt")
    with open(p, "w") as f:
        f.write(f"changed {rnd} " + "y" * (i % 4000))
EOF
}

src="$work/src"
make_tree "$src" "$files"

: > "$work/kiln"; : > "$work/cp"; : > "$work/tar"
for i in $(seq "$runs"); do
  time_once "$KILN" --root "$work/root" --progress quiet source fetch local://ctx \
    --local "ctx=$src" --dest "$work/out-kiln-$i" >> "$work/kiln"
  mkdir "$work/out-cp-$i"
  time_once cp -a "$src/." "$work/out-cp-$i" >> "$work/cp"
  mkdir "$work/out-tar-$i"
  time_once sh -c "tar -C '$src' -cf - . | tar -C '$work/out-tar-$i' -xpf -" >> "$work/tar"
done

# The copies must agree (names, modes, sizes, mtimes, link targets).
lst() { (cd "$1" && find . -mindepth 1 -printf '%p %y %m %s %T@ %l\n' | sort); }
if ! diff <(lst "$src") <(lst "$work/out-kiln-1") > "$work/diff"; then
  echo "kiln's copy differs from the source:" >&2; head -20 "$work/diff" >&2; exit 1
fi
rm -rf "$work"/out-*

t_kiln=$(median "$work/kiln"); t_cp=$(median "$work/cp"); t_tar=$(median "$work/tar")
echo "local source, $files files (median of $runs runs, outputs on $base):"
echo "  kiln source fetch local://   $(ms "$t_kiln") ms"
echo "  cp -a                        $(ms "$t_cp") ms"
echo "  tar -c | tar -x              $(ms "$t_tar") ms"
echo "  ratio kiln/cp                $(ratio "$t_kiln" "$t_cp") (target: <= 1)"
echo "  ratio kiln/tar pipe          $(ratio "$t_kiln" "$t_tar") (target: <= 1)"

# transfer_secs JSON: the local plugin's own share of a build, from its progress events
# (first to last "transferring" event).
transfer_secs() {
  python3 - "$1" <<'EOF'
import json, sys, datetime
ts = []
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if str(e.get("task", "")).startswith("transferring"):
        ts.append(datetime.datetime.fromisoformat(e["time"].replace("Z", "+00:00")))
print("%.6f" % ((max(ts) - min(ts)).total_seconds() if ts else 0))
EOF
}

# incremental N DIR: cold, unchanged and 1 %-changed builds of DIR, RUNS rounds each in
# a fresh root: wall time of `kiln build`, and the plugin's transfer within it.
incremental() {
  local n="$1" dir="$2" def="$work/def.toml" k
  printf 'version = 1\n[steps.ctx]\nsource = "local://ctx"\n[output]\nstep = "ctx"\n' > "$def"
  sleep 1
  for k in cold warm pct; do : > "$work/$k"; : > "$work/$k.transfer"; done
  for i in $(seq "$runs"); do
    local root="$work/root-inc-$i"
    build() { "$KILN" --root "$root" --progress json build "$def" --local "ctx=$dir" > "$work/events" 2>&1; }
    for k in cold warm pct; do
      if [ "$k" = pct ]; then touch_percent "$dir" "$n" 1 "$i"; sleep 1; fi
      time_once build >> "$work/$k"
      transfer_secs "$work/events" >> "$work/$k.transfer"
    done
  done
  rm -rf "$work"/root-inc-*
  local c w p tc tw tp
  c=$(median "$work/cold"); w=$(median "$work/warm"); p=$(median "$work/pct")
  tc=$(median "$work/cold.transfer"); tw=$(median "$work/warm.transfer"); tp=$(median "$work/pct.transfer")
  echo "kiln build of a local context, $n files (median of $runs runs; transfer = the plugin's part):"
  echo "  first build (cold root)      $(ms "$c") ms   transfer $(ms "$tc") ms"
  echo "  second build, unchanged      $(ms "$w") ms   ratio $(ratio "$w" "$c") (target: <= 0.1); transfer ratio $(ratio "$tw" "$tc")"
  echo "  1 % of the files changed     $(ms "$p") ms   ratio $(ratio "$p" "$c") (target: <= 0.2); transfer ratio $(ratio "$tp" "$tc")"
}

incremental "$files" "$src"
if [ "$big_files" -gt 0 ]; then
  big="$work/big"
  make_tree "$big" "$big_files"
  incremental "$big_files" "$big"
fi
