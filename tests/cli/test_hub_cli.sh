#!/usr/bin/env bash
# The CLI's model resolution against tests/hub/fake_hub.py on 127.0.0.1:
# a hub name downloads into the Hugging Face cache and generates (the image
# equal to a run from the local folder), a second run makes no request,
# --offline with a cold cache fails with one line, --download prints the
# snapshot path, --list-models shows the repo and its pipeline, and a gated
# repo without HF_TOKEN fails with one line naming HF_TOKEN. Never leaves
# loopback. Skips (77) without python3 or the fixtures.
# usage: test_hub_cli.sh BUILD_DIR FIXTURES_DIR
set -u
BUILD="$1"; FIX="$2"
GEN="$BUILD/generate"; DIFF="$BUILD/sdgen_imgdiff"
HERE="$(cd "$(dirname "$0")" && pwd)"
if ! command -v python3 >/dev/null 2>&1; then echo "SKIP: python3 not found"; exit 77; fi
if [ ! -d "$FIX/sd15" ]; then echo "SKIP: fixtures not found at $FIX"; exit 77; fi
T="$(mktemp -d)"
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
pass=0; fail=0
ok()  { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL: $*"; }
check() { if eval "$1"; then ok; else bad "$2"; fi; }

REPO=test-org/tiny-sd15
GATED=test-org/gated-sd15
# Copies of the fixture model served as hub repos (never written in place).
mkdir -p "$T/hub/test-org"
cp -r "$FIX/sd15" "$T/hub/$REPO"
cp -r "$FIX/sd15" "$T/hub/$GATED"
chmod -R u+w "$T/hub"
printf '{"gated": ["%s"], "token": "hf_test_token"}\n' "$GATED" >"$T/control.json"
: >"$T/requests.log"
python3 "$HERE/../hub/fake_hub.py" --root "$T/hub" --port-file "$T/port" \
  --log "$T/requests.log" --control "$T/control.json" 2>"$T/server.err" &
server=$!
for _ in $(seq 100); do [ -s "$T/port" ] && break; sleep 0.1; done
if [ ! -s "$T/port" ]; then echo "FAIL: fake hub did not start: $(cat "$T/server.err")"; echo "0 passed, 1 failed"; exit 1; fi

# Only the fake hub, only our temporary cache: nothing from the caller's
# environment may point elsewhere.
unset HF_TOKEN HF_TOKEN_PATH HF_HUB_OFFLINE XDG_CACHE_HOME
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy
export NO_PROXY=127.0.0.1 no_proxy=127.0.0.1
export HF_ENDPOINT="http://127.0.0.1:$(cat "$T/port")"
export HF_HOME="$T/hf"
export HF_HUB_CACHE="$T/hf/hub"
requests() { wc -l <"$T/requests.log"; }
SMALL=(--steps 1 --width 64 --height 64 --seed 5 --threads 1)

# 1. a hub name: downloaded into the cache, then generated
"$GEN" "x" --model "$REPO" "${SMALL[@]}" --output "$T/o1" >"$T/stdout" 2>"$T/stderr"
rc=$?
check "[ $rc -eq 0 ]" "hub run exit $rc: $(tail -2 "$T/stderr")"
png=$(ls "$T"/o1/output_*_0.png 2>/dev/null | head -1)
check "[ -n '$png' ] && [ -s '$png' ] && [ -s '${png%.png}.json' ]" "hub run wrote no png/json pair"
check "[ \$(requests) -gt 0 ]" "the first hub run made no request"
snapshot="$HF_HUB_CACHE/models--test-org--tiny-sd15/snapshots"
check "python3 - '${png%.png}.json' '$REPO' '$snapshot' <<'PY'
import json,sys
m=json.load(open(sys.argv[1]))['model']
assert m['name']==sys.argv[2], m
assert m['path'].startswith(sys.argv[3]+'/'), m
assert m['type']=='sd1', m
PY" "metadata model.name / path"
check "[ -L \"\$(ls -d '$snapshot'/*/unet/diffusion_pytorch_model.safetensors)\" ]" \
  "the snapshot does not link its weights into blobs/"
# the same weights give the same image as the local folder
"$GEN" "x" --model "$FIX/sd15" "${SMALL[@]}" --output "$T/local" -q >/dev/null 2>"$T/stderr_local"
if [ -x "$DIFF" ]; then
  check "'$DIFF' '$png' \"\$(ls '$T'/local/output_*_0.png)\" 0 >/dev/null" \
    "hub image differs from the local-folder image"
fi

# 1b. the infotext and the JSON name models as users know them: the hub
# name, never the snapshot hash, also for the refiner and when the snapshot
# folder itself is passed
png_params() { python3 - "$1" <<'PY'
import struct,sys,zlib
d=open(sys.argv[1],'rb').read(); i=8
while i < len(d):
    n,t=struct.unpack('>I4s',d[i:i+8]); c=d[i+8:i+8+n]; i+=12+n
    if t==b'tEXt' and c.split(b'\0',1)[0]==b'parameters': print(c.split(b'\0',1)[1].decode('latin-1'))
    if t==b'zTXt' and c.split(b'\0',1)[0]==b'parameters': print(zlib.decompress(c.split(b'\0',1)[1][1:]).decode('latin-1'))
PY
}
check "png_params '$png' | grep -q 'Model: $REPO,'" "infotext model: $(png_params "$png" | tail -1)"
snapdir=$(ls -d "$snapshot"/* | head -1)
"$GEN" "x" --model "$snapdir" "${SMALL[@]}" --refiner "$REPO" --refiner-steps 2 \
  --refiner-strength 0.5 --output "$T/o1b" -q >/dev/null 2>"$T/stderr"
rc=$?
png1b=$(ls "$T"/o1b/output_*_0.png 2>/dev/null | head -1)
check "[ $rc -eq 0 ] && [ -n '$png1b' ]" "refiner run exit $rc: $(tail -1 "$T/stderr")"
check "png_params '$png1b' | grep -q 'Model: $REPO, .*Refiner: $REPO'" \
  "infotext with a snapshot path and a refiner: $(png_params "$png1b" | tail -1)"
check "python3 - '${png1b%.png}.json' '$REPO' <<'PY'
import json,sys
m=json.load(open(sys.argv[1]))
assert m['model']['name']==sys.argv[2], m['model']
assert m['refiner']['name']==sys.argv[2], m['refiner']
PY" "metadata model.name / refiner.name with a snapshot path"

# 2. a second run resolves from the cache without a single request
before=$(requests)
"$GEN" "x" --model "$REPO" "${SMALL[@]}" --output "$T/o2" -q >/dev/null 2>"$T/stderr"
rc=$?
check "[ $rc -eq 0 ] && ls '$T'/o2/output_*_0.png >/dev/null 2>&1" "cached run exit $rc: $(tail -1 "$T/stderr")"
check "[ \$(requests) -eq $before ]" "cached run made $(( $(requests) - before )) requests"

# 3. --offline with a cold cache: one clear line, no request, nothing written
before=$(requests)
HF_HUB_CACHE="$T/cold" "$GEN" "x" --model "$REPO" "${SMALL[@]}" --offline -q \
  --output "$T/o3" >"$T/stdout" 2>"$T/stderr"
rc=$?
check "[ $rc -eq 1 ]" "offline cold run exit $rc, expected 1"
check "[ \$(grep -c . '$T/stderr') -eq 1 ] && grep -q '^error: .*$REPO' '$T/stderr'" \
  "offline cold run stderr: $(head -3 "$T/stderr")"
check "grep -qi 'offline\|cache' '$T/stderr'" "offline message does not say why: $(head -1 "$T/stderr")"
check "[ \$(requests) -eq $before ]" "offline run made $(( $(requests) - before )) requests"
check "! ls '$T'/o3/*.png >/dev/null 2>&1" "offline run wrote an image"

# 4. --download prints the snapshot path: from the warm cache without a
# request, into a fresh cache with downloads
before=$(requests)
"$GEN" --download "$REPO" -q >"$T/stdout" 2>"$T/stderr"
rc=$?
path=$(cat "$T/stdout")
check "[ $rc -eq 0 ] && [ \$(grep -c . '$T/stdout') -eq 1 ]" "download (warm) exit $rc: $(cat "$T/stdout" "$T/stderr" | head -3)"
check "[ -f '$path/model_index.json' ] && [ \"\${path#$snapshot/}\" != '$path' ]" \
  "download printed '$path', not the snapshot folder"
check "[ \$(requests) -eq $before ]" "download of a cached repo made $(( $(requests) - before )) requests"
before=$(requests)
HF_HUB_CACHE="$T/fresh" "$GEN" --download "$REPO" -q >"$T/stdout" 2>"$T/stderr"
rc=$?
path=$(cat "$T/stdout")
check "[ $rc -eq 0 ] && [ -f '$path/unet/diffusion_pytorch_model.safetensors' ]" \
  "download (fresh) exit $rc, printed '$path': $(head -2 "$T/stderr")"
check "[ \"\${path#$T/fresh/models--test-org--tiny-sd15/snapshots/}\" != '$path' ]" \
  "fresh download printed '$path', not a snapshot of the fresh cache"
check "[ \$(requests) -gt $before ]" "fresh download made no request"
check "cmp -s '$path/unet/diffusion_pytorch_model.safetensors' '$FIX/sd15/unet/diffusion_pytorch_model.safetensors'" \
  "downloaded unet weights differ from the served ones"

# 5. --list-models shows the repo, its pipeline and that it is complete
"$GEN" --list-models >"$T/stdout" 2>"$T/stderr"
rc=$?
check "[ $rc -eq 0 ]" "list-models exit $rc: $(head -1 "$T/stderr")"
check "grep -Eq \"^$REPO +[0-9.]+[KMG]?B +sd15 +complete\" '$T/stdout'" "list-models: $(cat "$T/stdout")"
check "grep -q '$HF_HUB_CACHE' '$T/stdout'" "list-models does not name the cache folder"
HF_HUB_CACHE="$T/empty" "$GEN" --list-models >"$T/stdout" 2>"$T/stderr"
check "[ $? -eq 0 ] && ! grep -q '$REPO' '$T/stdout'" "list-models of an empty cache: $(cat "$T/stdout")"

# 6. a gated repo: without HF_TOKEN one line naming HF_TOKEN, exit 1; with
# the token it downloads
before=$(requests)
"$GEN" "x" --model "$GATED" "${SMALL[@]}" -q --output "$T/o6" >"$T/stdout" 2>"$T/stderr"
rc=$?
check "[ $rc -eq 1 ]" "gated run exit $rc, expected 1"
check "[ \$(grep -c . '$T/stderr') -eq 1 ] && grep -q '^error: .*HF_TOKEN' '$T/stderr'" \
  "gated run stderr: $(head -3 "$T/stderr")"
check "[ \$(requests) -gt $before ]" "gated run never asked the hub"
check "! ls '$T'/o6/*.png >/dev/null 2>&1" "gated run wrote an image"
"$GEN" --download "$GATED" -q >"$T/stdout" 2>"$T/stderr"
rc=$?
check "[ $rc -eq 1 ] && [ \$(grep -c . '$T/stderr') -eq 1 ] && grep -q 'HF_TOKEN' '$T/stderr'" \
  "gated download exit $rc: $(head -3 "$T/stderr")"
HF_TOKEN=hf_test_token "$GEN" --download "$GATED" -q >"$T/stdout" 2>"$T/stderr"
rc=$?
check "[ $rc -eq 0 ] && [ -f \"\$(cat '$T/stdout')/model_index.json\" ]" \
  "gated download with HF_TOKEN exit $rc: $(head -2 "$T/stderr")"
check "grep -q 'auth' '$T/requests.log'" "HF_TOKEN was never sent"

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
