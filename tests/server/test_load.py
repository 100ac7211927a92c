"""Load on `generate serve`: 200 requests from 16 concurrent clients on the
tiny model. Every request is answered (an image or 503 busy), none is lost
or answered twice (each carries its own seed, which its answer must echo),
and the server's RSS after the run is within 10 % of its RSS after the
first request. usage: test_load.py BUILD_DIR FIXTURES_DIR"""
import json, os, subprocess, sys, tempfile, threading
sys.path.insert(0, os.path.dirname(__file__))
from common import *

build, fix = sys.argv[1], sys.argv[2]
gen = os.path.join(build, "generate")
t = tempfile.mkdtemp()
models = os.path.join(t, "models"); os.mkdir(models)
os.symlink(os.path.join(fix, "sd15"), os.path.join(models, "sd15"))
log = open(os.path.join(t, "server.log"), "w")
C = Checks()
N, CLIENTS = 200, 16
srv, port = start_server(gen, ["--model-dir", models, "--threads", "1", "--queue-size", "3"], log)
body = {"prompt": "load", "steps": 1, "width": 64, "height": 64}
try:
    st, j, _, _ = request(port, "POST", "/sdapi/v1/txt2img", dict(body, seed=100000))
    C.check(st == 200, "first request %d" % st)
    rss0 = rss_kb(srv.pid)
    answers = {}
    lock = threading.Lock()
    def client(k):
        for i in range(k, N, CLIENTS):
            try:
                st, j, hdrs, _ = request(port, "POST", "/sdapi/v1/txt2img", dict(body, seed=i))
                seed = json.loads(j["info"])["seed"] if st == 200 else None
            except Exception as e:
                st, seed = str(e), None
            with lock:
                answers.setdefault(i, []).append((st, seed))
    th = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for x in th: x.start()
    for x in th: x.join()
    rss1 = rss_kb(srv.pid)
    C.check(sorted(answers) == list(range(N)), "requests without an answer: %d" % (N - len(answers)))
    C.check(all(len(v) == 1 for v in answers.values()), "a request answered twice")
    ok = [i for i, v in answers.items() if v[0][0] == 200]
    busy = [i for i, v in answers.items() if v[0][0] == 503]
    C.check(len(ok) + len(busy) == N, "answers other than 200/503: %s" %
            [v for v in answers.values() if v[0][0] not in (200, 503)][:5])
    C.check(all(answers[i][0][1] == i for i in ok), "an image answered with another request's seed")
    C.check(len(ok) > 0, "no request served")
    print("load: %d images, %d busy (503); RSS %d kB after the first request, %d kB after all" %
          (len(ok), len(busy), rss0, rss1))
    C.check(abs(rss1 - rss0) <= 0.10 * rss0, "RSS grew from %d kB to %d kB" % (rss0, rss1))
    C.check(request(port, "GET", "/sdapi/v1/progress")[1]["state"]["job_count"] == 0, "jobs left over")
finally:
    stop(srv)
    log.close()
    subprocess.run(["rm", "-rf", t])
C.done("server load")
