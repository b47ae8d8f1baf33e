#!/usr/bin/env bash
# Cross-builds loupe for AArch64 (toolchain .ci/aarch64.cmake) into
# build-arm and runs ctest there under qemu-user twice:
#   QEMU_CPU=max         armv8.x with dotprod: the sdot int8 kernel
#   QEMU_CPU=cortex-a53  plain armv8-a: no dotprod, no fp16 arithmetic
# Extra arguments go to ctest (e.g. -R kernels).
# Needs: gcc-aarch64-linux-gnu qemu-user and the :arm64 -dev packages
# (libcmocka-dev libsleef-dev libpcre2-dev libcjson-dev libpng-dev).
set -uo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
build=${LOUPE_ARM_BUILD:-$src/build-arm}
jobs=${JOBS:-2}
# Debian's aarch64 GCC 12.2 dies with an internal compiler error
# (vect_transform_reduction) on some fmax()/max reductions at -O2; loop
# vectorization is off for this emulated test build only (the NEON
# kernels use intrinsics and are unaffected).
cflags=${LOUPE_ARM_CFLAGS--fno-tree-loop-vectorize}

# Script tests start the built aarch64 programs directly: let the kernel
# hand them to qemu (binfmt_misc; needs root, as CI has). Without it only the
# cmocka tests could run, so say so loudly.
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  [ -e /proc/sys/fs/binfmt_misc/register ] ||
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
  conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  [ -f "$conf" ] && [ -w /proc/sys/fs/binfmt_misc/register ] &&
    cat "$conf" > /proc/sys/fs/binfmt_misc/register 2>/dev/null || true
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  echo "arm-test: binfmt_misc for aarch64 is not available: script tests will fail"
fi

mkdir -p "$build"
cmake -S "$src" -B "$build" -DCMAKE_TOOLCHAIN_FILE="$src/.ci/aarch64.cmake" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS="$cflags" >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; exit 1; }
cmake --build "$build" -j"$jobs" || exit 1

export LOUPE_EMULATED=1 # tests that measure the machine (wrk load) skip themselves
status=0
for cpu in max cortex-a53; do
  echo "=== ctest with QEMU_CPU=$cpu"
  t0=$(date +%s)
  QEMU_CPU=$cpu ctest --test-dir "$build" --output-on-failure "$@" || status=1
  echo "=== QEMU_CPU=$cpu took $(($(date +%s) - t0)) s"
done
exit $status
