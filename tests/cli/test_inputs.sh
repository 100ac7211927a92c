#!/usr/bin/env bash
# Inputs checked before work (issue 11) and resuming where the run was
# (issue 13), on the tiny SD 1.5 fixture:
#   - a refiner strength / steps pair, or an img2img strength, that leaves a
#     stage without a step, and a bad --upscaler file, are refused with one
#     `error:` line and exit 1 before any model is loaded (no stage line, no
#     file written);
#   - `generate --decode FILE` (no --output) writes the image and its JSON
#     beside FILE under the run's own stamp, equal to the image the run
#     would have made, writes nothing to ./outputs, and removes FILE only
#     once the image is complete (kept with --keep-latents).
# usage: test_inputs.sh BUILD_DIR FIXTURES_DIR
set -u
BUILD="$(cd "$1" && pwd)"; FIX="$(cd "$2" 2>/dev/null && pwd || echo "$2")"
GEN="$BUILD/generate"; DIFF="$BUILD/sdgen_imgdiff"
if [ ! -d "$FIX/sd15" ]; then echo "SKIP: fixtures not found at $FIX"; exit 77; fi
T="$(mktemp -d)"; trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok()  { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL: $*"; }
check() { if eval "$1"; then ok; else bad "$2"; fi; }
A=("a lighthouse" --model "$FIX/sd15" --steps 2 --width 64 --height 64 --seed 7 --threads 1)
cd "$T" || exit 1

# refused up front: one error line, exit 1, nothing written, no model loaded
refused() { # NAME PATTERN ARGS...
  local name="$1" pat="$2"; shift 2
  rm -rf "$T/r"
  "$GEN" "${A[@]}" "$@" --output "$T/r" >"$T/out" 2>"$T/err"
  local rc=$?
  check "[ $rc -eq 1 ]" "$name: exit $rc (want 1): $(tail -1 "$T/err")"
  check "[ \$(grep -c '^error:' '$T/err') -eq 1 ] && grep -q '^error:.*$pat' '$T/err'" \
    "$name: want one error line matching '$pat', got: $(cat "$T/err")"
  check "! grep -q 'Memory \[After model load\]\|step 1/' '$T/err'" "$name: work started before the error"
  check "[ ! -e '$T/r' ] || [ -z \"\$(ls -A '$T/r')\" ]" "$name: wrote $(ls "$T/r" 2>/dev/null)"
  check "[ ! -s '$T/out' ]" "$name: printed $(cat "$T/out")"
}
refused "refiner 2 steps x 0.3" "no refiner step" --refiner "$FIX/sd15" --refiner-steps 2 \
  --refiner-strength 0.3
head -c 4000 /dev/urandom >"$T/junk.safetensors"
refused "junk upscaler" "junk.safetensors" --upscale 2 --upscaler "$T/junk.safetensors"
refused "model as upscaler" "" --upscale 2 --upscaler "$FIX/sd15/unet/diffusion_pytorch_model.safetensors"
refused "missing upscaler" "not found" --upscale 2 --upscaler "$T/none.safetensors"

# a base image to use as init image, then an img2img strength with no step
"$GEN" "${A[@]}" --output "$T/base" -q >/dev/null 2>"$T/err" || bad "base run: $(tail -1 "$T/err")"
init=$(ls "$T"/base/output_*_0.png 2>/dev/null | head -1)
refused "img2img 2 steps x 0.3" "leaves no denoising step" --init-image "$init" --strength 0.3
check "[ ! -e '$T/outputs' ]" "a refused run created ./outputs"

# --decode beside the latents file, under the run's stamp
"$GEN" "${A[@]}" --keep-latents --output "$T/run" -q >/dev/null 2>"$T/err" || bad "keep-latents run"
lat=$(ls "$T"/run/output_*.latents.safetensors 2>/dev/null | head -1)
if [ -z "$lat" ]; then
  bad "no latents file kept"
else
  stamp=$(basename "$lat" .latents.safetensors); stamp=${stamp#output_}
  # a run killed during its decode: its folder holds only the latents
  mkdir -p "$T/killed"; cp "$lat" "$T/killed/"
  k="$T/killed/output_${stamp}.latents.safetensors"
  "$GEN" --decode "$k" -q --threads 1 >"$T/out" 2>"$T/err"
  rc=$?
  check "[ $rc -eq 0 ]" "--decode exit $rc: $(tail -1 "$T/err")"
  check "[ -s '$T/killed/output_${stamp}_0.png' ] && [ -s '$T/killed/output_${stamp}_0.json' ]" \
    "--decode did not write output_${stamp}_0.png/.json beside the file: $(ls "$T/killed")"
  check "grep -qx '$T/killed/output_${stamp}_0.png' '$T/out'" "stdout: $(cat "$T/out")"
  check "[ ! -e '$k' ]" "the latents file stayed after a complete decode"
  check "[ ! -e '$T/outputs' ]" "--decode wrote into ./outputs"
  if [ -x "$DIFF" ]; then
    check "'$DIFF' '$T/run/output_${stamp}_0.png' '$T/killed/output_${stamp}_0.png' 0 >/dev/null" \
      "--decode image differs from the run's"
  fi
  # --keep-latents keeps it; a second decode never overwrites the first image
  cp "$lat" "$T/killed/"
  "$GEN" --decode "$k" --keep-latents -q --threads 1 >"$T/out" 2>"$T/err"
  check "[ -e '$k' ] && [ -s '$T/killed/output_${stamp}_0_1.png' ]" \
    "--decode --keep-latents: $(ls "$T/killed")"
  # a failed decode keeps the file
  "$GEN" --decode "$k" --model "$T/none" -q >/dev/null 2>"$T/err"
  check "[ \$? -ne 0 ] && [ -e '$k' ]" "a failed --decode removed the latents file"
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
