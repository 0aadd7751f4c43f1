#!/usr/bin/env bash
# Benchmarks of `kiln build` (the solver), side by side with a shell script doing the
# same file work, in one run. Prints wall times, time per step, peak memory and ratios.
#
#   bench/build.sh              # builds target/release first
#   KILN=path/to/kiln bench/build.sh
#
# 1. A definition of 1,000 steps, fully cached, rebuilt (target: under 0.3 s in all).
# 2. A cold build of 200 small file-op steps (each on top of the previous one) against
#    a shell script of `cp -a`/`mkdir`/`printf` that builds the same trees.
# Needs: python3 (timing and peak memory via getrusage), cp, mkdir.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
command -v python3 >/dev/null || { echo "bench/build.sh needs python3 (apt-get install python3)" >&2; exit 2; }
if [[ -z "${KILN:-}" ]]; then
  (cd "$here" && cargo build --release --workspace --quiet)
  KILN="$here/target/release/kiln"
fi
[[ -x "$KILN" ]] || { echo "no kiln binary at $KILN" >&2; exit 2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# measure LABEL CMD...: runs CMD, prints "LABEL <seconds> <peak KiB>" on stdout.
measure() {
  python3 - "$@" <<'PY'
import resource, subprocess, sys, time
label, cmd = sys.argv[1], sys.argv[2:]
t = time.perf_counter()
r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
dt = time.perf_counter() - t
if r.returncode != 0:
    sys.stderr.write(r.stderr.decode(errors="replace"))
    sys.exit(f"{label}: exit code {r.returncode}")
print(label, f"{dt:.4f}", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
PY
}

# --- 1. 1,000 steps, fully cached --------------------------------------------------
big="$work/big.toml"
{
  echo "version = 1"
  ends=()
  for ((i = 0; i < 999; i++)); do
    if ((i % 10 == 0)); then base="scratch"; else base="s$((i - 1))"; fi
    printf '[steps.s%d]\nbase = "%s"\nactions = [{ mkfile = { path = "/f%d", data = "%d" } }]\n' "$i" "$base" "$i" "$i"
    if ((i % 10 == 9 || i == 998)); then ends+=("\"s$i\""); fi
  done
  (IFS=,; printf '[steps.all]\nmerge = [%s]\n' "${ends[*]}")
  printf '[output]\nstep = "all"\n'
} >"$big"
steps=$(grep -c '^\[steps\.' "$big")
root1="$work/root1"
read -r _ cold1 mem_cold1 < <(measure cold "$KILN" --root "$root1" --progress quiet build "$big")
best=""; mem_cached=0
for run in 1 2 3; do
  read -r _ t m < <(measure cached "$KILN" --root "$root1" --progress quiet build "$big")
  if [[ -z "$best" ]] || python3 -c "import sys; sys.exit(0 if $t < $best else 1)"; then best=$t; fi
  ((m > mem_cached)) && mem_cached=$m
done
per_step_us=$(python3 -c "print(f'{$best / $steps * 1e6:.1f}')")
verdict=$(python3 -c "print('ok' if $best < 0.3 else 'OVER TARGET')")

# --- 2. 200 small file-op steps, cold, against cp/mkdir -----------------------------
n=200
chain="$work/chain.toml"
{
  echo "version = 1"
  for ((i = 0; i < n; i++)); do
    if ((i == 0)); then base="scratch"; else base="s$((i - 1))"; fi
    printf '[steps.s%d]\nbase = "%s"\nactions = [\n  { mkdir = { path = "/d%d" } },\n  { mkfile = { path = "/d%d/f", data = "step %d\\n" } },\n]\n' \
      "$i" "$base" "$i" "$i" "$i"
  done
  printf '[output]\nstep = "s%d"\n' $((n - 1))
} >"$chain"
script="$work/chain.sh"
cat >"$script" <<EOF
#!/usr/bin/env bash
# The same trees as $chain: each step copies the previous one, then adds a file.
set -e
out="\$1"; mkdir -p "\$out/s0"
for ((i = 0; i < $n; i++)); do
  if ((i > 0)); then cp -a "\$out/s\$((i - 1))" "\$out/s\$i"; fi
  mkdir "\$out/s\$i/d\$i"
  printf 'step %d\n' "\$i" > "\$out/s\$i/d\$i/f"
done
EOF
chmod +x "$script"
read -r _ kiln_cold kiln_mem < <(measure kiln "$KILN" --root "$work/root2" --progress quiet build "$chain")
read -r _ sh_cold sh_mem < <(measure shell "$script" "$work/sh-out")
# Same result: the last step's tree equals the script's last tree.
"$KILN" --root "$work/root2" --progress quiet build "$chain" --output "type=local,dest=$work/kiln-out"
diff -r "$work/kiln-out" "$work/sh-out/s$((n - 1))" >/dev/null || { echo "kiln and the script disagree" >&2; exit 1; }
ratio=$(python3 -c "print(f'{$kiln_cold / $sh_cold:.2f}')")

cat <<EOF
kiln build benchmark ($(nproc) cores, $KILN)

1. $steps steps, fully cached rebuild (best of 3)
   cold build first:        ${cold1} s   peak ${mem_cold1} KiB
   cached rebuild:          ${best} s   (${per_step_us} µs/step)   target < 0.3 s: ${verdict}
   peak memory (cached):    ${mem_cached} KiB

2. $n small file-op steps, cold
   kiln:                    ${kiln_cold} s   peak ${kiln_mem} KiB
   shell (cp -a/mkdir):     ${sh_cold} s   peak ${sh_mem} KiB
   ratio kiln/shell:        ${ratio}
EOF
