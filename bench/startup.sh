#!/usr/bin/env bash
# Start-up cost of the plugin host: `kiln plugins list` with the built-in default
# (the four standard plugins) against `true` and against the same command with a
# configuration that loads no plugins. Target: the four plugins add under 10 ms.
# `config check` loads the plugins the way every command does; `plugins list --json`
# also hashes each file for its sha256 field.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_kiln
runs="${RUNS:-30}"
work=$(mktemp -d /dev/shm/kiln-bench-startup.XXXXXX)
trap 'rm -rf "$work"' EXIT
printf 'version = 1\n' > "$work/empty.toml"
k() { "$KILN" --root "$work/root" "$@"; }
for _ in $(seq "$runs"); do
  time_once true >> "$work/true"
  time_once k --config "$work/empty.toml" plugins list >> "$work/list0"
  time_once k plugins list >> "$work/list4"
  time_once k --config "$work/empty.toml" config check >> "$work/check0"
  time_once k config check >> "$work/check4"
  time_once k plugins list --json >> "$work/json4"
done
t_true=$(median "$work/true")
l0=$(median "$work/list0"); l4=$(median "$work/list4")
c0=$(median "$work/check0"); c4=$(median "$work/check4"); j4=$(median "$work/json4")
added() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (a - b) * 1000 }'; }
echo "start-up (median of $runs runs, alternated):"
echo "  true                                   $(ms "$t_true") ms"
echo "  kiln plugins list, no plugins          $(ms "$l0") ms"
echo "  kiln plugins list, four plugins        $(ms "$l4") ms   (+$(added "$l4" "$l0") ms; target < 10 ms)"
echo "  kiln config check, no plugins          $(ms "$c0") ms"
echo "  kiln config check, four plugins        $(ms "$c4") ms   (+$(added "$c4" "$c0") ms: loading alone)"
echo "  kiln plugins list --json, four        $(ms "$j4") ms   (hashes each file for its sha256)"
echo "  ratio plugins list four/none           $(ratio "$l4" "$l0")"
echo "  ratio plugins list four/true           $(ratio "$l4" "$t_true")"
