#!/usr/bin/env bash
# Installs every build/test dependency of loupe from Debian's apt. Idempotent:
# packages already present are skipped, so a second run costs a dpkg query.
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config git
  libcmocka-dev libbenchmark-dev libsleef-dev libpcre2-dev libcjson-dev
  libmicrohttpd-dev libpng-dev
  python3 python3-numpy python3-jinja2 wrk tmux curl time
  util-linux-extra  # fincore: page-cache residency (tests/test_quantize.c)
  chromium  # headless browser for the HTML report checks of tests/interp_test.sh
)
# clang with the libFuzzer runtime (.ci/fuzz.sh) and valgrind (.ci/valgrind.sh).
if [ "${LOUPE_WITH_FUZZ:-0}" = 1 ]; then
  pkgs+=(clang libclang-rt-14-dev valgrind)
fi
# Cross toolchain + emulator for the ARM NEON test run (.ci/run --arm).
if [ "${LOUPE_WITH_ARM:-0}" = 1 ]; then
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    [ "$(id -u)" -ne 0 ] && SUDO_A=sudo || SUDO_A=""
    $SUDO_A dpkg --add-architecture arm64
  fi
  pkgs+=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user qemu-user-binfmt libc6-dev:arm64
         libcmocka-dev:arm64 libsleef-dev:arm64 libpcre2-dev:arm64 libcjson-dev:arm64
         libpng-dev:arm64 libmicrohttpd-dev:arm64)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "setup-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
