#!/usr/bin/env bash
# Tiny autoencoder on the command line: --vae with the AutoencoderTiny folder
# (image = diffusers' golden txt2img_taesd within 1 level), with madebyollin's
# original files (same image), --vae taesd through the Hugging Face cache,
# --preview N (previews written, also from the family's cached taesd without
# --vae), img2img through the tiny encoder, and the refusals: a 16-channel
# TAESD3 on an SD 1.5 model and a missing file (one error line, exit 1,
# nothing written).
# usage: test_taesd.sh BUILD_DIR FIXTURES_DIR
set -u
BUILD="$1"; FIX="$2"
GEN="$BUILD/generate"
if [ ! -d "$FIX/taesd" ] || [ ! -d "$FIX/sd15" ]; then echo "SKIP: fixtures not found at $FIX"; exit 77; fi
T="$(mktemp -d)"; trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok()  { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL: $*"; }
check() { if eval "$1"; then ok; else bad "$2"; fi; }

PROMPT="a photograph of an astronaut riding a horse on the moon, highly detailed, 8k"
NEG="blurry, low quality, watermark"
# golden/taesd txt2img_taesd: sd15, PNDM, 4 steps, guidance 7.5, 128x128, seed 1316
ARGS=(--negative-prompt "$NEG" --model "$FIX/sd15" --steps 4 --seed 1316 --cfg 7.5
      --width 128 --height 128 --threads 1)

# max |png - golden image_u8| over the pixels (python3: zlib + struct only)
cat >"$T/cmp.py" <<'PY'
import json, struct, sys, zlib
def png(path):
    d = open(path, 'rb').read(); i = 8; idat = b''
    while i < len(d):
        n = struct.unpack('>I', d[i:i+4])[0]; t = d[i+4:i+8]
        if t == b'IHDR': W, H = struct.unpack('>II', d[i+8:i+16]); ct = d[i+17]
        if t == b'IDAT': idat += d[i+8:i+8+n]
        i += 12 + n
    assert ct == 2, 'not RGB'
    raw = zlib.decompress(idat); st = W * 3; out = bytearray(); prev = bytearray(st)
    for y in range(H):
        f = raw[y*(st+1)]; ln = bytearray(raw[y*(st+1)+1:(y+1)*(st+1)])
        for x in range(st):
            a = ln[x-3] if x >= 3 else 0; b = prev[x]; c = prev[x-3] if x >= 3 else 0
            if f == 1: ln[x] = (ln[x] + a) & 255
            elif f == 2: ln[x] = (ln[x] + b) & 255
            elif f == 3: ln[x] = (ln[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c; pa, pb, pc = abs(p-a), abs(p-b), abs(p-c)
                ln[x] = (ln[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += ln; prev = ln
    return W, H, out
W, H, img = png(sys.argv[1])
if sys.argv[2] == 'size':
    print(W, H); sys.exit(0)
b = open(sys.argv[2], 'rb').read(); n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8+n]); e = h[sys.argv[3]]; s, t = e['data_offsets']
g = b[8+n+s:8+n+t]
assert len(g) == len(img), (len(g), len(img))
print(max(abs(x - y) for x, y in zip(img, g)))
PY
GOLD="$FIX/golden/taesd/pipeline.safetensors"

# 1. the AutoencoderTiny folder, with previews every step
out="$T/folder"
"$GEN" "$PROMPT" "${ARGS[@]}" --vae "$FIX/taesd" --preview 1 --output "$out" -q \
  >"$T/stdout" 2>"$T/stderr"
rc=$?
check "[ $rc -eq 0 ]" "--vae folder exit $rc: $(tail -1 "$T/stderr")"
png=$(ls "$out"/output_*_0.png 2>/dev/null | head -1)
check "[ -s '$png' ]" "--vae folder wrote no image"
d=$(python3 "$T/cmp.py" "$png" "$GOLD" txt2img_taesd.image_u8 2>&1)
check "[ '$d' = 0 ] || [ '$d' = 1 ]" "--vae folder image differs from the golden by $d levels"
pv=$(ls "$out"/output_*.preview.png 2>/dev/null | head -1)
check "[ -s '$pv' ]" "--preview 1 wrote no preview"
check "[ \"\$(python3 '$T/cmp.py' '$pv' size)\" = '128 128' ]" "preview is not a 128x128 RGB PNG"
check "python3 - '${png%.png}.json' <<'PY'
import json,sys
m=json.load(open(sys.argv[1]))
assert m['vae']['path'].endswith('taesd') and 'tiny' in m['vae']['type'], m['vae']
PY" "metadata has no vae entry"
check "grep -a -q 'VAE: taesd' '$png'" "A1111 parameters lack 'VAE: taesd'"
check "! ls '$out'/*.tmp* >/dev/null 2>&1" "temporary files left"

# the last preview (step == total) decodes the final x0 estimate: the image itself (Euler's
# last x0 is its output; a wrong x0 formula is far off)
out="$T/pvlast"
"$GEN" "$PROMPT" "${ARGS[@]}" --sampler euler --vae "$FIX/taesd" --preview 3 --output "$out" -q \
  >"$T/stdout" 2>"$T/stderr"
if [ -x "$BUILD/sdgen_imgdiff" ]; then
  d=$("$BUILD/sdgen_imgdiff" "$out"/output_*.preview.png "$out"/output_*_0.png 2>&1 | tail -1)
  check "echo '$d' | grep -Eq 'max \|diff\| [01] levels'" "last preview vs image: $d"
fi

# 2. the original-format decoder file (encoder found beside it)
out="$T/orig"
"$GEN" "$PROMPT" "${ARGS[@]}" --vae "$FIX/taesd/taesd_decoder.safetensors" --output "$out" -q \
  >"$T/stdout" 2>"$T/stderr"
rc=$?
check "[ $rc -eq 0 ]" "--vae original file exit $rc: $(tail -1 "$T/stderr")"
png=$(ls "$out"/output_*_0.png 2>/dev/null | head -1)
d=$(python3 "$T/cmp.py" "$png" "$GOLD" txt2img_taesd.image_u8 2>&1)
check "[ '$d' = 0 ] || [ '$d' = 1 ]" "--vae original file image differs from the golden by $d levels"

# 3. --vae taesd and previews through a Hugging Face cache holding madebyollin/taesd
hub="$T/hub/models--madebyollin--taesd"
sha=0123456789abcdef0123456789abcdef01234567
mkdir -p "$hub/refs" "$hub/snapshots/$sha"
printf '%s' "$sha" >"$hub/refs/main"
cp "$FIX/taesd/config.json" "$FIX/taesd/diffusion_pytorch_model.safetensors" "$hub/snapshots/$sha/"
out="$T/hubvae"
HF_HUB_CACHE="$T/hub" "$GEN" "$PROMPT" "${ARGS[@]}" --vae taesd --offline --output "$out" -q \
  >"$T/stdout" 2>"$T/stderr"
rc=$?
check "[ $rc -eq 0 ]" "--vae taesd (cache) exit $rc: $(tail -1 "$T/stderr")"
png=$(ls "$out"/output_*_0.png 2>/dev/null | head -1)
d=$(python3 "$T/cmp.py" "$png" "$GOLD" txt2img_taesd.image_u8 2>&1)
check "[ '$d' = 0 ] || [ '$d' = 1 ]" "--vae taesd image differs from the golden by $d levels"
out="$T/hubpreview"
HF_HUB_CACHE="$T/hub" "$GEN" "$PROMPT" "${ARGS[@]}" --preview 2 --offline --output "$out" \
  >"$T/stdout" 2>"$T/stderr"
rc=$?
check "[ $rc -eq 0 ]" "--preview (model's VAE) exit $rc: $(tail -1 "$T/stderr")"
check "ls '$out'/output_*.preview.png >/dev/null 2>&1" "no preview from the cached taesd"
check "! grep -q 'no previews' '$T/stderr'" "preview warning although taesd is cached"
# no tiny VAE anywhere: one warning, the image still made
out="$T/nopreview"
HF_HUB_CACHE="$T/empty" "$GEN" "$PROMPT" "${ARGS[@]}" --steps 1 --preview 1 --offline \
  --output "$out" >"$T/stdout" 2>"$T/stderr"
rc=$?
check "[ $rc -eq 0 ]" "--preview without a tiny VAE exit $rc"
check "[ \$(grep -c 'no previews' '$T/stderr') -eq 1 ]" "not exactly one 'no previews' warning"
check "! ls '$out'/*.preview.png >/dev/null 2>&1" "a preview without a tiny VAE"

# 4. img2img through the tiny encoder
out="$T/img2img"
"$GEN" "$PROMPT" "${ARGS[@]}" --vae "$FIX/taesd" --init-image "$(ls "$T"/folder/output_*_0.png | head -1)" \
  --strength 0.5 --output "$out" -q >"$T/stdout" 2>"$T/stderr"
rc=$?
check "[ $rc -eq 0 ]" "img2img with --vae exit $rc: $(tail -1 "$T/stderr")"

# 4b. --decode of kept latents with the tiny VAE = the --vae run's image
out="$T/keep"
"$GEN" "$PROMPT" "${ARGS[@]}" --keep-latents --output "$out" -q >"$T/stdout" 2>"$T/stderr"
lat=$(ls "$out"/*.latents.safetensors 2>/dev/null | head -1)
"$GEN" --decode "$lat" --vae "$FIX/taesd" --output "$T/decoded" -q >"$T/stdout" 2>"$T/stderr"
rc=$?
check "[ $rc -eq 0 ]" "--decode --vae exit $rc: $(tail -1 "$T/stderr")"
png=$(ls "$T"/decoded/output_*_0.png 2>/dev/null | head -1)
d=$(python3 "$T/cmp.py" "$png" "$GOLD" txt2img_taesd.image_u8 2>&1)
check "[ '$d' = 0 ] || [ '$d' = 1 ]" "--decode --vae image differs from the golden by $d levels"

# 4c. the memory plan counts a full-size (64-channel) TAESD: its decode stage holds a block's
# three 64-channel full-resolution buffers, and the measured peak stays under the prediction
if [ -x "$BUILD/make_random_model" ]; then
  "$BUILD/make_random_model" --arch taesd --out "$T/full" >/dev/null 2>&1
  out="$T/fullplan"
  "$GEN" x --model "$FIX/sd15" --steps 1 --width 256 --height 256 --vae "$T/full/taesd" \
    --preview 1 --threads 1 -q --output "$out" >"$T/stdout" 2>"$T/stderr"
  rc=$?
  check "[ $rc -eq 0 ]" "full-size TAESD run exit $rc: $(tail -1 "$T/stderr")"
  # Under AddressSanitizer the RSS holds shadow memory and the quarantine:
  # there the tracked allocator's peak is held to the plan, the RSS is not.
  rss=1; ldd "$GEN" 2>/dev/null | grep -q libasan && rss=0
  check "python3 - '$out' $rss <<'PY'
import json,glob,sys
rss=sys.argv[2]=='1'
m=json.load(open(glob.glob(sys.argv[1]+'/*_0.json')[0]))
mem=m['memory']; p=mem['plan']
dec=[s for s in p['stages'] if s['stage']=='decode'][0]
assert dec['activations_bytes'] >= 3*64*256*256*4, dec
den=[s for s in p['stages'] if s['stage']=='denoise'][0]
assert den['activations_bytes'] >= 3*64*256*256*4, den   # the previews decode inside it
tracked=max(s['tracked_peak_bytes'] for s in mem['stages'])
assert tracked <= p['predicted_peak_bytes'], (tracked, p['predicted_peak_bytes'])
peak=max(s['process_peak_rss_bytes'] for s in mem['stages'])
assert not rss or peak <= p['predicted_peak_bytes'], (peak, p['predicted_peak_bytes'])
PY" "plan with a full-size TAESD"
fi

# 5. refusals before generation: one error line, exit 1, nothing written
out="$T/refused"
"$GEN" "$PROMPT" "${ARGS[@]}" --vae "$FIX/taesd3" --output "$out" >"$T/stdout" 2>"$T/stderr"
rc=$?
check "[ $rc -eq 1 ]" "TAESD3 on SD 1.5: exit $rc, expected 1"
check "[ \$(grep -c '^error:' '$T/stderr') -eq 1 ] && grep -q '16 latent channels' '$T/stderr'" \
  "TAESD3 on SD 1.5: not one clear error line: $(cat "$T/stderr" | grep error)"
check "! grep -q 'step 1/' '$T/stderr' && ! ls '$out'/*.png >/dev/null 2>&1" "TAESD3 on SD 1.5 ran or wrote"
"$GEN" "$PROMPT" "${ARGS[@]}" --vae "$T/missing/taesd_decoder.safetensors" --output "$out" \
  >"$T/stdout" 2>"$T/stderr"
rc=$?
check "[ $rc -eq 1 ] && [ \$(grep -c '^error:' '$T/stderr') -eq 1 ]" "missing VAE file: exit $rc"
check "! ls '$out'/*.png >/dev/null 2>&1" "missing VAE file wrote an image"
mkdir -p "$T/emptyvae"
"$GEN" "$PROMPT" "${ARGS[@]}" --vae "$T/emptyvae" --output "$out" >"$T/stdout" 2>"$T/stderr"
rc=$?
check "[ $rc -eq 1 ] && grep -q 'no tiny VAE' '$T/stderr'" "folder without a tiny VAE: exit $rc"
"$GEN" "$PROMPT" "${ARGS[@]}" --preview 0 --output "$out" >"$T/stdout" 2>"$T/stderr"
rc=$?
check "[ $rc -eq 2 ]" "--preview 0 accepted (exit $rc)"

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
