#!/usr/bin/env bash
# Clients use only the public header: every #include "..." in src/cli is
# "sdgen.h" or another src/cli file (issue 13). Fails naming the line.
# usage: test_layering.sh BUILD_DIR FIXTURES_DIR (both unused)
set -u
SRC="$(cd "$(dirname "$0")/../.." && pwd)/src/cli"
bad=$(grep -Hn '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$SRC"/*.c "$SRC"/*.h |
      grep -v '#[[:space:]]*include[[:space:]]*"\(sdgen\.h\|cli/[A-Za-z0-9_]*\.h\)"')
n=$(ls "$SRC"/*.c | wc -l)
if [ -n "$bad" ]; then
  echo "FAIL: src/cli includes internal headers (use include/sdgen.h):"
  echo "$bad"
  echo "0 passed, 1 failed"
  exit 1
fi
[ "$n" -gt 0 ] || { echo "FAIL: no CLI sources under $SRC"; exit 1; }
echo "1 passed, 0 failed ($n CLI sources include only sdgen.h and cli/)"
