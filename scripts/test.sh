#!/usr/bin/env bash
# Sets up, builds and runs every test: unit, conformance (fixtures in
# $SDGEN_FIXTURES, default ../shared/fixtures), CLI; then the same under
# AddressSanitizer + UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
FIXTURES="${SDGEN_FIXTURES:-$(cd .. && pwd)/shared/fixtures}"
JOBS="$(nproc 2>/dev/null || echo 2)"

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSDGEN_FIXTURES="$FIXTURES" >/dev/null
cmake --build build -j "$JOBS"
(cd build && ctest --output-on-failure -j "$JOBS")

cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DSDGEN_SANITIZE=ON \
      -DSDGEN_FIXTURES="$FIXTURES" >/dev/null
cmake --build build-asan -j "$JOBS"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j "$JOBS" -LE slow)
