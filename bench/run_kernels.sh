#!/usr/bin/env bash
# The kernels' table for bench/README.md, on one CPU, in one go: full-size
# SD 1.5 512² (random weights) through `generate --bench` in
#   fp32 with OpenBLAS (SDGEN_GEMM=blas: the products as before our kernels),
#   fp32 with our kernels (the default), and --precision fast,
# on 1 and 2 threads (THREADS overrides), each stage as % of the hardware
# limit measured in the same run. Prints one markdown section (CPU model,
# flags, limits, stage times and % per mode, 1 -> N thread scaling, load).
#
#   bench/run_kernels.sh [BUILD_DIR]
#   bench/run_kernels.sh --table DIR     (only the table, from an earlier run's DIR)
#
# BUILD_DIR defaults to build-bench (configured Release and built here). The
# model is written once into $SDGEN_BENCH_DIR (default /tmp/sdgen-bench,
# ~2.1 GB). JSONs and logs go to $SDGEN_BENCH_DIR/kernels-<date>/. Each run
# takes about a minute on 2 quiet cores; on a shared machine the wall-clock
# rates fall with the load (the limits do not: they are measured on CPU time),
# so the load average is printed with every run: quote minima of quiet runs.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
table_only=""
if [ "${1:-}" = "--table" ]; then table_only="${2:?--table needs a folder}"; fi
build="${1:-$repo/build-bench}"
bench_dir="${SDGEN_BENCH_DIR:-/tmp/sdgen-bench}"
tokenizers="${SDGEN_TOKENIZERS:-${SDGEN_FIXTURES:-$repo/../shared/fixtures}/tokenizers}"
threads="${THREADS:-1 2}"
out="${table_only:-$bench_dir/kernels-$(date +%Y%m%d-%H%M%S)}"

if [ -z "$table_only" ]; then
cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j2 --target make_random_model generate >/dev/null
mkdir -p "$bench_dir" "$out"
if [ ! -f "$bench_dir/sd15/.complete" ]; then
  echo "== writing the sd15 random model into $bench_dir (once)" >&2
  "$build/make_random_model" --arch sd15 --layout folder --out "$bench_dir" --verify >&2
  touch "$bench_dir/sd15/.complete"
fi

run() { # name threads env... -- generate options...
  local name="$1" t="$2"; shift 2
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  echo "== $name, $t thread(s), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  env "${envs[@]}" "$build/generate" --bench --model "$bench_dir/sd15" \
    --tokenizers "$tokenizers" --threads "$t" --json "$out/$name-t$t.json" "$@" \
    >"$out/$name-t$t.txt"
  tail -1 "$out/$name-t$t.txt" >&2
}

for t in $threads; do
  run fp32-blas "$t" SDGEN_GEMM=blas -- --precision fp32
  run fp32 "$t" -- --precision fp32
  run fast "$t" -- --precision fast
done
fi

python3 - "$out" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
runs = {}
for f in sorted(glob.glob(os.path.join(out, '*.json'))):
    name = os.path.basename(f)[:-5]
    mode, t = name.rsplit('-t', 1)
    runs[(mode, int(t))] = json.load(open(f))
model = 'unknown'
for line in open('/proc/cpuinfo'):
    if line.startswith('model name'):
        model = line.split(':', 1)[1].strip(); break
any_run = next(iter(runs.values()))
threads = sorted({t for _, t in runs})
top = max(threads)
L = runs.get(('fp32', top), any_run)['limits']
print(f"### {model} ({os.cpu_count()} CPUs; flags: {any_run['cpu']})\n")
print(f"Limits measured by `generate --bench` (instruction loops on CPU time), 1 / {top} threads:\n")
print("| limit | 1 thread | %d threads |" % top)
print("|---|---|---|")
for p in L['probes']:
    print(f"| {p['name']} | {p['gflops_1_thread']:.0f} GFLOP/s | {p['gflops']:.0f} GFLOP/s |")
print(f"| memory read | {L['read_gbs_1_thread']:.1f} GB/s | {L['read_gbs']:.1f} GB/s |")
print(f"| memory copy (read + write) | {L['copy_gbs_1_thread']:.1f} GB/s | {L['copy_gbs']:.1f} GB/s |")
print()
labels = {'fp32-blas': 'fp32, OpenBLAS (before)', 'fp32': 'fp32, our kernels', 'fast': 'fast'}
stages = ['unet step (B=2, CFG)', 'vae decode (1 image)', 'text encode (x2 CFG)']
print("| mode | threads | GEMM | sgemm 2048³ | UNet step | VAE decode | step, decode per CPU-second | text encode | load at start |")
print("|---|---|---|---|---|---|---|---|---|")
for mode in ['fp32-blas', 'fp32', 'fast']:
    for t in threads:
        d = runs.get((mode, t))
        if not d: continue
        st = {s['name']: s for s in d['stages']}
        lim32 = d['limits']['fp32_fma_gflops']
        cells = []
        for n in stages[:2]:
            s = st[n]
            pct = s['percent_of_fp32_limit']
            extra = ''
            if d['precision'] == 'bf16' and d['limits'].get('bf16_dot_gflops'):
                extra = f", {100 * s['gflops'] / d['limits']['bf16_dot_gflops']:.0f}% of bf16"
            cells.append(f"{s['seconds']:.2f} s, {s['gflops']:.0f} GFLOP/s, **{pct:.0f}%**{extra}")
        # per CPU-second against the 1-thread limit: what one core achieves,
        # robust to a shared machine's load (wall-clock % is not)
        one = max(p['gflops_1_thread'] for p in d['limits']['probes'] if p['name'].startswith('fp32'))
        cells.append(", ".join(f"{100 * st[n]['gflop_per_cpu_second'] / one:.0f}%" for n in stages[:2]))
        cells.append(f"{st[stages[2]]['seconds']:.2f} s")
        ce = d['sgemm_ceiling_gflops']
        sg = ce['bf16'] if d['precision'] == 'bf16' and ce.get('bf16') else ce['fp32']
        prec = d['precision'] + (' (fast)' if mode == 'fast' else '')
        print(f"| {labels[mode]}: {prec} | {t} | {d['gemm_kernels'] if mode != 'fp32-blas' else 'blas ' + d['blas_kernel']} "
              f"| {sg:.0f} GFLOP/s ({100 * sg / lim32:.0f}%) | " + " | ".join(cells) + f" | {d['loadavg_at_start']} |")
print("\n% = of the fp32 FMA limit at the run's threads (bf16 runs also against the bf16 dot limit);"
      " per CPU-second: GFLOP per CPU-second of the process against the 1-thread fp32 limit.")
if len(threads) > 1:
    print("\nScaling 1 -> %d threads (step time ratio):" % top, end=' ')
    parts = []
    for mode in ['fp32-blas', 'fp32', 'fast']:
        a, b = runs.get((mode, threads[0])), runs.get((mode, top))
        if a and b:
            sa = next(s for s in a['stages'] if s['name'] == stages[0])['seconds']
            sb = next(s for s in b['stages'] if s['name'] == stages[0])['seconds']
            parts.append(f"{labels[mode]} {sa / sb:.2f}x")
    print(", ".join(parts))
print(f"\nRaw JSON and logs: {out}")
PY
