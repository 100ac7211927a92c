#!/usr/bin/env bash
# generate serve: the A1111 API on the tiny fixture models (tests/server/test_api.py).
# usage: test_server_api.sh BUILD_DIR FIXTURES_DIR
BUILD="$1"; FIX="$2"
if [ ! -d "$FIX/sd15" ]; then echo "SKIP: fixtures not found at $FIX"; exit 77; fi
if ! command -v python3 >/dev/null; then echo "SKIP: python3 is not installed (scripts/deps.sh)"; exit 77; fi
exec python3 "$(dirname "$0")/../server/test_api.py" "$BUILD" "$FIX"
