#!/usr/bin/env bash
# SD 1.5 LoRA: merged (resident plan) vs side path (streaming plan), on the
# full-size random model (issue #11).
#
#   bench/run_lora.sh [BUILD_DIR]
#   env: STEPS=1 SIZE=512 FORMAT=kohya|peft RANK=64 BASELINE=1 THREADS=(all)
#
# Builds make_random_model, make_random_lora and generate (Release) in
# BUILD_DIR (default build-bench), writes the SD 1.5 random model once into
# $SDGEN_BENCH_DIR (default /tmp/sdgen-bench) and a random LoRA for it
# (FORMAT kohya: LoCon, linear rank RANK alpha RANK/2, 3x3 conv rank RANK/2
# alpha RANK/4; peft: LCM-LoRA-shaped, rank RANK), then runs `generate` at
# SIZE² for STEPS steps: without LoRA (BASELINE=1, resident), LoRA merged
# (--plan resident) and LoRA side path (--plan streaming). Per run: s/step
# (denoising seconds / steps), model load (+ LoRA bind) seconds, text
# encoding (+ text-encoder merge), VAE decode, "other" = total minus those
# (mostly the UNet merge, done between encoding and denoising; also the LoRA
# hash and the PNG save), peak RSS (the largest process_peak_rss_bytes of the
# metadata's memory records: the per-stage VmHWM; /usr/bin/time's maxrss is
# not used, generate resets the high-water mark per stage through
# /proc/self/clear_refs so the exit value is only the last stage's). Prints a
# table and writes JSON to $SDGEN_BENCH_DIR/lora-<date>.json. The load
# average and CPU model are printed with it: on a shared machine the
# numbers are noisy.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$repo/build-bench}"
bench_dir="${SDGEN_BENCH_DIR:-/tmp/sdgen-bench}"
tokenizers="${SDGEN_TOKENIZERS:-${SDGEN_FIXTURES:-$repo/../shared/fixtures}/tokenizers}"
steps="${STEPS:-1}"; size="${SIZE:-512}"; format="${FORMAT:-kohya}"; rank="${RANK:-64}"
threads=(); [ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")

cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j2 --target make_random_model make_random_lora generate >/dev/null

mkdir -p "$bench_dir"
model="$bench_dir/sd15"
if [ ! -f "$model/unet/diffusion_pytorch_model.safetensors" ]; then
  echo "== writing the SD 1.5 random model into $bench_dir (once)"
  "$build/make_random_model" --arch sd15 --layout folder --out "$bench_dir"
fi
lora="$bench_dir/lora/sd15-$format-r$rank.safetensors"
if [ ! -f "$lora" ]; then
  mkdir -p "$bench_dir/lora"
  "$build/make_random_lora" --model "$model" --format "$format" --rank "$rank" --out "$lora"
fi

out="$(mktemp -d)"; trap 'rm -rf "$out"' EXIT
cpu="$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "== CPU: $cpu; nproc $(nproc); load before: $load_before"

runs=()
[ "${BASELINE:-1}" = 1 ] && runs+=("none resident")
runs+=("lora resident" "lora streaming")
for r in "${runs[@]}"; do
  set -- $r
  name="$1-$2"
  args=("a photo of a fox" --model "$model" --tokenizers "$tokenizers" --steps "$steps"
        --width "$size" --height "$size" --seed 1 --plan "$2" -q "${threads[@]}"
        --output "$out/$name")
  [ "$1" = lora ] && args+=(--lora "$lora")
  echo "== $name: generate ${args[*]}"
  "$build/generate" "${args[@]}" >/dev/null
done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
json="$bench_dir/lora-$(date +%Y%m%d-%H%M%S).json"

python3 - "$out" "$json" "$steps" "$size" "$format" "$rank" "$lora" "$cpu" "$load_before" \
  "$load_after" "${runs[@]}" <<'PY'
import json, glob, re, sys, os
out, path, steps, size, fmt, rank, lora, cpu, lb, la = sys.argv[1:11]
steps = int(steps)
rows = []
for r in sys.argv[11:]:
    kind, plan = r.split()
    name = f"{kind}-{plan}"
    m = json.load(open(glob.glob(f"{out}/{name}/*.json")[0]))
    t = m["timings_s"]
    rows.append({
        "run": name, "plan": plan,
        "lora_applied": [l["applied"] for l in m["loras"]],
        "s_per_step": t["denoising"] / steps,
        "model_load_s": t["model_load"], "text_encoding_s": t["text_encoding"],
        "vae_decode_s": t["vae_decode"], "total_s": t["total"],
        "other_s": t["total"] - t["model_load"] - t["text_encoding"] - t["denoising"] - t["vae_decode"],
        "peak_rss_bytes": max(s["process_peak_rss_bytes"] for s in m["memory"]["stages"]),
        "predicted_peak_bytes": m["memory"]["plan"]["predicted_peak_bytes"],
    })
print(f"{'run':16} {'applied':10} {'s/step':>8} {'load s':>8} {'decode s':>9} {'total s':>8} "
      f"{'other s':>8} {'peak GB':>8} {'plan GB':>8}")
for r in rows:
    ap = ",".join(r["lora_applied"]) or "-"
    print(f"{r['run']:16} {ap:10} {r['s_per_step']:8.2f} {r['model_load_s']:8.2f} "
          f"{r['vae_decode_s']:9.2f} {r['total_s']:8.2f} {r['other_s']:8.2f} {r['peak_rss_bytes']/1e9:8.2f} "
          f"{r['predicted_peak_bytes']/1e9:8.2f}")
doc = {"bench": "sd15-lora", "size": int(size), "steps": steps, "lora_format": fmt,
       "lora_rank": int(rank), "lora_file": lora, "lora_bytes": os.path.getsize(lora),
       "cpu": cpu, "nproc": os.cpu_count(), "loadavg_before": lb, "loadavg_after": la,
       "runs": rows}
json.dump(doc, open(path, "w"), indent=1)
print(f"== load after: {la}\n== JSON: {path}")
PY
