"""The web page in a real browser: Debian's chromium, headless, driven over
the DevTools protocol on a pipe (--remote-debugging-pipe; no extra
packages). Types a prompt on the tiny model, clicks Generate, waits for the
image and checks that it appears in the gallery with its seed.
usage: test_browser.py BUILD_DIR FIXTURES_DIR"""
import json, os, shutil, subprocess, sys, tempfile, time
sys.path.insert(0, os.path.dirname(__file__))
from common import *

build, fix = sys.argv[1], sys.argv[2]
gen = os.path.join(build, "generate")
browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
if not browser:
    print("SKIP: chromium is not installed (scripts/deps.sh installs it)")
    sys.exit(77)
t = tempfile.mkdtemp()
models = os.path.join(t, "models"); os.mkdir(models)
os.symlink(os.path.join(fix, "sd15"), os.path.join(models, "sd15"))
C = Checks()

class Browser:
    def __init__(self):
        self.to_r, self.to_w = os.pipe()      # we write commands
        self.from_r, self.from_w = os.pipe()  # chromium writes replies
        def fds():  # chromium reads fd 3 and writes fd 4; the pipes may sit anywhere
            a, b = os.dup(self.to_r), os.dup(self.from_w)
            os.dup2(a, 3)
            os.dup2(b, 4)
        self.p = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage", "--remote-debugging-pipe", "--user-data-dir=" + os.path.join(t, "profile"),
             "about:blank"], pass_fds=(3, 4, self.to_r, self.from_w), preexec_fn=fds,
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(t, "chromium.log"), "w"))
        os.close(self.to_r); os.close(self.from_w)
        self.buf = b""
        self.next_id = 0
    def send(self, method, params=None, session=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session: msg["sessionId"] = session
        os.write(self.to_w, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self.buf:
                chunk = os.read(self.from_r, 1 << 16)
                if not chunk: raise RuntimeError("chromium closed the pipe")
                self.buf += chunk
            raw, self.buf = self.buf.split(b"\0", 1)
            r = json.loads(raw)
            if r.get("id") == self.next_id:
                if "error" in r: raise RuntimeError("%s: %s" % (method, r["error"]))
                return r["result"]
    def close(self):
        self.p.kill(); self.p.wait()

srv, port = start_server(gen, ["--model-dir", models, "--threads", "1"], open(os.path.join(t, "server.log"), "w"))
b = None
try:
    b = Browser()
    target = b.send("Target.createTarget", {"url": "http://127.0.0.1:%d/" % port})["targetId"]
    s = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    def js(expr):
        r = b.send("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True}, s)
        return r["result"].get("value")
    def wait(expr, limit=60):
        t0 = time.time()
        while time.time() - t0 < limit:
            v = js(expr)
            if v: return v
            time.sleep(0.1)
        return None
    C.check(wait("document.readyState=='complete' && document.getElementById('model').options.length>0"),
            "page did not load its model list")
    C.check(js("document.getElementById('model').value") == "sd15", "model select")
    js("for (const [k,v] of [['width',64],['height',64],['steps',2],['seed',4242]]) document.getElementById(k).value=v")
    js("document.getElementById('prompt').focus()")
    b.send("Input.insertText", {"text": "a red cube in the browser"}, s)
    C.check(js("document.getElementById('prompt').value") == "a red cube in the browser", "typed prompt")
    rect = js("(()=>{document.getElementById('go').scrollIntoView({block:'center'});const r=document.getElementById('go').getBoundingClientRect();return [r.x+r.width/2,r.y+r.height/2]})()")
    for kind in ("mousePressed", "mouseReleased"):
        b.send("Input.dispatchMouseEvent", {"type": kind, "x": rect[0], "y": rect[1], "button": "left", "clickCount": 1}, s)
    ok = wait("document.querySelector('#gallery figure img') && document.querySelector('#gallery figure img').complete", 120)
    C.check(ok, "no image in the gallery: error='%s'" % js("document.getElementById('error').textContent"))
    if ok:
        C.check(js("document.querySelector('#gallery figure img').dataset.seed") == "4242", "image seed")
        C.check(js("document.querySelector('#gallery figure img').naturalWidth") == 64, "image not decoded")
        cap = js("document.querySelector('#gallery figcaption').textContent")
        C.check("Seed: 4242" in cap and "a red cube in the browser" in cap, "caption: %s" % cap)
        C.check(js("document.querySelector('#gallery figcaption a').download") == "sdgen_4242.png", "download link")
        C.check(js("document.getElementById('status').textContent") == "done", "status")
finally:
    if b: b.close()
    stop(srv)
    if C.fails:
        for n in ("server.log", "chromium.log"):
            print("---", n); print(open(os.path.join(t, n)).read()[-1500:])
    shutil.rmtree(t, ignore_errors=True)
C.done("server web page")
