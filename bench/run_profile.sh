#!/usr/bin/env bash
# Per-op-class profile of one model in fp32 and bf16, on 1 and 2 threads:
# runs `generate --bench` four times (bf16 only where the CPU has
# AVX512_BF16), keeps each JSON, and prints one markdown summary table.
#
#   bench/run_profile.sh MODEL [BUILD_DIR] [extra `generate --bench` options...]
#
# MODEL: a diffusers folder or single file (e.g. /tmp/sdgen-bench/sd15 from
# tools/make_random_model; tiny fixtures work too). BUILD_DIR defaults to
# build-bench (configured Release and built here). JSONs go to
# $SDGEN_BENCH_DIR (default /tmp/sdgen-bench)/profile-<name>-<date>/.
# Tokenizers: $SDGEN_TOKENIZERS, default ../shared/fixtures/tokenizers (the
# random models have none). Full-size models take minutes per run.
# THREADS (default "1 2") lists the thread counts to run.
set -euo pipefail

if [ $# -lt 1 ]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
model="$1"; shift
repo="$(cd "$(dirname "$0")/.." && pwd)"
build="$repo/build-bench"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then build="$1"; shift; fi
tokenizers="${SDGEN_TOKENIZERS:-${SDGEN_FIXTURES:-$repo/../shared/fixtures}/tokenizers}"
out_dir="${SDGEN_BENCH_DIR:-/tmp/sdgen-bench}/profile-$(basename "$model")-$(date +%Y%m%d-%H%M%S)"

cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j2 --target generate >/dev/null
mkdir -p "$out_dir"

precisions="fp32"
if grep -qw avx512_bf16 /proc/cpuinfo 2>/dev/null; then
  precisions="fp32 bf16"
else
  echo "note: no AVX512_BF16 on this CPU: bf16 runs skipped" >&2
fi
tok_opt=()
[ -d "$tokenizers" ] && tok_opt=(--tokenizers "$tokenizers")

echo "== uptime: $(uptime)" >&2
for prec in $precisions; do
  for threads in ${THREADS:-1 2}; do
    json="$out_dir/$prec-t$threads.json"
    echo "== $prec, $threads thread(s) -> $json" >&2
    "$build/generate" --bench --model "$model" --precision "$prec" --threads "$threads" \
      "${tok_opt[@]}" --json "$json" "$@" >"$out_dir/$prec-t$threads.txt"
    tail -1 "$out_dir/$prec-t$threads.txt" >&2
  done
done
echo "== uptime after: $(uptime)" >&2

python3 - "$out_dir"/*.json <<'PY'
import json, sys
runs = [json.load(open(f)) for f in sys.argv[1:]]
runs.sort(key=lambda d: (d['precision'] != 'fp32', d['threads']))
classes = ['conv3x3', 'gemm', 'conv_other', 'attention', 'norm', 'elementwise', 'data']
def stage(d, prefix):
    return next((s for s in d['stages'] if s['name'].startswith(prefix)), None)
d0 = runs[0]
print(f"## {d0['model']} ({d0['family']}), {d0['size']}x{d0['size']}")
print(f"\nCPU: {d0['cpu']}; BLAS kernels: {d0['blas_kernel']}; load average at start: "
      + ", ".join(d['loadavg_at_start'] for d in runs))
print("\n| precision | threads | fp32 ceiling GFLOP/s | bf16 ceiling GFLOP/s | step s | step GFLOP/s "
      "| % fp32 ceiling | % bf16 ceiling | decode s | decode GFLOP/s | peak RSS step / decode |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for d in runs:
    c = d['sgemm_ceiling_gflops']; st = d['step']
    dec = stage(d, 'vae decode'); step = stage(d, st['denoiser'] + ' step')
    bf = f"{c['bf16']:.1f}" if c.get('bf16') else '-'
    pb = f"{st['percent_of_bf16']:.1f}" if 'percent_of_bf16' in st else '-'
    print(f"| {d['precision']} | {d['threads']} | {c['fp32']:.1f} | {bf} | {st['seconds']:.2f} "
          f"| {st['gflops']:.1f} | {st['percent_of_sgemm']:.1f} | {pb} | {dec['seconds']:.2f} "
          f"| {dec['gflops']:.1f} | {step['peak_rss_bytes']/2**20:.0f} / {dec['peak_rss_bytes']/2**20:.0f} MiB |")
for prefix in ['step', 'vae decode']:
    print(f"\n{'Denoiser step' if prefix == 'step' else 'VAE decode'}: share of the stage time "
          "(GFLOP/s for the compute classes)\n")
    print("| precision | threads | " + " | ".join(classes) + " | other |")
    print("|---|---|" + "---|" * (len(classes) + 1))
    for d in runs:
        s = stage(d, d['step']['denoiser'] + ' step') if prefix == 'step' else stage(d, prefix)
        ops = {o['class']: o for o in s['ops']}
        cells = []
        for k in classes:
            o = ops[k]
            if not o['calls']:
                cells.append('-')
            elif o['gflop'] > 0:
                cells.append(f"{100*o['share']:.1f}% ({o['gflops']:.0f})")
            else:
                cells.append(f"{100*o['share']:.1f}%")
        print(f"| {d['precision']} | {d['threads']} | " + " | ".join(cells)
              + f" | {100*s['other_share']:.1f}% |")
PY
