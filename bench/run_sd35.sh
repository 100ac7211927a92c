#!/usr/bin/env bash
# SD 3.5 full-size benchmark: seconds per step and memory plans per budget.
#
#   bench/run_sd35.sh [MODEL_DIR] [options]
#     --build DIR        build folder (default build-bench; generate is built there)
#     --tokenizers DIR   clip/ + t5/ tokenizer files (default ../shared/fixtures/tokenizers:
#                        make_random_model writes no tokenizer folders)
#     --size N           width = height (default 1024)
#     --steps N          denoising steps (default 1)
#     --budgets "B ..."  "default" and --max-memory values (default "default 4G",
#                        plus 2G for a Large model: 38 transformer layers)
#     --dry-run-only     only `generate --dry-run` per budget (plans, no weights read)
#     --json FILE        summary (default $SDGEN_BENCH_DIR/sd35-<model>-<date>.json)
#
# MODEL_DIR defaults to /tmp/sdgen-bench/sd35-medium (tools/make_random_model
# --arch sd35-medium --out /tmp/sdgen-bench). For each budget it prints the
# `generate --dry-run` plan, then runs `generate` once in a fresh process (CFG
# on, the model's default guidance, seed 1) and reads the JSON written next
# to the image: the plan chosen, the predicted and measured (VmHWM since the
# previous stage record) peak of each stage, the stage timings and the
# seconds per step. Prints a markdown table; writes the JSON summary.
# A full-size 1024x1024 run takes 10+ minutes of both cores per budget.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bench_dir="${SDGEN_BENCH_DIR:-/tmp/sdgen-bench}"
model="$bench_dir/sd35-medium"
build="$repo/build-bench"
tokenizers="${SDGEN_TOKENIZERS:-${SDGEN_FIXTURES:-$repo/../shared/fixtures}/tokenizers}"
size=1024 steps=1 budgets="" dry_only=0 json=""
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --tokenizers) tokenizers="$2"; shift 2 ;;
    --size) size="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --budgets) budgets="$2"; shift 2 ;;
    --dry-run-only) dry_only=1; shift ;;
    --json) json="$2"; shift 2 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    -*) echo "error: unknown option $1" >&2; exit 2 ;;
    *) model="$1"; shift ;;
  esac
done
if [ ! -f "$model/transformer/config.json" ]; then
  echo "error: $model is not an SD3 diffusers folder (write one with make_random_model" \
       "--arch sd35-medium --out $bench_dir)" >&2
  exit 1
fi
if [ ! -f "$tokenizers/clip/vocab.json" ] || [ ! -d "$tokenizers/t5" ]; then
  echo "error: no clip/ + t5/ tokenizers at $tokenizers (set SDGEN_TOKENIZERS)" >&2
  exit 1
fi
layers=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["num_layers"])' \
  "$model/transformer/config.json")
if [ -z "$budgets" ]; then
  budgets="default 4G"
  [ "$layers" = 38 ] && budgets="$budgets 2G"
fi
name="$(basename "$model")"
[ -n "$json" ] || json="$bench_dir/sd35-$name-$(date +%Y%m%d-%H%M%S).json"
mkdir -p "$(dirname "$json")"

cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j2 --target generate >/dev/null

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "== $model ($layers transformer layers), ${size}x${size}, $steps step(s), budgets: $budgets"
echo "== uptime: $(uptime)"
echo "== nproc $(nproc), $(awk '/MemTotal/ {printf "%.1f GB RAM", $2/1048576}' /proc/meminfo)"
prompt="a lighthouse on a cliff at dusk, oil painting"
for b in $budgets; do
  args=("$prompt" --model "$model" --tokenizers "$tokenizers" --steps "$steps"
        --width "$size" --height "$size" --seed 1 --output "$work/$b")
  [ "$b" != default ] && args+=(--max-memory "$b")
  set +e
  "$build/generate" "${args[@]}" --dry-run > "$work/$b.dry" 2>&1
  echo $? > "$work/$b.dry.rc"
  set -e
  echo "== dry run, budget $b (exit $(cat "$work/$b.dry.rc")):"
  grep -E "Memory plan|^ +(encode|denoise|decode) |→|WARNING|error:" "$work/$b.dry" | sed 's/^/   /' || true
  [ "$dry_only" = 1 ] && continue
  start=$(date +%s.%N)
  set +e
  "$build/generate" "${args[@]}" -q > "$work/$b.log" 2>&1
  echo $? > "$work/$b.rc"
  set -e
  end=$(date +%s.%N)
  echo "$start $end" > "$work/$b.wall"
  echo "== run, budget $b: exit $(cat "$work/$b.rc"), $(python3 -c "print(f'{$end-$start:.1f}')") s"
  [ "$(cat "$work/$b.rc")" = 0 ] || tail -3 "$work/$b.log" | sed 's/^/   /'
done

python3 - "$work" "$json" "$model" "$size" "$steps" "$dry_only" $budgets <<'PY'
import glob, json, os, platform, re, sys, time
work, out, model, size, steps, dry_only = sys.argv[1:7]
budgets = sys.argv[7:]
steps = int(steps)
MB = lambda x: None if x is None else round(x / 2**20)
# measured peak of a stage = VmHWM since the previous record, read at the
# record that closes the stage
closes = {"encode": "After text encoding", "denoise": "After generation", "decode": "After decode"}
runs = []
for b in budgets:
    r = {"budget": b}
    dry = open(f"{work}/{b}.dry", errors="replace").read()
    r["dry_run_exit"] = int(open(f"{work}/{b}.dry.rc").read())
    plans = re.findall(r"Memory plan: ([^,]+), predicted peak (\S+) of (\S+) budget", dry)
    if plans:
        r["dry_run_plan"], r["dry_run_predicted_peak"], _ = plans[-1]
    # below ~10 GB the SD3 planner drops T5 (zeros instead of its embeddings)
    r["dry_run_t5_dropped"] = "T5 left out" in dry
    err = re.findall(r"error: (.*)", dry)
    if err: r["dry_run_error"] = err[-1]
    r["dry_run_text"] = dry
    if dry_only != "1":
        r["exit"] = int(open(f"{work}/{b}.rc").read())
        start, end = map(float, open(f"{work}/{b}.wall").read().split())
        r["wall_s"] = round(end - start, 2)
        metas = sorted(glob.glob(f"{work}/{b}/*_0.json"))
        if r["exit"] == 0 and metas:
            m = json.load(open(metas[0]))
            mem, t = m["memory"], m["timings_s"]
            plan = mem["plan"]
            rec = {s["label"]: s for s in mem["stages"]}
            r.update(plan=plan["level"], strategies=plan.get("strategies", []),
                     t5_dropped=any("T5 left out" in o for o in m.get("optimizations", [])),
                     optimizations=m.get("optimizations", []), cfg=m.get("cfg"),
                     budget_bytes=plan["budget_bytes"],
                     predicted_peak_bytes=plan["predicted_peak_bytes"],
                     measured_peak_bytes=max(s["process_peak_rss_bytes"] for s in mem["stages"]),
                     timings_s=t, seconds_per_step=t["denoising"] / steps,
                     warnings=mem.get("warnings", []),
                     recovered_failures=mem.get("recovered_failures", []), stages={})
            for s in plan["stages"]:
                meas = rec.get(closes.get(s["stage"], ""), {})
                r["stages"][s["stage"]] = dict(
                    predicted_peak_bytes=s["predicted_peak_bytes"],
                    measured_peak_bytes=meas.get("process_peak_rss_bytes"),
                    weights_bytes=s.get("weights_bytes"),
                    activations_bytes=s.get("activations_bytes"))
        else:
            r["error"] = open(f"{work}/{b}.log", errors="replace").read()[-2000:]
    runs.append(r)
summary = {"model": model, "size": int(size), "steps": steps,
           "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(),
           "nproc": os.cpu_count(), "loadavg": os.getloadavg(), "runs": runs}
json.dump(summary, open(out, "w"), indent=1)

print()
if dry_only == "1":
    print("| budget | dry-run plan | T5 | predicted peak |")
    print("|---|---|---|---|")
    for r in runs:
        print(f"| {r['budget']} | {r.get('dry_run_plan', 'refused: ' + r.get('dry_run_error', '?'))} "
              f"| {'dropped' if r['dry_run_t5_dropped'] else 'kept'} "
              f"| {r.get('dry_run_predicted_peak', '-')} |")
else:
    print("| budget | plan | T5 | s/step | total s | encode pred/meas MB | denoise pred/meas MB "
          "| decode pred/meas MB | peak pred/meas MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        if "plan" not in r:
            print(f"| {r['budget']} | failed (exit {r.get('exit')}) | | | | | | | |")
            continue
        cell = lambda st: (f"{MB(r['stages'][st]['predicted_peak_bytes'])} / "
                           f"{MB(r['stages'][st]['measured_peak_bytes'])}"
                           if st in r["stages"] else "-")
        print(f"| {r['budget']} | {r['plan']} | {'dropped' if r['t5_dropped'] else 'kept'} "
              f"| {r['seconds_per_step']:.1f} "
              f"| {r['timings_s']['total']:.1f} | {cell('encode')} | {cell('denoise')} "
              f"| {cell('decode')} | {MB(r['predicted_peak_bytes'])} / {MB(r['measured_peak_bytes'])} |")
print(f"\nJSON: {out}")
PY
