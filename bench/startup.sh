#!/usr/bin/env bash
# Start-up cost of the plugin host: `kiln plugins list` (loading the four standard
# plugins from the built-in default) against `true` and against the same command with a
# configuration that loads no plugins. Target: the four plugins add under 10 ms.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_kiln
runs="${RUNS:-30}"
work=$(mktemp -d /dev/shm/kiln-bench-startup.XXXXXX)
trap 'rm -rf "$work"' EXIT
printf 'version = 1\n' > "$work/empty.toml"
# plugins list hashes every file for its output; `config check` loads them the way every
# command does, so it measures the load itself.
: > "$work/true"; : > "$work/none"; : > "$work/four"
for _ in $(seq "$runs"); do
  time_once true >> "$work/true"
  time_once "$KILN" --root "$work/root" --config "$work/empty.toml" config check >> "$work/none"
  time_once "$KILN" --root "$work/root" config check >> "$work/four"
done
t_true=$(median "$work/true"); t_none=$(median "$work/none"); t_four=$(median "$work/four")
echo "start-up (median of $runs runs):"
echo "  true                          $(ms "$t_true") ms"
echo "  kiln, no plugins              $(ms "$t_none") ms"
echo "  kiln, four standard plugins   $(ms "$t_four") ms"
echo "  four plugins add              $(ms "$(awk -v a="$t_four" -v b="$t_none" 'BEGIN{print a-b}')") ms (target: < 10 ms)"
echo "  ratio four/none               $(ratio "$t_four" "$t_none")"
echo "  ratio four/true               $(ratio "$t_four" "$t_true")"
for _ in 1 2 3; do time_once "$KILN" --root "$work/root" plugins list >> "$work/list"; done
echo "  plugins list (hashes files)   $(ms "$(median "$work/list")") ms"
