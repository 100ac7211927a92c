#!/usr/bin/env bash
# Ctrl-C and SIGTERM during denoising: `generate` stops between steps, exits
# with 130, says "error: cancelled" on one line, and leaves nothing behind
# in the output folder (no image, metadata, temporary or latents file).
# usage: test_signals.sh BUILD_DIR FIXTURES_DIR
set -u
BUILD="$1"; FIX="$2"
GEN="$BUILD/generate"
if [ ! -d "$FIX/sd15" ]; then echo "SKIP: fixtures not found at $FIX"; exit 77; fi
T="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
pass=0; fail=0
ok()  { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL: $*"; }

# Seconds to wait for the first step / for the exit after the signal. One
# step of the tiny model at 256x256 takes well under a second; the margin is
# for a loaded machine.
FIRST_STEP_WAIT=40
EXIT_WAIT=30

# Runs generate in the background, sends SIG once the first step is printed,
# and checks the outcome.
interrupt_run() {
  local sig="$1" out="$T/out_$1" err="$T/err_$1"
  mkdir -p "$out"
  # 200 steps at 256x256: far longer than the test waits, so the signal
  # always lands in the denoising loop.
  "$GEN" "a lighthouse at dusk" --model "$FIX/sd15" --steps 200 --width 256 --height 256 \
    --seed 1 --threads 1 --output "$out" >"$T/stdout_$sig" 2>"$err" &
  pid=$!
  local waited=0
  while ! grep -q '^step 1/' "$err" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    if [ $waited -ge $((FIRST_STEP_WAIT * 10)) ]; then break; fi
    sleep 0.1; waited=$((waited+1))
  done
  if ! grep -q '^step 1/' "$err"; then
    bad "$sig: no first step within ${FIRST_STEP_WAIT}s: $(tail -2 "$err")"
    kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=""
    return
  fi
  ok
  kill -"$sig" "$pid"
  # wait with a deadline: a process that ignores the signal must not hang
  # the test
  local t=0
  while kill -0 "$pid" 2>/dev/null && [ $t -lt $((EXIT_WAIT * 10)) ]; do sleep 0.1; t=$((t+1)); done
  if kill -0 "$pid" 2>/dev/null; then
    bad "$sig: still running ${EXIT_WAIT}s after the signal"
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid"; local rc=$?
  pid=""
  [ $rc -eq 130 ] && ok || bad "$sig: exit code $rc, expected 130 ($(tail -1 "$err"))"
  local nerr; nerr=$(grep -c '^error:' "$err")
  [ "$nerr" -eq 1 ] && ok || bad "$sig: $nerr 'error:' lines: $(grep '^error:' "$err" | head -3)"
  grep -qx 'error: cancelled' "$err" && ok || bad "$sig: no 'error: cancelled' line: $(tail -1 "$err")"
  # the denoising really stopped early
  local last; last=$(grep -o '^step [0-9]*' "$err" | tail -1 | cut -d' ' -f2)
  [ -n "$last" ] && [ "$last" -lt 200 ] && ok || bad "$sig: ran to step '$last'"
  [ ! -s "$T/stdout_$sig" ] && ok || bad "$sig: stdout names a file: $(head -1 "$T/stdout_$sig")"
  local left; left=$(ls -A "$out")
  [ -z "$left" ] && ok || bad "$sig: files left in the output folder: $left"
}

interrupt_run INT
interrupt_run TERM

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
