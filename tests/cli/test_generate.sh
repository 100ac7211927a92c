#!/usr/bin/env bash
# CLI end to end on the tiny fixture models: files written, metadata fields,
# the A1111 parameters chunk, both model layouts, and every bad-input case
# (one clear line, nonzero exit, nothing half-written).
# usage: test_generate.sh BUILD_DIR FIXTURES_DIR
set -u
BUILD="$1"; FIX="$2"
GEN="$BUILD/generate"
if [ ! -d "$FIX/sd15" ]; then echo "SKIP: fixtures not found at $FIX"; exit 77; fi
T="$(mktemp -d)"; trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok()  { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL: $*"; }
check() { if eval "$1"; then ok; else bad "$2"; fi; }

PROMPT="a photograph of an astronaut riding a horse on the moon, highly detailed, 8k"
NEG="blurry, low quality, watermark"

# 1. diffusers folder
out="$T/folder"
"$GEN" "$PROMPT" --negative-prompt "$NEG" --model "$FIX/sd15" --steps 4 --seed 42 \
  --output "$out" --threads 1 >"$T/stdout" 2>"$T/stderr"
rc=$?
check "[ $rc -eq 0 ]" "folder run exit $rc: $(tail -1 "$T/stderr")"
png=$(ls "$out"/output_*_0.png 2>/dev/null | head -1)
json="${png%.png}.json"
check "[ -s '$png' ] && [ -s '$json' ]" "folder run wrote no png/json pair"
check "grep -q \"\$png\" '$T/stdout'" "stdout does not name the image"
check "python3 - '$json' <<'PY'
import json,sys
m=json.load(open(sys.argv[1]))
need=['prompt','negative_prompt','seed','steps','sampler','cfg','width','height','model','timings_s','version','memory','generator']
missing=[k for k in need if k not in m]
assert not missing, missing
assert m['seed']==42 and m['steps']==4 and m['width']==128 and m['sampler']=='pndm'
assert m['model']['type']=='sd1'
labels=[s['label'] for s in m['memory']['stages']]
for l in ['Before model load','After model load','Before generation','After generation','On completion']:
    assert l in labels, l
PY" "metadata fields"
check "python3 - '$png' <<'PY'
import sys,struct
d=open(sys.argv[1],'rb').read()
assert d[:8]==b'\x89PNG\r\n\x1a\n'
i=8; found=None
while i < len(d):
    n=struct.unpack('>I',d[i:i+4])[0]; t=d[i+4:i+8]; body=d[i+8:i+8+n]
    if t==b'tEXt' and body.startswith(b'parameters\0'): found=body[11:].decode()
    i+=12+n
assert found and 'Steps: 4' in found and 'Seed: 42' in found and 'Negative prompt: blurry' in found, found
PY" "A1111 parameters chunk"
check "grep -q 'Memory \[After model load\]: Process=' '$T/stderr'" "memory stage line missing"
check "! ls '$out'/*.tmp* >/dev/null 2>&1 && ! ls '$out'/*.latents.* >/dev/null 2>&1" "temporary files left"

# 2. single-file checkpoint (configs and tokenizer from --config / --tokenizers)
out="$T/single"
"$GEN" "$PROMPT" --negative-prompt "$NEG" --model "$FIX/sd15.safetensors" --config "$FIX/sd15" \
  --tokenizers "$FIX/tokenizers" --steps 4 --seed 42 --output "$out" --threads 1 -q \
  >"$T/stdout" 2>"$T/stderr"
rc=$?
check "[ $rc -eq 0 ]" "single-file run exit $rc: $(tail -1 "$T/stderr")"
check "ls '$out'/output_*_0.png >/dev/null 2>&1" "single-file run wrote no png"
if [ -x "$BUILD/sdgen_compare" ]; then
  check "'$BUILD/sdgen_compare' '$out'/output_*_0.png '$png'" "single-file image differs from the folder image"
fi

# 3. bad input: one line on stderr, nonzero exit, nothing written
expect_fail() {
  local name="$1"; shift
  local o="$T/bad_$name"
  "$GEN" --output "$o" "$@" >"$T/stdout" 2>"$T/stderr"
  local rc=$?
  local lines; lines=$(grep -c . "$T/stderr")
  if [ $rc -ne 0 ] && [ "$lines" -eq 1 ] && grep -q '^error: ' "$T/stderr"; then ok;
  else bad "$name: rc=$rc stderr=$(head -3 "$T/stderr")"; fi
  if ls "$o"/*.png >/dev/null 2>&1 || ls "$o"/*.tmp* >/dev/null 2>&1; then bad "$name: files written"; else ok; fi
}
M="--model $FIX/sd15 --steps 1 -q --threads 1"
expect_fail missing_model "x" --model "$T/nope" --offline -q
expect_fail width8 "x" $M --width 100
expect_fail steps0 "x" $M --steps 0
expect_fail n0 "x" $M --n 0
expect_fail sampler "x" $M --sampler bogus
expect_fail strength "x" $M --init-image "$png" --strength 1.5
expect_fail noprompt $M
expect_fail unknown_opt "x" $M --bogus
expect_fail init_missing "x" $M --init-image "$T/none.png"
touch "$T/file_not_dir"
expect_fail unwritable "x" $M --output "$T/file_not_dir/sub"
# corrupt checkpoints
mkdir -p "$T/m"
head -c 100 "$FIX/sd15.safetensors" > "$T/m/trunc.safetensors"
expect_fail truncated "x" --model "$T/m/trunc.safetensors" --config "$FIX/sd15" --tokenizers "$FIX/tokenizers" -q
printf '\x10\x00\x00\x00\x00\x00\x00\x00{"a":[1,2,3}  ' > "$T/m/badjson.safetensors"
expect_fail badjson "x" --model "$T/m/badjson.safetensors" -q
printf '\xff\xff\xff\xff\x00\x00\x00\x00{}' > "$T/m/hugeheader.safetensors"
expect_fail hugeheader "x" --model "$T/m/hugeheader.safetensors" -q
# folder whose unet weights lack a tensor: copy the folder and cut the file
cp -r "$FIX/sd15" "$T/m/sd15cut"; chmod -R u+w "$T/m/sd15cut"
python3 - "$T/m/sd15cut/unet/diffusion_pytorch_model.safetensors" <<'PY'
import json,struct,sys
p=sys.argv[1]; d=open(p,'rb').read(); n=struct.unpack('<Q',d[:8])[0]
h=json.loads(d[8:8+n]); h.pop('conv_out.weight')
hb=json.dumps(h).encode(); hb+=b' '*((8-len(hb)%8)%8)
open(p,'wb').write(struct.pack('<Q',len(hb))+hb+d[8+n:])
PY
expect_fail missing_tensor "x" --model "$T/m/sd15cut" --steps 1 -q
grep -q "conv_out.weight" "$T/stderr" && ok || bad "missing tensor not named: $(cat "$T/stderr")"

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
