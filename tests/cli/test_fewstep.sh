#!/usr/bin/env bash
# Few-step recipes through the CLI on the tiny fixtures: the `lcm` preset on
# an LCM-distilled UNet (lcm-sd15) and, with its LCM-LoRA from a local
# Hugging Face cache, on a plain SD 1.5 model; the `turbo` preset on the
# SD 2.1-architecture model from its folder and its single file; images
# equal to diffusers' goldens (+-1 level); --timestep-spacing and
# --prediction-type reach the scheduler and the metadata; bad values get one
# error line.
# usage: test_fewstep.sh BUILD_DIR FIXTURES_DIR
set -u
BUILD="$1"; FIX="$(cd "$2" 2>/dev/null && pwd)"
GEN="$BUILD/generate"; DIFF="$BUILD/sdgen_imgdiff"
if [ -z "$FIX" ] || [ ! -d "$FIX/lcm-sd15" ] || [ ! -d "$FIX/sd21" ]; then
  echo "SKIP: few-step fixtures not found at $2"; exit 77; fi
T="$(mktemp -d)"; trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok()  { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL: $*"; }
export HF_HUB_CACHE="$T/hub" HF_HUB_OFFLINE=1
REV=0123456789abcdef0123456789abcdef01234567

# A golden case's prompt and seed: params.KEY of case NAME in golden/DIR.
param() { # dir case key
  python3 - "$FIX/golden/$1/cases.json" "$2" "$3" <<'PY'
import json,sys
c=[c for c in json.load(open(sys.argv[1]))['cases'] if c['name']==sys.argv[2]][0]
print(c['params'][sys.argv[3]])
PY
}
meta() { # dir python-expr...
  python3 - "$@" <<'PY'
import json,glob,sys
m=json.load(open(sorted(glob.glob(sys.argv[1]+'/*_0.json'))[0]))
for expr in sys.argv[2:]:
    assert eval(expr), (expr, {k:m.get(k) for k in ('steps','cfg','sampler','timestep_spacing','prediction_type','width')})
PY
}
# run NAME GOLDEN_DIR CASE ARGS...: generates with the case's prompt and
# seed at 128x128 and compares with its image_u8 (+-1 level).
golden_run() {
  local name="$1" gdir="$2" kase="$3"; shift 3
  local out="$T/$name"
  if "$GEN" "$(param "$gdir" "$kase" prompt)" --seed "$(param "$gdir" "$kase" latents_seed)" \
      --width 128 --height 128 --threads 1 -q --output "$out" "$@" >"$T/$name.out" \
      2>"$T/$name.err"; then
    ok
    if "$DIFF" "$out"/output_*_0.png \
        "$FIX/golden/$gdir/pipeline.safetensors:$kase.image_u8" 1 >"$T/$name.diff"; then
      ok; echo "PASS $name: $(cat "$T/$name.diff")"
    else
      bad "$name: image differs from golden $gdir/$kase: $(cat "$T/$name.diff")"
    fi
  else
    bad "$name: exit $?: $(tail -1 "$T/$name.err")"
  fi
}

# 1. lcm preset on the LCM-distilled UNet: LatentConsistencyModelPipeline,
#    4 steps, guidance 8 as the golden (w = 7 as an embedding, no CFG batch)
golden_run lcm_distilled lcm-sd15 lcm_txt2img --quality lcm --model "$FIX/lcm-sd15" \
  --cfg "$(param lcm-sd15 lcm_txt2img guidance_scale)"
meta "$T/lcm_distilled" "m['sampler']=='lcm'" "m['steps']==4" "m['cfg']==8" && ok ||
  bad "lcm_distilled metadata"

# 2. turbo preset on SD 2.1 (sd-turbo settings): folder and single file
golden_run turbo_folder sd21 txt2img_turbo --quality turbo --model "$FIX/sd21"
meta "$T/turbo_folder" "m['sampler']=='euler'" "m['steps']==1" "m['cfg']==0" \
  "m['timestep_spacing']=='trailing'" "m['prediction_type']=='epsilon'" && ok ||
  bad "turbo metadata"
golden_run turbo_single sd21 txt2img_turbo --quality turbo --model "$FIX/sd21.safetensors" \
  --config "$FIX/sd21" --tokenizers "$FIX/tokenizers"
# the same with explicit flags instead of the preset
golden_run turbo_flags sd21 txt2img_turbo --model "$FIX/sd21" --sampler euler --steps 1 \
  --cfg 0 --timestep-spacing trailing --prediction-type epsilon
# the folder's own v-prediction DDIM with CFG, from the single file
golden_run vpred_single sd21 txt2img_vpred_cfg --model "$FIX/sd21.safetensors" \
  --config "$FIX/sd21" --tokenizers "$FIX/tokenizers" --steps 2 --cfg 7.5 \
  --negative-prompt "$(param sd21 txt2img_vpred_cfg negative_prompt)"

# 3. lcm preset on a plain SD 1.5 model: its LCM-LoRA comes by hub name
#    (here the fixture LoRA of the golden case, cached under that name)
d="$HF_HUB_CACHE/models--latent-consistency--lcm-lora-sdv1-5"
mkdir -p "$d/refs" "$d/snapshots/$REV"
printf '%s' "$REV" >"$d/refs/main"
ln -s "$FIX/lora/sd15_locon.safetensors" "$d/snapshots/$REV/pytorch_lora_weights.safetensors"
d="$HF_HUB_CACHE/models--latent-consistency--lcm-lora-sdxl"
mkdir -p "$d/refs" "$d/snapshots/$REV"
printf '%s' "$REV" >"$d/refs/main"
ln -s "$FIX/lora/sdxl_locon.safetensors" "$d/snapshots/$REV/pytorch_lora_weights.safetensors"
if "$GEN" --help | grep -q -- "--lora"; then
  golden_run lcm_lora sd15-lora txt2img_lcm_lora --quality lcm --model "$FIX/sd15" --offline
  meta "$T/lcm_lora" "m['sampler']=='lcm'" "m['steps']==4" "m['cfg']==1" && ok ||
    bad "lcm_lora metadata"
  golden_run lcm_lora_xl sdxl-lora txt2img_lcm_lora --quality lcm --model "$FIX/sdxl" --offline
  # the same from the single files (the LoRA names the diffusers / SGM modules)
  golden_run lcm_lora_single sd15-lora txt2img_lcm_lora --quality lcm --offline \
    --model "$FIX/sd15.safetensors" --config "$FIX/sd15" --tokenizers "$FIX/tokenizers"
  golden_run lcm_lora_xl_single sdxl-lora txt2img_lcm_lora --quality lcm --offline \
    --model "$FIX/sdxl.safetensors" --config "$FIX/sdxl" --tokenizers "$FIX/tokenizers"
else
  echo "SKIP lcm preset with LCM-LoRA: this build has no LoRA support (--lora)"
fi
# no LCM-LoRA for SD 2.x: refused in one line before any weight is read
if "$GEN" "x" --quality lcm --model "$FIX/sd21" --width 64 --height 64 -q --threads 1 \
    --output "$T/lcm_sd2" >/dev/null 2>"$T/lcm_sd2.err"; then
  bad "lcm preset on an SD 2.x model ran"
else
  [ "$(wc -l <"$T/lcm_sd2.err")" -eq 1 ] && grep -q "^error: .*LCM" "$T/lcm_sd2.err" && ok ||
    bad "lcm on SD 2.x: $(cat "$T/lcm_sd2.err")"
  [ ! -e "$T/lcm_sd2" ] || [ -z "$(ls "$T/lcm_sd2")" ] && ok || bad "lcm on SD 2.x wrote files"
fi

# 4. --timestep-spacing reaches the schedule: trailing differs from leading
#    on the same seed, and the metadata / A1111 chunk record it
for s in leading linspace trailing; do
  if "$GEN" "a red cube" --model "$FIX/sd15" --sampler euler --steps 2 --seed 5 \
      --timestep-spacing $s --threads 1 -q --output "$T/sp_$s" >/dev/null 2>"$T/sp_$s.err"; then
    ok
    meta "$T/sp_$s" "m['timestep_spacing']=='$s'" && ok || bad "spacing $s metadata"
  else
    bad "--timestep-spacing $s: $(tail -1 "$T/sp_$s.err")"
  fi
done
if "$DIFF" "$T"/sp_leading/output_*_0.png "$T"/sp_trailing/output_*_0.png 0 >/dev/null; then
  bad "--timestep-spacing trailing gave the leading image"
else
  ok
fi

# 5. bad values: one error line, exit 2, nothing written
expect_usage() { # name args...
  local name="$1"; shift
  "$GEN" "x" --model "$FIX/sd15" --output "$T/bad_$name" "$@" >/dev/null 2>"$T/bad_$name.err"
  local rc=$?
  [ $rc -eq 2 ] && [ "$(wc -l <"$T/bad_$name.err")" -eq 1 ] &&
    grep -q "^error: " "$T/bad_$name.err" && [ ! -e "$T/bad_$name" ] && ok ||
    bad "$name: exit $rc, stderr: $(cat "$T/bad_$name.err")"
}
expect_usage spacing_value --timestep-spacing sideways
expect_usage spacing_missing --timestep-spacing
expect_usage prediction_value --prediction-type x0
# SD3 has no timestep spacing: refused, one line
if [ -d "$FIX/sd35-medium" ]; then
  if "$GEN" "x" --model "$FIX/sd35-medium" --timestep-spacing trailing --steps 1 -q \
      --threads 1 --output "$T/sd3_sp" >/dev/null 2>"$T/sd3_sp.err"; then
    bad "--timestep-spacing on SD3 ran"
  else
    [ "$(wc -l <"$T/sd3_sp.err")" -eq 1 ] && grep -q "^error: .*timestep-spacing" \
      "$T/sd3_sp.err" && ok || bad "SD3 spacing: $(cat "$T/sd3_sp.err")"
  fi
fi

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
