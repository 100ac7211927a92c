#!/usr/bin/env bash
# Installs the build dependencies (Debian 12 / Ubuntu packages, or Homebrew).
set -euo pipefail
if command -v apt-get >/dev/null 2>&1; then
  pkgs="build-essential cmake pkg-config libopenblas-dev libspng-dev libcjson-dev \
libutf8proc-dev libjpeg-dev libcurl4-openssl-dev python3 \
libmicrohttpd-dev libhiredis-dev redis-server chromium"
  # the ARM64 kernel test: cross compiler, its libc and qemu-user (x86 hosts)
  if [ "$(uname -m)" = "x86_64" ]; then
    pkgs="$pkgs gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"
  fi
  missing=""
  for p in $pkgs; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
  fi
elif command -v brew >/dev/null 2>&1; then
  brew install cmake pkg-config libspng cjson utf8proc jpeg-turbo curl libomp \
    libmicrohttpd hiredis redis
  brew install --cask chromium || true  # only the browser test needs it
else
  echo "deps.sh: install cmake, OpenBLAS, libspng, cJSON, utf8proc, libjpeg, libcurl,\
  libmicrohttpd, hiredis (redis-server and chromium for the tests) by hand" >&2
fi
