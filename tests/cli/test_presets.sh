#!/usr/bin/env bash
# Presets, styles, refiner, upscaling and SD3 through the CLI, with the tiny
# fixture models standing in for the hub names: a Hugging Face cache made
# here (huggingface_hub's layout, files symlinked to the fixtures) holds
# them under the preset's repository names, and --offline proves nothing is
# downloaded. Also the bad-input cases of these features.
# usage: test_presets.sh BUILD_DIR FIXTURES_DIR
set -u
BUILD="$1"; FIX="$(cd "$2" 2>/dev/null && pwd)"
GEN="$BUILD/generate"
if [ -z "$FIX" ] || [ ! -d "$FIX/sd15" ] || [ ! -d "$FIX/sd35-large" ]; then
  echo "SKIP: fixtures not found at $2"; exit 77; fi
T="$(mktemp -d)"; trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok()  { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL: $*"; }
export HF_HUB_CACHE="$T/hub" HF_HUB_OFFLINE=1
REV=0123456789abcdef0123456789abcdef01234567
cache_repo() { # ORG/NAME fixture-folder
  local d="$HF_HUB_CACHE/models--${1/\//--}"
  mkdir -p "$d/refs" "$d/snapshots"
  printf '%s' "$REV" > "$d/refs/main"
  cp -rs "$FIX/$2" "$d/snapshots/$REV"
}
cache_repo Lykon/DreamShaper-8 sd15
cache_repo stabilityai/stable-diffusion-xl-base-1.0 sdxl
cache_repo stabilityai/stable-diffusion-xl-refiner-1.0 sdxl-refiner
cache_repo stabilityai/stable-diffusion-3.5-large sd35-large
cache_repo stabilityai/stable-diffusion-3.5-large-turbo sd35-large

meta() { # dir python-expr...
  python3 - "$@" <<'PY'
import json,glob,sys
m=json.load(open(sorted(glob.glob(sys.argv[1]+'/*_0.json'))[0]))
for expr in sys.argv[2:]:
    assert eval(expr), (expr, {k:m[k] for k in ('steps','cfg','width','height','output_width','model','refiner','upscale','prompt','negative_prompt','sampler')})
PY
}
run() { # name args...
  local name="$1"; shift
  "$GEN" "$@" --output "$T/$name" --threads 1 -q >"$T/$name.out" 2>"$T/$name.err" \
    && ok || { bad "$name: $(tail -1 "$T/$name.err")"; return 1; }
}
S="--width 128 --height 128" # presets ask for 1024 px; the tiny models run at 128

run default "a cat" --steps 2 $S && meta "$T/default" "m['model']['name']=='Lykon/DreamShaper-8'" "m['model']['type']=='sd1'" && ok
run fast "a cat" --quality fast $S && meta "$T/fast" "m['steps']==20" "m['sampler']=='dpmpp_2m_karras'" && ok
run override "a cat" --quality fast --steps 3 --sampler euler $S && meta "$T/override" "m['steps']==3" "m['sampler']=='euler'" && ok
run hd "a cat" --quality hd --steps 2 $S && meta "$T/hd" "m['model']['type']=='sdxl'" "m['refiner'] is None" && ok
run ultra4k "a cat" --quality 4k-ultra --steps 3 --refiner-steps 4 $S \
  && meta "$T/ultra4k" "m['model']['type']=='sdxl'" "m['refiner']['mode']=='image'" \
          "m['upscale']['factor']==4" "m['output_width']==512" "m['upscale']['method'].startswith('lanczos')" && ok
run pro "a fox" --pro --steps 2 $S && meta "$T/pro" "m['model']['name']=='stabilityai/stable-diffusion-3.5-large'" \
  "m['model']['type']=='sd3'" "m['cfg']==4.5" "m['sampler']=='flow_euler'" && ok
run pro_steps "a fox" --pro $S && meta "$T/pro_steps" "m['steps']==28" && ok
run turbo "a fox" --quality sd3.5 $S && meta "$T/turbo" "m['steps']==8" "m['cfg']==0" && ok
run sd35_4k "a fox" --quality sd3.5-4k --steps 2 $S && meta "$T/sd35_4k" "m['output_width']==512" && ok
run no_t5 "a fox" --pro --steps 2 --no-t5 $S && meta "$T/no_t5" "any('T5 left out' in o for o in m['optimizations'])" && ok
run sd3_refiner "a fox" --pro --steps 2 --refiner stabilityai/stable-diffusion-xl-refiner-1.0 --refiner-steps 4 $S \
  && meta "$T/sd3_refiner" "m['model']['type']=='sd3'" "m['refiner']['mode']=='image'" && ok
run latent_switch "a cat" --quality hd --steps 10 --refiner stabilityai/stable-diffusion-xl-refiner-1.0 --refiner-switch 0.8 $S \
  && meta "$T/latent_switch" "m['refiner']['mode']=='latent'" && ok
run style "a cat" --style anime --steps 2 $S && meta "$T/style" "m['prompt'].startswith('a cat, anime style')" \
  "'photorealistic' in m['negative_prompt']" && ok
run style_neg "a cat" --style anime --negative-prompt "dogs" --steps 2 $S && meta "$T/style_neg" "m['negative_prompt']=='dogs'" && ok
run realesrgan "a cat" --steps 2 $S --upscale 2 --upscaler "$FIX/golden/upscale/realesrgan_x2plus_tiny.safetensors" \
  && meta "$T/realesrgan" "m['output_width']==256" "m['upscale']['method'].startswith('realesrgan')" && ok
img=$(ls "$T"/default/*_0.png)
run img2img "a cat" --init-image "$img" --strength 0.5 --steps 4 && meta "$T/img2img" "m['strength']==0.5" && ok
"$GEN" --list-presets >"$T/list" && grep -q "4k-ultra" "$T/list" && grep -q "stabilityai/stable-diffusion-3.5-large" "$T/list" && ok || bad "--list-presets"

# bad input: one line, nonzero, before any model is loaded, nothing written
expect_fail() {
  local name="$1"; shift
  "$GEN" --output "$T/bad_$name" --threads 1 "$@" >/dev/null 2>"$T/bad.err"
  local rc=$?
  if [ $rc -ne 0 ] && [ "$(grep -c . "$T/bad.err")" -eq 1 ] && ! grep -q "Before generation" "$T/bad.err"; then ok;
  else bad "$name: rc=$rc $(head -3 "$T/bad.err")"; fi
  ls "$T/bad_$name"/*.png >/dev/null 2>&1 && bad "$name wrote files" || ok
}
expect_fail bad_quality x --quality bogus -q
expect_fail bad_style x --style bogus -q
expect_fail upscale3 x --upscale 3 -q
expect_fail upscaler_missing x --upscale 2 --upscaler "$T/none.safetensors" -q
expect_fail strength0 x --init-image "$img" --strength 0 -q
expect_fail init_size x --init-image "$img" --width 256 -q
printf 'not an image' > "$T/junk.png"
expect_fail init_junk x --init-image "$T/junk.png" -q
expect_fail refiner_mismatch x --refiner stabilityai/stable-diffusion-xl-refiner-1.0 -q
expect_fail refiner_sd15_after_xl x --quality hd --refiner Lykon/DreamShaper-8 -q
expect_fail switch_sd15 x --refiner Lykon/DreamShaper-8 --refiner-switch 0.8 -q
expect_fail switch_alone x --refiner-switch 0.8 -q
expect_fail offline_missing x --model nobody/nothing -q
# SD3 bad inputs: a T5 of the wrong width; a transformer missing a block
"$GEN" "x" --model "$FIX/sd35-large.safetensors" --tokenizers "$FIX/sd35-large" \
  --clip-l "$FIX/text_encoders/clip_l.safetensors" --clip-g "$FIX/text_encoders/clip_g.safetensors" \
  --t5 "$FIX/text_encoders/clip_l.safetensors" --steps 1 $S --output "$T/bad_t5" -q >/dev/null 2>"$T/bad.err"
[ $? -ne 0 ] && grep -qi "t5\|missing tensor\|width" "$T/bad.err" && ok || bad "wrong T5 accepted: $(cat "$T/bad.err")"
cp -r "$FIX/sd35-medium" "$T/sd35cut"; chmod -R u+w "$T/sd35cut"
python3 - "$T/sd35cut/transformer/diffusion_pytorch_model.safetensors" <<'PY'
import json,struct,sys
p=sys.argv[1]; d=open(p,'rb').read(); n=struct.unpack('<Q',d[:8])[0]
h=json.loads(d[8:8+n])
for k in [k for k in h if k.startswith('transformer_blocks.1.')]: h.pop(k)
hb=json.dumps(h).encode(); hb+=b' '*((8-len(hb)%8)%8)
open(p,'wb').write(struct.pack('<Q',len(hb))+hb+d[8+n:])
PY
"$GEN" "x" --model "$T/sd35cut" --steps 1 --output "$T/bad_cut" -q >/dev/null 2>"$T/bad.err"
[ $? -ne 0 ] && grep -q "transformer_blocks.1" "$T/bad.err" && ok || bad "cut transformer: $(cat "$T/bad.err")"

# a single file without --tokenizers: the CLIP tokenizer comes from the
# cache of the repository that publishes it (openai/clip-vit-large-patch14)
mkdir -p "$T/cfg"
for c in unet vae text_encoder scheduler; do mkdir -p "$T/cfg/$c"; cp "$FIX/sd15/$c/"*.json "$T/cfg/$c/"; done
cp "$FIX/sd15/model_index.json" "$T/cfg/"
"$GEN" x --model "$FIX/sd15.safetensors" --config "$T/cfg" --steps 1 --output "$T/tok_missing" -q \
  >/dev/null 2>"$T/tok_missing.err" && bad "single file without any tokenizer ran" \
  || { grep -q "no CLIP tokenizer found" "$T/tok_missing.err" && ok || bad "tokenizer error: $(cat "$T/tok_missing.err")"; }
r="$HF_HUB_CACHE/models--openai--clip-vit-large-patch14"
d="$r/snapshots/$REV"
mkdir -p "$d" "$r/refs" && printf '%s' "$REV" > "$r/refs/main"
ln -s "$FIX/tokenizers/clip/vocab.json" "$d/vocab.json"
ln -s "$FIX/tokenizers/clip/merges.txt" "$d/merges.txt"
ln -s "$FIX/tokenizers/clip/tokenizer_config_sd15.json" "$d/tokenizer_config.json"
ln -s "$FIX/tokenizers/clip/special_tokens_map_sd15.json" "$d/special_tokens_map.json"
run tok_cache x --model "$FIX/sd15.safetensors" --config "$T/cfg" --steps 1 && ok

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
