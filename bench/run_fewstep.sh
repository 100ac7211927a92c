#!/usr/bin/env bash
# Few-step end-to-end benchmark on full-size random-weight models: wall
# seconds per image of `generate` (load, encode, denoise, decode, save) for
#   sd-turbo      SD-Turbo (SD 2.1 architecture), 512x512, 1 step, no guidance
#   sd15-lcm      SD 1.5 + LCM-LoRA, 512x512, 4 steps, guidance 1 (the `lcm`
#                 preset); without an LCM-LoRA in the Hugging Face cache
#                 (latent-consistency/lcm-lora-sdv1-5) or $SDGEN_LCM_LORA, the
#                 LCM-distilled UNet (lcm-sd15 random model) instead, same
#                 steps and UNet cost, no LoRA merge
#   sdxl-turbo    SDXL-Turbo (SDXL architecture), 512x512, 1 step, no guidance
#
#   bench/run_fewstep.sh [BUILD_DIR] [extra generate options, e.g. --precision bf16]
#
# Models are written once into $SDGEN_BENCH_DIR (default /tmp/sdgen-bench;
# sd-turbo 2.6 GB, lcm-sd15 2.1 GB, sdxl 6.9 GB) by make_random_model.
# SDGEN_BENCH_VAE=taesd decodes with the tiny autoencoder (--vae taesd; needs
# madebyollin/taesd / taesdxl in the cache). SDGEN_FEWSTEP_CASES picks cases
# (default "sd-turbo sd15-lcm sdxl-turbo"). Prints one line per case and
# writes them as JSON to $SDGEN_BENCH_DIR/fewstep-<date>.json. Wall times
# on a shared machine vary: the load average is printed with them.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$repo/build-bench}"
shift || true
bench_dir="${SDGEN_BENCH_DIR:-/tmp/sdgen-bench}"
tokenizers="${SDGEN_TOKENIZERS:-${SDGEN_FIXTURES:-$repo/../shared/fixtures}/tokenizers}"
cases="${SDGEN_FEWSTEP_CASES:-sd-turbo sd15-lcm sdxl-turbo}"
vae=()
[ -n "${SDGEN_BENCH_VAE:-}" ] && vae=(--vae "$SDGEN_BENCH_VAE")

if [ ! -f "$tokenizers/clip/vocab.json" ]; then
  echo "error: no CLIP tokenizer at $tokenizers (set SDGEN_TOKENIZERS)" >&2
  exit 1
fi
cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j2 --target make_random_model generate >/dev/null
mkdir -p "$bench_dir"
model() { # arch: writes the random model once
  if [ ! -f "$bench_dir/$1/.complete" ]; then
    echo "== writing the $1 random model into $bench_dir (once)" >&2
    "$build/make_random_model" --arch "$1" --layout folder --out "$bench_dir" --verify >&2
    touch "$bench_dir/$1/.complete"
  fi
  echo "$bench_dir/$1"
}

json="$bench_dir/fewstep-$(date +%Y%m%d-%H%M%S).json"
out="$bench_dir/fewstep-out"
echo "== uptime: $(uptime)"
echo "== nproc $(nproc), $(awk '/MemTotal/ {printf "%.1f GB RAM", $2/1048576}' /proc/meminfo)"
echo "[" >"$json"
first=1
for c in $cases; do
  args=()
  case "$c" in
    sd-turbo) args=(--quality turbo --model "$(model sd-turbo)") ;;
    sdxl-turbo) args=(--quality turbo --model "$(model sdxl)" --width 512 --height 512) ;;
    sd15-lcm)
      hub="${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}"
      if [ -n "${SDGEN_LCM_LORA:-}" ]; then
        args=(--model "$(model sd15)" --lora "$SDGEN_LCM_LORA" --sampler lcm --cfg 1 --steps 4
              --width 512 --height 512)
      elif [ -d "$hub/models--latent-consistency--lcm-lora-sdv1-5" ]; then
        args=(--quality lcm --model "$(model sd15)")
      else
        echo "== sd15-lcm: no LCM-LoRA cached; timing the LCM-distilled UNet (lcm-sd15)"
        args=(--quality lcm --model "$(model lcm-sd15)" --cfg 8)
      fi ;;
    *) echo "error: unknown case $c" >&2; exit 2 ;;
  esac
  rm -rf "$out"
  t0=$(date +%s.%N)
  "$build/generate" "a lighthouse at dusk, oil painting" "${args[@]}" "${vae[@]}" \
    --tokenizers "$tokenizers" --offline --seed 1 -q --output "$out" "$@" >/dev/null
  t1=$(date +%s.%N)
  meta=$(ls "$out"/*_0.json)
  line=$(python3 - "$c" "$t0" "$t1" "$meta" <<'PY'
import json,sys
c,t0,t1,meta=sys.argv[1],float(sys.argv[2]),float(sys.argv[3]),json.load(open(sys.argv[4]))
r={"case":c,"seconds_per_image":round(t1-t0,2),"steps":meta["steps"],"sampler":meta["sampler"],
   "cfg":meta["cfg"],"size":[meta["width"],meta["height"]],"timings_s":meta.get("timings_s")}
print(json.dumps(r))
PY
)
  echo "$line"
  [ $first -eq 1 ] || echo "," >>"$json"
  echo "$line" >>"$json"
  first=0
done
echo "]" >>"$json"
rm -rf "$out"
echo "== uptime after: $(uptime)"
echo "== JSON: $json"
