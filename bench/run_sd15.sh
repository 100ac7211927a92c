#!/usr/bin/env bash
# Full-size SD 1.5 pipeline benchmark on random weights.
#
#   bench/run_sd15.sh [BUILD_DIR] [extra `generate --bench` options...]
#
# Builds make_random_model and generate (Release) in BUILD_DIR
# (default build-bench), writes the SD 1.5 random model once into
# $SDGEN_BENCH_DIR (default /tmp/sdgen-bench; about 2.1 GB, reused by later
# runs: delete the folder to regenerate), runs `generate --bench` and prints
# its tables. JSON goes to $SDGEN_BENCH_DIR/sd15-<date>.json. The machine's load
# average is printed with the numbers: on a shared machine they vary.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$repo/build-bench}"
shift || true
bench_dir="${SDGEN_BENCH_DIR:-/tmp/sdgen-bench}"
tokenizers="${SDGEN_TOKENIZERS:-${SDGEN_FIXTURES:-$repo/../shared/fixtures}/tokenizers}"
arch="${SDGEN_BENCH_ARCH:-sd15}"

cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j2 --target make_random_model generate >/dev/null

mkdir -p "$bench_dir"
if [ ! -f "$bench_dir/$arch/.complete" ]; then
  echo "== writing the $arch random model into $bench_dir (once)"
  "$build/make_random_model" --arch "$arch" --layout folder --out "$bench_dir" --verify
  touch "$bench_dir/$arch/.complete"
fi

if [ ! -f "$tokenizers/clip/vocab.json" ]; then
  echo "error: no CLIP tokenizer at $tokenizers (set SDGEN_TOKENIZERS)" >&2
  exit 1
fi

json="$bench_dir/$arch-$(date +%Y%m%d-%H%M%S).json"
echo "== uptime: $(uptime)"
echo "== nproc $(nproc), $(awk '/MemTotal/ {printf "%.1f GB RAM", $2/1048576}' /proc/meminfo)"
"$build/generate" --bench --model "$bench_dir/$arch" --tokenizers "$tokenizers" \
  --json "$json" "$@"
echo "== uptime after: $(uptime)"
echo "== JSON: $json"
