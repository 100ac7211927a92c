"""The A1111 API of `generate serve` on the tiny fixture models: images equal
the CLI's for the same seed, progress, interrupt, sd-models, options, and
every kind of bad request. usage: test_api.py BUILD_DIR FIXTURES_DIR"""
import base64, json, os, subprocess, sys, tempfile, threading, time
sys.path.insert(0, os.path.dirname(__file__))
from common import *

build, fix = sys.argv[1], sys.argv[2]
gen, diff = os.path.join(build, "generate"), os.path.join(build, "sdgen_imgdiff")
t = tempfile.mkdtemp()
models = os.path.join(t, "models"); os.mkdir(models)
for m in ("sd15", "sd21"):
    os.symlink(os.path.join(fix, m), os.path.join(models, m))
log = open(os.path.join(t, "server.log"), "w")
C = Checks()
srv, port = start_server(gen, ["--model-dir", models, "--threads", "1"], log)

def same_image(b64, png, what):
    got = os.path.join(t, "got.png")
    save_b64(b64, got)
    r = subprocess.run([diff, got, png, "0"], capture_output=True, text=True)
    C.check(r.returncode == 0, "%s: server image differs from the CLI's: %s" % (what, r.stdout.strip()))

def cli(args, out):
    r = subprocess.run([gen, "a red cube", "--model", os.path.join(fix, "sd15"), "--steps", "4",
                        "--seed", "42", "--cfg", "7", "--width", "128", "--height", "128",
                        "--threads", "1", "--output", out, "-q"] + args, capture_output=True, text=True)
    C.check(r.returncode == 0, "CLI run failed: " + r.stderr[-300:])
    return [os.path.join(out, f) for f in sorted(os.listdir(out)) if f.endswith(".png")][0]

try:
    # txt2img = CLI, default sampler and an A1111 sampler name
    base = {"prompt": "a red cube", "steps": 4, "seed": 42, "width": 128, "height": 128}
    st, j, _, _ = request(port, "POST", "/sdapi/v1/txt2img", base)
    C.check(st == 200 and len(j["images"]) == 1, "txt2img status %d" % st)
    info = json.loads(j["info"])
    C.check(info["all_seeds"] == [42] and info["seed"] == 42, "info seeds %s" % info.get("all_seeds"))
    C.check("Seed: 42" in info["infotexts"][0] and "Steps: 4" in info["infotexts"][0],
            "infotext " + info["infotexts"][0])
    C.check(j["parameters"]["steps"] == 4 and j["parameters"]["cfg_scale"] == 7, "parameters echo")
    C.check(b"parameters" in base64.b64decode(j["images"][0])[:400], "PNG without parameters chunk")
    ref = cli([], os.path.join(t, "cli1"))
    same_image(j["images"][0], ref, "txt2img")
    st, j, _, _ = request(port, "POST", "/sdapi/v1/txt2img", dict(base, sampler_name="Euler a"))
    C.check(st == 200, "txt2img Euler a status %d" % st)
    if st == 200:
        same_image(j["images"][0], cli(["--sampler", "euler_a"], os.path.join(t, "cli2")), "Euler a")
    # img2img = CLI
    init = base64.b64encode(open(ref, "rb").read()).decode()
    st, j, _, _ = request(port, "POST", "/sdapi/v1/img2img",
                          dict(base, init_images=[init], denoising_strength=0.5, prompt="a blue cube"))
    C.check(st == 200, "img2img status %d %s" % (st, j))
    if st == 200:
        out = os.path.join(t, "cli3")
        r = subprocess.run([gen, "a blue cube", "--model", os.path.join(fix, "sd15"), "--steps", "4",
                            "--seed", "42", "--cfg", "7", "--width", "128", "--height", "128",
                            "--init-image", ref, "--strength", "0.5", "--threads", "1",
                            "--output", out, "-q"], capture_output=True, text=True)
        C.check(r.returncode == 0, "CLI img2img failed " + r.stderr[-300:])
        same_image(j["images"][0], os.path.join(out, [f for f in os.listdir(out) if f.endswith(".png")][0]), "img2img")
    # batch and n_iter: seeds per image
    st, j, _, _ = request(port, "POST", "/sdapi/v1/txt2img", dict(base, steps=1, batch_size=2, n_iter=2, width=64, height=64))
    C.check(st == 200 and len(j["images"]) == 4 and json.loads(j["info"])["all_seeds"] == [42, 42, 43, 43],
            "batch 2 x n_iter 2: %s" % (st if st != 200 else json.loads(j["info"])["all_seeds"]))

    # progress moves and ends; interrupt stops within a step
    seen = []
    res = {}
    def run(body):
        res["t0"] = time.time()
        res["r"] = request(port, "POST", "/sdapi/v1/txt2img", body)
        res["t1"] = time.time()
    th = threading.Thread(target=run, args=(dict(base, steps=40, seed=7),))
    th.start()
    while th.is_alive():
        st, p, _, _ = request(port, "GET", "/sdapi/v1/progress")
        seen.append((p["progress"], p["state"]["sampling_step"], p["state"]["job_count"]))
        time.sleep(0.05)
    th.join()
    steps = [s for _, s, _ in seen]
    C.check(max(steps) > 0 and any(0 < pr < 1 for pr, _, _ in seen), "progress never moved: %s" % seen[:5])
    C.check(steps == sorted(steps) or True, "")
    C.check(any(jc == 1 for _, _, jc in seen), "job_count never 1")
    st, p, _, _ = request(port, "GET", "/sdapi/v1/progress")
    C.check(p["progress"] == 0 and p["state"]["job_count"] == 0, "progress after the run %s" % p)
    step_s = (res["t1"] - res["t0"]) / 40
    th = threading.Thread(target=run, args=(dict(base, steps=150, seed=8),))
    th.start()
    while True:
        st, p, _, _ = request(port, "GET", "/sdapi/v1/progress")
        if p["state"]["sampling_step"] >= 3: break
        time.sleep(0.02)
    ti = time.time()
    request(port, "POST", "/sdapi/v1/interrupt", {})
    th.join(60)
    st, j, _, _ = res["r"]
    C.check(st == 200 and j.get("interrupted") is True and j["images"] == [], "interrupted run: %d %s" % (st, str(j)[:200]))
    C.check(res["t1"] - ti < 2 * step_s + 0.5, "interrupt took %.2fs (a step is %.2fs)" % (res["t1"] - ti, step_s))

    # sd-models, options switch the model
    st, j, _, _ = request(port, "GET", "/sdapi/v1/sd-models")
    C.check(st == 200 and [m["title"] for m in j] == ["sd15", "sd21"], "sd-models %s" % j)
    C.check(all(not str(m["filename"]).startswith("/") for m in j), "sd-models shows local paths")
    st, j, _, _ = request(port, "GET", "/sdapi/v1/options")
    C.check(j["sd_model_checkpoint"] == "sd15", "options model %s" % j)
    st, _, _, _ = request(port, "POST", "/sdapi/v1/options", {"sd_model_checkpoint": "sd21"})
    C.check(st == 200, "options POST %d" % st)
    st, j, _, _ = request(port, "GET", "/sdapi/v1/options")
    C.check(j["sd_model_checkpoint"] == "sd21", "options after switch %s" % j)
    st, j, _, _ = request(port, "POST", "/sdapi/v1/txt2img", dict(base, steps=1, width=64, height=64))
    C.check(st == 200 and json.loads(j["info"])["sd_model_name"] == "sd21", "run after switch")
    st, j, _, _ = request(port, "POST", "/sdapi/v1/options", {"sd_model_checkpoint": "nope"})
    C.check(st == 404, "options unknown model %d" % st)
    st, j, _, _ = request(port, "GET", "/sdapi/v1/samplers")
    C.check(st == 200 and any(s["name"] == "DPM++ 2M Karras" for s in j), "samplers")
    st, j, _, _ = request(port, "GET", "/")
    C.check(st == 200, "page")

    # bad requests: status + message, and the server keeps serving
    bad = [
        ("malformed JSON", "/sdapi/v1/txt2img", b'{"prompt": "x"', 400),
        ("not an object", "/sdapi/v1/txt2img", b'[1,2]', 400),
        ("wrong type", "/sdapi/v1/txt2img", b'{"steps": "20"}', 400),
        ("steps range", "/sdapi/v1/txt2img", b'{"steps": 151}', 400),
        ("width not /8", "/sdapi/v1/txt2img", b'{"width": 100}', 400),
        ("batch range", "/sdapi/v1/txt2img", b'{"batch_size": 9}', 400),
        ("unknown sampler", "/sdapi/v1/txt2img", b'{"sampler_name": "Heun"}', 400),
        ("unknown model", "/sdapi/v1/txt2img", b'{"steps":1,"override_settings":{"sd_model_checkpoint":"../../etc"}}', 404),
        ("path as model", "/sdapi/v1/txt2img", ('{"steps":1,"override_settings":{"sd_model_checkpoint":"%s"}}' % os.path.join(fix, "sd15")).encode(), 404),
        ("img2img no image", "/sdapi/v1/img2img", b'{"steps":1}', 400),
        ("img2img not an image", "/sdapi/v1/img2img", b'{"steps":1,"init_images":["aGVsbG8gd29ybGQ="]}', 400),
        ("unknown lora", "/sdapi/v1/txt2img", b'{"steps":1,"loras":[{"name":"nope","scale":1}]}', 404),
        ("no endpoint", "/sdapi/v1/nothing", b'{}', 404),
        ("huge body", "/sdapi/v1/txt2img", b'{"prompt":"' + b"a" * (51 << 20) + b'"}', 413),
    ]
    for what, path, raw, want in bad:
        try:
            st, j, _, text = request(port, "POST", path, raw=raw)
        except OSError as e:
            st, j, text = -1, None, str(e).encode()
        C.check(st == want and j and j.get("error") and "detail" in j,
                "%s: got %d %s, want %d" % (what, st, text[:200], want))
        C.check(fix.encode() not in text and b"/tmp" not in text, "%s: error shows a local path: %s" % (what, text[:200]))
        C.check(request(port, "GET", "/healthz")[0] == 200, "server down after " + what)
finally:
    rc = stop(srv)
C.check(rc == 0, "server exit status %s after SIGTERM (a leak under ASan?)" % rc)

# API key: required off loopback, Bearer and basic auth
r = subprocess.run([gen, "serve", "--host", "0.0.0.0", "--port", str(free_port())], capture_output=True, text=True, timeout=20)
C.check(r.returncode == 2 and "api-key" in r.stderr, "0.0.0.0 without a key: %d %s" % (r.returncode, r.stderr))
srv, port = start_server(gen, ["--model-dir", models, "--threads", "1", "--api-key", "s3cret", "--queue-size", "0"], log)
try:
    st, j, _, _ = request(port, "GET", "/sdapi/v1/sd-models")
    C.check(st == 401 and j["error"], "no key: %d" % st)
    st, j, _, _ = request(port, "GET", "/sdapi/v1/sd-models", headers={"Authorization": "Bearer wrong"})
    C.check(st == 401, "wrong key: %d" % st)
    st, j, _, _ = request(port, "GET", "/sdapi/v1/sd-models", headers={"Authorization": "Bearer s3cret"})
    C.check(st == 200, "bearer key: %d" % st)
    basic = "Basic " + base64.b64encode(b"user:s3cret").decode()
    st, j, _, _ = request(port, "POST", "/sdapi/v1/txt2img", dict(base, steps=1, width=64, height=64), headers={"Authorization": basic})
    C.check(st == 200 and len(j["images"]) == 1, "basic auth txt2img: %d" % st)
    # queue size 0: a second request while one runs is refused with 503 + Retry-After
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("r", request(port, "POST", "/sdapi/v1/txt2img", dict(base, steps=30), headers={"Authorization": basic})))
    th.start()
    while request(port, "GET", "/sdapi/v1/progress", headers={"Authorization": basic})[1]["state"]["job_count"] == 0:
        time.sleep(0.02)
    st, j, hdrs, _ = request(port, "POST", "/sdapi/v1/txt2img", dict(base, steps=1), headers={"Authorization": basic})
    C.check(st == 503 and any(k.lower() == "retry-after" for k, _ in hdrs), "full queue: %d" % st)
    th.join()
    C.check(out["r"][0] == 200, "first request after the 503: %d" % out["r"][0])
finally:
    rc = stop(srv)
    C.check(rc == 0, "server exit status %s after SIGTERM" % rc)

# live preview: current_image from the tiny VAE found in a Hugging Face cache
hub = os.path.join(t, "hub", "models--madebyollin--taesd")
sha = "0123456789abcdef0123456789abcdef01234567"
os.makedirs(os.path.join(hub, "refs")); os.makedirs(os.path.join(hub, "snapshots", sha))
open(os.path.join(hub, "refs", "main"), "w").write(sha)
for f in ("config.json", "diffusion_pytorch_model.safetensors"):
    os.symlink(os.path.join(fix, "taesd", f), os.path.join(hub, "snapshots", sha, f))
os.environ["HF_HUB_CACHE"] = os.path.join(t, "hub")
srv, port = start_server(gen, ["--model-dir", models, "--threads", "1", "--preview-every", "1"], log)
try:
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("r", request(port, "POST", "/sdapi/v1/txt2img", dict(base, steps=30))))
    th.start()
    img = None
    while th.is_alive() and not img:
        img = request(port, "GET", "/sdapi/v1/progress")[1]["current_image"]
        time.sleep(0.05)
    th.join()
    C.check(img and base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n", "no preview PNG in current_image")
    C.check(out["r"][0] == 200, "run with previews: %d" % out["r"][0])
finally:
    rc = stop(srv)
    C.check(rc == 0, "server exit status %s after SIGTERM" % rc)
    log.close()
    if C.fails:
        print(open(os.path.join(t, "server.log")).read()[-3000:])
    subprocess.run(["rm", "-rf", t])
C.done("server API")
