#!/usr/bin/env bash
# Memory plans on a full-size model: runs `generate` at the default budget
# and at smaller ones, and prints per run the plan chosen, the predicted and
# measured (VmHWM) peak of each stage, and the seconds per image.
#
#   bench/run_memory_budgets.sh MODEL_DIR [BUILD_DIR] [budgets...]
#
# MODEL_DIR: e.g. the SD 1.5 random model from tools/make_random_model
# (bench/run_sd15.sh writes one into /tmp/sdgen-bench/sd15). Defaults:
# build-bench, budgets "default 2G 1G 600M", 512x512, $STEPS steps (4).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
model="$1"; build="${2:-$repo/build-bench}"; shift $(( $# >= 2 ? 2 : 1 ))
budgets=("$@"); [ ${#budgets[@]} -eq 0 ] && budgets=(default 2G 1G 600M)
tokenizers="${SDGEN_TOKENIZERS:-${SDGEN_FIXTURES:-$repo/../shared/fixtures}/tokenizers}"
steps="${STEPS:-4}"; size="${SIZE:-512}"
cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j2 --target generate >/dev/null
out="$(mktemp -d)"
echo "== uptime: $(uptime)"
for b in "${budgets[@]}"; do
  args=("bench image" --model "$model" --tokenizers "$tokenizers" --steps "$steps"
        --width "$size" --height "$size" --seed 1 --output "$out/$b" -q)
  [ "$b" != default ] && args+=(--max-memory "$b")
  start=$(date +%s.%N)
  if ! "$build/generate" "${args[@]}" > /dev/null 2> "$out/$b.err"; then
    echo "budget $b: $(tail -1 "$out/$b.err")"; continue
  fi
  end=$(date +%s.%N)
  python3 - "$out/$b" "$b" "$start" "$end" <<'PY'
import json,glob,sys
m=json.load(open(sorted(glob.glob(sys.argv[1]+'/*_0.json'))[0]))
mem=m['memory']; plan=mem['plan']; t=m['timings_s']
MB=lambda x: x/2**20
peak=max(s['process_peak_rss_bytes'] for s in mem['stages'])
print(f"budget {sys.argv[2]:>8}: plan '{plan['level']}', predicted peak {MB(plan['predicted_peak_bytes']):.0f} MB, "
      f"measured VmHWM {MB(peak):.0f} MB ({100*peak/plan['predicted_peak_bytes']:.0f}% of prediction), "
      f"wall {float(sys.argv[4])-float(sys.argv[3]):.1f} s (denoise {t['denoising']:.1f} s, decode {t['vae_decode']:.1f} s)")
# measured peak per stage: VmHWM is reset at each stage boundary? no: report the
# running VmHWM at the end of each stage next to that stage's prediction
pred={s['stage']:s['predicted_peak_bytes'] for s in plan['stages']}
marks={'After text encoding':'encode','Before generation':None,'After generation':'denoise','After decode':'decode'}
for s in mem['stages']:
    print(f"      {s['label']:<20} RSS {MB(s['process_rss_bytes']):7.0f} MB  VmHWM {MB(s['process_peak_rss_bytes']):7.0f} MB")
for k,v in pred.items(): print(f"      predicted {k:<10} {MB(v):7.0f} MB")
PY
done
rm -rf "$out"
