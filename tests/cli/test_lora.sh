#!/usr/bin/env bash
# LoRA end to end on the tiny SD 1.5 / SDXL models: kohya and PEFT files
# give the same image, stacked adapters, <lora:NAME:SCALE> in the prompt
# (stripped before encoding, resolved in --lora-dir), metadata; bad files
# (truncated, unknown key, key for no layer, rank mismatch, NaN, another
# family) give one error line, exit 1 and no file; the memory plan holds
# with the LoRA merged (resident) and as a side path (streaming).
# usage: test_lora.sh BUILD_DIR FIXTURES_DIR
set -u
BUILD="$1"; FIX="$2"
GEN="$BUILD/generate"; DIFF="$BUILD/sdgen_imgdiff"
if [ ! -d "$FIX/lora" ] || [ ! -d "$FIX/sd15" ]; then echo "SKIP: LoRA fixtures not found at $FIX"; exit 77; fi
command -v python3 >/dev/null || { echo "SKIP: python3 not found"; exit 77; }
T="$(mktemp -d)"; trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok()  { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL: $*"; }
L="$FIX/lora"
A=(--model "$FIX/sd15" --steps 2 --width 64 --height 64 --seed 5 --threads 1 -q)
png() { ls "$1"/*.png 2>/dev/null | head -1; }

run() { # name, args...
  local name="$1"; shift
  "$GEN" "$@" --output "$T/$name" >/dev/null 2>"$T/err_$name" && ok || bad "$name: $(tail -1 "$T/err_$name")"
}
run base "a cat" "${A[@]}"
run kohya "a cat" "${A[@]}" --lora "$L/sd15_locon.safetensors"
run peft "a cat" "${A[@]}" --lora "$L/sd15_locon_peft.safetensors:1.0"
run stack "a cat" "${A[@]}" --lora "$L/sd15_locon.safetensors:0.8" --lora "$L/sd15_attn.safetensors:0.5"
run tag "a cat <lora:sd15_attn:0.5>" "${A[@]}" --lora "$L/sd15_locon.safetensors:0.8" --lora-dir "$L"
run neg "a cat" "${A[@]}" --lora "$L/sd15_attn.safetensors:-0.7"
# the fixtures' PEFT file is the kohya one with alpha / rank folded in
# exactly: bit-identical merged weights, so the same image
"$DIFF" "$(png "$T/kohya")" "$(png "$T/peft")" 0 >/dev/null && ok || bad "kohya and PEFT images differ"
# the tag is stripped and resolved: same image as the flags
"$DIFF" "$(png "$T/stack")" "$(png "$T/tag")" 0 >/dev/null && ok || bad "<lora:...> tag image differs from --lora"
# a LoRA changes the image (the fixtures' effects are large)
for x in kohya stack neg; do
  "$DIFF" "$(png "$T/base")" "$(png "$T/$x")" 2 >/dev/null && bad "$x image equals the base image" || ok
done
python3 - "$T" "$L" <<'PY' && ok || bad "LoRA metadata"
import json,glob,sys,re
T=sys.argv[1]
m=json.load(open(glob.glob(T+'/tag/*.json')[0]))
assert [(l['name'].split('/')[-1],round(l['scale'],3)) for l in m['loras']]==[('sd15_locon.safetensors',0.8),('sd15_attn',0.5)], m['loras']
assert all(l['applied']=='merged' for l in m['loras'])
assert m['prompt']=='a cat <lora:sd15_attn:0.5>', m['prompt']
png=open(glob.glob(T+'/tag/*.png')[0],'rb').read()
i=png.find(b'parameters\0'); text=png[i+11:i+600].decode('latin1')
assert '<lora:sd15_attn:0.5>' in text and '<lora:sd15_locon:0.8>' in text, text
assert 'Lora: "sd15_locon: 0.8, sd15_attn: 0.5"' in text, text
# A1111's LoRA hash: SHA-256 of the bytes after the safetensors header
import hashlib,struct
def short(p):
    raw=open(p,'rb').read(); n=struct.unpack('<Q',raw[:8])[0]
    return hashlib.sha256(raw[8+n:]).hexdigest()[:12]
L=sys.argv[2]
want='Lora hashes: "sd15_locon: %s, sd15_attn: %s"'%(short(L+'/sd15_locon.safetensors'),short(L+'/sd15_attn.safetensors'))
assert want in text, (want, text)
PY

# ---- bad files: one error line, exit 1, nothing written ----
python3 - "$L/sd15_locon.safetensors" "$T" <<'PY'
import json,struct,sys
src,T=sys.argv[1],sys.argv[2]
raw=open(src,'rb').read()
n=struct.unpack('<Q',raw[:8])[0]
hdr=json.loads(raw[8:8+n]); data=raw[8+n:]
def write(name,h,d):
    b=json.dumps(h).encode(); b+=b' '*((8-len(b)%8)%8)
    open(f'{T}/{name}.safetensors','wb').write(struct.pack('<Q',len(b))+b+d)
open(f'{T}/truncated.safetensors','wb').write(raw[:len(raw)//2])
mods=sorted(k for k in hdr if k.endswith('.lora_up.weight') and hdr[k]['shape'][1]==4 and len(hdr[k]['shape'])==2)
up=mods[0]
# unknown key: a tensor no LoRA layout has (reuses an alpha's bytes)
alpha=next(k for k in hdr if k.endswith('.alpha'))
def extra(keys):  # more F16 tensors after the data: {key: shape}
    h=json.loads(json.dumps(hdr)); d=bytearray(data)
    for k,shape in keys.items():
        n=2
        for x in shape: n*=x
        h[k]={'dtype':'F16','shape':shape,'data_offsets':[len(d),len(d)+n]}; d+=b'\x00\x3c'*(n//2)
    return h, bytes(d)
write('unknown',*extra({'model.some_weight':[]}))
# a complete module that names no layer of the model
nl='lora_unet_down_blocks_9_attentions_0_proj_in'
write('nolayer',*extra({nl+'.lora_down.weight':[4,8],nl+'.lora_up.weight':[8,4],nl+'.alpha':[]}))
# rank mismatch: up [out, 4] stored as [2*out, 2]
h=json.loads(json.dumps(hdr)); o=h[up]['shape'][0]; h[up]['shape']=[2*o,2]; write('rank',h,data)
# NaN in a down weight (F16 0x7e00)
down=up.replace('lora_up','lora_down'); b,e=hdr[down]['data_offsets']
d=bytearray(data); d[b:b+2]=b'\x00\x7e'; write('nan',hdr,bytes(d))
PY
for x in truncated unknown nolayer rank nan; do
  "$GEN" "a cat" "${A[@]}" --lora "$T/$x.safetensors" --output "$T/out_$x" >/dev/null 2>"$T/err_$x"
  rc=$?
  [ $rc -eq 1 ] && [ "$(grep -c '^error:' "$T/err_$x")" = 1 ] && ok || bad "$x: rc $rc, $(cat "$T/err_$x")"
  ls "$T/out_$x"/* >/dev/null 2>&1 && bad "$x left files" || ok
  ! grep -q "Before generation" "$T/err_$x" && ok || bad "$x got to generation"
done
grep -q "unknown key 'model.some_weight'" "$T/err_unknown" && ok || bad "unknown key not named: $(cat "$T/err_unknown")"
grep -q "key 'lora_unet_down_blocks_9_attentions_0_proj_in\.[a-z_.]*' maps to no layer" "$T/err_nolayer" && grep -q "nolayer.safetensors" "$T/err_nolayer" \
  && ok || bad "key for no layer not named: $(cat "$T/err_nolayer")"
grep -q "rank mismatch" "$T/err_rank" && ok || bad "rank mismatch: $(cat "$T/err_rank")"
grep -q "NaN or Inf" "$T/err_nan" && ok || bad "NaN: $(cat "$T/err_nan")"
# another family: refused before the model loads
"$GEN" "a cat" "${A[@]}" --lora "$L/sdxl_locon.safetensors" --output "$T/out_fam" >/dev/null 2>"$T/err_fam"
rc=$?
[ $rc -eq 1 ] && grep -q "is for SDXL, the model is SD 1.x" "$T/err_fam" && ! grep -q "After model load" "$T/err_fam" \
  && ok || bad "SDXL LoRA on SD 1.5: rc $rc, $(cat "$T/err_fam")"
"$GEN" "a cat <lora:nosuch:1>" "${A[@]}" --lora-dir "$L" --offline --output "$T/out_miss" >/dev/null 2>"$T/err_miss"
[ $? -eq 1 ] && [ "$(grep -c '^error:' "$T/err_miss")" = 1 ] && ok || bad "missing LoRA: $(cat "$T/err_miss")"

# ---- SDXL: kohya LoCon (SGM names, both text encoders) + UNet-only stack ----
if [ -d "$FIX/sdxl" ]; then
  run xl "a cat" --model "$FIX/sdxl" --steps 2 --width 64 --height 64 --seed 5 --threads 1 -q \
    --lora "$L/sdxl_locon.safetensors" --lora "$L/sdxl_attn_unet_only.safetensors:0.6"
fi

# ---- memory: merged (resident) and side path (streaming) hold the plan ----
M=("a cat" --model "$FIX/sd15" --steps 2 --width 64 --height 64 --seed 5 --threads 1 -q
   --lora "$L/sd15_locon.safetensors:0.8" --lora "$L/sd15_attn.safetensors:0.5")
run mem_resident "${M[@]}" --plan resident
run mem_streaming "${M[@]}" --plan streaming
# Under AddressSanitizer the process RSS holds shadow memory and the
# quarantine: there the tracked peak is held to the plan, the RSS is not.
rss=1; ldd "$GEN" 2>/dev/null | grep -q libasan && rss=0
python3 - "$T" "$rss" <<'PY' && ok || bad "LoRA memory plan"
import json,glob,sys
T=sys.argv[1]; rss=sys.argv[2]=='1'
for plan,applied in (('resident','merged'),('streaming','side path')):
    m=json.load(open(glob.glob(f'{T}/mem_{plan}/*.json')[0]))
    mem=m['memory']; p=mem['plan']
    assert all(l['applied']==applied for l in m['loras']),(plan,m['loras'])
    tracked=max(s['tracked_peak_bytes'] for s in mem['stages'])
    assert tracked <= p['predicted_peak_bytes'], (plan, 'tracked', tracked, p['predicted_peak_bytes'])
    if rss:
        peak=max(s['process_peak_rss_bytes'] for s in mem['stages'])
        assert peak <= p['predicted_peak_bytes'], (plan, peak, p['predicted_peak_bytes'])
PY
# merged and side path: the same image up to float rounding (64 px is one
# VAE tile, so the streaming level's tiling does not blend)
"$DIFF" "$(png "$T/mem_resident")" "$(png "$T/mem_streaming")" 1 >/dev/null && ok \
  || bad "side-path image differs from the merged one by more than 1 level"

echo "test_lora: $pass passed, $fail failed"
[ $fail -eq 0 ]
