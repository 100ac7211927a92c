"""Scale-out on Redis: a real redis-server on a free loopback port, two
`generate worker`s and one `generate serve --queue`; 20 jobs; one worker is
SIGKILLed in the middle of a job. Every job must complete exactly once: each
request gets its own image back, and the workers' logs show each job id
finished ("done") once, the killed worker's job taken over with XAUTOCLAIM.
usage: test_workers.py BUILD_DIR FIXTURES_DIR"""
import json, os, re, shutil, signal, subprocess, sys, tempfile, threading, time
sys.path.insert(0, os.path.dirname(__file__))
from common import *

build, fix = sys.argv[1], sys.argv[2]
gen = os.path.join(build, "generate")
redis = shutil.which("redis-server")
if not redis:
    print("SKIP: redis-server is not installed (scripts/deps.sh installs it)")
    sys.exit(77)
t = tempfile.mkdtemp()
models = os.path.join(t, "models"); os.mkdir(models)
os.symlink(os.path.join(fix, "sd15"), os.path.join(models, "sd15"))
C = Checks()
rport = free_port()
procs = []
def spawn(args, name):
    f = open(os.path.join(t, name + ".log"), "w")
    p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT)
    procs.append(p)
    return p
def log(name):
    return open(os.path.join(t, name + ".log")).read()
N = 20
try:
    spawn([redis, "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", t], "redis")
    url = "redis://127.0.0.1:%d/0" % rport
    for _ in range(100):
        try:
            import socket
            socket.create_connection(("127.0.0.1", rport), 1).close(); break
        except OSError:
            time.sleep(0.05)
    wargs = ["worker", "--redis", url, "--model-dir", models, "--threads", "1", "--claim-after", "1500"]
    wa = spawn([gen] + wargs + ["--consumer", "a"], "a")
    wb = spawn([gen] + wargs + ["--consumer", "b"], "b")
    flog = open(os.path.join(t, "front.log"), "w")
    front, port = start_server(gen, ["--queue", url, "--model-dir", models], flog)
    procs.append(front)
    answers = {}
    lock = threading.Lock()
    def client(i):
        st, j, _, _ = request(port, "POST", "/sdapi/v1/txt2img",
                              {"prompt": "job %d" % i, "steps": 6, "width": 64, "height": 64, "seed": 1000 + i})
        with lock:
            answers.setdefault(i, []).append((st, json.loads(j["info"])["seed"] if st == 200 else j))
    th = [threading.Thread(target=client, args=(i,)) for i in range(N)]
    for x in th: x.start()
    # kill worker a in the middle of its second job
    t0 = time.time()
    while log("a").count("started") < 2 and time.time() - t0 < 60:
        time.sleep(0.01)
    os.kill(wa.pid, signal.SIGKILL)
    wa.wait()
    killed_log = log("a")
    C.check(killed_log.count("started") > killed_log.count(" done"), "worker a was not mid-job when killed")
    for x in th: x.join(180)
    C.check(sorted(answers) == list(range(N)), "requests without an answer: %s" % sorted(set(range(N)) - set(answers)))
    C.check(all(len(v) == 1 and v[0] == (200, 1000 + i) for i, v in answers.items()),
            "answers: %s" % {i: v for i, v in answers.items() if v != [(200, 1000 + i)]})
    done = re.findall(r"job (\w+) done", killed_log) + re.findall(r"job (\w+) done", log("b"))
    C.check(len(done) == N and len(set(done)) == N, "jobs done %d times, %d distinct (want %d)" % (len(done), len(set(done)), N))
    C.check("claimed" in log("b"), "worker b claimed nothing from the dead worker")
    print("workers: a finished %d jobs before SIGKILL, b finished %d" % (killed_log.count(" done"), log("b").count(" done")))
finally:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
    if C.fails:
        for n in ("a", "b", "front", "redis"):
            print("---", n); print(log(n)[-1500:])
    shutil.rmtree(t, ignore_errors=True)
C.done("server workers")
