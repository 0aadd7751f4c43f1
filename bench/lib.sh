# Shared helpers for kiln's benchmark scripts (source it).
# Times are taken with `date +%s%N`; commands are alternated run by run so that both
# sides see the same machine state; results are medians, and comparisons are ratios.

bench_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KILN="${KILN:-$bench_root/target/release/kiln}"

ensure_kiln() {
  if [ ! -x "$KILN" ]; then
    echo "building kiln (release)..." >&2
    (cd "$bench_root" && cargo build --release --workspace >&2)
  fi
}

# now_ns: nanoseconds since the epoch.
now_ns() { date +%s%N; }

# time_once CMD...: prints the wall time of one run in seconds (fractional).
time_once() {
  local t0 t1
  t0=$(now_ns)
  "$@" >/dev/null 2>&1 || { echo "command failed: $*" >&2; return 1; }
  t1=$(now_ns)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f\n", (b - a) / 1e9 }'
}

# median FILE: the median of the numbers in FILE, one per line.
median() {
  sort -g "$1" | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.6f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ratio A B: A / B with three decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", a / b }'; }

# ms SECONDS: as milliseconds with two decimals.
ms() { awk -v s="$1" 'BEGIN { printf "%.2f\n", s * 1000 }'; }
