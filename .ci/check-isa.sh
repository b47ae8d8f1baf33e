#!/usr/bin/env bash
# Proves the "one binary runs everywhere" rule: object files built from
# anything outside simd/ must not contain AVX (ymm/zmm) or AVX-512 mask
# (or AMX tile) instructions. Only simd/avx2.c, simd/avx512.c, simd/avx512_bf16.c and simd/amx.c may.
set -euo pipefail
build=${1:-build}
bad=0; n=0
while IFS= read -r obj; do
  case "$obj" in */simd/avx2.c.o|*/simd/avx512.c.o|*/simd/avx512_bf16.c.o|*/simd/amx.c.o|*/simd/neon.c.o) continue ;; esac
  n=$((n + 1))
  if objdump -d --no-show-raw-insn "$obj" | grep -Eq '%(y|z|t)mm[0-9]|%k[0-7]\b|\{%k'; then
    echo "check-isa: $obj uses AVX/AVX-512/AMX registers"; bad=1
  fi
done < <(find "$build" -name '*.o' -path '*loupe_obj*')
[ "$n" -gt 0 ] || { echo "check-isa: no objects found under $build"; exit 1; }
if [ "$bad" = 0 ]; then
  echo "check-isa: $n objects outside simd/ISA files use no ymm/zmm/tmm: 1 passed, 0 failed"
else
  echo "check-isa: 0 passed, 1 failed"; exit 1
fi
