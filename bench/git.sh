#!/usr/bin/env bash
# Benchmark of the git source: a repository of FILES files (default 5,000, about
# 50 MB, half of them incompressible) served by `git daemon` on loopback, fetched by
#   - `kiln source fetch` into a fresh root (cold) against `git clone --depth 1`
#     (target: ratio <= 1.1);
#   - `kiln source fetch` of a second commit (2% of the files changed) into a root that
#     already has the first one, against a fresh `git clone --depth 1` of that commit
#     (target: ratio <= 0.3);
#   - `kiln source fetch` of the first commit again (cached) against the cold fetch
#     (target: ratio <= 0.02).
# Runs alternate contender by contender; outputs are kept until the end. Prints medians
# and ratios.
#
# Usage: bench/git.sh   (RUNS=3, FILES=5000; WORK=DIR to choose the disk; KILN=path)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-3}
FILES=${FILES:-5000}
command -v git >/dev/null || { echo "bench/git.sh needs git: apt-get install git" >&2; exit 2; }
ensure_kiln

WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench-git.XXXXXX")}
mkdir -p "$WORK"
DAEMON_PID=""
cleanup() { [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

g() { git -c init.defaultBranch=main -c user.name=bench -c user.email=bench@kiln.invalid "$@"; }

echo "making a repository of $FILES files in $WORK ..." >&2
python3 - "$WORK/src" "$FILES" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(42)
words = [f"word{i}" for i in range(2000)]
for i in range(n):
    d = os.path.join(root, f"pkg{i % 50}", f"mod{i % 7}")
    os.makedirs(d, exist_ok=True)
    size = rnd.randint(2000, 18000)
    with open(os.path.join(d, f"file{i}.dat"), "wb") as f:
        if i % 2:
            f.write(os.urandom(size))
        else:
            f.write(" ".join(rnd.choice(words) for _ in range(size // 8)).encode())
PY
(cd "$WORK/src" && g init -q && g add -A && g commit -qm one && g tag c1)
# The second commit: 2% of the files changed, a few added.
python3 - "$WORK/src" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(0, n, 50):
    p = os.path.join(root, f"pkg{i % 50}", f"mod{i % 7}", f"file{i}.dat")
    with open(p, "ab") as f:
        f.write(os.urandom(512))
os.makedirs(os.path.join(root, "new"), exist_ok=True)
for i in range(10):
    with open(os.path.join(root, "new", f"n{i}"), "wb") as f:
        f.write(os.urandom(4096))
PY
(cd "$WORK/src" && g add -A && g commit -qm two && g tag c2)
mkdir -p "$WORK/served"
g clone -q --bare "$WORK/src" "$WORK/served/bench.git"
echo "repository: $(du -sh "$WORK/served/bench.git" | cut -f1) packed, $(du -sh --exclude=.git "$WORK/src" | cut -f1) checked out" >&2

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$(git --exec-path)/git-daemon" --reuseaddr --export-all --listen=127.0.0.1 --port="$PORT" \
  --base-path="$WORK/served" "$WORK/served" >/dev/null 2>&1 &
DAEMON_PID=$!
for _ in $(seq 100); do git ls-remote "git://127.0.0.1:$PORT/bench.git" >/dev/null 2>&1 && break; sleep 0.1; done
URL="git://127.0.0.1:$PORT/bench.git"
ID="git://127.0.0.1:$PORT/bench.git"

kfetch() { "$KILN" --root "$1" --progress quiet source fetch "$ID#$3" --attr "git.fullurl=$URL" --dest "$2"; }
gclone() { git clone -q --depth 1 --no-tags --branch "$2" "$URL" "$1"; }

for i in $(seq "$RUNS"); do
  time_once kfetch "$WORK/root$i" "$WORK/k$i" c1 >> "$WORK/t_cold"
  time_once gclone "$WORK/g$i" c1 >> "$WORK/t_clone"
  time_once kfetch "$WORK/root$i" "$WORK/kc$i" c1 >> "$WORK/t_cached"
  time_once kfetch "$WORK/root$i" "$WORK/k2_$i" c2 >> "$WORK/t_second"
  time_once gclone "$WORK/g2_$i" c2 >> "$WORK/t_clone2"
done

# kiln's trees must match git's checkouts.
lst() { (cd "$1" && find . -path ./.git -prune -o -type f -printf '%p %s\n' | sort | sha256sum); }
[ "$(lst "$WORK/k1")" = "$(lst "$WORK/g1")" ] || { echo "kiln's c1 differs from git's" >&2; exit 1; }
[ "$(lst "$WORK/k2_1")" = "$(lst "$WORK/g2_1")" ] || { echo "kiln's c2 differs from git's" >&2; exit 1; }

cold=$(median "$WORK/t_cold"); clone=$(median "$WORK/t_clone"); cached=$(median "$WORK/t_cached")
second=$(median "$WORK/t_second"); clone2=$(median "$WORK/t_clone2")
echo "git fetch of $FILES files over git:// on loopback (median of $RUNS runs, $WORK):"
printf '  kiln source fetch (cold)            %8.3f s\n' "$cold"
printf '  git clone --depth 1                 %8.3f s\n' "$clone"
printf '  kiln source fetch (second commit)   %8.3f s\n' "$second"
printf '  git clone --depth 1 (second commit) %8.3f s\n' "$clone2"
printf '  kiln source fetch (cached)          %8.3f s\n' "$cached"
echo "  ratio kiln cold / git clone         $(ratio "$cold" "$clone")  (target <= 1.1)"
echo "  ratio kiln second / git clone       $(ratio "$second" "$clone2")  (target <= 0.3)"
echo "  ratio kiln cached / kiln cold       $(ratio "$cached" "$cold")  (target <= 0.02)"
