#!/usr/bin/env bash
# generate serve under load: 200 requests, 16 clients (tests/server/test_load.py).
# usage: test_server_load.sh BUILD_DIR FIXTURES_DIR
BUILD="$1"; FIX="$2"
if [ ! -d "$FIX/sd15" ]; then echo "SKIP: fixtures not found at $FIX"; exit 77; fi
if ! command -v python3 >/dev/null; then echo "SKIP: python3 is not installed (scripts/deps.sh)"; exit 77; fi
exec python3 "$(dirname "$0")/../server/test_load.py" "$BUILD" "$FIX"
