#!/usr/bin/env bash
# Whole-process benchmark of the local backend: seconds to build a child
# layer (copy of a ~180 MB mmdebstrap minbase parent + bootstrap installing
# one small apt package), and the share of that spent copying the tree.
#   benches/local_child.sh [RUNS]     (needs ./scripts/setup-local-backend, bc)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
cargo build --release --quiet
bin=$PWD/target/release/amimake
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/templates"
: > "$work/amimake.yaml"
printf 'source:\n  local: {mmdebstrap: {suite: bookworm, variant: minbase}}\n' > "$work/templates/base.yaml"
printf 'extends: base\nsoftware: {apt: [hello]}\n' > "$work/templates/child.yaml"
export AMIMAKE_CACHE_DIR="$work/cache"
start=$(date +%s.%N)
"$bin" -C "$work" build --backend local base >/dev/null 2>&1
echo "root (mmdebstrap minbase bookworm): $(echo "$(date +%s.%N) - $start" | bc) s, $(du -sm "$AMIMAKE_CACHE_DIR"/local/*/layers | cut -f1) MB"
total=0; copy=0
for i in $(seq "$runs"); do
  start=$(date +%s.%N)
  log=$(AMIMAKE_LOG=info "$bin" -C "$work" build --backend local --rebuild child 2>&1)
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  c=$(printf '%s\n' "$log" | sed -n 's/.*copied the parent tree in \([0-9.]*\)s.*/\1/p' | tail -n1)
  echo "child run $i: ${secs} s (copy ${c} s)"
  total=$(echo "$total + $secs" | bc); copy=$(echo "$copy + $c" | bc)
done
echo "mean child build: $(echo "scale=2; $total / $runs" | bc) s; copying: $(echo "scale=2; $copy / $runs" | bc) s ($(echo "scale=0; 100 * $copy / $total" | bc)% of the build)"
