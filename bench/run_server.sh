#!/usr/bin/env bash
# Server benchmark: what `generate serve` adds over the library call, and
# images per minute for N queued requests against N separate `generate`
# processes on the same model.
#
#   bench/run_server.sh [BUILD_DIR] MODEL_DIR [N] [generate/request options as JSON]
#
#   overhead   N requests one after another (also: sequential images per
#              minute); each request's wall time
#              (HTTP, JSON, base64) minus the library's own total from the
#              image's metadata (timings_s.total), mean and max
#   queued     N requests sent at once (queue size N): images per minute
#              from the first send to the last answer
#   processes  N `generate` runs one after another with the same settings:
#              images per minute
# MODEL_DIR is a diffusers folder (e.g. the full-size random sd15 or lcm-sd15
# of bench/run_fewstep.sh). The request defaults to LCM, 4 steps, guidance 1,
# 512x512; pass e.g. '{"steps":2,"width":256,"height":256}' to change it.
# Prints one line per measure and the JSON.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$repo/build}"
model="${2:?usage: run_server.sh BUILD_DIR MODEL_DIR [N] [JSON]}"
n="${3:-10}"
extra="${4:-{\}}"
SDGEN_REPO="$repo" exec python3 - "$build/generate" "$model" "$n" "$extra" <<'PY'
import json, os, shutil, subprocess, sys, tempfile, threading, time
gen, model, n, extra = sys.argv[1], os.path.abspath(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
sys.path.insert(0, os.path.join(os.environ["SDGEN_REPO"], "tests", "server"))
from common import start_server, stop, request
t = tempfile.mkdtemp()
os.mkdir(os.path.join(t, "models"))
os.symlink(model, os.path.join(t, "models", "m"))
req = {"prompt": "a lighthouse at dusk", "sampler_name": "LCM", "steps": 4, "cfg_scale": 1,
       "width": 512, "height": 512, "seed": 1}
req.update(extra)
print("== uptime:", os.popen("uptime").read().strip(), "| nproc", os.cpu_count())
out = os.path.join(t, "out")
srv, port = start_server(gen, ["--model-dir", os.path.join(t, "models"), "--output", out,
                               "--queue-size", str(n)], open(os.path.join(t, "log"), "w"))
res = {"model": os.path.basename(model.rstrip("/")), "request": req, "n": n}
try:
    over = []
    ts = time.time()
    for i in range(n):
        before = set(os.listdir(out)) if os.path.isdir(out) else set()
        t0 = time.time()
        st, j, _, _ = request(port, "POST", "/sdapi/v1/txt2img", dict(req, seed=i), timeout=3600)
        wall = time.time() - t0
        assert st == 200, (st, j)
        # each request has its own job folder under out
        new = [d for d in os.listdir(out) if d not in before]
        metas = [os.path.join(out, d, f) for d in new for f in os.listdir(os.path.join(out, d)) if f.endswith(".json")]
        meta = json.load(open(metas[0]))
        over.append(wall - meta["timings_s"]["total"])
    res["sequential_images_per_min"] = 60 * n / (time.time() - ts)
    res["overhead_s_mean"] = sum(over) / n
    res["overhead_s_max"] = max(over)
    print("sequential: %d requests, %.2f images/min" % (n, res["sequential_images_per_min"]))
    print("overhead: %.3f s mean, %.3f s max per request over the library's own time" % (res["overhead_s_mean"], res["overhead_s_max"]))
    th = [threading.Thread(target=request, args=(port, "POST", "/sdapi/v1/txt2img", dict(req, seed=100 + i)), kwargs={"timeout": 7200}) for i in range(n)]
    t0 = time.time()
    for x in th: x.start()
    for x in th: x.join()
    res["queued_images_per_min"] = 60 * n / (time.time() - t0)
    print("queued: %d requests, %.2f images/min" % (n, res["queued_images_per_min"]))
finally:
    stop(srv)
sampler = {"LCM": "lcm", "Euler a": "euler_a", "Euler": "euler", "DPM++ 2M": "dpmpp_2m",
           "DPM++ 2M Karras": "dpmpp_2m_karras", "DDIM": "ddim"}.get(req.get("sampler_name"))
t0 = time.time()
for i in range(n):
    args = [gen, req["prompt"], "--model", model, "--steps", str(req["steps"]), "--cfg", str(req["cfg_scale"]),
            "--width", str(req["width"]), "--height", str(req["height"]), "--seed", str(200 + i),
            "--output", os.path.join(t, "cli"), "-q"] + (["--sampler", sampler] if sampler else []) \
           + (["--vae", req["vae"]] if req.get("vae") else [])
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
res["processes_images_per_min"] = 60 * n / (time.time() - t0)
print("processes: %d runs, %.2f images/min" % (n, res["processes_images_per_min"]))
print(json.dumps(res))
shutil.rmtree(t, ignore_errors=True)
PY
