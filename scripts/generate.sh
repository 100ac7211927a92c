#!/usr/bin/env bash
# Sets up, builds and runs `generate` with the given arguments (by default
# on Lykon/DreamShaper-8, fetched into the Hugging Face cache on first use):
#   ./scripts/generate.sh "a lighthouse at dusk, oil painting"
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh >&2
exec ./build/generate "$@"
