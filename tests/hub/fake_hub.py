#!/usr/bin/env python3
"""A stand-in for the Hugging Face hub on 127.0.0.1, for tests (stdlib only).

Serves the repos found under --root (ROOT/ORG/NAME/<files>) the way the hub
does, as far as a downloader can tell:

  GET  /api/models/ORG/NAME/revision/REV   {"id", "sha", "siblings": [{"rfilename"}]}
  HEAD/GET /ORG/NAME/resolve/REV/PATH      small files: 200, ETag = git blob sha1
                                           *.safetensors (LFS): 302 to /cdn/...,
                                           X-Linked-Etag = sha256, X-Linked-Size
  HEAD/GET /cdn/ORG/NAME/PATH              the bytes, with Range support

Every answer from the hub part carries X-Repo-Commit (a fixed sha1 per repo).
Errors carry X-Error-Code like the hub: RepoNotFound, RevisionNotFound,
EntryNotFound, GatedRepo.

Behaviour is steered by --control, a JSON file re-read on every request:
  {"gated": ["ORG/NAME"], "token": "...",          401 unless Bearer token
   "break": {"ORG/NAME/PATH": N},                   GETs without Range stop after N bytes
   "corrupt": ["ORG/NAME/PATH"],                    first byte flipped, headers unchanged
   "renamed": {"OLD/NAME": "ORG/NAME"}}             307 relative redirects
Each request is appended to --log as "METHOD PATH RANGE AUTH" so tests can
count them. The chosen port is written to --port-file once listening.
"""

import argparse
import hashlib
import json
import os
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ARGS = None
LOG_LOCK = threading.Lock()


def load_control():
    try:
        with open(ARGS.control) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def repo_commit(repo):
    return hashlib.sha1(("commit:" + repo).encode()).hexdigest()


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def repo_files(repo_dir):
    out = []
    for base, dirs, files in os.walk(repo_dir):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(base, name)
            out.append(os.path.relpath(full, repo_dir).replace(os.sep, "/"))
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def record(self):
        line = "%s %s %s %s\n" % (
            self.command,
            self.path,
            self.headers.get("Range", "-"),
            "auth" if self.headers.get("Authorization") else "-",
        )
        with LOG_LOCK:
            with open(ARGS.log, "a") as f:
                f.write(line)

    def reply(self, status, headers=None, body=b""):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def error(self, status, code, message):
        self.reply(status, {"X-Error-Code": code, "X-Error-Message": message,
                            "Content-Type": "application/json"},
                   json.dumps({"error": message}).encode())

    def authorized(self, control, repo):
        if repo not in control.get("gated", []):
            return True
        return self.headers.get("Authorization") == "Bearer " + control.get("token", "")

    def do_HEAD(self):
        self.handle_any()

    def do_GET(self):
        self.handle_any()

    def handle_any(self):
        self.record()
        control = load_control()
        parts = [urllib.parse.unquote(p) for p in self.path.split("?")[0].split("/")[1:]]
        if len(parts) >= 6 and parts[0] == "api" and parts[1] == "models" and parts[4] == "revision":
            return self.api(control, parts[2] + "/" + parts[3], "/".join(parts[5:]))
        if len(parts) >= 5 and parts[2] == "resolve":
            moved = control.get("renamed", {}).get(parts[0] + "/" + parts[1])
            if moved:
                # A renamed repo: the hub answers with a relative redirect.
                rest = "/".join(urllib.parse.quote(p) for p in parts[2:])
                return self.reply(307, {"Location": "/%s/%s" % (moved, rest)})
            return self.resolve(control, parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]))
        if len(parts) >= 4 and parts[0] == "cdn":
            return self.cdn(control, parts[1] + "/" + parts[2], "/".join(parts[3:]))
        self.error(404, "NotFound", "no such route")

    def repo_dir(self, repo):
        path = os.path.join(ARGS.root, *repo.split("/"))
        return path if os.path.isdir(path) else None

    def check_repo(self, control, repo, revision):
        """Returns the repo folder, or None after sending the error."""
        folder = self.repo_dir(repo)
        if folder is None:
            self.error(404, "RepoNotFound", "Repository not found")
            return None
        if not self.authorized(control, repo):
            self.error(401, "GatedRepo", "Access to model %s is restricted" % repo)
            return None
        if revision is not None and revision not in ("main", repo_commit(repo)):
            self.error(404, "RevisionNotFound", "Invalid rev id: " + revision)
            return None
        return folder

    def api(self, control, repo, revision):
        folder = self.check_repo(control, repo, revision)
        if folder is None:
            return
        body = json.dumps({"id": repo, "sha": repo_commit(repo),
                           "siblings": [{"rfilename": f} for f in repo_files(folder)]})
        self.reply(200, {"Content-Type": "application/json"}, body.encode())

    def resolve(self, control, repo, revision, path):
        folder = self.check_repo(control, repo, revision)
        if folder is None:
            return
        full = os.path.join(folder, *path.split("/"))
        if ".." in path.split("/") or not os.path.isfile(full):
            return self.error(404, "EntryNotFound", "Entry not found")
        with open(full, "rb") as f:
            data = f.read()
        headers = {"X-Repo-Commit": repo_commit(repo)}
        if path.endswith(".safetensors"):
            headers.update({
                "ETag": '"%s"' % git_blob_sha1(b"lfs pointer " + path.encode()),
                "X-Linked-Etag": '"%s"' % hashlib.sha256(data).hexdigest(),
                "X-Linked-Size": str(len(data)),
                # Absolute, as the hub's redirect to its CDN is.
                "Location": "http://127.0.0.1:%d/cdn/%s/%s" % (
                    self.server.server_address[1], repo, urllib.parse.quote(path)),
            })
            return self.reply(302, headers)
        headers["ETag"] = '"%s"' % git_blob_sha1(data)
        self.reply(200, headers, data)

    def cdn(self, control, repo, path):
        folder = self.repo_dir(repo)
        full = os.path.join(folder or "/nonexistent", *path.split("/"))
        if folder is None or ".." in path.split("/") or not os.path.isfile(full):
            return self.error(404, "EntryNotFound", "Entry not found")
        if self.command == "HEAD":
            # Like a URL presigned for GET: other methods are refused.
            return self.error(403, "SignatureDoesNotMatch", "signed for GET")
        with open(full, "rb") as f:
            data = bytearray(f.read())
        key = repo + "/" + path
        if key in control.get("corrupt", []) and data:
            data[0] ^= 0xFF
        total = len(data)
        start = 0
        status = 200
        headers = {"ETag": '"cdn-%d"' % total, "Accept-Ranges": "bytes"}
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= total:
                headers["Content-Range"] = "bytes */%d" % total
                return self.reply(416, headers)
            status = 206
            headers["Content-Range"] = "bytes %d-%d/%d" % (start, total - 1, total)
        body = bytes(data[start:])
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        cut = control.get("break", {}).get(key)
        if cut is not None and rng is None:
            # Announce the whole length, send part of it, hang up.
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # Clients hanging up mid-answer (cancelled or cut-off downloads) are
        # part of the tests, not server faults.
        if isinstance(sys.exc_info()[1], (ConnectionError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--port-file", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--control", required=True)
    ARGS = p.parse_args()
    server = Server(("127.0.0.1", 0), Handler)
    tmp = ARGS.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, ARGS.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
