#!/usr/bin/env bash
# Memory machinery end to end on the tiny SD 1.5 model: every strategy
# gives the same image (VAE tiling within its documented tolerance), stays
# under its predicted peak and the budget (VmHWM), the planner picks
# strategies by budget, a budget below the minimum is refused before any
# weight is read, and every stage is recorded. The SDXL refiner is planned
# the same way (both modes), and a NaN/Inf after the denoise or the decode
# fails cleanly in fp32 and is rerun in fp32 under bf16.
# usage: test_memory.sh BUILD_DIR FIXTURES_DIR
set -u
BUILD="$1"; FIX="$2"
GEN="$BUILD/generate"; DIFF="$BUILD/sdgen_imgdiff"
if [ ! -d "$FIX/sd15" ]; then echo "SKIP: fixtures not found at $FIX"; exit 77; fi
T="$(mktemp -d)"; trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok()  { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL: $*"; }
# 256x256 with n=2: the image is larger than the VAE tile (128 px), so
# tiling really tiles, and slicing has a batch to slice.
ARGS=(x --model "$FIX/sd15" --steps 2 --n 2 --width 256 --height 256 --seed 7 --threads 1 -q)

for plan in resident release slicing tiling streaming sequential; do
  "$GEN" "${ARGS[@]}" --plan "$plan" --output "$T/$plan" >/dev/null 2>"$T/err_$plan" \
    && ok || bad "--plan $plan failed: $(tail -1 "$T/err_$plan")"
done
for i in 0 1; do
  ref=$(ls "$T"/resident/*_$i.png)
  for plan in release slicing; do
    "$DIFF" "$ref" "$(ls "$T"/$plan/*_$i.png)" 0 >/dev/null && ok || bad "$plan image $i differs from resident"
  done
  # levels are cumulative: streaming runs on top of VAE tiling, and must not
  # change a bit of it
  "$DIFF" "$(ls "$T"/tiling/*_$i.png)" "$(ls "$T"/streaming/*_$i.png)" 0 >/dev/null && ok \
    || bad "streaming image $i differs from tiling"
  # one image at a time changes the GEMM shapes at the small UNet levels
  # (fewer rows than a block), hence float rounding: within 1 level
  "$DIFF" "$(ls "$T"/tiling/*_$i.png)" "$(ls "$T"/sequential/*_$i.png)" 1 >/dev/null && ok \
    || bad "sequential image $i differs from tiling by more than 1 level" 
  # VAE tiling blends overlapping tiles (diffusers' algorithm), which is not
  # exact by design. Documented tolerance: relative L2 <= 0.06 against the
  # untiled image. Measured 0.040-0.042 here: this random-weight VAE's
  # receptive field spans several 16-latent tiles, so it is a worst case;
  # trained VAEs are far more local.
  "$DIFF" "$ref" "$(ls "$T"/tiling/*_$i.png)" -1 0.06 >"$T/tile_diff" && ok || bad "tiling image $i: $(cat "$T/tile_diff")"
done
# measured peak RSS <= predicted peak; the plan level and stage records
python3 - "$T" <<'PY' && ok || bad "plan metadata / peak checks"
import json,glob,sys
T=sys.argv[1]
names={'resident':'resident','release':'release text encoders','slicing':'VAE slicing','tiling':'VAE tiling','streaming':'weight streaming','sequential':'sequential batch'}
for plan,level in names.items():
    m=json.load(open(sorted(glob.glob(f'{T}/{plan}/*_0.json'))[0]))
    mem=m['memory']; p=mem['plan']
    assert p['level']==level,(plan,p['level'])
    peak=max(s['process_peak_rss_bytes'] for s in mem['stages'])
    assert peak <= p['predicted_peak_bytes'], (plan, peak, p['predicted_peak_bytes'])
    labels=[s['label'] for s in mem['stages']]
    for l in ['Before model load','After model load','Before generation','After generation','On completion']:
        assert l in labels,(plan,l)
PY

# budget-driven choice: a budget between two levels' predictions picks the
# faster level that fits, and the run stays under the budget
"$GEN" "${ARGS[@]}" --dry-run --verbose --output "$T/dry" 2>"$T/plan" >/dev/null
levels=$(grep -o 'levels (bytes):.*' "$T/plan" | sed 's/levels (bytes)://')
check_budget() {
  local want="$1" budget="$2"
  "$GEN" "${ARGS[@]}" --max-memory "$budget" --output "$T/b_$budget" >/dev/null 2>"$T/err_b" \
    || { bad "budget $budget failed: $(tail -1 "$T/err_b")"; return; }
  python3 - "$T/b_$budget" "$want" "$budget" <<'PY' && ok || bad "budget $budget: expected $want"
import json,glob,sys
m=json.load(open(sorted(glob.glob(sys.argv[1]+'/*_0.json'))[0]))
p=m['memory']['plan']
assert p['level']==sys.argv[2], p['level']
peak=max(s['process_peak_rss_bytes'] for s in m['memory']['stages'])
assert peak <= int(sys.argv[3]), (peak, sys.argv[3])
PY
}
python3 - "$levels" > "$T/budgets" <<'PY'
import sys
lv=dict(x.rsplit(' ',1) for x in sys.argv[1].split(','))
lv={k:int(v) for k,v in lv.items()}
# A budget halfway between a level's prediction and the next faster
# level's picks that level (the baseline is re-measured at each run, so an
# exact prediction would be too tight).
names=['resident','release text encoders','VAE slicing']
for i,name in enumerate(names):
    faster=lv[names[i-1]] if i else lv[name]+(4<<20)
    if faster-lv[name] >= (2<<20):
        print(f"{name}|{(lv[name]+faster)//2}")
PY
while IFS='|' read -r name bytes; do check_budget "$name" "$bytes"; done < "$T/budgets"

# below the minimum: refused up front, one line, nothing written
"$GEN" "${ARGS[@]}" --max-memory 8M --output "$T/tiny" >/dev/null 2>"$T/err_tiny"
rc=$?
[ $rc -ne 0 ] && grep -q "not enough memory: the most frugal plan needs" "$T/err_tiny" && ok \
  || bad "tiny budget not refused (rc $rc): $(tail -1 "$T/err_tiny")"
! grep -q "Before generation" "$T/err_tiny" && ok || bad "refused run got to generation"
ls "$T/tiny"/*.png >/dev/null 2>&1 && bad "refused run wrote images" || ok

# --dry-run prints the plan and writes nothing
grep -q "Memory plan:" "$T/plan" && ok || bad "dry run printed no plan"
ls "$T/dry"/*.png >/dev/null 2>&1 && bad "dry run wrote images" || ok

# --decode finishes from a kept latents file, identical to the normal run
"$GEN" "${ARGS[@]}" --keep-latents --output "$T/keep" >/dev/null 2>&1 && ok || bad "keep-latents run"
lat=$(ls "$T"/keep/*.latents.safetensors 2>/dev/null | head -1)
if [ -n "$lat" ]; then
  "$GEN" --decode "$lat" --output "$T/decoded" -q --threads 1 >/dev/null 2>"$T/err_dec" && ok || bad "--decode: $(tail -1 "$T/err_dec")"
  "$DIFF" "$(ls "$T"/keep/*_0.png)" "$(ls "$T"/decoded/*_0.png | head -1)" 0 >/dev/null && ok || bad "--decode image differs"
else
  bad "no latents file kept"
fi

# ---- the SDXL refiner goes through the planner too (tiny SDXL + refiner) ----
if [ -d "$FIX/sdxl" ] && [ -d "$FIX/sdxl-refiner" ]; then
  # 64x64, one image: a single VAE tile and no batch to slice, so the
  # streaming level must give exactly the resident image (at 128 px this
  # VAE already tiles, which blends, see above)
  XA=(x --model "$FIX/sdxl" --refiner "$FIX/sdxl-refiner" --refiner-steps 4 --steps 2
      --width 64 --height 64 --seed 3 --threads 1 -q)
  for mode in image latent; do
    extra=(); [ $mode = latent ] && extra=(--refiner-switch 0.5)
    for plan in resident streaming; do
      "$GEN" "${XA[@]}" "${extra[@]}" --plan $plan --output "$T/r_${mode}_$plan" >/dev/null \
        2>"$T/err_r" && ok || bad "refiner $mode --plan $plan: $(tail -1 "$T/err_r")"
    done
    "$DIFF" "$(ls "$T"/r_${mode}_resident/*_0.png)" "$(ls "$T"/r_${mode}_streaming/*_0.png)" 0 \
      >/dev/null && ok || bad "refiner $mode: streamed image differs from resident"
    # the refiner's plan is in the metadata, and its stage stays under it
    python3 - "$T/r_${mode}_streaming" "$mode" <<'PY' && ok || bad "refiner $mode plan metadata"
import json,glob,sys
m=json.load(open(sorted(glob.glob(sys.argv[1]+'/*_0.json'))[0]))
mem=m['memory']; ref=mem['plan']['refiner']
assert ref['level']=='weight streaming', ref['level']
stages=[s['stage'] for s in ref['stages']]
want=['encode','vae encode','denoise','decode'] if sys.argv[2]=='image' else ['encode','denoise','decode']
assert stages==want, stages
rec={s['label']:s for s in mem['stages']}
assert rec['After refiner']['process_peak_rss_bytes'] <= ref['predicted_peak_bytes'], (rec['After refiner'], ref['predicted_peak_bytes'])
assert any(o.startswith('Refiner: Enabled weight streaming') for o in m['optimizations']), m['optimizations']
PY
  done

  # --dry-run plans both stages; a budget between the refiner's resident
  # and next level moves the refiner off resident and holds in its stage;
  # a budget the base fits but the refiner does not is refused up front
  XB=("${XA[@]}" --width 256 --height 256)
  "$GEN" "${XB[@]}" --dry-run --output "$T/rdry" >/dev/null 2>"$T/rplan"
  grep -q "^Refiner Memory plan:" "$T/rplan" && ok || bad "dry run printed no refiner plan"
  ls "$T/rdry"/*.png >/dev/null 2>&1 && bad "refiner dry run wrote images" || ok
  python3 - "$T/rplan" > "$T/rbudgets" <<'PY'
import sys
lines=[l for l in open(sys.argv[1]) if 'levels (bytes):' in l]
lv=[{k:int(v) for k,v in (x.rsplit(' ',1) for x in l.split('levels (bytes):')[1].strip().split(','))} for l in lines]
base,ref=lv[0],lv[1]
print(f"off_resident|{(ref['resident']+ref['release text encoders'])//2}|{ref['resident']-ref['release text encoders']}")
print(f"refused|{(min(base.values())+min(ref.values()))//2}|{min(ref.values())-min(base.values())}")
PY
  while IFS='|' read -r what bytes gap; do
    if [ "$gap" -lt $((2<<20)) ]; then echo "note: $what: levels $gap bytes apart, skipped"; continue; fi
    "$GEN" "${XB[@]}" --max-memory "$bytes" --output "$T/rb_$what" >/dev/null 2>"$T/err_rb"
    rc=$?
    if [ $what = refused ]; then
      [ $rc -ne 0 ] && grep -q "not enough memory" "$T/err_rb" && ! grep -q "allocation failed" "$T/err_rb" \
        && ok || bad "refiner over budget not refused (rc $rc): $(tail -1 "$T/err_rb")"
      ! grep -q "Before generation" "$T/err_rb" && ok || bad "refused refiner run got to generation"
      ls "$T/rb_$what"/* >/dev/null 2>&1 && bad "refused refiner run wrote files" || ok
      continue
    fi
    [ $rc -eq 0 ] && ok || { bad "refiner budget $bytes: $(tail -1 "$T/err_rb")"; continue; }
    python3 - "$T/rb_$what" "$bytes" <<'PY' && ok || bad "refiner budget $bytes: plan or peak"
import json,glob,sys
m=json.load(open(sorted(glob.glob(sys.argv[1]+'/*_0.json'))[0]))
mem=m['memory']; ref=mem['plan']['refiner']
assert ref['level']!='resident', ref['level']
assert ref['budget_bytes']==int(sys.argv[2])
rec={s['label']:s for s in mem['stages']}
assert rec['After refiner']['process_peak_rss_bytes'] <= int(sys.argv[2]), rec['After refiner']
PY
  done < "$T/rbudgets"
else
  echo "note: tiny SDXL / refiner fixtures absent: refiner plan tests skipped"
fi

# ---- NaN/Inf after a stage: fp32 fails cleanly, bf16 reruns in fp32 ----
NA=(x --model "$FIX/sd15" --steps 2 --width 64 --height 64 --seed 3 --threads 1 -q)
SDGEN_INJECT_NAN=denoise "$GEN" "${NA[@]}" --precision fp32 --output "$T/nan_den" >/dev/null 2>"$T/err_nan"
rc=$?
[ $rc -ne 0 ] && [ "$(grep -c '^error:' "$T/err_nan")" = 1 ] && grep -q "denoise stage produced NaN/Inf" "$T/err_nan" \
  && ok || bad "NaN after the denoise (fp32): rc $rc, $(tail -1 "$T/err_nan")"
ls "$T/nan_den"/* >/dev/null 2>&1 && bad "NaN denoise run left files: $(ls "$T/nan_den")" || ok
SDGEN_INJECT_NAN=decode "$GEN" "${NA[@]}" --precision fp32 --output "$T/nan_dec" >/dev/null 2>"$T/err_nan"
rc=$?
[ $rc -ne 0 ] && grep -q "decode stage produced NaN/Inf.*latents kept in" "$T/err_nan" \
  && ok || bad "NaN after the decode (fp32): rc $rc, $(tail -1 "$T/err_nan")"
# nothing half-written: only the latents, which --decode then finishes
[ "$(ls "$T/nan_dec" | grep -vc '\.latents\.safetensors$')" = 0 ] && ok || bad "NaN decode run left: $(ls "$T/nan_dec")"
lat=$(ls "$T"/nan_dec/*.latents.safetensors 2>/dev/null | head -1)
[ -n "$lat" ] && "$GEN" --decode "$lat" --output "$T/nan_redec" -q --threads 1 >/dev/null 2>&1 \
  && ls "$T"/nan_redec/*_0.png >/dev/null 2>&1 && ok || bad "--decode after a NaN decode failed"
# the refiner's stages are guarded too (latent hand-off: its decode's latents are kept)
if [ -d "$FIX/sdxl" ] && [ -d "$FIX/sdxl-refiner" ]; then
  SDGEN_INJECT_NAN=refiner-decode "$GEN" "${XA[@]}" --refiner-switch 0.5 --output "$T/nan_ref" \
    >/dev/null 2>"$T/err_nan"
  rc=$?
  [ $rc -ne 0 ] && grep -q "refiner-decode stage produced NaN/Inf.*latents kept in" "$T/err_nan" \
    && [ "$(ls "$T/nan_ref" | grep -vc '\.latents\.safetensors$')" = 0 ] \
    && ok || bad "NaN after the refiner decode (fp32): rc $rc, $(tail -1 "$T/err_nan")"
fi
if "$GEN" "${NA[@]}" --precision bf16 --dry-run --output "$T/bf16probe" >/dev/null 2>&1; then
  for model in sd15 sd35-medium; do
    [ -d "$FIX/$model" ] || continue
    SDGEN_INJECT_NAN=denoise,decode "$GEN" "${NA[@]}" --model "$FIX/$model" --precision bf16 \
      --output "$T/nan_bf16_$model" >/dev/null 2>"$T/err_nan" \
      && ok || bad "$model bf16 with NaN reruns: $(tail -1 "$T/err_nan")"
    python3 - "$T/nan_bf16_$model" <<'PY' && ok || bad "$model bf16 NaN reruns not recorded"
import json,glob,sys
m=json.load(open(sorted(glob.glob(sys.argv[1]+'/*_0.json'))[0]))
rf=m['memory']['recovered_failures']
for st in ('denoise','decode'):
    assert any(r.startswith(st+': NaN/Inf') and 'reran the stage in fp32' in r for r in rf), rf
PY
  done
  if [ -d "$FIX/sdxl" ] && [ -d "$FIX/sdxl-refiner" ]; then
    SDGEN_INJECT_NAN=refiner-denoise,refiner-decode "$GEN" "${XA[@]}" --precision bf16 \
      --output "$T/nan_bf16_ref" >/dev/null 2>"$T/err_nan" && python3 - "$T/nan_bf16_ref" <<'PY' \
      && ok || bad "refiner bf16 NaN reruns: $(tail -1 "$T/err_nan")"
import json,glob,sys
rf=json.load(open(sorted(glob.glob(sys.argv[1]+'/*_0.json'))[0]))['memory']['recovered_failures']
assert sorted(r.split(':')[0] for r in rf)==['refiner-decode','refiner-denoise'], rf
PY
  fi
else
  echo "SKIP (part): this CPU has no bf16: the bf16 rerun tests did not run"
fi

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
