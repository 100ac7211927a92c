#!/usr/bin/env bash
# Clients use only the public header (issue 13): every #include "..." in
# src/cli and src/server is "sdgen.h" or a header of the client's own folder;
# the CLI may also include server/server.h, the entry points of its `serve`
# and `worker` subcommands (the server is a client beside it, not a lower
# layer). Fails naming the line.
# usage: test_layering.sh BUILD_DIR FIXTURES_DIR (both unused)
set -u
TOP="$(cd "$(dirname "$0")/../.." && pwd)/src"
fail=0 n=0
check() { # folder, allowed include pattern
  local dir="$TOP/$1" bad
  [ -d "$dir" ] || { echo "FAIL: no sources under $dir"; fail=$((fail + 1)); return; }
  n=$((n + $(ls "$dir"/*.c | wc -l)))
  bad=$(grep -Hn '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$dir"/*.c "$dir"/*.h |
        grep -v "#[[:space:]]*include[[:space:]]*\"\\(sdgen\\.h\\|$2\\)\"")
  if [ -n "$bad" ]; then
    echo "FAIL: src/$1 includes internal headers (use include/sdgen.h):"
    echo "$bad"
    fail=$((fail + 1))
  fi
}
check cli 'cli/[A-Za-z0-9_]*\.h\|server/server\.h'
check server 'server/[A-Za-z0-9_]*\.h'
if [ "$fail" -gt 0 ]; then
  echo "$((2 - fail)) passed, $fail failed"
  exit 1
fi
echo "2 passed, 0 failed ($n client sources include only sdgen.h and their own headers)"
