#!/usr/bin/env bash
# The speed table of issue #7 in one go: `generate --bench` profiles of the
# full-size random-weight models, in fp32 and bf16 (where the CPU has it):
#   SD 1.5 at 512x512 on 1 and 2 threads (thread scaling),
#   SDXL at 1024x1024 and SD 3.5 Medium at 1024x1024 on 2 threads, one step
#   without warm-up (--steps 1; the first touch of the weights is included).
# Each model's table comes from bench/run_profile.sh; the models are written
# once by tools/make_random_model into $SDGEN_BENCH_DIR (default
# /tmp/sdgen-bench: sd15 2.1 GB, sdxl 6.9 GB, sd35-medium 16.3 GB).
#
#   bench/run_all.sh [BUILD_DIR]        (about 30 minutes on 2 idle cores)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$repo/build-bench}"
bench_dir="${SDGEN_BENCH_DIR:-/tmp/sdgen-bench}"
cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j2 --target generate make_random_model >/dev/null
for arch in sd15 sdxl sd35-medium; do
  if [ ! -d "$bench_dir/$arch" ]; then
    "$build/make_random_model" --arch "$arch" --out "$bench_dir"
  fi
done
echo "# generate --bench, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs"
THREADS="1 2" "$repo/bench/run_profile.sh" "$bench_dir/sd15" "$build"
THREADS="2" "$repo/bench/run_profile.sh" "$bench_dir/sdxl" "$build" --steps 1
THREADS="2" "$repo/bench/run_profile.sh" "$bench_dir/sd35-medium" "$build" --steps 1
