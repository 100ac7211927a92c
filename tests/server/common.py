"""Helpers of the server tests: free ports, starting `generate serve`, a
stdlib HTTP client, base64 PNG files."""
import base64, http.client, json, os, socket, subprocess, sys, time

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p

def request(port, method, path, body=None, headers=None, raw=None, timeout=300):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    text = r.read()
    c.close()
    try:
        j = json.loads(text)
    except ValueError:
        j = None
    return r.status, j, r.getheaders(), text

def start_server(gen, args, log):
    port = free_port()
    p = subprocess.Popen([gen, "serve", "--port", str(port)] + args, stdout=log, stderr=log)
    for _ in range(200):
        if p.poll() is not None:
            raise RuntimeError("server exited with %d" % p.returncode)
        try:
            if request(port, "GET", "/healthz", timeout=2)[0] == 200:
                return p, port
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise RuntimeError("server did not start")

def stop(p):
    """SIGTERM, then the exit status (nonzero under ASan when it leaked)."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return p.returncode

def save_b64(b64, path):
    with open(path, "wb") as f:
        f.write(base64.b64decode(b64))

def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

class Checks:
    def __init__(self):
        self.fails = 0
        self.n = 0
    def check(self, cond, what):
        self.n += 1
        if not cond:
            self.fails += 1
            print("FAIL:", what, flush=True)
    def done(self, name):
        print("%s: %d checks, %d failed" % (name, self.n, self.fails))
        sys.exit(1 if self.fails else 0)
