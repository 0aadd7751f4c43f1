#!/usr/bin/env bash
# Run steps against `buildah build`: ten chained `run` steps on a static busybox image
# (an OCI layout made here with umoci), built by kiln (`oci-layout://bb:1` with
# `--oci-layout`) and by `buildah build --layers` from the equivalent Containerfile
# (`FROM oci:DIR:1`), alternately, RUNS times each, cold (fresh root / storage) and
# fully cached. Targets: cold <= 0.7 of buildah's time, cached <= 0.1.
# Needs root, runc, umoci, buildah and busybox-static. RUNS=N overrides the default.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_kiln
runs="${RUNS:-5}"
for p in runc umoci buildah busybox; do
  command -v "$p" >/dev/null || { echo "bench/exec.sh needs $p (apt-get install ${p/busybox/busybox-static})" >&2; exit 1; }
done
work=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-bench-exec.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The base image: busybox and its applets.
umoci init --layout "$work/bb" >/dev/null
umoci new --image "$work/bb:1" >/dev/null
umoci unpack --image "$work/bb:1" "$work/unpacked" >/dev/null
mkdir -p "$work/unpacked/rootfs/bin" "$work/unpacked/rootfs/tmp"
cp "$(command -v busybox)" "$work/unpacked/rootfs/bin/busybox"
for a in $("$work/unpacked/rootfs/bin/busybox" --list); do
  [ "$a" = busybox ] || ln -s busybox "$work/unpacked/rootfs/bin/$a"
done
umoci repack --image "$work/bb:1" "$work/unpacked" >/dev/null
umoci config --image "$work/bb:1" --tag 1 --config.env PATH=/bin --config.workingdir / >/dev/null

# Ten chained steps, each writing a file and reading the previous one.
{
  echo 'version = 1'
  echo '[steps.s0]'
  echo 'source = "oci-layout://bb:1"'
  for i in $(seq 1 10); do
    echo "[steps.s$i]"
    echo "base = \"s$((i - 1))\""
    echo "run = \"echo step $i > /f$i; cat /f* | wc -l > /count\""
  done
  echo '[output]'
  echo 'step = "s10"'
} > "$work/def.toml"
mkdir -p "$work/ctx"
{
  echo "FROM oci:$work/bb:1"
  for i in $(seq 1 10); do echo "RUN echo step $i > /f$i; cat /f* | wc -l > /count"; done
} > "$work/ctx/Containerfile"

kiln_build() {
  "$KILN" --root "$1" --progress quiet build "$work/def.toml" --oci-layout "bb=$work/bb"
}
buildah_build() {
  buildah --root "$1/storage" --runroot "$1/run" --storage-driver overlay \
    build --runtime runc --layers -t "bench-$2" "$work/ctx"
}

: > "$work/kiln-cold"; : > "$work/buildah-cold"; : > "$work/kiln-cached"; : > "$work/buildah-cached"
for i in $(seq "$runs"); do
  time_once kiln_build "$work/kroot-$i" >> "$work/kiln-cold"
  time_once buildah_build "$work/broot-$i" "$i" >> "$work/buildah-cold"
  time_once kiln_build "$work/kroot-$i" >> "$work/kiln-cached"
  time_once buildah_build "$work/broot-$i" "$i" >> "$work/buildah-cached"
done

kc=$(median "$work/kiln-cold"); bc=$(median "$work/buildah-cold")
kw=$(median "$work/kiln-cached"); bw=$(median "$work/buildah-cached")
echo "ten chained run steps on busybox (median of $runs runs):"
echo "  cold:   kiln $(ms "$kc") ms   buildah $(ms "$bc") ms   ratio $(ratio "$kc" "$bc") (target <= 0.7)"
echo "  cached: kiln $(ms "$kw") ms   buildah $(ms "$bw") ms   ratio $(ratio "$kw" "$bw") (target <= 0.1)"
for i in $(seq "$runs"); do
  buildah --root "$work/broot-$i/storage" --runroot "$work/broot-$i/run" rmi -a -f >/dev/null 2>&1 || true
  umount -R "$work/broot-$i/storage/overlay" 2>/dev/null || true
done
