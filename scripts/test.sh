#!/usr/bin/env bash
# Sets up, builds and runs every test: unit, conformance against the
# fixtures ($SDGEN_FIXTURES, default ../shared/fixtures), CLI end to end;
# then the unit and CLI tests again under AddressSanitizer + UBSan, with a
# part of the conformance suite (the full one runs in the Release pass).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
FIXTURES="${SDGEN_FIXTURES:-$(cd .. && pwd)/shared/fixtures}"
JOBS="$(nproc 2>/dev/null || echo 2)"
export OMP_WAIT_POLICY=passive  # tests share 2 cores; spinning threads only slow them

echo "== Release build and tests"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSDGEN_FIXTURES="$FIXTURES" >/dev/null
cmake --build build -j "$JOBS"
(cd build && ctest --output-on-failure -j "$JOBS")

echo "== AddressSanitizer + UBSan build and tests"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DSDGEN_SANITIZE=ON \
      -DSDGEN_FIXTURES="$FIXTURES" >/dev/null
cmake --build build-asan -j "$JOBS"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1
(cd build-asan && ctest --output-on-failure -j "$JOBS" -LE slow)
if [ -d "$FIXTURES" ]; then
  for filter in tokenizers sd15/ upscale/rrdbnet.x2plus.net_16x16 sd35-medium/transformer; do
    echo "-- conformance under sanitizers: $filter"
    ./build-asan/conformance "$FIXTURES" "$filter" | tail -1
  done
fi
echo "all tests passed"
