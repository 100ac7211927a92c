#!/usr/bin/env bash
# SDXL base + refiner + 4x upscale end to end on full-size random weights:
# writes the models once (tools/make_random_model, about 12 GB in
# $SDGEN_BENCH_DIR, default /tmp/sdgen-bench), runs `generate` at 1024x1024
# and prints the plan chosen, predicted and measured peaks per stage and the
# timings from the image's metadata.
#   bench/run_sdxl_e2e.sh [BUILD_DIR] [extra generate options, e.g. --max-memory 1.5G]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$repo/build-bench}"; shift || true
dir="${SDGEN_BENCH_DIR:-/tmp/sdgen-bench}"
tokenizers="${SDGEN_TOKENIZERS:-${SDGEN_FIXTURES:-$repo/../shared/fixtures}/tokenizers}"
cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j2 --target make_random_model generate >/dev/null
for arch in sdxl sdxl-refiner; do
  if [ ! -f "$dir/$arch/.complete" ]; then
    "$build/make_random_model" --arch "$arch" --layout folder --out "$dir"
    touch "$dir/$arch/.complete"
  fi
done
out="$(mktemp -d)"
echo "== uptime: $(uptime)"
"$build/generate" "a lighthouse at dusk" --model "$dir/sdxl" --refiner "$dir/sdxl-refiner" \
  --tokenizers "$tokenizers" --steps "${STEPS:-1}" --refiner-steps 4 --refiner-strength 0.5 \
  --upscale 4 --output "$out" -q "$@" >/dev/null
python3 - "$out" <<'PY'
import json,glob,sys
m=json.load(open(sorted(glob.glob(sys.argv[1]+'/*_0.json'))[0]))
mem=m['memory']; p=mem['plan']; MB=lambda b: round(b/2**20)
print(f"plan {p['level']}, predicted peak {MB(p['predicted_peak_bytes'])} MB; output {m['output_width']}x{m['output_height']}")
for s in p['stages']: print(f"  predicted {s['stage']:<10} {MB(s['predicted_peak_bytes'])} MB")
for s in mem['stages']: print(f"  {s['label']:<20} RSS {MB(s['process_rss_bytes'])} MB, peak since previous {MB(s['process_peak_rss_bytes'])} MB, t={s['seconds']:.1f}s")
print({k: round(v, 1) for k, v in m['timings_s'].items()})
PY
rm -rf "$out"
